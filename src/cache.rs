//! The dataset cache as the stages see it: manifest, classes, student embeddings of the train
//! pool and the test split (aligned to manifest order), and the teacher's cached logits.
//!
//! Layout under `dataset.root`: `manifest.parquet`, `classes.parquet`, and one folder per model
//! (`<model>@<revision>/`) holding `<split>.parquet` embeddings; a teacher folder also holds
//! `prototypes.parquet` and `<split>.logits.parquet`.

use crate::mat::Mat;
use crate::schema::Table;
use crate::table;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A dataset's cache, as a pipeline names it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCfg {
    pub name: String,
    /// Cache folder of the dataset: manifest.parquet, classes.parquet, one folder per model.
    pub root: PathBuf,
    /// Student feature folder under `root` (`<model>@<revision>`).
    pub student: String,
    /// Teacher folder under `root` (embeddings, prototypes, `<split>.logits.parquet`).
    pub teacher: String,
}

/// Which model made a set of cached features: its cache key `id@revision` and, when `extract`
/// recorded it, the fingerprint of its weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureModel {
    pub key: String,
    pub fingerprint: Option<String>,
}

/// One split of the task data: ids, ground-truth labels and student features, in manifest order.
pub struct Part {
    pub ids: Vec<String>,
    pub labels: Vec<Option<i32>>,
    pub features: Mat,
    pub index: HashMap<String, usize>,
}

impl Part {
    /// Labels as class ids (calib and test rows always have one; see [`Cache::load`]).
    pub fn label_ids(&self) -> Vec<u32> {
        self.labels.iter().map(|l| l.unwrap_or(0) as u32).collect()
    }
}

pub struct Cache {
    pub dataset: String,
    pub classes: Vec<String>,
    pub train: Part,
    /// The labeled calibration split (conformal thresholds), when the manifest has one.
    pub calib: Option<Part>,
    /// Teacher logits of the calib rows (loaded with the train logits).
    pub calib_logits: Option<Mat>,
    pub test: Part,
    /// The retrieved samples (manifest `source = retrieved`, labeled by the class their caption
    /// named), loaded when a run uses them (`Need::retrieved`).
    pub retrieved: Option<Part>,
    /// Teacher logits of the retrieved rows (loaded with the train logits).
    pub retrieved_logits: Option<Mat>,
    /// Retrieved samples the feature table lacks (no image: only the teacher's corpus
    /// embeddings), left out of `retrieved`.
    pub retrieved_skipped: Vec<String>,
    /// The model whose embeddings `Part::features` are (the results' `student_model`): the
    /// student's, or the teacher's for a trainer on the teacher's features
    /// (`Need::teacher_features`).
    pub feature_model: FeatureModel,
    pub teacher_model: String,
    /// Teacher logits cos/τ for the train rows, and τ (present when loaded with the teacher).
    pub teacher_logits: Option<Mat>,
    pub tau: f32,
    /// Teacher image embeddings of the train rows and the class prototypes (for CLAP).
    pub teacher_image: Option<Mat>,
    pub prototypes: Option<Mat>,
}

/// Which teacher tables a set of runs needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Need {
    pub logits: bool,
    /// Teacher (CLIP) image embeddings of the train rows.
    pub image: bool,
    pub clap: bool,
    /// The teacher's class prototypes (with the image embeddings they pair with).
    pub prototypes: bool,
    /// The splits' features are the teacher's image embeddings, not the student's (the task
    /// model is the teacher itself: prompt learning). Runs that differ here need separate
    /// caches (`vlal run` groups them).
    pub teacher_features: bool,
    /// The retrieved samples' features (and logits, with `logits`): a `+rda` run.
    pub retrieved: bool,
}

impl Need {
    pub fn union(self, o: Need) -> Need {
        Need {
            logits: self.logits || o.logits,
            image: self.image || o.image,
            clap: self.clap || o.clap,
            prototypes: self.prototypes || o.prototypes,
            teacher_features: self.teacher_features || o.teacher_features,
            retrieved: self.retrieved || o.retrieved,
        }
    }
}

