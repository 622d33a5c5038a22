//! `vlal fit-teacher`: a teacher "trained elsewhere". A linear probe (the `linear` trainer:
//! batch norm without affine → linear, AdamW) is fitted on a classifier backbone's raw pooled
//! features of images kept apart from the task's pool (a cache that `extract --teacher
//! BACKBONE` wrote), folded into one linear layer and written as a classifier checkpoint: the
//! backbone's weights with the probe as its head and the task's classes as `id2label`.
//! `extract --teacher OUT` then takes it like any pretrained classifier, without a label map.
//!
//! The probe is fitted on the cache's train and calib splits and scored on its test split.

use crate::cache::{classes_path, embeddings_path, manifest_path};
use crate::config::LinearCfg;
use crate::mat::Mat;
use crate::models::hub::{self, Source};
use crate::schema::Table;
use crate::train::{linear, FeatureModel, Model, TrainData};
use crate::{progress, rng, table};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct FitTeacherArgs {
    /// A cache of the held-out images that `extract --teacher BACKBONE` wrote.
    #[arg(long)]
    pub cache: PathBuf,
    /// The classifier checkpoint whose raw features the cache holds (a folder or hub id).
    #[arg(long)]
    pub backbone: String,
    /// Output checkpoint folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resolve a hub id from the local hf-hub cache only.
    #[arg(long)]
    pub offline: bool,
}

/// The cached model folder under `cache` whose embeddings the backbone (by fingerprint) wrote
/// as raw features.
fn find_features(cache: &Path, fingerprint: &str) -> Result<String> {
    let entries = std::fs::read_dir(cache)
        .with_context(|| format!("{}: cannot read the cache folder", cache.display()))?;
    let mut keys: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    keys.sort();
    for key in keys {
        let Ok(meta) = table::read_meta(&embeddings_path(cache, &key, "train")) else {
            continue;
        };
        if meta.get("fingerprint").map(String::as_str) == Some(fingerprint) {
            if !meta
                .get("preprocessing")
                .is_some_and(|p| p.ends_with("; raw"))
            {
                bail!(
                    "{}: the backbone's features are L2-normalised; extract them with --teacher \
                     (a classifier's raw features), not --student",
                    embeddings_path(cache, &key, "train").display()
                );
            }
            return Ok(key);
        }
    }
    bail!(
        "{}: no features of this backbone (run `vlal extract --teacher BACKBONE` on the \
         held-out images first)",
        cache.display()
    )
}

/// (features, labels) of the given splits.
fn labeled(
    cache: &Path,
    key: &str,
    splits: &[&str],
    label_of: &HashMap<String, i32>,
) -> Result<(Mat, Vec<u32>)> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut dim = 0;
    for split in splits {
        let path = embeddings_path(cache, key, split);
        if !path.exists() {
            continue;
        }
        let f = table::read(&path, Table::Embeddings)?;
        let m = f.mat("vector")?;
        dim = m.cols;
        for (i, id) in f.strings("sample_id")?.iter().enumerate() {
            let y = label_of.get(id).with_context(|| {
                format!("{}: '{id}' has no label", manifest_path(cache).display())
            })?;
            data.extend_from_slice(m.row(i));
            labels.push(*y as u32);
        }
    }
    Ok((Mat::new(labels.len(), dim, data)?, labels))
}

