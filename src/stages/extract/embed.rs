//! `extract`'s image side: decode each split's images on rayon one batch ahead of the forward
//! passes, embed them with every stale encoder (or reuse a cached table of the same backbone),
//! and stage the embeddings tables.

use super::keys::{model_meta, sha, stored_key, Reject, KEY_VERSION};
use super::staging::Staging;
use crate::cache::embeddings_path;
use crate::dataset::{Dataset, Sample};
use crate::mat::Mat;
use crate::models::encoder::ImageEncoder;
use crate::preprocess::load_rgb;
use crate::schema::Table;
use crate::{progress, table};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The embedding files extract writes per model: the task splits, then the retrieved samples.
pub const FILE_SPLITS: [&str; 4] = ["train", "calib", "test", "retrieved"];

/// The retrieved samples' precomputed corpus image embeddings (`retrieve --embedding-model`),
/// when they are the teacher's: they stand for its retrieved split, and the samples without an
/// image join the manifest with teacher features only.
pub struct Corpus {
    pub ids: Vec<String>,
    pub mat: Mat,
    /// Content key of the teacher's retrieved table written from them.
    pub key: String,
    /// Where they come from (the table's `preprocessing`).
    pub describe: String,
    /// The retrieved samples without an image path that have an embedding.
    pub pathless: HashSet<String>,
}

impl Corpus {
    /// The corpus embeddings beside the retrieved table `retrieved`, if there are any and they
    /// are `teacher`'s (same `id@revision`, same dimension) and of this retrieved table (same
    /// retrieve run); `pathless`: the ids of the retrieved samples without an image.
    pub fn load(
        retrieved: &Path,
        teacher: &ImageEncoder,
        pathless: &[String],
    ) -> Result<Option<Corpus>> {
        let path = crate::cache::corpus_embeddings_path(retrieved);
        if !path.exists() {
            return Ok(None);
        }
        let f = table::read(&path, Table::Embeddings)?;
        let model = format!("{}@{}", f.meta("model_id")?, f.meta("revision")?);
        if model != teacher.model.key() {
            progress::log(format!(
                "{}: embeddings of {model}, not of the teacher {}; its images are embedded instead",
                path.display(),
                teacher.model.key()
            ));
            return Ok(None);
        }
        let run = table::read_meta(retrieved)?.get("run_key").cloned();
        if f.meta.get("run_key") != run.as_ref() {
            progress::log(format!(
                "{}: from another `vlal retrieve` run than {}; ignored",
                path.display(),
                retrieved.display()
            ));
            return Ok(None);
        }
        let (ids, mat) = (f.strings("sample_id")?, f.mat("vector")?);
        if mat.cols != teacher.dim {
            bail!(
                "{}: {}-d embeddings, the teacher {} gives {}-d",
                path.display(),
                mat.cols,
                teacher.model.key(),
                teacher.dim
            );
        }
        let describe = f.meta("preprocessing")?.to_string();
        let mut h = Sha256::new();
        h.update(format!("{KEY_VERSION}|corpus|{model}|{describe}|"));
        for (i, id) in ids.iter().enumerate() {
            h.update(id.as_bytes());
            h.update([0]);
            for v in mat.row(i) {
                h.update(v.to_le_bytes());
            }
        }
        let have: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let pathless = pathless
            .iter()
            .filter(|id| have.contains(id.as_str()))
            .cloned()
            .collect();
        progress::log(format!(
            "{}: {} corpus embeddings stand for the teacher's retrieved images",
            path.display(),
            ids.len()
        ));
        Ok(Some(Corpus {
            ids,
            mat,
            key: crate::models::hub::hex(&h.finalize()),
            describe,
            pathless,
        }))
    }
}

/// Per split: the teacher's ids, its vectors when computed in this run, and its content key.
pub type TeacherSplits = HashMap<&'static str, (Vec<String>, Option<Mat>, String)>;

