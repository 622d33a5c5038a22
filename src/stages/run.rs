//! `vlal run PIPELINE.toml`: every trainer × strategy × seed of a pipeline, round after round,
//! in-process from one loaded cache. A round is complete when its results row exists (and, before
//! the last round, the next round's labels); complete rounds are skipped, so a rerun is a no-op
//! and a killed run resumes where it stopped. Each step's output is written atomically and is a
//! pure function of its inputs, so a resumed run ends with the same tables as an unbroken one.

use super::{eval, label, select, train};
use crate::cache::{Cache, Need};
use crate::config::{Pipeline, RunSpec};
use crate::progress;
use anyhow::{bail, Result};

/// Which runs of a pipeline to execute (empty = all).
#[derive(Default)]
pub struct Filter {
    pub trainers: Vec<String>,
    pub strategies: Vec<String>,
    pub seeds: Vec<u64>,
}

impl Filter {
    fn keeps(&self, s: &RunSpec) -> bool {
        (self.trainers.is_empty() || self.trainers.contains(&s.trainer))
            && (self.strategies.is_empty() || self.strategies.contains(&s.strategy))
            && (self.seeds.is_empty() || self.seeds.contains(&s.seed))
    }
}

pub fn run(p: &Pipeline, filter: &Filter) -> Result<()> {
    let specs: Vec<RunSpec> = p.runs().into_iter().filter(|s| filter.keeps(s)).collect();
    if specs.is_empty() {
        bail!("no run of pipeline '{}' matches the filter", p.name);
    }
    let todo: Vec<&RunSpec> = specs
        .iter()
        .filter(|s| !s.results_path(p.rounds).exists())
        .collect();
    if todo.is_empty() {
        progress::log(format!(
            "nothing to do: all {} runs of '{}' are complete",
            specs.len(),
            p.name
        ));
        return Ok(());
    }
    // runs on the student's features and runs on the teacher's (prompt learning) need a cache each
    let mut groups: Vec<(Need, Vec<&RunSpec>)> = Vec::new();
    for s in todo {
        let n = super::need_of(s)?;
        match groups
            .iter_mut()
            .find(|(g, _)| g.teacher_features == n.teacher_features)
        {
            Some((g, v)) => {
                *g = g.union(n);
                v.push(s);
            }
            None => groups.push((n, vec![s])),
        }
    }
    let total: usize = groups.iter().map(|(_, v)| v.len()).sum();
    let pb = progress::bar((total * (p.rounds + 1)) as u64, "rounds");
    for (need, specs) in groups {
        let cache = Cache::for_pipeline(p, need)?;
        let budget = check_budget(p, &cache)?;
        for spec in specs {
            run_one(spec, &cache, budget, &pb)?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}

/// The round budget; the pool must hold the seed labels and every round's.
fn check_budget(p: &Pipeline, cache: &Cache) -> Result<usize> {
    let budget = p.budget.unwrap_or(cache.n_classes());
    let needed = p.initial_per_class * cache.n_classes() + p.rounds * budget;
    if needed > cache.train.ids.len() {
        bail!(
            "{}: {} seed labels + {} rounds × budget {budget} = {needed} labels, more than the pool's {} samples",
            p.dataset.root.display(),
            p.initial_per_class * cache.n_classes(),
            p.rounds,
            cache.train.ids.len()
        );
    }
    Ok(budget)
}

/// Run (or resume) one run; returns the number of rounds it worked on.
pub fn run_one(
    spec: &RunSpec,
    cache: &Cache,
    budget: usize,
    pb: &indicatif::ProgressBar,
) -> Result<usize> {
    let last = spec.pipeline.rounds;
    let mut worked = 0;
    if !spec.labels_path(0).exists() {
        label::init(spec, cache)?;
    }
    for r in 0..=last {
        let complete =
            spec.results_path(r).exists() && (r == last || spec.labels_path(r + 1).exists());
        pb.inc(1);
        if complete {
            continue;
        }
        if !spec.predictions_path(r).exists() {
            train::run(spec, cache, r)?;
        }
        if r < last && !spec.queries_path(r).exists() {
            select::run(spec, cache, r, budget)?;
        }
        eval::run(spec, cache, r)?;
        if r < last && !spec.labels_path(r + 1).exists() {
            label::oracle(spec, cache, r)?;
        }
        worked += 1;
    }
    Ok(worked)
}
