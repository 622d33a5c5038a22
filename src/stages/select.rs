//! `vlal select`: run the run's strategy on a round's predictions and labels and write the
//! batch to query.

use super::{labeled_rows, read_labels, require};
use crate::cache::Cache;
use crate::config::RunSpec;
use crate::mat::Mat;
use crate::schema::Table;
use crate::strategy::{self, SelectContext};
use crate::{rng, table};
use anyhow::{bail, Result};
use std::time::Instant;

/// Student probabilities of the train rows from a predictions table, in train-pool order.
pub fn train_probs(spec: &RunSpec, cache: &Cache, round: usize) -> Result<Mat> {
    let path = spec.predictions_path(round);
    require(&path, "vlal train")?;
    let f = table::read(&path, Table::Predictions)?;
    let ids = f.strings("sample_id")?;
    let all = f.mat("probs")?;
    if all.cols != cache.n_classes() {
        bail!(
            "{}: probs have {} classes, the dataset has {}",
            path.display(),
            all.cols,
            cache.n_classes()
        );
    }
    let mut out = Mat::zeros(cache.train.ids.len(), all.cols);
    let mut seen = vec![false; out.rows];
    for (j, id) in ids.iter().enumerate() {
        if let Some(&i) = cache.train.index.get(id) {
            out.row_mut(i).copy_from_slice(all.row(j));
            seen[i] = true;
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        bail!(
            "{}: no prediction for train sample '{}'",
            path.display(),
            cache.train.ids[i]
        );
    }
    Ok(out)
}

pub fn run(spec: &RunSpec, cache: &Cache, round: usize, budget: usize) -> Result<()> {
    let lpath = spec.labels_path(round);
    require(&lpath, "vlal label")?;
    let rows = read_labels(&lpath)?;
    let (labeled, labels) = labeled_rows(&lpath, cache, &rows)?;
    let probs = train_probs(spec, cache, round)?;
    let mut is_labeled = vec![false; cache.train.ids.len()];
    labeled.iter().for_each(|&i| is_labeled[i] = true);
    let pool: Vec<usize> = (0..is_labeled.len()).filter(|&i| !is_labeled[i]).collect();
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
    let strat = strategy::by_name(&spec.strategy)?;
    let ctx = SelectContext {
        n_classes: cache.n_classes(),
        probs: &probs,
        features: &cache.train.features,
        labeled: &labeled,
        labels: &labels,
        pool: &pool,
    };
    let start = Instant::now();
    let picks = strat.select(&ctx, budget, &mut rng::stream(spec.seed, "select", round))?;
    let select_s = start.elapsed().as_secs_f64();
    if picks.len() != budget {
        bail!(
            "strategy '{}' returned {} picks for a budget of {budget}",
            spec.strategy,
            picks.len()
        );
    }
    let ids: Vec<&str> = picks
        .iter()
        .map(|p| cache.train.ids[pool[p.pos]].as_str())
        .collect();
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
                table::utf8(&vec![spec.strategy.as_str(); picks.len()]),
            ),
        ],
        &[
            ("select_s", format!("{select_s}")),
            ("config_hash", spec.config_hash()),
        ],
        table::Mode::Replace,
    )?;
    Ok(())
}
