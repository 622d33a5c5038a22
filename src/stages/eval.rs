//! `vlal eval`: score a round's predictions on the test split and append one `results` row
//! (a new file in the run's Hive partition; an existing row is never rewritten).

use crate::cache::Cache;
use crate::config::RunSpec;
use crate::rounds::{pool_rows, Predictions, Round};
use crate::schema::Table;
use crate::{conformal, metrics, progress, table, TOOL_VERSION};
use anyhow::Result;

/// A round's score, as recorded in its results row.
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    /// None without a labeled test split.
    pub accuracy: Option<f64>,
    pub n_labeled: usize,
}

/// Score the round and write its results row; None when the row existed already.
pub fn run(spec: &RunSpec, cache: &Cache, round: usize) -> Result<Option<Scored>> {
    if recorded(spec, round) {
        return Ok(None);
    }
    run_round(
        spec,
        cache,
        &Round::read(&spec.labels_path(round), round, cache)?,
    )
}

/// Whether the round's results row exists (said in the log).
fn recorded(spec: &RunSpec, round: usize) -> bool {
    let out = spec.results_path(round);
    let done = out.exists();
    if done {
        progress::log(format!(
            "{} exists; round {round} already recorded",
            out.display()
        ));
    }
    done
}

/// [`run`] on labels already read.
pub fn run_round(spec: &RunSpec, cache: &Cache, r: &Round) -> Result<Option<Scored>> {
    let round = r.round;
    if recorded(spec, round) {
        return Ok(None);
    }
    let out = spec.results_path(round);
    let preds = Predictions::read(&spec.predictions_path(round))?;
    let train_s: f64 = preds.meta("train_s")?.parse().unwrap_or(f64::NAN);
    // a pool without ground truth has an unlabeled test split: no accuracy then
    let truth: Option<Vec<usize>> = cache
        .test
        .labels
        .iter()
        .map(|l| l.map(|l| l as usize))
        .collect();
    let s = match &truth {
        Some(truth) => {
            let pred = preds.probs(cache, &cache.test.ids)?.argmax_rows();
            Some(metrics::score(&pred, truth, cache.n_classes()))
        }
        None => None,
    };
    let accuracy = s.as_ref().map(|s| s.accuracy);

    let labels = &r.rows;
    let budget_spent: f64 = labels.iter().map(|r| r.cost).sum();
    // selective querying's free labels and how many of them are right (the oracle knows)
    let pseudo: Vec<_> = labels.iter().filter(|r| r.kind == "pseudo").collect();
    let judged: Vec<bool> = labels
        .iter()
        .zip(&r.labeled)
        .filter(|(l, _)| l.kind == "pseudo")
        .filter_map(|(l, &i)| cache.train.labels[i].map(|t| t == l.label))
        .collect();
    let pseudo_accuracy = (!judged.is_empty())
        .then(|| judged.iter().filter(|&&ok| ok).count() as f64 / judged.len() as f64);
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
    if p.select.diagnostics {
        diagnostics(spec, cache, r, &preds)?;
    }
    stopping(spec, cache, r, &preds)?;
    table::write(
        &out,
        Table::Results,
        [
            id_columns(spec, cache, round, labels.len()),
            vec![
                ("budget_spent", table::f64s(&[budget_spent])),
                ("accuracy", table::opt_f64s(&[accuracy])),
                (
                    "macro_f1",
                    table::opt_f64s(&[s.as_ref().map(|s| s.macro_f1)]),
                ),
                (
                    "per_class_acc",
                    table::opt_list_f64(&[s.as_ref().map(|s| s.per_class_acc.clone())]),
                ),
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
                (
                    "aulc",
                    table::opt_f64s(&[
                        accuracy.and_then(|a| run_aulc(spec, round, labels.len(), a))
                    ]),
                ),
                ("n_pseudo", table::i64s(&[pseudo.len() as i64])),
                ("pseudo_accuracy", table::opt_f64s(&[pseudo_accuracy])),
            ],
            provenance_columns(spec, cache),
        ]
        .concat(),
        &[],
        table::Mode::NoClobber,
    )?;
    match &s {
        Some(s) => progress::log(format!(
            "{}: round {round}: accuracy {:.4}, macro-F1 {:.4}, {} labels",
            spec.label(),
            s.accuracy,
            s.macro_f1,
            labels.len()
        )),
        None => progress::log(format!(
            "{}: round {round}: {} labels (no labeled test split: no accuracy)",
            spec.label(),
            labels.len()
        )),
    }
    Ok(Some(Scored {
        accuracy,
        n_labeled: labels.len(),
    }))
}

