//! `vlal report`: read every results file under a folder and print accuracy mean ± std over
//! seeds per round, one table per (pipeline, trainer), one column per strategy, and each
//! strategy's area under the learning curve. The files are read with the project's Parquet
//! reader; the end-to-end tests check that Polars, as a user reads them, finds the same summary.

use crate::table;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use crate::plot::Group;

/// The columns of one results row that the report uses.
pub struct Row {
    /// The run (`run_id`; the seed in files from versions without it).
    run: Option<String>,
    pipeline: String,
    trainer: String,
    strategy: String,
    round: i64,
    seed: Option<String>,
    accuracy: Option<f64>,
    n_labeled: Option<f64>,
}

/// Per (pipeline, trainer, strategy, round), sorted by these keys: mean and std of accuracy
/// over seeds, seed count, mean number of labels (nulls are left out of the means, as Polars
/// does).
pub fn summary(results_dir: &Path, pipelines: &[&str]) -> Result<Vec<Group>> {
    Ok(summarise(&scan(results_dir, pipelines)?))
}

/// [`summary`] of rows already read.
pub fn summarise(rows: &[Row]) -> Vec<Group> {
    type Key = (String, String, String, i64);
    let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let key = (
            r.pipeline.clone(),
            r.trainer.clone(),
            r.strategy.clone(),
            r.round,
        );
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((pipeline, trainer, strategy, round), rows)| {
            let acc: Vec<f64> = rows.iter().filter_map(|r| r.accuracy).collect();
            let labels: Vec<f64> = rows.iter().filter_map(|r| r.n_labeled).collect();
            let (acc_mean, acc_std) = mean_std(&acc);
            Group {
                pipeline,
                trainer,
                strategy,
                round,
                acc_mean,
                acc_std,
                seeds: rows.iter().map(|r| &r.seed).collect::<BTreeSet<_>>().len(),
                n_labeled: mean_std(&labels).0,
            }
        })
        .collect()
}

/// Mean (NaN when empty) and sample standard deviation (0 below two values).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

/// The rows of every results file under `results_dir` (only `pipelines`, unless empty).
pub fn scan(results_dir: &Path, pipelines: &[&str]) -> Result<Vec<Row>> {
    let files = parquet_files(results_dir);
    if files.is_empty() {
        bail!(
            "{}: no results files (*.parquet) found",
            results_dir.display()
        );
    }
    let cols = [
        "run_id",
        "pipeline",
        "trainer",
        "strategy",
        "round",
        "seed",
        "accuracy",
        "n_labeled",
    ];
    let mut out = Vec::new();
    for f in &files {
        let t = table::read_columns(f, &cols)?;
        let key = |n: &str| -> Result<Vec<String>> {
            t.texts(n)?
                .into_iter()
                .map(|v| {
                    v.ok_or_else(|| anyhow::anyhow!("{}: column '{n}' has an empty value", t.path))
                })
                .collect()
        };
        let (pipeline, trainer, strategy) = (key("pipeline")?, key("trainer")?, key("strategy")?);
        let round = t.numbers("round")?;
        let (seed, accuracy, n_labeled) = (
            t.texts("seed")?,
            t.numbers("accuracy")?,
            t.numbers("n_labeled")?,
        );
        let run = if t.has("run_id") {
            t.texts("run_id")?
        } else {
            seed.clone()
        };
        for i in 0..t.rows {
            if !pipelines.is_empty() && !pipelines.contains(&pipeline[i].as_str()) {
                continue;
            }
            let Some(round) = round[i] else {
                bail!("{}: column 'round' has an empty value", t.path);
            };
            out.push(Row {
                run: run[i].clone(),
                pipeline: pipeline[i].clone(),
                trainer: trainer[i].clone(),
                strategy: strategy[i].clone(),
                round: round as i64,
                seed: seed[i].clone(),
                accuracy: accuracy[i],
                n_labeled: n_labeled[i],
            });
        }
    }
    Ok(out)
}

/// AULC per (pipeline, trainer, strategy): mean and std over runs (seeds), the runs' round
/// counts, as text.
pub fn aulc_report(results_dir: &Path, pipelines: &[&str]) -> Result<String> {
    Ok(aulc_text(&scan(results_dir, pipelines)?))
}

