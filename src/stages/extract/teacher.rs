//! `extract`'s teacher side: load a CLIP or classifier teacher (a classifier with its label map
//! onto the task's classes), then stage its class prototypes and zero-shot logits per split.

use super::embed::{teacher_embeddings, TeacherSplits, FILE_SPLITS};
use super::keys::{model_meta, sha, stored_key, KEY_VERSION};
use super::staging::Staging;
use crate::cache::{logits_path, prototypes_path};
use crate::dataset::Dataset;
use crate::mat::Mat;
use crate::models::classifier::{self, LabelMap};
use crate::models::encoder::{self, ImageEncoder, TEMPLATES};
use crate::models::hub::ModelDir;
use crate::schema::Table;
use crate::{progress, table};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::path::Path;

/// CLIP's default temperature: logits = cos/0.01.
pub const DEFAULT_TAU: f32 = 0.01;

/// A classifier teacher's head: weights, bias, its class names and the task's label map.
pub type ClassifierHead = (Mat, Vec<f32>, Vec<String>, LabelMap);

/// Load the teacher in `m`: a CLIP checkpoint, or a classifier with its head (and the map of its
/// classes onto the task's, from `label_map` or by name).
pub fn load(
    m: ModelDir,
    label_map: Option<&Path>,
    data: &Dataset,
    device: &Device,
) -> Result<(ImageEncoder, Option<ClassifierHead>)> {
    let mut head = None;
    let mut e = ImageEncoder::load(m, device, false)?;
    let config = e.model.dir.join("config.json");
    if e.has_text() {
        if let Some(p) = label_map {
            bail!(
                "{}: --label-map is for a classifier teacher; {} is a vision-language model",
                p.display(),
                e.model.key()
            );
        }
    } else if let Some((w, b)) = e.classifier()? {
        let labels = classifier::class_names(&config)?;
        if labels.len() != w.rows {
            bail!(
                "{}: id2label names {} classes, the classifier has {}",
                config.display(),
                labels.len(),
                w.rows
            );
        }
        let map = match label_map {
            Some(p) => LabelMap::read(p, &data.classes, &labels)?,
            None => LabelMap::identity(&data.classes, &labels)
                .with_context(|| config.display().to_string())?,
        };
        for line in map.describe(&data.classes, &labels) {
            progress::log(format!("label map: {line}"));
        }
        e.normalize = false;
        head = Some((w, b, labels, map));
    } else {
        bail!(
            "{}: the teacher must be a CLIP or SigLIP checkpoint (it needs a text tower) or \
             a classifier with its head",
            config.display()
        );
    }
    Ok((e, head))
}

