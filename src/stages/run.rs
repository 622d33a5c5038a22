//! `vlal run PIPELINE.toml`: every trainer × strategy × seed of a pipeline, round after round,
//! in-process from one loaded cache. A round is complete when its results row exists (and, before
//! the last round, the next round's labels); complete rounds are skipped, so a rerun is a no-op
//! and a killed run resumes where it stopped. Each step's output is written atomically and is a
//! pure function of its inputs, so a resumed run ends with the same tables as an unbroken one.
//!
//! Several processes may share a pipeline: `--shard i/N` takes every N-th selected run (a Slurm
//! array task or a Ray task each), and each run is worked on under an OS lock on its folder, so
//! a second process skips a run another one holds (the lock goes with the process, crash or not).

use super::{eval, label, select, train};
use crate::cache::{Cache, Need};
use crate::config::{Pipeline, RunSpec};
use crate::progress;
use crate::rounds::Round;
use anyhow::{bail, Result};

/// Which runs of a pipeline to execute (empty = all).
#[derive(Default)]
pub struct Filter {
    pub trainers: Vec<String>,
    pub strategies: Vec<String>,
    pub seeds: Vec<u64>,
    /// Stop after this round (default: the pipeline's last); a later run resumes from there.
    pub max_round: Option<usize>,
    /// Only this part of the selected runs.
    pub shard: Option<crate::shard::Shard>,
}

/// Take the run's lock: an exclusive OS lock (flock) on its folder, held while the returned
/// file is open; `None` when another process holds it.
fn lock(spec: &RunSpec) -> Result<Option<std::fs::File>> {
    let dir = spec.run_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create ({e})", dir.display()))?;
    let f = std::fs::File::open(&dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot open ({e})", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            bail!("{}: cannot lock ({e})", dir.display())
        }
    }
}

impl Filter {
    fn keeps(&self, s: &RunSpec) -> bool {
        (self.trainers.is_empty() || self.trainers.contains(&s.trainer))
            && (self.strategies.is_empty() || self.strategies.contains(&s.strategy_name()))
            && (self.seeds.is_empty() || self.seeds.contains(&s.seed))
    }
}

pub fn run(p: &Pipeline, filter: &Filter) -> Result<()> {
    let specs: Vec<RunSpec> = p.runs().into_iter().filter(|s| filter.keeps(s)).collect();
    if specs.is_empty() {
        bail!("no run of pipeline '{}' matches the filter", p.name);
    }
    let selected = specs.len();
    let specs: Vec<RunSpec> = match filter.shard {
        None => specs,
        Some(sh) => specs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| sh.holds(*k))
            .map(|(_, s)| s)
            .collect(),
    };
    if let Some(sh) = filter.shard {
        progress::say(
            None,
            format!(
                "shard {sh}: {} of the {selected} selected runs of '{}'",
                specs.len(),
                p.name
            ),
        );
        if specs.is_empty() {
            return Ok(());
        }
    }
    let stop = filter.max_round.unwrap_or(p.rounds).min(p.rounds);
    super::sweep_pipeline(p);
    let todo: Vec<&RunSpec> = specs
        .iter()
        .filter(|s| !s.results_path(stop).exists())
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
    let pb = progress::bar((total * (stop + 1)) as u64, "rounds");
    // the stages' own lines (each file written, each round's score) become details (-v)
    let _demoted = progress::demote();
    let (mut finished, mut worked, mut locked, mut waiting) = (0, 0, 0, 0);
    for (need, specs) in groups {
        let cache = Cache::load_at_tau(&p.dataset, p.teacher.tau, need)?;
        let budget = check_budget(p, &cache)?;
        for spec in specs {
            // under the run's lock, and what is complete is looked at only once it is held
            let Some(_lock) = lock(spec)? else {
                progress::say(
                    Some(&pb),
                    format!("{}: another process works on it; skipped", spec.label()),
                );
                pb.inc((stop + 1) as u64);
                locked += 1;
                continue;
            };
            let o = run_one(spec, &cache, budget, &pb, stop)?;
            let rounds = o.worked;
            if let Some((r, done, asked)) = o.waiting {
                progress::say(
                    Some(&pb),
                    format!(
                        "{}: round {r}: waiting for a person ({done} of {asked} queries answered): {}, then run this again",
                        spec.label(),
                        annotate_command(spec, r)
                    ),
                );
                waiting += 1;
            } else if let Some(r) = o.stopped {
                progress::say(
                    Some(&pb),
                    format!(
                        "{}: stopped after round {r}: the stopping rule {} fired",
                        spec.label(),
                        p.stopping.stop_when.as_deref().unwrap_or("?")
                    ),
                );
                finished += 1;
            } else if let Some(s) = o.score {
                progress::say(
                    Some(&pb),
                    format!(
                        "{}: round {stop}{}: {} with {} labels ({rounds} rounds run now)",
                        spec.label(),
                        if stop == p.rounds { " (done)" } else { "" },
                        s.accuracy
                            .map_or("no test labels".into(), |a| format!("accuracy {a:.4}")),
                        s.n_labeled
                    ),
                );
                finished += 1;
            }
            worked += rounds;
        }
    }
    pb.finish_and_clear();
    progress::say(
        None,
        format!(
            "'{}': {finished} runs finished ({worked} rounds), {} already complete{}{}; results in {}",
            p.name,
            specs.len() - total,
            if locked > 0 {
                format!(", {locked} skipped (held by another process)")
            } else {
                String::new()
            },
            if waiting > 0 {
                format!(", {waiting} waiting for a person")
            } else {
                String::new()
            },
            p.results_dir.display()
        ),
    );
    Ok(())
}