/// CCMA's teacher–student diagnostics over the round's unlabeled pool, appended like results.
fn diagnostics(spec: &RunSpec, cache: &Cache, r: &Round, preds: &Predictions) -> Result<()> {
    let round = r.round;
    let out = spec.diagnostics_path(round);
    if out.exists() {
        return Ok(());
    }
    let (Some(pt), calib_t) = cache.teacher_probs() else {
        anyhow::bail!("select.diagnostics needs the teacher's logits in the cache");
    };
    let (ps, calib_s) = preds.train_and_calib(cache, true)?;
    let pool = pool_rows(cache, &r.labeled);
    let calib_y = cache
        .calib
        .as_ref()
        .map(|c| c.label_ids())
        .unwrap_or_default();
    let calib = match (&calib_s, &calib_t) {
        (Some(s), Some(t)) => Some((s, t, calib_y.as_slice())),
        _ => None,
    };
    let ccma: crate::strategy::ccma::Params = spec.pipeline.strategy_build().params("ccma")?;
    let cal = conformal::calibrate(&ccma.calibration(), &ps, &pt, &pool, calib)?;
    let rows: Vec<usize> = (0..calib_y.len()).collect();
    let d = conformal::diagnostics(
        &ps,
        &pt,
        &pool,
        cal.student,
        cal.teacher,
        calib.map(|(s, t, y)| (s, t, rows.as_slice(), y)),
    );
    let one = |v: &str| table::utf8(&[v]);
    let f = |v: f64| table::f64s(&[v]);
    table::write(
        &out,
        Table::Diagnostics,
        [
            id_columns(spec, cache, round, r.rows.len()),
            vec![
                ("calibration", one(&cal.how)),
                ("q_student", f(cal.student.q)),
                ("q_teacher", f(cal.teacher.q)),
                ("set_overlap", f(d.set_overlap)),
                ("set_symdiff", f(d.set_symdiff)),
                ("mean_set_student", f(d.mean_set_student)),
                ("mean_set_teacher", f(d.mean_set_teacher)),
                ("top1_disagreement", f(d.top1_disagreement)),
                ("mean_js", f(d.mean_js)),
                ("mean_max_student", f(d.mean_max_student)),
                ("mean_max_teacher", f(d.mean_max_teacher)),
                (
                    "calib_coverage_student",
                    table::opt_f64s(&[d.calib_coverage_student]),
                ),
                (
                    "calib_coverage_teacher",
                    table::opt_f64s(&[d.calib_coverage_teacher]),
                ),
            ],
            provenance_columns(spec, cache),
        ]
        .concat(),
        &[],
        table::Mode::NoClobber,
    )?;
    Ok(())
}

/// The round's stopping row (`src/stopping.rs`): each rule's measurement against the previous
/// round's predictions and the teacher's, and whether it fires; the earlier rounds' rows are the
/// windows' history. Written before the results row, so a round with results has one.
fn stopping(spec: &RunSpec, cache: &Cache, r: &Round, preds: &Predictions) -> Result<()> {
    use crate::stopping::{self as st, Values};
    let round = r.round;
    let out = spec.stopping_path(round);
    if out.exists() {
        return Ok(());
    }
    let cfg = &spec.pipeline.stopping;
    let (c, n) = (cache.n_classes(), cache.train.ids.len());
    let pool = pool_rows(cache, &r.labeled);
    // only when the run itself loads the teacher's logits: a run shares its cache with others
    // in one `vlal run`, and its tables must not depend on which
    let teacher = if super::need_of(spec)?.logits {
        cache.teacher_logits.as_ref()
    } else {
        None
    };
    // the pool's predictions a batch at a time (5 GB at 1.28M × 1000): per row what the rules
    // need, the teacher's probabilities made a row at a time as `Cache::teacher_probs` makes them
    let all: Vec<u32> = (0..c as u32).collect();
    let (mut top1, mut entropy) = (vec![0usize; n], vec![0f64; n]);
    // per row: 1 where the teacher's top-1 class differs, and the JS divergence
    let mut vs_teacher = teacher.map(|_| (vec![0f64; n], vec![0f64; n]));
    let mut t = vec![0f32; c];
    preds.visit(cache, &cache.train.ids, |i, p| {
        let tp = teacher.map(|l| {
            t.copy_from_slice(l.row(i));
            crate::mat::softmax_in_place(&mut t, 1.0);
            &t[..]
        });
        let m = st::row(p, tp, &all);
        (top1[i], entropy[i]) = (m.top1, m.entropy);
        if let (Some((differ, js)), Some((d, j))) = (vs_teacher.as_mut(), m.teacher) {
            (differ[i], js[i]) = (d as u8 as f64, j);
        }
    })?;
    // the previous round's top-1 classes (its predictions stay in the run's folder)
    let prev_path = round.checked_sub(1).map(|p| spec.predictions_path(p));
    let prev = match prev_path.filter(|p| p.exists()) {
        Some(p) => {
            let mut prev = vec![0usize; n];
            Predictions::read(&p)?.visit(cache, &cache.train.ids, |i, p| {
                prev[i] = crate::mat::argmax(p)
            })?;
            Some(prev)
        }
        None => None,
    };
    let mean_h = st::mean_over(&entropy, &pool);
    let dis =
        vs_teacher.map(|(differ, js)| (st::mean_over(&differ, &pool), st::mean_over(&js, &pool)));
    let v = Values {
        kappa: prev.as_ref().map(|p| st::kappa(p, &top1, c)),
        delta_f: prev.as_ref().map(|p| st::delta_f(p, &top1, c)),
        changed: prev.as_ref().map(|p| st::changed(p, &top1, &pool)),
        overall_uncertainty: if c > 1 { mean_h / (c as f64).ln() } else { 0.0 },
        avg_uncertainty: mean_h,
        disagreement: dis.map(|d| d.0),
        js: dis.map(|d| d.1),
    };
    let history: Vec<Values> = (0..round)
        .filter_map(|k| Values::read(&spec.stopping_path(k)).ok())
        .collect();
    let fired = st::fires(cfg, &history, &v);
    let f = |v: f64| table::f64s(&[v]);
    let of = |v: Option<f64>| table::opt_f64s(&[v]);
    let mut cols = id_columns(spec, cache, round, r.rows.len());
    cols.extend([
        ("kappa", of(v.kappa)),
        ("delta_f", of(v.delta_f)),
        ("classification_change", of(v.changed)),
        ("overall_uncertainty", f(v.overall_uncertainty)),
        ("avg_uncertainty", f(v.avg_uncertainty)),
        ("top1_disagreement", of(v.disagreement)),
        ("mean_js", of(v.js)),
    ]);
    for (rule, on) in st::RULES.iter().zip(fired) {
        cols.push((st::column(rule), table::bools(&[on])));
    }
    cols.extend(provenance_columns(spec, cache));
    let thresholds = serde_json::to_string(cfg).expect("serialisable");
    table::write(
        &out,
        Table::Stopping,
        cols,
        &[("thresholds", thresholds)],
        table::Mode::NoClobber,
    )?;
    Ok(())
}

