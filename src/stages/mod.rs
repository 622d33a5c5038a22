//! The pipeline's stages as library functions; `vlal <stage>` and `vlal run` call these. Stages
//! pass state to each other only through the tables of `schemas/`.

pub mod corpus;
pub mod eval;
pub mod extract;
pub mod fit_teacher;
pub mod import_idx;
pub mod label;
pub mod plot;
pub mod report;
pub mod retrieve;
pub mod run;
pub mod select;
pub mod synth;
pub mod tiny;
pub mod train;

use crate::cache::Cache;
use crate::schema::Table;
use crate::table;
use anyhow::{bail, Result};
use std::path::Path;

/// A folder written whole or not at all: built under a hidden temporary name beside `dest` and
/// renamed to `dest` by [`StagedDir::commit`]; dropped uncommitted, it is removed.
pub struct StagedDir {
    tmp: tempfile::TempDir,
    dest: std::path::PathBuf,
}

impl StagedDir {
    /// `tag` names the stage in the folder's temporary name (see `table::staging_dir_in`).
    pub fn new(dest: &Path, tag: &str) -> Result<StagedDir> {
        use anyhow::Context;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
        crate::table::sweep_stale(parent, false);
        let tmp = crate::table::staging_dir_in(parent, tag)?;
        Ok(StagedDir {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn commit(self) -> Result<()> {
        use anyhow::Context;
        let staged = self.tmp.keep();
        std::fs::rename(&staged, &self.dest)
            .with_context(|| format!("{}: cannot move into place", self.dest.display()))
    }

    /// [`StagedDir::commit`], replacing an existing `dest`: the old folder is moved aside (under
    /// a temporary name that a later sweep removes if this process dies), then deleted.
    pub fn commit_replacing(self) -> Result<()> {
        use anyhow::Context;
        if !self.dest.exists() {
            return self.commit();
        }
        let parent = self.tmp.path().parent().expect("a parent").to_path_buf();
        let old = crate::table::staging_dir_in(&parent, "replaced")?.keep();
        let aside = old.join("old");
        std::fs::rename(&self.dest, &aside)
            .with_context(|| format!("{}: cannot move aside", self.dest.display()))?;
        let staged = self.tmp.keep();
        std::fs::rename(&staged, &self.dest)
            .with_context(|| format!("{}: cannot move into place", self.dest.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))
    }
}

/// Remove what killed processes left in one run's folders (its run folder, and its results and
/// diagnostics partitions): what a stage command of that run sweeps (see `table::sweep_stale`).
pub fn sweep_run(spec: &crate::config::RunSpec) {
    crate::table::sweep_stale(&spec.run_dir(), true);
    for file in [spec.results_path(0), spec.diagnostics_path(0)] {
        if let Some(partition) = file.parent() {
            crate::table::sweep_stale(partition, false);
        }
    }
}

/// Remove what killed processes left in a pipeline's folders (its runs, results and
/// diagnostics): what `vlal run` sweeps (see `table::sweep_stale`).
pub fn sweep_pipeline(p: &crate::config::Pipeline) {
    let part = format!("pipeline={}", p.name);
    crate::table::sweep_stale(&p.runs_dir.join(&p.name), true);
    crate::table::sweep_stale(&p.results_dir.join(&part), true);
    crate::table::sweep_stale(&p.diagnostics_dir.join(&part), true);
}

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
/// The cache tables a run reads: its trainer's, its strategy's, and the teacher's logits when
/// the pipeline writes diagnostics.
pub fn need_of(spec: &crate::config::RunSpec) -> Result<crate::cache::Need> {
    let mut n = spec
        .build_trainer()?
        .needs()
        .union(spec.build_strategy()?.needs());
    n.logits |= spec.pipeline.select.diagnostics;
    n.retrieved = spec.rda;
    Ok(n)
}

pub fn require(path: &Path, made_by: &str) -> Result<()> {
    if !path.exists() {
        bail!("{}: missing (run `{made_by}` first)", path.display());
    }
    Ok(())
}
