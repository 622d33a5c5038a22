//! A run's per-round state as the stages share it: the labels table (one row per labeled
//! sample), the id → train-row lookups, the unlabeled pool and a round's predictions.

use crate::cache::Cache;
use crate::mat::Mat;
use crate::schema::Table;
use crate::table;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// One row of a `labels` table.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelRow {
    pub round: i32,
    pub sample_id: String,
    pub label: i32,
    pub kind: String,
    pub cost: f64,
}

pub fn read_labels(path: &Path) -> Result<Vec<LabelRow>> {
    let f = table::read(path, Table::Labels)?;
    let (r, id, l, k, c) = (
        f.i32s("round")?,
        f.strings("sample_id")?,
        f.i32s("label")?,
        f.strings("kind")?,
        f.f64s("cost")?,
    );
    Ok((0..f.rows)
        .map(|i| LabelRow {
            round: r[i].unwrap_or(0),
            sample_id: id[i].clone(),
            label: l[i].unwrap_or(0),
            kind: k[i].clone(),
            cost: c[i].unwrap_or(0.0),
        })
        .collect())
}

/// Write a labels table; `Ok(false)` if it already exists (a run's state is never rewritten).
pub fn write_labels(path: &Path, rows: &[LabelRow]) -> Result<bool> {
    let round: Vec<i32> = rows.iter().map(|r| r.round).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.sample_id.as_str()).collect();
    let labels: Vec<i32> = rows.iter().map(|r| r.label).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let cost: Vec<f64> = rows.iter().map(|r| r.cost).collect();
    table::write(
        path,
        Table::Labels,
        vec![
            ("round", table::i32s(&round)),
            ("sample_id", table::utf8(&ids)),
            ("label", table::i32s(&labels)),
            ("kind", table::utf8(&kinds)),
            ("cost", table::f64s(&cost)),
        ],
        &[],
        table::Mode::NoClobber,
    )
}

/// The unlabeled train rows, ascending.
pub fn pool_rows(cache: &Cache, labeled: &[usize]) -> Vec<usize> {
    let mut is_labeled = vec![false; cache.train.ids.len()];
    labeled.iter().for_each(|&i| is_labeled[i] = true);
    (0..is_labeled.len()).filter(|&i| !is_labeled[i]).collect()
}

/// The train rows and labels of a labels table; every id must be in the train pool and every
/// label in 0..C.
pub fn labeled_rows(
    path: &Path,
    cache: &Cache,
    rows: &[LabelRow],
) -> Result<(Vec<usize>, Vec<u32>)> {
    let c = cache.n_classes();
    let mut idx = Vec::with_capacity(rows.len());
    let mut lab = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(&i) = cache.train.index.get(&r.sample_id) else {
            bail!(
                "{}: sample '{}' is not in the train pool of dataset '{}'",
                path.display(),
                r.sample_id,
                cache.dataset
            );
        };
        if r.label < 0 || r.label as usize >= c {
            bail!(
                "{}: sample '{}' has label {}, outside 0..{c}",
                path.display(),
                r.sample_id,
                r.label
            );
        }
        idx.push(i);
        lab.push(r.label as u32);
    }
    Ok((idx, lab))
}

/// Require a file that an earlier stage writes.
pub fn require(path: &Path, made_by: &str) -> Result<()> {
    if !path.exists() {
        bail!("{}: missing (run `{made_by}` first)", path.display());
    }
    Ok(())
}

/// A round's predictions table: its metadata at once, its probabilities streamed when asked for
/// (the pool's can be 5 GB: 1.28M × 1000 classes).
pub struct Predictions {
    pub path: std::path::PathBuf,
    pub meta: std::collections::BTreeMap<String, String>,
}

impl Predictions {
    pub fn read(path: &Path) -> Result<Predictions> {
        require(path, "vlal train")?;
        Ok(Predictions {
            path: path.to_path_buf(),
            meta: table::read_meta(path)?,
        })
    }

    /// A file metadata key (one error line naming the file when it is missing).
    pub fn meta(&self, key: &str) -> Result<&str> {
        table::meta_value(&self.path.display().to_string(), &self.meta, key)
    }

    /// Student probabilities of the rows `ids` (train, calib or test), in that order.
    pub fn probs(&self, cache: &Cache, ids: &[String]) -> Result<Mat> {
        Ok(self.probs_of(cache, &[ids])?.pop().expect("one list"))
    }

    /// The probabilities of the train pool and, when `with_calib` and the cache has a calib
    /// split, of the calib rows: one pass over the file.
    pub fn train_and_calib(&self, cache: &Cache, with_calib: bool) -> Result<(Mat, Option<Mat>)> {
        let mut lists: Vec<&[String]> = vec![&cache.train.ids];
        if let (Some(c), true) = (&cache.calib, with_calib) {
            lists.push(&c.ids);
        }
        let mut out = self.probs_of(cache, &lists)?.into_iter();
        Ok((out.next().expect("train"), out.next()))
    }

    /// [`Predictions::probs`] of several lists of rows, in one pass over the file.
    pub fn probs_of(&self, cache: &Cache, ids: &[&[String]]) -> Result<Vec<Mat>> {
        let (out, _) = table::read_rows(&self.path, Table::Predictions, "probs", ids)?;
        if let Some(m) = out.iter().find(|m| m.cols != cache.n_classes()) {
            bail!(
                "{}: probs have {} classes, the dataset has {}",
                self.path.display(),
                m.cols,
                cache.n_classes()
            );
        }
        Ok(out)
    }
}

/// One round's labels, read and resolved to train rows once: `vlal run` hands it from stage to
/// stage (train, select, eval, label) instead of each reading the labels file again.
pub struct Round {
    pub round: usize,
    /// The labels file it was read from (errors name it).
    pub path: PathBuf,
    pub rows: Vec<LabelRow>,
    /// The labeled train rows and their labels (row i ↔ labels[i]).
    pub labeled: Vec<usize>,
    pub labels: Vec<u32>,
}

impl Round {
    pub fn read(path: &Path, round: usize, cache: &Cache) -> Result<Round> {
        require(path, "vlal label")?;
        let rows = read_labels(path)?;
        let (labeled, labels) = labeled_rows(path, cache, &rows)?;
        Ok(Round {
            round,
            path: path.to_path_buf(),
            rows,
            labeled,
            labels,
        })
    }
}
