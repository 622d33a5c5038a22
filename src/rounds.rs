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

/// A round's predictions table, read once.
pub struct Predictions {
    pub path: std::path::PathBuf,
    pub frame: table::Frame,
}

impl Predictions {
    pub fn read(path: &Path) -> Result<Predictions> {
        require(path, "vlal train")?;
        let frame = table::read(path, Table::Predictions)?;
        Ok(Predictions {
            path: path.to_path_buf(),
            frame,
        })
    }

    /// Student probabilities of the rows `ids` (train, calib or test), in that order.
    pub fn probs(&self, cache: &Cache, ids: &[String]) -> Result<Mat> {
        let out = crate::cache::aligned(&self.path, &self.frame, "probs", ids)?;
        if out.cols != cache.n_classes() {
            bail!(
                "{}: probs have {} classes, the dataset has {}",
                self.path.display(),
                out.cols,
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