/// [`aulc_report`] of rows already read.
pub fn aulc_text(rows: &[Row]) -> String {
    type Run<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);
    let mut runs: BTreeMap<Run, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let run = (
            r.pipeline.as_str(),
            r.trainer.as_str(),
            r.strategy.as_str(),
            r.run.as_deref(),
        );
        runs.entry(run).or_default().push((
            r.n_labeled.unwrap_or(f64::NAN),
            r.accuracy.unwrap_or(f64::NAN),
        ));
    }
    let mut groups: BTreeMap<(&str, &str, &str), Vec<(f64, usize)>> = BTreeMap::new();
    for ((p, t, s, _), mut pts) in runs {
        let n = pts.len();
        groups
            .entry((p, t, s))
            .or_default()
            .push((crate::metrics::aulc(&mut pts), n));
    }
    let mut out =
        String::from("AULC (area under accuracy vs labels, normalised), mean ± std over seeds\n");
    out += &format!(
        "{:<16} {:<10} {:<18} {:>8} {:>8} {:>6} {:>7}\n",
        "pipeline", "trainer", "strategy", "aulc", "std", "seeds", "rounds"
    );
    for ((p, t, s), v) in &groups {
        let areas: Vec<f64> = v.iter().map(|x| x.0).collect();
        let (mean, sd) = mean_std(&areas);
        let rounds = v.iter().map(|x| x.1).min().unwrap_or(0);
        out += &format!(
            "{p:<16} {t:<10} {s:<18} {mean:>8.4} {sd:>8.4} {:>6} {rounds:>7}\n",
            v.len()
        );
    }
    out
}

/// Two-sided 95% Student-t quantile t_{0.975, df}.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// What follows the ± of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    /// Sample standard deviation over seeds.
    Std,
    /// Half-width of the 95% confidence interval of the mean (Student t over seeds).
    Ci95,
}

/// The summary as text: one block per (pipeline, trainer); rows = rounds, columns = strategies.
pub fn render(groups: &[Group], spread: Spread) -> Result<String> {
    // (pipeline, trainer) → round → strategy → cell
    let mut blocks: BTreeMap<(String, String), BTreeMap<i64, (f64, BTreeMap<String, String>)>> =
        BTreeMap::new();
    let mut strategies: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for g in groups {
        let key = (g.pipeline.clone(), g.trainer.clone());
        let n = g.seeds;
        let half = match spread {
            Spread::Std => g.acc_std,
            Spread::Ci95 if n > 1 => t975(n - 1) * g.acc_std / (n as f64).sqrt(),
            Spread::Ci95 => 0.0,
        };
        let cell = if g.acc_mean.is_nan() {
            format!("no test labels (n={n})")
        } else {
            format!("{:.4} ± {half:.4} (n={n})", g.acc_mean)
        };
        let row = blocks
            .entry(key.clone())
            .or_default()
            .entry(g.round)
            .or_insert((g.n_labeled, BTreeMap::new()));
        row.1.insert(g.strategy.clone(), cell);
        let list = strategies.entry(key).or_default();
        if !list.contains(&g.strategy) {
            list.push(g.strategy.clone());
        }
    }
    let mut out = String::new();
    for (key, rounds) in &blocks {
        let cols = &strategies[key];
        out += &format!(
            "pipeline {} · trainer {} · test accuracy, mean ± {} over seeds\n",
            key.0,
            key.1,
            if spread == Spread::Std {
                "std"
            } else {
                "95% CI"
            }
        );
        let w = 26;
        out += &format!("{:>5} {:>9}", "round", "labels");
        for c in cols {
            out += &format!(" {c:>w$}");
        }
        out += "\n";
        for (r, (labels, cells)) in rounds {
            out += &format!("{r:>5} {labels:>9.1}");
            for c in cols {
                out += &format!(" {:>w$}", cells.get(c).map(String::as_str).unwrap_or("-"));
            }
            out += "\n";
        }
        out += "\n";
    }
    Ok(out)
}