/// The round budget; the pool must hold the seed labels and every round's.
fn check_budget(p: &Pipeline, cache: &Cache) -> Result<usize> {
    let budget = p.budget.unwrap_or(cache.n_classes());
    let seed = super::seed_count(p, cache)?;
    let needed = seed + p.rounds * budget;
    if needed > cache.train.ids.len() {
        bail!(
            "{}: {seed} seed labels + {} rounds × budget {budget} = {needed} labels, more than the pool's {} samples",
            p.dataset.root.display(),
            p.rounds,
            cache.train.ids.len()
        );
    }
    Ok(budget)
}

/// What [`run_one`] did.
#[derive(Default)]
pub struct Outcome {
    /// Rounds it worked on.
    pub worked: usize,
    /// Round `stop`'s score, when it was scored now.
    pub score: Option<eval::Scored>,
    /// The round whose queries wait for a person's answers (`oracle = "person"`).
    pub waiting: Option<(usize, usize, usize)>,
    /// The round where `[stopping] stop_when` ended the run.
    pub stopped: Option<usize>,
}

/// Run (or resume) one run up to round `stop`.
pub fn run_one(
    spec: &RunSpec,
    cache: &Cache,
    budget: usize,
    pb: &indicatif::ProgressBar,
    stop: usize,
) -> Result<Outcome> {
    let last = spec.pipeline.rounds;
    let mut out = Outcome::default();
    if !spec.labels_path(0).exists() {
        label::init(spec, cache)?;
    }
    let rule = spec.pipeline.stopping.stop_when.as_deref();
    for r in 0..=stop.min(last) {
        let stopped = |r: usize| {
            rule.is_some_and(|rule| crate::stopping::fired(&spec.stopping_path(r), rule))
        };
        let complete = spec.results_path(r).exists()
            && (r == last || spec.labels_path(r + 1).exists() || stopped(r));
        pb.inc(1);
        if complete {
            if r < last && !spec.labels_path(r + 1).exists() {
                out.stopped = Some(r);
                break;
            }
            continue;
        }
        // the round's labels are read once, and the head trained here is handed to select
        let round = Round::read(&spec.labels_path(r), r, cache)?;
        let head = if !spec.predictions_path(r).exists() {
            Some(train::run_round(spec, cache, &round)?)
        } else {
            None
        };
        if r < last && !spec.queries_path(r).exists() {
            select::run_round(spec, cache, &round, budget, head.as_ref())?;
        }
        let s = eval::run_round(spec, cache, &round)?;
        if r == stop {
            out.score = s;
        }
        out.worked += 1;
        if r < last && !spec.labels_path(r + 1).exists() {
            if stopped(r) {
                out.stopped = Some(r);
                break;
            }
            if spec.pipeline.oracle == "person" {
                let answers = spec.answers_path(r);
                let (done, asked) = label::answered(spec, r)?;
                if done < asked {
                    out.waiting = Some((r, done, asked));
                    break;
                }
                label::from_file(spec, cache, Some(r), &answers)?;
            } else {
                label::oracle_round(spec, cache, &round)?;
            }
        }
    }
    Ok(out)
}

/// The command that opens a run's round in the browser.
pub fn annotate_command(spec: &RunSpec, round: usize) -> String {
    format!("vlal annotate {} --round {round}", spec.run_args())
}