/// Embed every split with every encoder whose table is stale, staging the tables; returns the
/// ids every encoder kept per split and the teacher's (encoder 0 when `has_teacher`) splits.
/// With `corpus`, the teacher's retrieved table is the corpus embeddings, and the samples
/// without an image count as kept by the other encoders.
#[allow(clippy::too_many_arguments)]
pub fn embed_splits(
    out: &Path,
    data: &Dataset,
    hashes: &HashMap<String, String>,
    encoders: &[&ImageEncoder],
    has_teacher: bool,
    device: &Device,
    batch_size: usize,
    skip_bad: bool,
    staging: &mut Staging,
    rejects: &mut Vec<Reject>,
    corpus: Option<&Corpus>,
) -> Result<(HashMap<&'static str, HashSet<String>>, TeacherSplits)> {
    let mut kept_ids: HashMap<&'static str, HashSet<String>> = HashMap::new();
    // per split: the teacher's ids, its vectors when computed in this run, and its content key
    let mut teacher_emb: TeacherSplits = HashMap::new();
    for split in FILE_SPLITS {
        let samples: Vec<Sample> = data
            .samples
            .iter()
            .filter(|s| s.split == split && hashes.contains_key(&s.id))
            .cloned()
            .collect();
        let corpus = corpus.filter(|_| split == "retrieved" && has_teacher);
        if samples.is_empty() && corpus.is_none() {
            continue;
        }
        // sha256 over what identifies the model, its preprocessing and every image
        let key_of = |identity: &[&str], e: &ImageEncoder| {
            let mut parts: Vec<&str> = vec![KEY_VERSION];
            parts.extend(identity);
            let describe = e.describe();
            parts.push(&describe);
            for s in &samples {
                parts.push(&s.id);
                parts.push(&hashes[&s.id]);
            }
            sha(&parts)
        };
        let mut keys: Vec<String> = encoders
            .iter()
            .map(|e| key_of(&[&e.model.fingerprint], e))
            .collect();
        if let Some(c) = corpus {
            keys[0] = c.key.clone();
        }
        // a classifier's features depend on its backbone only, not on its head
        let feature_keys: Vec<Option<String>> = encoders
            .iter()
            .map(|e| e.backbone().map(|b| key_of(&["features", b], e)))
            .collect();
        let mut stale: Vec<usize> = (0..encoders.len())
            .filter(|&i| {
                stored_key(&embeddings_path(out, &encoders[i].model.key(), split)).as_deref()
                    != Some(keys[i].as_str())
            })
            .collect();
        let mut fresh: HashMap<usize, (Vec<String>, Mat)> = HashMap::new();
        // the tables to write: features another checkpoint with the same backbone wrote (a head
        // fitted elsewhere: its head is applied to them instead of running the backbone again),
        // then those the stale encoders compute
        let mut computed: Vec<(usize, Vec<String>, Mat)> = Vec::new();
        if let Some(c) = corpus {
            if stale.first() == Some(&0) {
                stale.remove(0);
                computed.push((0, c.ids.clone(), c.mat.clone()));
            }
        }
        stale.retain(|&i| {
            let found = feature_keys[i].as_deref().and_then(|fk| {
                same_features(out, &encoders[i].model.key(), split, fk, samples.len())
            });
            match found {
                Some((from, ids, m)) => {
                    progress::log(format!(
                        "{split}: {} has the backbone of {from}: its {} cached features are reused",
                        encoders[i].model.key(),
                        ids.len()
                    ));
                    computed.push((i, ids, m));
                    false
                }
                None => true,
            }
        });
        if !stale.is_empty() {
            let run: Vec<&ImageEncoder> = stale.iter().map(|&i| encoders[i]).collect();
            let t0 = std::time::Instant::now();
            let (kept, mats, bad) =
                embed_split(split, &samples, &run, device, batch_size, skip_bad)?;
            let secs = t0.elapsed().as_secs_f64();
            progress::log(format!(
                "{split}: {} images through {} in {secs:.1} s ({:.1} images/s){}",
                samples.len(),
                run.iter()
                    .map(|e| e.model.key())
                    .collect::<Vec<_>>()
                    .join(" + "),
                samples.len() as f64 / secs.max(1e-9),
                if bad.is_empty() {
                    String::new()
                } else {
                    format!(", {} rejected", bad.len())
                }
            ));
            rejects.extend(bad);
            let ids: Vec<String> = kept.iter().map(|&i| samples[i].id.clone()).collect();
            for (&i, m) in stale.iter().zip(mats) {
                computed.push((i, ids.clone(), m));
            }
        }
        for (i, ids, m) in computed {
            let e = encoders[i];
            let mut meta = model_meta(&e.model, &keys[i]);
            match corpus.filter(|_| i == 0) {
                Some(c) => meta.push(("preprocessing", c.describe.clone())),
                None => meta.push(("preprocessing", e.describe())),
            }
            meta.push(("dim", e.dim.to_string()));
            meta.push(("images", ids.len().to_string()));
            if let Some(fk) = &feature_keys[i] {
                meta.push(("features_key", fk.clone()));
            }
            staging.write(
                &embeddings_path(out, &e.model.key(), split),
                Table::Embeddings,
                vec![
                    ("sample_id", table::utf8(&ids)),
                    ("vector", table::fixed_list(&m)?),
                ],
                &meta,
            )?;
            fresh.insert(i, (ids, m));
        }
        for (i, e) in encoders.iter().enumerate() {
            // a cached table: only its ids (the vectors are read if the logits need them)
            let (ids, m) = match fresh.remove(&i) {
                Some((ids, m)) => (ids, Some(m)),
                None => (
                    table::read_utf8_column(
                        &embeddings_path(out, &e.model.key(), split),
                        "sample_id",
                    )?,
                    None,
                ),
            };
            let mut set: HashSet<String> = ids.iter().cloned().collect();
            if let Some(c) = corpus.filter(|_| i > 0) {
                set.extend(c.pathless.iter().cloned());
            }
            kept_ids
                .entry(split)
                .and_modify(|k| k.retain(|id| set.contains(id)))
                .or_insert(set);
            if has_teacher && i == 0 {
                teacher_emb.insert(split, (ids, m, keys[i].clone()));
            }
        }
    }
    Ok((kept_ids, teacher_emb))
}

