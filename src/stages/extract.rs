//! `vlal extract`: run the teacher (CLIP image + text towers) and the student (DINOv2 or CLIP's
//! image tower) once over a dataset and cache what every later stage reads: embeddings per
//! (model, split), the teacher's class prototypes and its zero-shot logits cos/τ, the manifest
//! and the classes.
//!
//! Every file carries a `content_key` (sha256 over the model's fingerprint, the preprocessing
//! and each image's id and bytes); a file whose key matches is not recomputed, so a second run
//! with the same inputs does no work. Decoding runs on rayon in a producer thread, one batch
//! ahead of the model's forward pass. Output is staged in a temporary folder and moved into
//! place only when everything succeeded: a bad image without `--skip-bad` leaves nothing behind.

use crate::cache::{classes_path, embeddings_path, logits_path, manifest_path, prototypes_path};
use crate::dataset::{self, Dataset, Sample};
use crate::mat::Mat;
use crate::models::classifier::{self, LabelMap};
use crate::models::encoder::{self, ImageEncoder, TEMPLATES};
use crate::models::hub::{self, ModelDir, Source};
use crate::preprocess::load_rgb;
use crate::schema::Table;
use crate::{progress, table, TOOL_VERSION};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct ExtractArgs {
    /// Output cache folder, e.g. data/<dataset>.
    #[arg(long)]
    pub out: PathBuf,
    /// Image folder: <class>/<image> or <split>/<class>/<image> (split: train, calib|val, test).
    #[arg(
        long,
        conflicts_with = "manifest",
        required_unless_present = "manifest"
    )]
    pub images: Option<PathBuf>,
    /// Manifest (CSV or Parquet): path, label, split[, sample_id]; paths relative to its folder.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Class names, one per line: `name | synonym | ...` (default: the folder names).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Prompt the synonyms too: a prototype averages templates × (name and synonyms).
    #[arg(long)]
    pub synonyms: bool,
    /// Teacher: a CLIP hub id (openai/clip-vit-base-patch32) or a local folder in HF layout;
    /// or a pretrained classifier (EfficientNet-Lite with its head; class names in config.json's
    /// id2label), made zero-shot by --label-map.
    #[arg(long, required_unless_present = "student")]
    pub teacher: Option<String>,
    /// Hub revision (default main), or the label of a local folder (default local).
    #[arg(long)]
    pub teacher_revision: Option<String>,
    /// The id a local teacher folder is recorded under (default: the folder name).
    #[arg(long)]
    pub teacher_name: Option<String>,
    /// Student: a DINOv2 or CLIP hub id (facebook/dinov2-small) or a local folder.
    #[arg(long)]
    pub student: Option<String>,
    #[arg(long)]
    pub student_revision: Option<String>,
    #[arg(long)]
    pub student_name: Option<String>,
    /// DINOv2 student: store [CLS | mean patch token] instead of CLS alone.
    #[arg(long)]
    pub mean_patch: bool,
    /// A classifier teacher's label map: one line per task class, `task class: name | name |
    /// #index` (the classifier's class names or indices); its logit is the log-sum-exp of the
    /// mapped logits. Without it the classifier's classes must be the task's, by name.
    #[arg(long)]
    pub label_map: Option<PathBuf>,
    /// CLIP teacher temperature: logits = cos/τ (a classifier teacher's logits are its own).
    #[arg(long, default_value_t = 0.01)]
    pub tau: f32,
    /// Without split folders: share of images held out as test (by a hash of the path).
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Without split folders: share held out as the labeled calibration split.
    #[arg(long, default_value_t = 0.1)]
    pub calib_fraction: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Record unreadable or corrupt images in rejects.parquet and go on (default: fail).
    #[arg(long)]
    pub skip_bad: bool,
    /// cpu, or cuda (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Resolve hub ids from the local hf-hub cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Retrieved samples (`vlal retrieve`'s retrieved.parquet): their images are embedded by
    /// every model into `<model>/retrieved.parquet` and they join the manifest as
    /// split = train, source = retrieved, labeled with the class their caption named.
    #[arg(long)]
    pub retrieved: Option<PathBuf>,
}

/// The embedding files extract writes per model: the task splits, then the retrieved samples.
const FILE_SPLITS: [&str; 4] = ["train", "calib", "test", "retrieved"];

/// A sample's manifest (split, source): retrieved samples are training data from elsewhere.
fn manifest_split(s: &Sample) -> (&str, &str) {
    if s.split == "retrieved" {
        ("train", "retrieved")
    } else {
        (s.split.as_str(), "task")
    }
}

