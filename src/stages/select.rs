//! `vlal select`: run the run's strategy on a round's predictions and labels and write the
//! batch to query.

use crate::cache::Cache;
use crate::config::RunSpec;
use crate::rounds::{pool_rows, require, Predictions, Round};
use crate::schema::Table;
use crate::strategy::{self, SelectContext};
use crate::{rng, table};
use anyhow::{bail, Result};
use std::time::Instant;

pub fn run(spec: &RunSpec, cache: &Cache, round: usize, budget: usize) -> Result<()> {
    let r = Round::read(&spec.labels_path(round), round, cache)?;
    run_round(spec, cache, &r, budget, None)
}

/// [`run`] on labels already read, with the round's head when it is at hand (else it is
/// loaded from the run's folder if the strategy needs it).
pub fn run_round(
    spec: &RunSpec,
    cache: &Cache,
    r: &Round,
    budget: usize,
    head: Option<&crate::train::Head>,
) -> Result<()> {
    let (round, lpath) = (r.round, &r.path);
    let (labeled, labels) = (&r.labeled, &r.labels);
    // the queries name the strategy that picked them (a cold start's, without labels)
    let (strat, strategy_name) = spec.strategy_for(labeled.len())?;
    if labeled.is_empty() && spec.pipeline.cold_start.is_some() {
        crate::progress::log(format!(
            "round {round}: no labels yet; cold start with {strategy_name}"
        ));
    }
    let needs = strat.needs();
    let preds = Predictions::read(&spec.predictions_path(round))?;
    let (probs, calib_student) = preds.train_and_calib(cache, needs.logits)?;
    let pool = pool_rows(cache, &labeled);
    if pool.is_empty() {
        bail!(
            "{}: pool exhausted: every train sample is labeled",
            lpath.display()
        );
    }
    if budget > pool.len() {
        bail!(
            "{}: budget {budget} is larger than the pool ({} unlabeled samples left)",
            lpath.display(),
            pool.len()
        );
    }
    let loaded = match (strat.needs_head(), head) {
        (true, None) => {
            let hp = spec.head_path(round);
            require(&hp, "vlal train")?;
            Some(crate::train::Head::load(
                &hp,
                &crate::train::device(&spec.pipeline.device)?,
            )?)
        }
        _ => None,
    };
    let head = head.filter(|_| strat.needs_head()).or(loaded.as_ref());
    let (teacher_probs, calib_teacher) = if needs.logits {
        cache.teacher_probs()
    } else {
        (None, None)
    };
    let calib_labels = cache
        .calib
        .as_ref()
        .map(|c| c.label_ids())
        .unwrap_or_default();
    let retrieved_labels = cache.retrieved.as_ref().map(|r| r.label_ids());
    let ctx = SelectContext {
        n_classes: cache.n_classes(),
        probs: &probs,
        features: &cache.train.features,
        labeled,
        labels,
        pool: &pool,
        head,
        teacher_probs: teacher_probs.as_ref(),
        teacher_image: cache.teacher_image.as_ref(),
        prototypes: cache.prototypes.as_ref(),
        retrieved_labels: retrieved_labels.as_deref(),
        calib: calib_student.as_ref().map(|s| strategy::Calib {
            student: s,
            teacher: calib_teacher.as_ref(),
            labels: &calib_labels,
        }),
        notes: Default::default(),
    };
    let start = Instant::now();
    let picks = crate::mat::flushing_subnormals(|| {
        strat.select(&ctx, budget, &mut rng::stream(spec.seed, "select", round))
    })?;
    let select_s = start.elapsed().as_secs_f64();
    let notes = ctx.notes.take();
    if picks.len() != budget {
        bail!(
            "strategy '{strategy_name}' returned {} picks for a budget of {budget}",
            picks.len()
        );
    }
    let rows: Vec<usize> = picks.iter().map(|p| pool[p.pos]).collect();
    let m = batch_metrics(&ctx, &rows);
    let mut notes = notes;
    let pseudo: Vec<Option<i32>> = if let Some(pl) = strat.pseudo_labels(&ctx, &rows) {
        let k = pl.iter().flatten().count();
        let note = format!("{k} of {} picks pseudo-labelled at no cost", rows.len());
        crate::progress::log(format!("selective querying: {note}"));
        notes.push(("selective_querying".into(), note));
        pl
    } else {
        vec![None; rows.len()]
    };
    let ids: Vec<&str> = rows.iter().map(|&r| cache.train.ids[r].as_str()).collect();
    let scores: Vec<f64> = picks.iter().map(|p| p.score).collect();
    let ranks: Vec<i32> = (0..picks.len() as i32).collect();
    table::write(
        &spec.queries_path(round),
        Table::Queries,
        vec![
            ("round", table::i32s(&vec![round as i32; picks.len()])),
            ("rank", table::i32s(&ranks)),
            ("sample_id", table::utf8(&ids)),
            ("score", table::f64s(&scores)),
            (
                "strategy",
                table::utf8(&vec![strategy_name.as_str(); picks.len()]),
            ),
            ("pseudo_label", table::opt_i32s(&pseudo)),
        ],
        &[
            ("select_s", format!("{select_s}")),
            ("config_hash", spec.config_hash()),
            ("batch_prob_coverage", format!("{}", m.prob_coverage)),
            ("batch_class_entropy", format!("{}", m.class_entropy)),
            ("batch_uncertainty", format!("{}", m.uncertainty)),
            (
                "batch_feature_diversity",
                format!("{}", m.feature_diversity),
            ),
        ]
        .into_iter()
        .chain(notes.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .collect::<Vec<_>>(),
        table::Mode::Replace,
    )?;
    Ok(())
}

/// The PCoreSet paper's analysis of a queried batch.
#[derive(Debug, PartialEq)]
pub struct BatchMetrics {
    /// Mean over the batch of the Euclidean distance in probability space to the nearest
    /// labeled point (before the batch is added): how much new simplex the batch covers.
    pub prob_coverage: f64,
    /// Entropy of the batch's predicted-class histogram, normalised by ln C (1 = balanced).
    pub class_entropy: f64,
    /// Mean predictive entropy of the student over the batch (nats).
    pub uncertainty: f64,
    /// Mean pairwise cosine distance between the batch's student features.
    pub feature_diversity: f64,
}

pub fn batch_metrics(ctx: &SelectContext, rows: &[usize]) -> BatchMetrics {
    use crate::geometry::{dot, min_sqdist};
    let b = rows.len().max(1) as f64;
    let cov = min_sqdist(ctx.probs, rows, ctx.labeled);
    let prob_coverage = cov
        .iter()
        .map(|&d| {
            if d.is_finite() {
                (d as f64).sqrt()
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / b;
    let mut hist = vec![0f64; ctx.n_classes];
    for &r in rows {
        hist[crate::mat::argmax(ctx.probs.row(r))] += 1.0;
    }
    let h: f64 = hist
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / b) * (c / b).ln())
        .sum();
    let class_entropy = if ctx.n_classes > 1 {
        h / (ctx.n_classes as f64).ln()
    } else {
        0.0
    };
    let uncertainty = rows
        .iter()
        .map(|&r| crate::strategy::entropy(ctx.probs.row(r)))
        .sum::<f64>()
        / b;
    let norm: Vec<f32> = rows
        .iter()
        .map(|&r| {
            dot(ctx.features.row(r), ctx.features.row(r))
                .sqrt()
                .max(1e-12)
        })
        .collect();
    let (mut sum, mut pairs) = (0f64, 0usize);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            let c = dot(ctx.features.row(rows[i]), ctx.features.row(rows[j])) / (norm[i] * norm[j]);
            sum += 1.0 - c as f64;
            pairs += 1;
        }
    }
    let feature_diversity = if pairs > 0 { sum / pairs as f64 } else { 0.0 };
    BatchMetrics {
        prob_coverage,
        class_entropy,
        uncertainty,
        feature_diversity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;

    #[test]
    fn batch_metrics_hand_checked() {
        let probs = Mat::from_rows(&[
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.5, 0.5],
            vec![1.0, 0.0],
        ])
        .unwrap();
        let feats = Mat::from_rows(&[
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![-1.0, 0.0],
        ])
        .unwrap();
        let o = crate::strategy::testutil::Owned::new(probs, feats, vec![0], vec![0]);
        let m = batch_metrics(&o.ctx(), &[1, 3]);
        // distances to row 0 in the simplex: √2 and 0 → mean √2/2
        assert!((m.prob_coverage - 2f64.sqrt() / 2.0).abs() < 1e-6);
        // predicted classes 1 and 0 → balanced
        assert!((m.class_entropy - 1.0).abs() < 1e-9);
        assert_eq!(m.uncertainty, 0.0);
        // orthogonal features: cosine distance 1
        assert!((m.feature_diversity - 1.0).abs() < 1e-6);
    }
}