/// The columns that open a results or diagnostics row: which run, round and labels.
fn id_columns(
    spec: &RunSpec,
    cache: &Cache,
    round: usize,
    n_labeled: usize,
) -> Vec<(&'static str, arrow::array::ArrayRef)> {
    let one = |v: &str| table::utf8(&[v]);
    vec![
        ("run_id", one(&spec.run_id())),
        ("pipeline", one(&spec.pipeline.name)),
        ("dataset", one(&cache.dataset)),
        ("strategy", one(&spec.strategy_name())),
        ("trainer", one(&spec.trainer)),
        ("seed", table::i64s(&[spec.seed as i64])),
        ("round", table::i32s(&[round as i32])),
        ("n_labeled", table::i64s(&[n_labeled as i64])),
    ]
}

/// The columns that close it: config hash, model ids, tool version.
fn provenance_columns(
    spec: &RunSpec,
    cache: &Cache,
) -> Vec<(&'static str, arrow::array::ArrayRef)> {
    let one = |v: &str| table::utf8(&[v]);
    vec![
        ("config_hash", one(&spec.config_hash())),
        ("student_model", one(&cache.feature_model.key)),
        ("teacher_model", one(&cache.teacher_model)),
        ("tool_version", one(TOOL_VERSION)),
    ]
}

/// AULC of the run over rounds 0..=round, this round's point added to the previous round's
/// AULC (its area grows by one trapezoid; round 0's row gives the label range), so a round reads
/// two earlier rows, not all of them. Where labels did not grow, it is recomputed from every
/// row. None when an earlier row is missing or unreadable.
fn run_aulc(spec: &RunSpec, round: usize, n_labeled: usize, accuracy: f64) -> Option<f64> {
    let (n, a) = (n_labeled as f64, accuracy);
    let row = |r: usize| -> Option<(f64, f64, Option<f64>)> {
        let t = table::read(&spec.results_path(r), Table::Results).ok()?;
        let n = t.i64s("n_labeled").ok()?.first().copied().flatten()?;
        let a = t.f64s("accuracy").ok()?.first().copied().flatten()?;
        let aulc = t.f64s("aulc").ok()?.first().copied().flatten();
        Some((n as f64, a, aulc))
    };
    if round == 0 {
        return Some(crate::metrics::aulc(&mut [(n, a)]));
    }
    let (n0, _, _) = row(0)?;
    let (np, ap, prev) = row(round - 1)?;
    match prev {
        Some(prev) if np > n0 && n > np => {
            let area = prev * (np - n0) + (n - np) * (ap + a) / 2.0;
            Some(area / (n - n0))
        }
        _ => {
            let mut pts = vec![(n, a)];
            for r in 0..round {
                let (n, a, _) = row(r)?;
                pts.push((n, a));
            }
            Some(crate::metrics::aulc(&mut pts))
        }
    }
}