/// The retrieved samples with an image path, as samples of the `retrieved` file split.
fn retrieved_samples(path: &Path, data: &Dataset) -> Result<Vec<Sample>> {
    let f = table::read(path, Table::Retrieved)?;
    let (ids, paths, labels, classes) = (
        f.strings("sample_id")?,
        f.opt_strings("path")?,
        f.i32s("label")?,
        f.strings("class")?,
    );
    let mut out = Vec::new();
    let mut no_path = 0;
    for i in 0..f.rows {
        let l = labels[i].unwrap_or(-1);
        let named = usize::try_from(l).ok().and_then(|l| data.classes.get(l));
        if named.is_none_or(|c| c.name != classes[i]) {
            bail!(
                "{}: sample '{}' is class {l} '{}', which is not this dataset's class {l}; \
                 retrieve for this cache's classes",
                path.display(),
                ids[i],
                classes[i]
            );
        }
        match &paths[i] {
            Some(p) => out.push(Sample {
                id: ids[i].clone(),
                path: PathBuf::from(p),
                split: "retrieved".into(),
                label: Some(l),
            }),
            None => no_path += 1,
        }
    }
    if no_path > 0 {
        progress::log(format!(
            "{}: {no_path} retrieved sample(s) have no image path; left out",
            path.display()
        ));
    }
    Ok(out)
}

const KEY_VERSION: &str = "vlal-extract-1";

/// An image that could not be read, kept out of the cache.
#[derive(Clone, Debug)]
struct Reject {
    sample: Sample,
    error: String,
}

/// Files written to the staging folder, moved into `out` at the end. Dropped uncommitted (a
/// failed extract), the staging folder goes, and `out` too if this run created it.
struct Staging {
    dir: Option<tempfile::TempDir>,
    files: Vec<PathBuf>,
    out: PathBuf,
    created_out: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Staging> {
        let created_out = !out.exists();
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create the cache folder", out.display()))?;
        // what killed extracts left: their staging folders and temporary files
        table::sweep_stale(out, true);
        Ok(Staging {
            dir: Some(table::staging_dir_in(out, "extract")?),
            files: Vec::new(),
            out: out.to_path_buf(),
            created_out,
        })
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("until committed").path()
    }

    /// Write a table that will land at `path` (a path under `out`).
    fn write(
        &mut self,
        path: &Path,
        t: Table,
        cols: Vec<(&str, arrow::array::ArrayRef)>,
        meta: &[(&str, String)],
    ) -> Result<()> {
        let rel = path
            .strip_prefix(&self.out)
            .expect("under the cache folder");
        table::write_staged(&self.dir().join(rel), path, t, cols, meta)?;
        self.files.push(rel.to_path_buf());
        Ok(())
    }

    /// A teacher-logits table (its metadata: the model's, τ and the class count).
    fn write_logits(
        &mut self,
        path: &Path,
        ids: &[String],
        logits: &Mat,
        mut meta: Vec<(&str, String)>,
        tau: &str,
    ) -> Result<()> {
        meta.push(("tau", tau.to_string()));
        meta.push(("classes", logits.cols.to_string()));
        self.write(
            path,
            Table::TeacherLogits,
            vec![
                ("sample_id", table::utf8(ids)),
                ("logits", table::fixed_list(logits)?),
            ],
            &meta,
        )
    }

    /// Move every staged file into place.
    fn commit(mut self) -> Result<usize> {
        self.created_out = false;
        for rel in &self.files {
            let to = self.out.join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("{}: cannot create folder", p.display()))?;
            }
            std::fs::rename(self.dir().join(rel), &to)
                .with_context(|| format!("{}: cannot move into place", to.display()))?;
            progress::log(format!("wrote {}", to.display()));
        }
        Ok(self.files.len())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.dir.take());
        if self.created_out {
            let _ = std::fs::remove_dir(&self.out); // only if empty
        }
    }
}

/// The content key stored in a file's metadata, if the file exists and has one.
fn stored_key(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    table::read_meta(path)
        .ok()
        .and_then(|m| m.get("content_key").cloned())
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hub::hex(&h.finalize())
}