/// `vlal report --stopping`: for each (pipeline, trainer, strategy) and stopping rule
/// (`src/stopping.rs`), over its runs (seeds): in how many runs the rule fires; where it first
/// fires, on average over those runs (round, labels, test accuracy); what stopping there gives up
/// against the run's last recorded round (accuracy lost, labels saved); and the rule's statistic
/// at the runs' last round next to its threshold, to see how near the rule came.
pub fn stopping_text(
    results_dir: &Path,
    stopping_dir: &Path,
    pipelines: &[&str],
) -> Result<String> {
    use crate::stopping::{self as st, StoppingCfg, Values};
    let rows = scan(results_dir, pipelines)?;
    // (run, round) → (labels, accuracy)
    let mut scored: BTreeMap<(String, i64), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for r in &rows {
        if let Some(run) = &r.run {
            scored.insert((run.clone(), r.round), (r.n_labeled, r.accuracy));
        }
    }
    let files = parquet_files(stopping_dir);
    if files.is_empty() {
        bail!(
            "{}: no stopping files (*.parquet) found (runs write them from this version on)",
            stopping_dir.display()
        );
    }
    type Group = (String, String, String);
    struct Run {
        cfg: StoppingCfg,
        rounds: BTreeMap<i64, (Values, Vec<bool>)>,
    }
    let mut runs: BTreeMap<Group, BTreeMap<String, Run>> = BTreeMap::new();
    for f in &files {
        let t = table::read(f, crate::schema::Table::Stopping)?;
        let text = |n: &str| t.strings(n);
        let (run, pipeline, trainer, strategy) = (
            text("run_id")?,
            text("pipeline")?,
            text("trainer")?,
            text("strategy")?,
        );
        let round = t.i32s("round")?;
        let cfg: StoppingCfg = t
            .meta
            .get("thresholds")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let verdicts = st::RULES
            .iter()
            .map(|rule| t.bools(st::column(rule)))
            .collect::<Result<Vec<_>>>()?;
        for i in 0..t.rows {
            if !pipelines.is_empty() && !pipelines.contains(&pipeline[i].as_str()) {
                continue;
            }
            let key = (pipeline[i].clone(), trainer[i].clone(), strategy[i].clone());
            let fired = verdicts.iter().map(|v| v[i].unwrap_or(false)).collect();
            let r = runs
                .entry(key)
                .or_default()
                .entry(run[i].clone())
                .or_insert(Run {
                    cfg: cfg.clone(),
                    rounds: BTreeMap::new(),
                });
            r.rounds.insert(
                round[i].unwrap_or(0) as i64,
                (Values::of_row(&t, i)?, fired),
            );
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let fmt = |v: Option<f64>, digits: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "n/a".into(),
    };
    let mut out = String::from(
        "stopping rules over each configuration's runs: fired = runs where the rule fires / runs; \
         round, labels, accuracy = where it first fires (mean over those runs); given_up = \
         accuracy of the run's last round − accuracy there; saved = labels not bought; at_end = \
         the rule's statistic at the runs' last round (mean), against its threshold\n",
    );
    out += &format!(
        "{:<14} {:<8} {:<16} {:<22} {:>5} {:>5} {:>7} {:>8} {:>8} {:>6} {:>8} {:>9}\n",
        "pipeline",
        "trainer",
        "strategy",
        "rule",
        "fired",
        "round",
        "labels",
        "accuracy",
        "given_up",
        "saved",
        "at_end",
        "threshold"
    );
    for ((pipeline, trainer, strategy), group) in &runs {
        for (k, rule) in st::RULES.iter().enumerate() {
            let (mut at, mut lab, mut acc, mut lost, mut saved, mut end) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            let mut fired = 0;
            for (run, r) in group {
                let values: Vec<&Values> = r.rounds.values().map(|(v, _)| v).collect();
                if let Some((last, before)) = values.split_last() {
                    let history: Vec<Values> = before.iter().map(|v| (*v).clone()).collect();
                    if let Some(x) = st::statistics(&r.cfg, &history, last)[k] {
                        end.push(x);
                    }
                }
                let Some(first) = r.rounds.iter().find(|(_, (_, f))| f[k]).map(|(r, _)| *r) else {
                    continue;
                };
                fired += 1;
                at.push(first as f64);
                let last = scored
                    .range((run.clone(), i64::MIN)..=(run.clone(), i64::MAX))
                    .next_back()
                    .map(|(_, v)| *v);
                let (last_n, last_acc) = last.unwrap_or((None, None));
                let (n, a) = scored
                    .get(&(run.clone(), first))
                    .copied()
                    .unwrap_or((None, None));
                lab.extend(n);
                acc.extend(a);
                lost.extend(a.zip(last_acc).map(|(a, l)| l - a));
                saved.extend(n.zip(last_n).map(|(a, l)| l - a));
            }
            let thr = st::thresholds(&group.values().next().expect("a run").cfg)[k];
            let measured = !end.is_empty();
            out += &format!(
                "{pipeline:<14} {trainer:<8} {strategy:<16} {rule:<22} {:>5} {:>5} {:>7} {:>8} {:>8} {:>6} {:>8} {:>9}\n",
                if measured { format!("{fired}/{}", group.len()) } else { "n/a".into() },
                // "-": the rule never fired; "n/a": no value (no test labels)
                if fired == 0 { "-".into() } else { fmt(mean(&at), 1) },
                if fired == 0 { "-".into() } else { fmt(mean(&lab), 1) },
                if fired == 0 { "-".into() } else { fmt(mean(&acc), 4) },
                if fired == 0 { "-".into() } else { fmt(mean(&lost), 4) },
                if fired == 0 { "-".into() } else { fmt(mean(&saved), 1) },
                fmt(mean(&end), 4),
                format!("{}{thr}", if k == 0 { "≥ " } else if k == 2 { "≤ " } else { "< " }),
            );
        }
    }
    if out.contains(" disagreement ")
        && out
            .lines()
            .any(|l| l.contains(" disagreement ") && l.contains(" n/a "))
    {
        out += "disagreement n/a: the run did not load the teacher's logits ([stopping] teacher = true measures it)\n";
    }
    Ok(out)
}

/// Every `*.parquet` file under `dir`, sorted (temporary files end in `.tmp` and are skipped).
pub fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(path: &Path, cols: Vec<(&str, arrow::array::ArrayRef)>) {
        let batch = arrow::array::RecordBatch::try_from_iter(cols).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn results(accuracy: arrow::array::ArrayRef) -> Vec<(&'static str, arrow::array::ArrayRef)> {
        use arrow::array::{Int32Array, Int64Array, StringArray};
        use std::sync::Arc;
        let text = |v: [&str; 3]| Arc::new(StringArray::from(v.to_vec())) as _;
        vec![
            ("pipeline", text(["p", "p", "p"])),
            ("trainer", text(["linear", "linear", "linear"])),
            ("strategy", text(["random", "random", "random"])),
            ("round", Arc::new(Int32Array::from(vec![1, 0, 1])) as _),
            ("seed", Arc::new(Int64Array::from(vec![0, 0, 1])) as _),
            ("accuracy", accuracy),
            ("n_labeled", Arc::new(Int64Array::from(vec![8, 4, 9])) as _),
        ]
    }

    #[test]
    fn summary_groups_any_numeric_types_and_names_the_bad_file() {
        use arrow::array::{Float32Array, StringArray};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        // no run_id (an older file), accuracy as float32 and one null
        let acc = Float32Array::from(vec![Some(0.5), None, Some(0.75)]);
        write_raw(&dir.path().join("a/r.parquet"), results(Arc::new(acc)));
        let g = summary(dir.path(), &[]).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].round, g[0].seeds, g[0].n_labeled), (0, 1, 4.0));
        assert!(g[0].acc_mean.is_nan(), "only a null accuracy: {:?}", g[0]);
        assert_eq!((g[1].round, g[1].seeds, g[1].n_labeled), (1, 2, 8.5));
        assert_eq!(
            (g[1].acc_mean, g[1].acc_std),
            (0.625, 0.125f64.hypot(0.125))
        );
        assert!(summary(dir.path(), &["other"]).unwrap().is_empty());
        let aulc = aulc_report(dir.path(), &[]).unwrap();
        assert!(aulc.contains("random"), "{aulc}");

        // accuracy stored as text
        let bad = dir.path().join("b/r.parquet");
        let text = StringArray::from(vec!["0.5", "x", "0.7"]);
        write_raw(&bad, results(Arc::new(text)));
        let e = summary(dir.path(), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: column 'accuracy' holds Utf8, not numbers",
                bad.display()
            )
        );
        // a truncated file
        let bytes = std::fs::read(dir.path().join("a/r.parquet")).unwrap();
        std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
        let e = summary(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a readable Parquet file", bad.display())),
            "{e}"
        );
        // a missing column
        let mut cols = results(Arc::new(Float32Array::from(vec![0.5, 0.6, 0.7])));
        cols.retain(|c| c.0 != "round");
        write_raw(&bad, cols);
        let e = summary(dir.path(), &[]).unwrap_err().to_string();
        assert_eq!(e, format!("{}: missing column 'round'", bad.display()));
    }
}