pub fn manifest_path(root: &Path) -> PathBuf {
    root.join("manifest.parquet")
}
/// The manifest's image path of each of `ids` (None: a sample without an image; an id not in
/// the manifest is an error naming it).
pub fn image_paths(root: &Path, ids: &[String]) -> Result<Vec<Option<PathBuf>>> {
    let path = manifest_path(root);
    let f = table::read(&path, Table::Manifest)?;
    let all: HashMap<String, Option<String>> = f
        .strings("sample_id")?
        .into_iter()
        .zip(f.opt_strings("path")?)
        .collect();
    ids.iter()
        .map(|id| match all.get(id) {
            Some(p) => Ok(p.as_ref().map(PathBuf::from)),
            None => bail!("{}: no sample '{id}'", path.display()),
        })
        .collect()
}
pub fn classes_path(root: &Path) -> PathBuf {
    root.join("classes.parquet")
}
/// The corpus image embeddings `retrieve --embedding-model` writes beside a retrieved table
/// (`retrieved.parquet` → `retrieved.embeddings.parquet`; an embeddings table).
pub fn corpus_embeddings_path(retrieved: &Path) -> PathBuf {
    let stem = retrieved
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    retrieved.with_file_name(format!("{stem}.embeddings.parquet"))
}
pub fn embeddings_path(root: &Path, model: &str, split: &str) -> PathBuf {
    root.join(model).join(format!("{split}.parquet"))
}
pub fn logits_path(root: &Path, model: &str, split: &str) -> PathBuf {
    root.join(model).join(format!("{split}.logits.parquet"))
}
pub fn prototypes_path(root: &Path, model: &str) -> PathBuf {
    root.join(model).join("prototypes.parquet")
}

/// The manifest, row by row.
pub struct Manifest {
    pub ids: Vec<String>,
    pub splits: Vec<String>,
    pub labels: Vec<Option<i32>>,
    pub sources: Vec<String>,
}

pub fn read_manifest(root: &Path, n_classes: usize) -> Result<Manifest> {
    let path = manifest_path(root);
    let f = table::read(&path, Table::Manifest)?;
    let m = Manifest {
        ids: f.strings("sample_id")?,
        splits: f.strings("split")?,
        labels: f.i32s("label")?,
        sources: f.strings("source")?,
    };
    for (i, l) in m.labels.iter().enumerate() {
        if let Some(l) = l {
            if *l < 0 || *l as usize >= n_classes {
                bail!(
                    "{}: sample '{}' has label {l}, outside 0..{n_classes}",
                    path.display(),
                    m.ids[i]
                );
            }
        }
    }
    Ok(m)
}

pub fn read_classes(root: &Path) -> Result<Vec<String>> {
    let path = classes_path(root);
    let f = table::read(&path, Table::Classes)?;
    let ids = f.i32s("class_id")?;
    let names = f.strings("name")?;
    let mut out = vec![String::new(); names.len()];
    for (id, name) in ids.iter().zip(names) {
        let id = id.unwrap_or(-1);
        if id < 0 || id as usize >= out.len() {
            bail!(
                "{}: class_id {id} outside 0..{} (ids must be 0..C-1)",
                path.display(),
                out.len()
            );
        }
        out[id as usize] = name;
    }
    if out.is_empty() {
        bail!("{}: no classes", path.display());
    }
    Ok(out)
}

/// The `id@revision` of the model that wrote a table (its file metadata).
fn model_id(path: &Path, meta: &BTreeMap<String, String>) -> Result<String> {
    let key = |k: &str| table::meta_value(&path.display().to_string(), meta, k);
    Ok(format!("{}@{}", key("model_id")?, key("revision")?))
}