/// sha256 of every readable image; unreadable ones come back as rejects.
fn hash_images(samples: &[Sample]) -> (HashMap<String, String>, Vec<Reject>) {
    let pb = progress::bar(samples.len() as u64, "hashing");
    let res: Vec<(usize, Result<String>)> = samples
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut h = Sha256::new();
            let r = hub::hash_file(&s.path, &mut h).map(|_| hub::hex(&h.finalize()));
            pb.inc(1);
            (i, r)
        })
        .collect();
    pb.finish_and_clear();
    let mut ok = HashMap::new();
    let mut bad = Vec::new();
    for (i, r) in res {
        match r {
            Ok(h) => {
                ok.insert(samples[i].id.clone(), h);
            }
            Err(e) => bad.push(Reject {
                sample: samples[i].clone(),
                error: format!("{e:#}"),
            }),
        }
    }
    (ok, bad)
}

/// A decoded and preprocessed batch: for each encoder the pixels of the kept samples.
struct Batch {
    kept: Vec<usize>,
    rejects: Vec<Reject>,
    pixels: Vec<Vec<f32>>,
}

/// Decode `samples` in batches on rayon (one batch ahead) and embed them with each encoder.
/// Returns the indices of the kept samples, one matrix per encoder, and the rejects.
fn embed_split(
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
fn same_features(
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

/// The entries of a per-split map in the order train, calib, test, retrieved.
fn splits_in_order<'a, T>(m: &'a HashMap<&str, T>) -> Vec<(&'a str, &'a T)> {
    FILE_SPLITS
        .iter()
        .filter_map(|s| m.get_key_value(s).map(|(k, v)| (*k, v)))
        .collect()
}

/// The teacher's embeddings of a split: computed in this run, else read from the cache.
fn teacher_embeddings<'a>(
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

/// [`log_accuracy`] of cached teacher logits.
fn log_cached_accuracy(split: &str, path: &Path, data: &Dataset) -> Result<()> {
    let f = table::read(path, Table::TeacherLogits)?;
    log_accuracy(split, &f.strings("sample_id")?, &f.mat("logits")?, data);
    Ok(())
}

/// Log the teacher's zero-shot accuracy on a labeled split, overall and per class.
fn log_accuracy(split: &str, ids: &[String], logits: &Mat, data: &Dataset) {
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

fn model_meta(m: &ModelDir, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("model_id", m.id.clone()),
        ("revision", m.revision.clone()),
        ("commit", m.commit.clone().unwrap_or_default()),
        ("fingerprint", m.fingerprint.clone()),
        ("created_by", TOOL_VERSION.to_string()),
        ("content_key", key.to_string()),
    ]
}

pub fn run(a: &ExtractArgs) -> Result<()> {
    crate::models::keep_freed_memory();
    if a.tau <= 0.0 || !a.tau.is_finite() {
        bail!("--tau must be positive");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut data: Dataset = match (&a.images, &a.manifest) {
        (Some(dir), _) => {
            dataset::from_folder(dir, a.classes.as_deref(), a.test_fraction, a.calib_fraction)?
        }
        (None, Some(m)) => dataset::from_manifest(m, a.classes.as_deref())?,
        (None, None) => bail!("pass --images or --manifest"),
    };
    if let Some(r) = &a.retrieved {
        let extra = retrieved_samples(r, &data)?;
        progress::log(format!(
            "{}: {} retrieved samples",
            r.display(),
            extra.len()
        ));
        data.samples.extend(extra);
    }
    let device = crate::train::device(&a.device)?;
    let resolve = |spec: &str, revision: &Option<String>, name: &Option<String>| {
        hub::resolve(
            spec,
            &Source {
                revision: revision.clone(),
                name: name.clone(),
                offline: a.offline,
            },
        )
    };
    // a classifier teacher: its classifier, class names and the task's label map
    let mut head: Option<(Mat, Vec<f32>, Vec<String>, LabelMap)> = None;
    let teacher = match &a.teacher {
        Some(t) => {
            let m = resolve(t, &a.teacher_revision, &a.teacher_name)?;
            let mut e = ImageEncoder::load(m, &device, false)?;
            let config = e.model.dir.join("config.json");
            if e.clip().is_some() {
                if let Some(p) = &a.label_map {
                    bail!(
                        "{}: --label-map is for a classifier teacher; {} is CLIP",
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
                let map = match &a.label_map {
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
                    "{}: the teacher must be a CLIP checkpoint (it needs a text tower) or a \
                     classifier with its head",
                    config.display()
                );
            }
            Some(e)
        }
        None => None,
    };
    let student = match &a.student {
        Some(s) => Some(ImageEncoder::load(
            resolve(s, &a.student_revision, &a.student_name)?,
            &device,
            a.mean_patch,
        )?),
        None => None,
    };
    let encoders: Vec<&ImageEncoder> = [teacher.as_ref(), student.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    if encoders.len() == 2 && encoders[0].model.key() == encoders[1].model.key() {
        bail!(
            "teacher and student are both recorded as {}; give one a --*-name or --*-revision",
            encoders[0].model.key()
        );
    }
    for e in &encoders {
        progress::log(format!(
            "{} from {} ({}-d; {})",
            e.model.key(),
            e.model.dir.display(),
            e.dim,
            e.describe()
        ));
    }

    let out = &a.out;
    let (hashes, mut rejects) = hash_images(&data.samples);
    if let (Some(r), false) = (rejects.first(), a.skip_bad) {
        bail!("{}; use --skip-bad to record bad images and go on", r.error);
    }
    let mut staging = Staging::new(out)?;
    let mut kept_ids: HashMap<&str, HashSet<String>> = HashMap::new();
    // per split: the teacher's ids, its vectors when computed in this run, and its content key
    let mut teacher_emb: HashMap<&str, (Vec<String>, Option<Mat>, String)> = HashMap::new();
    for split in FILE_SPLITS {
        let samples: Vec<Sample> = data
            .samples
            .iter()
            .filter(|s| s.split == split && hashes.contains_key(&s.id))
            .cloned()
            .collect();
        if samples.is_empty() {
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
        let keys: Vec<String> = encoders
            .iter()
            .map(|e| key_of(&[&e.model.fingerprint], e))
            .collect();
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
                embed_split(split, &samples, &run, &device, a.batch_size, a.skip_bad)?;
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
            meta.push(("preprocessing", e.describe()));
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
            let set: HashSet<String> = ids.iter().cloned().collect();
            kept_ids
                .entry(split)
                .and_modify(|k| k.retain(|id| set.contains(id)))
                .or_insert(set);
            if teacher.is_some() && i == 0 {
                teacher_emb.insert(split, (ids, m, keys[i].clone()));
            }
        }
    }

    if let (Some(t), Some((w, bias, labels, map))) = (&teacher, &head) {
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
                log_cached_accuracy(split, &lpath, &data)?;
                continue;
            }
            let emb = teacher_embeddings(out, &t.model.key(), split, emb)?;
            let logits = map.task_logits(&classifier::logits(&emb, w, bias)?)?;
            log_accuracy(split, ids, &logits, &data);
            staging.write_logits(&lpath, ids, &logits, model_meta(&t.model, &lkey), "1")?;
        }
    } else if let Some(t) = &teacher {
        let clip = t.clip().expect("checked");
        let names: Vec<Vec<String>> = data
            .classes
            .iter()
            .map(|c| {
                let mut v = vec![c.name.clone()];
                if a.synonyms {
                    v.extend(c.synonyms.iter().cloned());
                }
                v
            })
            .collect();
        let template_set = format!(
            "clip-{}{}",
            TEMPLATES.len(),
            if a.synonyms { "+synonyms" } else { "" }
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
            let tok = encoder::tokenizer_for(&t.model.dir, clip)?;
            let p = encoder::prototypes(clip, &tok, &names, &TEMPLATES)?;
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
        for (split, (ids, emb, ikey)) in splits_in_order(&teacher_emb) {
            let lkey = sha(&[KEY_VERSION, ikey, &pkey, &a.tau.to_string()]);
            let lpath = logits_path(out, &t.model.key(), split);
            if stored_key(&lpath).as_deref() == Some(lkey.as_str()) {
                log_cached_accuracy(split, &lpath, &data)?;
                continue;
            }
            let emb = teacher_embeddings(out, &t.model.key(), split, emb)?;
            let mut logits = crate::geometry::matmul_nt(&emb, &protos)?;
            logits.data.iter_mut().for_each(|v| *v /= a.tau);
            log_accuracy(split, ids, &logits, &data);
            let meta = model_meta(&t.model, &lkey);
            staging.write_logits(&lpath, ids, &logits, meta, &a.tau.to_string())?;
        }
    }

    // the manifest lists the images every model embedded
    let rows: Vec<&Sample> = data
        .samples
        .iter()
        .filter(|s| {
            kept_ids
                .get(s.split.as_str())
                .is_some_and(|k| k.contains(&s.id))
        })
        .collect();
    let mut parts: Vec<String> = vec![KEY_VERSION.to_string()];
    for s in &rows {
        parts.extend([
            s.id.clone(),
            s.path.display().to_string(),
            s.split.clone(),
            format!("{:?}", s.label),
        ]);
    }
    let mkey = sha(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    if stored_key(&manifest_path(out)).as_deref() != Some(mkey.as_str()) {
        let ids: Vec<&str> = rows.iter().map(|s| s.id.as_str()).collect();
        staging.write(
            &manifest_path(out),
            Table::Manifest,
            vec![
                ("sample_id", table::utf8(&ids)),
                (
                    "path",
                    table::opt_utf8(
                        &rows
                            .iter()
                            .map(|s| Some(s.path.display().to_string()))
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "split",
                    table::utf8(&rows.iter().map(|s| manifest_split(s).0).collect::<Vec<_>>()),
                ),
                (
                    "label",
                    table::opt_i32s(&rows.iter().map(|s| s.label).collect::<Vec<_>>()),
                ),
                (
                    "source",
                    table::utf8(&rows.iter().map(|s| manifest_split(s).1).collect::<Vec<_>>()),
                ),
            ],
            &[
                ("content_key", mkey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    let ckey = sha(&data
        .classes
        .iter()
        .map(|c| format!("{}|{}", c.name, c.synonyms.join("|")))
        .collect::<Vec<_>>()
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    if stored_key(&classes_path(out)).as_deref() != Some(ckey.as_str()) {
        let c = data.classes.len();
        staging.write(
            &classes_path(out),
            Table::Classes,
            vec![
                ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
                (
                    "name",
                    table::utf8(
                        &data
                            .classes
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "synonyms",
                    table::list_utf8(
                        &data
                            .classes
                            .iter()
                            .map(|c| c.synonyms.clone())
                            .collect::<Vec<_>>(),
                    ),
                ),
            ],
            &[
                ("content_key", ckey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    // Every sample the manifest leaves out is a reject: its error from this run, else from the
    // previous rejects table (the split's embeddings are cached), so the table always matches.
    let rpath = out.join("rejects.parquet");
    let mut errors: HashMap<String, String> = HashMap::new();
    if rpath.exists() {
        let f = table::read(&rpath, Table::Rejects)?;
        errors.extend(f.strings("sample_id")?.into_iter().zip(f.strings("error")?));
    }
    errors.extend(rejects.drain(..).map(|r| (r.sample.id, r.error)));
    let in_manifest: HashSet<&str> = rows.iter().map(|s| s.id.as_str()).collect();
    let rejects: Vec<Reject> = data
        .samples
        .iter()
        .filter(|s| !in_manifest.contains(s.id.as_str()))
        .map(|s| Reject {
            sample: s.clone(),
            error: errors
                .get(&s.id)
                .cloned()
                .unwrap_or_else(|| "left out of the cached embeddings".into()),
        })
        .collect();
    let rkey = sha(&rejects
        .iter()
        .flat_map(|r| [r.sample.id.as_str(), r.error.as_str()])
        .collect::<Vec<_>>());
    if !rejects.is_empty() && stored_key(&rpath).as_deref() != Some(rkey.as_str()) {
        staging.write(
            &rpath,
            Table::Rejects,
            vec![
                (
                    "sample_id",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.id.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "path",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.path.display().to_string())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "split",
                    table::utf8(
                        &rejects
                            .iter()
                            .map(|r| r.sample.split.as_str())
                            .collect::<Vec<_>>(),
                    ),
                ),
                (
                    "error",
                    table::utf8(&rejects.iter().map(|r| r.error.as_str()).collect::<Vec<_>>()),
                ),
            ],
            &[
                ("content_key", rkey),
                ("created_by", TOOL_VERSION.to_string()),
            ],
        )?;
    }
    if !rejects.is_empty() {
        progress::log(format!(
            "{} unreadable images left out (listed in {})",
            rejects.len(),
            rpath.display()
        ));
    }
    let n = staging.commit()?;
    if rejects.is_empty() && rpath.exists() {
        std::fs::remove_file(&rpath).with_context(|| {
            format!("{}: cannot remove the stale rejects table", rpath.display())
        })?;
    }
    if n == 0 {
        progress::log(format!("{}: up to date, nothing extracted", out.display()));
    } else {
        progress::log(format!("{}: {n} files written", out.display()));
    }
    let key = |e: Option<&ImageEncoder>| e.map(|e| e.model.key());
    progress::log(format!(
        "pipeline [dataset]: root = \"{}\", student = \"{}\", teacher = \"{}\"",
        out.display(),
        key(student.as_ref())
            .or(key(teacher.as_ref()))
            .unwrap_or_default(),
        key(teacher.as_ref()).unwrap_or_default()
    ));
    Ok(())
}