pub fn run(a: &FitTeacherArgs) -> Result<()> {
    if a.out.exists() {
        bail!(
            "{}: exists; remove it to fit the teacher again",
            a.out.display()
        );
    }
    let backbone = hub::resolve(
        &a.backbone,
        &Source {
            revision: None,
            name: None,
            offline: a.offline,
        },
    )?;
    let key = find_features(&a.cache, &backbone.fingerprint)?;
    let classes = table::read(&classes_path(&a.cache), Table::Classes)?.strings("name")?;
    let m = table::read(&manifest_path(&a.cache), Table::Manifest)?;
    let label_of: HashMap<String, i32> = m
        .strings("sample_id")?
        .into_iter()
        .zip(m.i32s("label")?)
        .filter_map(|(id, y)| Some((id, y?)))
        .collect();
    let (x, y) = labeled(&a.cache, &key, &["train", "calib"], &label_of)?;
    if x.rows == 0 {
        bail!("{}: no labeled train images", a.cache.display());
    }
    let cfg = LinearCfg {
        epochs: a.epochs,
        lr: a.lr,
        weight_decay: a.weight_decay,
        dropout: a.dropout,
        ..LinearCfg::default()
    };
    let all: Vec<usize> = (0..x.rows).collect();
    let feature_model = FeatureModel {
        key: key.clone(),
        fingerprint: Some(backbone.fingerprint.clone()),
    };
    let data = TrainData {
        features: &x,
        labeled: &all,
        labels: &y,
        n_classes: classes.len(),
        teacher: None,
        class_names: &classes,
        feature_model: &feature_model,
        prototypes: None,
        validation: None,
    };
    let dev = Device::Cpu;
    let mut r = rng::stream(a.seed, "fit-teacher", 0);
    let (probe, _) = linear::fit(&cfg, &data, &mut r, &dev)?;
    let (w, b) = fold(&probe.tensors())?;
    let score = |x: &Mat, y: &[u32]| -> Result<f64> {
        let logits = crate::models::classifier::logits(x, &w, &b)?;
        let probs = probe.predict(x)?;
        let mut right = 0;
        for (i, &yi) in y.iter().enumerate() {
            let pred = crate::mat::argmax(logits.row(i));
            if pred != crate::mat::argmax(probs.row(i)) {
                bail!("the folded head disagrees with the probe on row {i}");
            }
            right += (pred == yi as usize) as usize;
        }
        Ok(right as f64 / y.len().max(1) as f64)
    };
    progress::log(format!(
        "probe on {} ({} train images, {} classes): train accuracy {:.1}%",
        key,
        x.rows,
        classes.len(),
        100.0 * score(&x, &y)?
    ));
    let (xt, yt) = labeled(&a.cache, &key, &["test"], &label_of)?;
    if xt.rows > 0 {
        progress::log(format!(
            "held-out test accuracy {:.1}% on {} images",
            100.0 * score(&xt, &yt)?,
            xt.rows
        ));
    }
    write_checkpoint(&backbone.dir, &a.out, &w, &b, &classes, &key)?;
    progress::log(format!(
        "wrote {} (use it as `extract --teacher {}`)",
        a.out.display(),
        a.out.display()
    ));
    Ok(())
}

/// The probe's batch norm folded into its linear layer: logits = W·(x − μ)/√(σ² + ε) + b =
/// W'x + b' with W' = W/√(σ² + ε) (per input) and b' = b − W'μ.
fn fold(t: &HashMap<String, Tensor>) -> Result<(Mat, Vec<f32>)> {
    let get = |k: &str| t.get(k).ok_or_else(|| anyhow!("the probe has no '{k}'"));
    let mean = get("bn.running_mean")?.to_vec1::<f32>()?;
    let var = get("bn.running_var")?.to_vec1::<f32>()?;
    let w = get("linear.weight")?.to_vec2::<f32>()?;
    let b = get("linear.bias")?.to_vec1::<f32>()?;
    let d = mean.len();
    let mut wf = Mat::zeros(w.len(), d);
    let mut bf = b.clone();
    for (c, row) in w.iter().enumerate() {
        for j in 0..d {
            let v = row[j] / (var[j] + 1e-5).sqrt();
            wf.row_mut(c)[j] = v;
            bf[c] -= v * mean[j];
        }
    }
    Ok((wf, bf))
}

/// The backbone's folder with `_fc` replaced by the probe and `id2label` by the task's classes,
/// written next to `out` and renamed into place.
fn write_checkpoint(
    backbone: &Path,
    out: &Path,
    w: &Mat,
    b: &[f32],
    classes: &[String],
    features: &str,
) -> Result<()> {
    let tmp = crate::table::StagedDir::new(out, "fit-teacher")?;
    let weights = backbone.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("{}: cannot read the weights", weights.display()))?;
    t.insert(
        "_fc.weight".into(),
        Tensor::from_vec(w.data.clone(), (w.rows, w.cols), &Device::Cpu)?,
    );
    t.insert(
        "_fc.bias".into(),
        Tensor::from_vec(b.to_vec(), b.len(), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors"))?;
    let cfg_path = backbone.join("config.json");
    let mut cfg: serde_json::Value = crate::models::layers::read_config(&cfg_path, "model")?;
    let obj = cfg
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", cfg_path.display()))?;
    obj.insert(
        "id2label".into(),
        classes
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), serde_json::Value::from(c.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    obj.insert(
        "vlal_fit_teacher".into(),
        format!(
            "linear probe on {features} features; {}",
            crate::TOOL_VERSION
        )
        .into(),
    );
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    let pp = backbone.join("preprocessor_config.json");
    if pp.exists() {
        std::fs::copy(&pp, tmp.path().join("preprocessor_config.json"))
            .with_context(|| format!("{}: cannot copy", pp.display()))?;
    }
    tmp.commit()
}
