//! The pipeline's stages as library functions; `vlal <stage>` and `vlal run` call these. Stages
//! pass state to each other only through the tables of `schemas/`.

pub mod corpus;
pub mod eval;
pub mod extract;
pub mod fit_teacher;
pub mod import_idx;
pub mod label;
pub mod report;
pub mod retrieve;
pub mod run;
pub mod select;
pub mod synth;
pub mod tiny;
pub mod train;

use crate::cache::Cache;
use crate::config::Pipeline;
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

/// How many seed labels round 0 takes from the ground truth: `initial_per_class` of each class.
/// A class with fewer train samples is an error unless the pipeline sets `allow_fewer` (then it
/// gives them all).
pub fn seed_count(p: &Pipeline, cache: &Cache) -> Result<usize> {
    let mut per_class = vec![0usize; cache.n_classes()];
    for l in cache.train.labels.iter().flatten() {
        if let Some(n) = usize::try_from(*l).ok().and_then(|c| per_class.get_mut(c)) {
            *n += 1;
        }
    }
    for (c, &n) in per_class.iter().enumerate() {
        if n < p.initial_per_class {
            if !p.allow_fewer {
                bail!(
                    "{}: class {c} ('{}') has {n} train samples, fewer than initial_per_class = {} (set allow_fewer = true in the pipeline to take them all)",
                    crate::cache::manifest_path(&p.dataset.root).display(),
                    cache.classes[c],
                    p.initial_per_class
                );
            }
            crate::progress::log(format!(
                "class {c} ('{}') has only {n} train samples; taking all (allow_fewer)",
                cache.classes[c]
            ));
        }
    }
    Ok(per_class.iter().map(|&n| n.min(p.initial_per_class)).sum())
}
