//! The dataset cache as the stages see it: manifest, classes, student embeddings of the train
//! pool and the test split (aligned to manifest order), and the teacher's cached logits.
//!
//! Layout under `dataset.root`: `manifest.parquet`, `classes.parquet`, and one folder per model
//! (`<model>@<revision>/`) holding `<split>.parquet` embeddings; a teacher folder also holds
//! `prototypes.parquet` and `<split>.logits.parquet`.

use crate::config::DatasetCfg;
use crate::mat::Mat;
use crate::schema::Table;
use crate::table;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One split of the task data: ids, ground-truth labels and student features, in manifest order.
pub struct Part {
    pub ids: Vec<String>,
    pub labels: Vec<Option<i32>>,
    pub features: Mat,
    pub index: HashMap<String, usize>,
}

pub struct Cache {
    pub dataset: String,
    pub classes: Vec<String>,
    pub train: Part,
    pub test: Part,
    pub student_model: String,
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
    pub clap: bool,
}

impl Need {
    pub fn of(trainer: &str) -> Need {
        match trainer {
            "dho" => Need {
                logits: true,
                clap: false,
            },
            "dho-clap" => Need {
                logits: true,
                clap: true,
            },
            _ => Need::default(),
        }
    }
    pub fn union(self, o: Need) -> Need {
        Need {
            logits: self.logits || o.logits,
            clap: self.clap || o.clap,
        }
    }
}

pub fn manifest_path(root: &Path) -> PathBuf {
    root.join("manifest.parquet")
}
pub fn classes_path(root: &Path) -> PathBuf {
    root.join("classes.parquet")
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

/// Rows of a vector table reordered to `ids`; every id must be present.
pub fn aligned(path: &Path, frame: &table::Frame, column: &str, ids: &[String]) -> Result<Mat> {
    let file_ids = frame.strings("sample_id")?;
    let m = frame.mat(column)?;
    let pos: HashMap<&str, usize> = file_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut out = Mat::zeros(ids.len(), m.cols);
    for (i, id) in ids.iter().enumerate() {
        let Some(&j) = pos.get(id.as_str()) else {
            bail!("{}: no row for sample '{id}'", path.display());
        };
        out.row_mut(i).copy_from_slice(m.row(j));
    }
    Ok(out)
}

fn model_id(frame: &table::Frame) -> Result<String> {
    Ok(format!(
        "{}@{}",
        frame.meta("model_id")?,
        frame.meta("revision")?
    ))
}

impl Cache {
    /// Load what the round loop needs; the teacher's tables only as `need` says.
    pub fn load(cfg: &DatasetCfg, need: Need) -> Result<Cache> {
        let root = &cfg.root;
        let classes = read_classes(root)?;
        let m = read_manifest(root, classes.len())?;
        let pick = |split: &str| -> (Vec<String>, Vec<Option<i32>>) {
            let mut ids = Vec::new();
            let mut labels = Vec::new();
            for i in 0..m.ids.len() {
                if m.splits[i] == split && m.sources[i] == "task" {
                    ids.push(m.ids[i].clone());
                    labels.push(m.labels[i]);
                }
            }
            (ids, labels)
        };
        let mut parts = Vec::new();
        let mut student_model = String::new();
        for split in ["train", "test"] {
            let (ids, labels) = pick(split);
            if ids.is_empty() {
                bail!("{}: no '{split}' samples", manifest_path(root).display());
            }
            // Train labels may be unknown (a real pool, labeled with `label --from-file`);
            // test labels are what eval scores against.
            if let Some(i) = labels
                .iter()
                .position(|l| l.is_none())
                .filter(|_| split == "test")
            {
                bail!(
                    "{}: {split} sample '{}' has no label (eval needs one)",
                    manifest_path(root).display(),
                    ids[i]
                );
            }
            let path = embeddings_path(root, &cfg.student, split);
            let frame = table::read(&path, Table::Embeddings)?;
            student_model = model_id(&frame)?;
            let features = aligned(&path, &frame, "vector", &ids)?;
            let index = ids
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect();
            parts.push(Part {
                ids,
                labels,
                features,
                index,
            });
        }
        let test = parts.pop().expect("two parts");
        let train = parts.pop().expect("two parts");
        let (teacher_logits, tau, teacher_model) = if need.logits || need.clap {
            let path = logits_path(root, &cfg.teacher, "train");
            let frame = table::read(&path, Table::TeacherLogits)?;
            let tau: f32 = frame
                .meta("tau")?
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: metadata tau is not a number", path.display()))?;
            let logits = aligned(&path, &frame, "logits", &train.ids)?;
            if logits.cols != classes.len() {
                bail!(
                    "{}: logits have {} classes, classes.parquet has {}",
                    path.display(),
                    logits.cols,
                    classes.len()
                );
            }
            (Some(logits), tau, model_id(&frame)?)
        } else {
            (None, 0.0, cfg.teacher.clone())
        };
        let (teacher_image, prototypes) = if need.clap {
            let path = embeddings_path(root, &cfg.teacher, "train");
            let image = aligned(
                &path,
                &table::read(&path, Table::Embeddings)?,
                "vector",
                &train.ids,
            )?;
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
            (Some(image), Some(protos))
        } else {
            (None, None)
        };
        Ok(Cache {
            dataset: cfg.name.clone(),
            classes,
            train,
            test,
            student_model,
            teacher_model,
            teacher_logits,
            tau,
            teacher_image,
            prototypes,
        })
    }

    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }
}