impl Cache {
    /// Load what the round loop needs; the teacher's tables only as `need` says.
    pub fn load(cfg: &DatasetCfg, need: Need) -> Result<Cache> {
        let root = &cfg.root;
        let classes = read_classes(root)?;
        let m = read_manifest(root, classes.len())?;
        let pick = |split: &str, source: &str| -> (Vec<String>, Vec<Option<i32>>) {
            let mut ids = Vec::new();
            let mut labels = Vec::new();
            for i in 0..m.ids.len() {
                if m.splits[i] == split && m.sources[i] == source {
                    ids.push(m.ids[i].clone());
                    labels.push(m.labels[i]);
                }
            }
            (ids, labels)
        };
        let mut parts = Vec::new();
        let mut feature_model = FeatureModel::default();
        let mut retrieved_skipped = Vec::new();
        let feature_folder = if need.teacher_features {
            &cfg.teacher
        } else {
            &cfg.student
        };
        // (file, manifest split, source); the retrieved rows' embeddings are `retrieved.parquet`
        let wanted = [
            ("train", "train", "task"),
            ("calib", "calib", "task"),
            ("test", "test", "task"),
            ("retrieved", "train", "retrieved"),
        ];
        for (split, msplit, source) in wanted {
            if split == "retrieved" && !need.retrieved {
                parts.push(None);
                continue;
            }
            let (ids, labels) = pick(msplit, source);
            if ids.is_empty() {
                if split == "calib" {
                    parts.push(None);
                    continue;
                }
                if split == "retrieved" {
                    bail!(
                        "{}: no retrieved samples for a +rda run (run `vlal retrieve`, then \
                         `vlal extract --retrieved`)",
                        manifest_path(root).display()
                    );
                }
                bail!("{}: no '{split}' samples", manifest_path(root).display());
            }
            // Train labels may be unknown (a real pool, labeled with `label --from-file`);
            // test labels are what eval scores against, calib labels what conformal sets use.
            // a test split without any label is allowed (a pool with no ground truth: eval
            // then records no accuracy); a partly labeled one is a mistake
            let unlabeled_test = split == "test" && labels.iter().all(|l| l.is_none());
            if let Some(i) = labels
                .iter()
                .position(|l| l.is_none())
                .filter(|_| split != "train" && !unlabeled_test)
            {
                bail!(
                    "{}: {split} sample '{}' has no label (a calib split needs every label; a test split all of them, or none for a pool without ground truth)",
                    manifest_path(root).display(),
                    ids[i]
                );
            }
            let path = embeddings_path(root, feature_folder, split);
            // a retrieved sample without an image has teacher features only
            let (ids, labels) = if split == "retrieved" {
                let have: std::collections::HashSet<String> =
                    table::read_utf8_column(&path, "sample_id")?
                        .into_iter()
                        .collect();
                let (mut kept_ids, mut kept_labels) = (Vec::new(), Vec::new());
                for (id, l) in ids.into_iter().zip(labels) {
                    if have.contains(&id) {
                        kept_ids.push(id);
                        kept_labels.push(l);
                    } else {
                        retrieved_skipped.push(id);
                    }
                }
                (kept_ids, kept_labels)
            } else {
                (ids, labels)
            };
            let (features, meta) = table::read_aligned(&path, Table::Embeddings, "vector", &ids)?;
            feature_model = FeatureModel {
                key: model_id(&path, &meta)?,
                fingerprint: meta.get("fingerprint").cloned(),
            };
            if let Some(Some(train)) = parts.first() {
                let train: &Part = train;
                if features.cols != train.features.cols {
                    bail!(
                        "{}: vectors are {}-d, the train split's ({}) {}-d",
                        path.display(),
                        features.cols,
                        embeddings_path(root, feature_folder, "train").display(),
                        train.features.cols
                    );
                }
            }
            let index = ids
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect();
            parts.push(Some(Part {
                ids,
                labels,
                features,
                index,
            }));
        }
        let retrieved = parts.pop().flatten();
        let test = parts.pop().flatten().expect("test part");
        let calib = parts.pop().flatten();
        let train = parts.pop().flatten().expect("train part");
        let read_logits = |split: &str, ids: &[String]| -> Result<(Mat, f32, String)> {
            let path = logits_path(root, &cfg.teacher, split);
            let (logits, meta) = table::read_aligned(&path, Table::TeacherLogits, "logits", ids)?;
            let tau: f32 = meta["tau"]
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: metadata tau is not a number", path.display()))?;
            if logits.cols != classes.len() {
                bail!(
                    "{}: logits have {} classes, classes.parquet has {}",
                    path.display(),
                    logits.cols,
                    classes.len()
                );
            }
            Ok((logits, tau, model_id(&path, &meta)?))
        };
        let (teacher_logits, tau, teacher_model) = if need.logits || need.clap {
            let (l, tau, model) = read_logits("train", &train.ids)?;
            (Some(l), tau, model)
        } else {
            (None, 0.0, cfg.teacher.clone())
        };
        // another split's logits, at the train logits' τ
        let same_tau = |split: &str, part: &Option<Part>| -> Result<Option<Mat>> {
            let (Some(p), true) = (part, need.logits) else {
                return Ok(None);
            };
            let (l, t, _) = read_logits(split, &p.ids)?;
            if t != tau {
                bail!(
                    "{}: tau {t} differs from the train logits' {tau}",
                    logits_path(root, &cfg.teacher, split).display()
                );
            }
            Ok(Some(l))
        };
        let retrieved_logits = same_tau("retrieved", &retrieved)?;
        let calib_logits = same_tau("calib", &calib)?;
        let teacher_image = if need.teacher_features && (need.clap || need.image || need.prototypes)
        {
            Some(train.features.clone())
        } else if need.clap || need.image || need.prototypes {
            let path = embeddings_path(root, &cfg.teacher, "train");
            Some(table::read_aligned(&path, Table::Embeddings, "vector", &train.ids)?.0)
        } else {
            None
        };
        let prototypes = if need.clap || need.prototypes {
            let image = teacher_image.as_ref().expect("loaded above");
            let ppath = prototypes_path(root, &cfg.teacher);
            let f = table::read(&ppath, Table::Prototypes)?;
            let ids = f.i32s("class_id")?;
            let m = f.mat("vector")?;
            if m.rows != classes.len() {
                bail!(
                    "{}: {} prototypes for {} classes",
                    ppath.display(),
                    m.rows,
                    classes.len()
                );
            }
            let mut protos = Mat::zeros(m.rows, m.cols);
            for (j, id) in ids.iter().enumerate() {
                let id = id.unwrap_or(-1);
                if id < 0 || id as usize >= m.rows {
                    bail!("{}: class_id {id} outside 0..{}", ppath.display(), m.rows);
                }
                protos.row_mut(id as usize).copy_from_slice(m.row(j));
            }
            if protos.cols != image.cols {
                bail!(
                    "{}: prototypes are {}-d, teacher image embeddings {}-d",
                    ppath.display(),
                    protos.cols,
                    image.cols
                );
            }
            Some(protos)
        } else {
            None
        };
        Ok(Cache {
            dataset: cfg.name.clone(),
            classes,
            train,
            calib,
            calib_logits,
            test,
            retrieved,
            retrieved_logits,
            retrieved_skipped,
            feature_model,
            teacher_model,
            teacher_logits,
            tau,
            teacher_image,
            prototypes,
        })
    }

    /// As [`Cache::load`], then re-temper the teacher's logits when the pipeline sets
    /// `teacher.tau` (cos/τ_file → cos/τ).
    pub fn load_at_tau(cfg: &DatasetCfg, tau: Option<f64>, need: Need) -> Result<Cache> {
        let mut c = Cache::load(cfg, need)?;
        if let (Some(t), true) = (tau, c.tau > 0.0) {
            let s = c.tau / t as f32;
            for m in [
                c.teacher_logits.as_mut(),
                c.calib_logits.as_mut(),
                c.retrieved_logits.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                m.data.iter_mut().for_each(|v| *v *= s);
            }
            c.tau = t as f32;
        }
        Ok(c)
    }

    /// Teacher probabilities softmax(cos/τ) of the train rows and of the calib rows.
    pub fn teacher_probs(&self) -> (Option<Mat>, Option<Mat>) {
        let sm = |m: &Mat| crate::mat::softmax_rows(m, 1.0);
        (
            self.teacher_logits.as_ref().map(sm),
            self.calib_logits.as_ref().map(sm),
        )
    }

    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }
}
