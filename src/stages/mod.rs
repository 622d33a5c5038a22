//! The pipeline's stages as library functions; `vlal <stage>` and `vlal run` call these. Stages
//! pass state to each other only through the tables of `schemas/` (read and written with the
//! data layer: `table`, `cache`, `rounds`); this file holds what every stage needs of a run's
//! identity: the cache tables it reads, its seed-label count, and the sweep of what killed
//! processes left in its folders.

pub mod annotate;
pub mod corpus;
pub mod eval;
pub mod export;
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
    if let Some(c) = &spec.pipeline.cold_start {
        n = n.union(
            crate::config::parse_strategy(c)?
                .0
                .build(&spec.pipeline.strategy_build())?
                .needs(),
        );
    }
    n.logits |= spec.pipeline.select.diagnostics;
    // the teacher–student disagreement rule, when it ends runs, needs the teacher's logits
    let stopping = &spec.pipeline.stopping;
    n.logits |= stopping.teacher || stopping.stop_when.as_deref() == Some("disagreement");
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
