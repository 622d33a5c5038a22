//! `vlal eval`: score a round's predictions on the test split and append one `results` row
//! (a new file in the run's Hive partition; an existing row is never rewritten).

use super::{read_labels, require};
use crate::cache::Cache;
use crate::config::RunSpec;
use crate::schema::Table;
use crate::{metrics, progress, table, TOOL_VERSION};
use anyhow::Result;

pub fn run(spec: &RunSpec, cache: &Cache, round: usize) -> Result<()> {
    let out = spec.results_path(round);
    if out.exists() {
        progress::log(format!(
            "{} exists; round {round} already recorded",
            out.display()
        ));
        return Ok(());
    }
    let ppath = spec.predictions_path(round);
    require(&ppath, "vlal train")?;
    let f = table::read(&ppath, Table::Predictions)?;
    let train_s: f64 = f.meta("train_s")?.parse().unwrap_or(f64::NAN);
    let pred = crate::cache::aligned(&ppath, &f, "probs", &cache.test.ids)?.argmax_rows();
    let truth: Vec<usize> = cache
        .test
        .labels
        .iter()
        .map(|l| l.expect("checked on load") as usize)
        .collect();
    let s = metrics::score(&pred, &truth, cache.n_classes());

    let labels = read_labels(&spec.labels_path(round))?;
    let budget_spent: f64 = labels.iter().map(|r| r.cost).sum();
    let qpath = spec.queries_path(round);
    let queries = if qpath.exists() {
        Some(table::read(&qpath, Table::Queries)?)
    } else {
        None
    };
    let qmeta = |k: &str| -> Option<f64> {
        queries
            .as_ref()
            .and_then(|q| q.meta.get(k))
            .and_then(|v| v.parse().ok())
    };
    let select_s = qmeta("select_s");
    let p = &spec.pipeline;
    let one = |v: &str| table::utf8(&[v]);
    table::write(
        &out,
        Table::Results,
        vec![
            ("run_id", one(&spec.run_id())),
            ("pipeline", one(&p.name)),
            ("dataset", one(&cache.dataset)),
            ("strategy", one(&spec.strategy)),
            ("trainer", one(&spec.trainer)),
            ("seed", table::i64s(&[spec.seed as i64])),
            ("round", table::i32s(&[round as i32])),
            ("n_labeled", table::i64s(&[labels.len() as i64])),
            ("budget_spent", table::f64s(&[budget_spent])),
            ("accuracy", table::f64s(&[s.accuracy])),
            ("macro_f1", table::f64s(&[s.macro_f1])),
            ("per_class_acc", table::list_f64(&[s.per_class_acc])),
            ("train_s", table::f64s(&[train_s])),
            ("select_s", table::opt_f64s(&[select_s])),
            (
                "batch_prob_coverage",
                table::opt_f64s(&[qmeta("batch_prob_coverage")]),
            ),
            (
                "batch_class_entropy",
                table::opt_f64s(&[qmeta("batch_class_entropy")]),
            ),
            (
                "batch_uncertainty",
                table::opt_f64s(&[qmeta("batch_uncertainty")]),
            ),
            (
                "batch_feature_diversity",
                table::opt_f64s(&[qmeta("batch_feature_diversity")]),
            ),
            ("config_hash", one(&spec.config_hash())),
            ("student_model", one(&cache.student_model)),
            ("teacher_model", one(&cache.teacher_model)),
            ("tool_version", one(TOOL_VERSION)),
        ],
        &[],
        table::Mode::NoClobber,
    )?;
    progress::log(format!(
        "{}: round {round}: accuracy {:.4}, macro-F1 {:.4}, {} labels",
        spec.label(),
        s.accuracy,
        s.macro_f1,
        labels.len()
    ));
    Ok(())
}