/// Stage the teacher's prototypes and, per split, its logits, each unless its content key is
/// already stored: cos/τ for CLIP (τ = `tau`, 0.01 by default); exp(s)·cos + b for SigLIP with
/// the checkpoint's own scale and bias (cos/τ + b when `tau` is given); a classifier's logits
/// mapped onto the task's classes.
#[allow(clippy::too_many_arguments)]
pub fn write_tables(
    out: &Path,
    t: &ImageEncoder,
    head: &Option<ClassifierHead>,
    teacher_emb: &TeacherSplits,
    data: &Dataset,
    tau: Option<f32>,
    synonyms: bool,
    staging: &mut Staging,
) -> Result<()> {
    if let Some((w, bias, labels, map)) = head {
        let lines = map.describe(&data.classes, labels);
        let mut parts = vec![KEY_VERSION, t.model.fingerprint.as_str(), "label-map"];
        parts.extend(lines.iter().map(String::as_str));
        let pkey = sha(&parts);
        let ppath = prototypes_path(out, &t.model.key());
        if stored_key(&ppath).as_deref() != Some(pkey.as_str()) {
            let p = map.prototypes(w);
            let c = p.rows;
            let mut meta = model_meta(&t.model, &pkey);
            meta.push(("dim", p.cols.to_string()));
            meta.push(("label_map", lines.join("; ")));
            staging.write(
                &ppath,
                Table::Prototypes,
                vec![
                    ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
                    ("template_set", table::utf8(&vec!["label-map"; c])),
                    ("vector", table::fixed_list(&p)?),
                ],
                &meta,
            )?;
        }
        for (split, (ids, emb, ikey)) in splits_in_order(&teacher_emb) {
            let lkey = sha(&[KEY_VERSION, ikey, &pkey]);
            let lpath = logits_path(out, &t.model.key(), split);
            if stored_key(&lpath).as_deref() == Some(lkey.as_str()) {
                log_cached_accuracy(split, &lpath, data)?;
                continue;
            }
            let emb = teacher_embeddings(out, &t.model.key(), split, emb)?;
            let logits = map.task_logits(&classifier::logits(&emb, w, bias)?)?;
            log_accuracy(split, ids, &logits, data);
            staging.write_logits(&lpath, ids, &logits, model_meta(&t.model, &lkey), "1")?;
        }
    } else {
        let names: Vec<Vec<String>> = data
            .classes
            .iter()
            .map(|c| {
                let mut v = vec![c.name.clone()];
                if synonyms {
                    v.extend(c.synonyms.iter().cloned());
                }
                v
            })
            .collect();
        let template_set = format!(
            "clip-{}{}",
            TEMPLATES.len(),
            if synonyms { "+synonyms" } else { "" }
        );
        let mut parts = vec![
            KEY_VERSION.to_string(),
            t.model.fingerprint.clone(),
            template_set.clone(),
        ];
        parts.extend(TEMPLATES.iter().map(|s| s.to_string()));
        for n in &names {
            parts.push(n.join("|"));
        }
        let pkey = sha(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let ppath = prototypes_path(out, &t.model.key());
        let protos = if stored_key(&ppath).as_deref() == Some(pkey.as_str()) {
            let f = table::read(&ppath, Table::Prototypes)?;
            f.mat("vector")?
        } else {
            let text = t.text()?.expect("a teacher with a text tower");
            let p = encoder::prototypes(text.as_ref(), &names, &TEMPLATES)?;
            let c = p.rows;
            let mut meta = model_meta(&t.model, &pkey);
            meta.push(("dim", p.cols.to_string()));
            staging.write(
                &ppath,
                Table::Prototypes,
                vec![
                    ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
                    ("template_set", table::utf8(&vec![template_set.as_str(); c])),
                    ("vector", table::fixed_list(&p)?),
                ],
                &meta,
            )?;
            p
        };
        // CLIP: cos/τ; SigLIP: exp(s)·cos + b (or cos/τ + b), recorded as τ = 1/exp(s)
        let sigmoid = t.sigmoid_logits();
        let (tau, scale, bias) = match (sigmoid, tau) {
            (None, tau) => (tau.unwrap_or(DEFAULT_TAU), None, 0.0),
            (Some((_, b)), Some(tau)) => (tau, None, b),
            (Some((s, b)), None) => (1.0 / s, Some(s), b),
        };
        let mut lparts = vec![
            KEY_VERSION.to_string(),
            String::new(),
            pkey.clone(),
            tau.to_string(),
        ];
        if sigmoid.is_some() {
            lparts.push(format!("sigmoid scale {scale:?} bias {bias}"));
        }
        for (split, (ids, emb, ikey)) in splits_in_order(&teacher_emb) {
            lparts[1] = ikey.to_string();
            let lkey = sha(&lparts.iter().map(String::as_str).collect::<Vec<_>>());
            let lpath = logits_path(out, &t.model.key(), split);
            if stored_key(&lpath).as_deref() == Some(lkey.as_str()) {
                log_cached_accuracy(split, &lpath, data)?;
                continue;
            }
            let emb = teacher_embeddings(out, &t.model.key(), split, emb)?;
            let mut logits = crate::geometry::matmul_nt(&emb, &protos)?;
            match scale {
                Some(s) => logits.data.iter_mut().for_each(|v| *v = *v * s + bias),
                None if sigmoid.is_some() => {
                    logits.data.iter_mut().for_each(|v| *v = *v / tau + bias)
                }
                None => logits.data.iter_mut().for_each(|v| *v /= tau),
            }
            log_accuracy(split, ids, &logits, data);
            let meta = model_meta(&t.model, &lkey);
            staging.write_logits(&lpath, ids, &logits, meta, &tau.to_string())?;
        }
    }
    Ok(())
}

/// The entries of a per-split map in the order train, calib, test, retrieved.
pub fn splits_in_order<'a, T>(m: &'a HashMap<&str, T>) -> Vec<(&'a str, &'a T)> {
    FILE_SPLITS
        .iter()
        .filter_map(|s| m.get_key_value(s).map(|(k, v)| (*k, v)))
        .collect()
}

/// [`log_accuracy`] of cached teacher logits.
pub fn log_cached_accuracy(split: &str, path: &Path, data: &Dataset) -> Result<()> {
    let f = table::read(path, Table::TeacherLogits)?;
    log_accuracy(split, &f.strings("sample_id")?, &f.mat("logits")?, data);
    Ok(())
}

/// Log the teacher's zero-shot accuracy on a labeled split, overall and per class.
pub fn log_accuracy(split: &str, ids: &[String], logits: &Mat, data: &Dataset) {
    let labels: HashMap<&str, i32> = data
        .samples
        .iter()
        .filter_map(|s| Some((s.id.as_str(), s.label?)))
        .collect();
    let c = logits.cols;
    let (mut right, mut total) = (vec![0usize; c], vec![0usize; c]);
    for (r, id) in ids.iter().enumerate() {
        let Some(&y) = labels.get(id.as_str()) else {
            continue;
        };
        let Some(y) = usize::try_from(y).ok().filter(|&y| y < c) else {
            continue;
        };
        total[y] += 1;
        right[y] += (crate::mat::argmax(logits.row(r)) == y) as usize;
    }
    let n: usize = total.iter().sum();
    if n == 0 {
        return;
    }
    let per: Vec<String> = data
        .classes
        .iter()
        .enumerate()
        .filter(|(i, _)| total[*i] > 0)
        .map(|(i, cl)| {
            format!(
                "{} {:.1}%",
                cl.name,
                100.0 * right[i] as f64 / total[i] as f64
            )
        })
        .collect();
    progress::log(format!(
        "{split}: teacher zero-shot accuracy {:.1}% on {n} labeled images ({})",
        100.0 * right.iter().sum::<usize>() as f64 / n as f64,
        per.join(", ")
    ));
}