/// A decoded and preprocessed batch: for each encoder the pixels of the kept samples.
pub struct Batch {
    kept: Vec<usize>,
    rejects: Vec<Reject>,
    pixels: Vec<Vec<f32>>,
}

/// Decode `samples` in batches on rayon (one batch ahead) and embed them with each encoder.
/// Returns the indices of the kept samples, one matrix per encoder, and the rejects.
pub fn embed_split(
    split: &str,
    samples: &[Sample],
    encoders: &[&ImageEncoder],
    device: &Device,
    batch_size: usize,
    skip_bad: bool,
) -> Result<(Vec<usize>, Vec<Mat>, Vec<Reject>)> {
    let pb = progress::bar(samples.len() as u64, split);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(1);
    let mut kept = Vec::new();
    let mut rejects = Vec::new();
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); encoders.len()];
    let result = std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for (b, chunk) in samples.chunks(batch_size).enumerate() {
                let decoded: Vec<Result<image::RgbImage>> = chunk
                    .par_iter()
                    .map(|s| {
                        let img = load_rgb(&s.path)?;
                        let (w, h) = img.dimensions();
                        for e in encoders {
                            e.pre
                                .check(w, h)
                                .with_context(|| s.path.display().to_string())?;
                        }
                        Ok(img)
                    })
                    .collect();
                let mut batch = Batch {
                    kept: Vec::new(),
                    rejects: Vec::new(),
                    pixels: Vec::new(),
                };
                let mut images = Vec::new();
                for (i, d) in decoded.into_iter().enumerate() {
                    match d {
                        Ok(img) => {
                            batch.kept.push(b * batch_size + i);
                            images.push(img);
                        }
                        Err(e) if skip_bad => batch.rejects.push(Reject {
                            sample: chunk[i].clone(),
                            error: format!("{e:#}"),
                        }),
                        Err(e) => {
                            let _ = tx.send(Err(
                                e.context("use --skip-bad to record bad images and go on")
                            ));
                            return;
                        }
                    }
                }
                batch.pixels = encoders
                    .iter()
                    .map(|e| {
                        let per: Vec<Vec<f32>> =
                            images.par_iter().map(|img| e.pre.apply(img)).collect();
                        per.concat()
                    })
                    .collect();
                if tx.send(Ok(batch)).is_err() {
                    return; // the consumer stopped
                }
            }
        });
        for batch in rx {
            let batch = batch?;
            let n = batch.kept.len();
            if n > 0 {
                for ((e, px), o) in encoders.iter().zip(batch.pixels).zip(out.iter_mut()) {
                    let s = e.pre.crop as usize;
                    let t = Tensor::from_vec(px, (n, 3, s, s), device)?;
                    let z = e
                        .embed(&t)
                        .map_err(|err| anyhow!("{}: forward pass failed ({err})", e.model.key()))?;
                    o.extend(z.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            pb.inc((n + batch.rejects.len()) as u64);
            kept.extend(batch.kept);
            rejects.extend(batch.rejects);
        }
        Ok(())
    });
    pb.finish_and_clear();
    result?;
    let mats = out
        .into_iter()
        .zip(encoders)
        .map(|(v, e)| Mat::new(kept.len(), e.dim, v))
        .collect::<Result<Vec<_>>>()?;
    if let Some(bad) = mats.iter().find(|m| m.data.iter().any(|v| !v.is_finite())) {
        bail!(
            "{split}: the model gave non-finite embeddings ({} rows)",
            bad.rows
        );
    }
    Ok((kept, mats, rejects))
}

/// A cached embeddings table of `split`, by another model folder under `out` than `own`, whose
/// `features_key` is `fk` and which holds all `n` images: (its model folder, ids, vectors).
pub fn same_features(
    out: &Path,
    own: &str,
    split: &str,
    fk: &str,
    n: usize,
) -> Option<(String, Vec<String>, Mat)> {
    let mut dirs: Vec<String> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|k| k != own && !k.starts_with('.'))
        .collect();
    dirs.sort();
    dirs.into_iter().find_map(|key| {
        let path = embeddings_path(out, &key, split);
        let meta = table::read_meta(&path).ok()?;
        if meta.get("features_key").map(String::as_str) != Some(fk) {
            return None;
        }
        let f = table::read(&path, Table::Embeddings).ok()?;
        let (ids, m) = (f.strings("sample_id").ok()?, f.mat("vector").ok()?);
        (ids.len() == n).then_some((key, ids, m))
    })
}

/// The teacher's embeddings of a split: computed in this run, else read from the cache.
pub fn teacher_embeddings<'a>(
    out: &Path,
    key: &str,
    split: &str,
    fresh: &'a Option<Mat>,
) -> Result<std::borrow::Cow<'a, Mat>> {
    Ok(match fresh {
        Some(m) => std::borrow::Cow::Borrowed(m),
        None => std::borrow::Cow::Owned(
            table::read(&embeddings_path(out, key, split), Table::Embeddings)?.mat("vector")?,
        ),
    })
}
