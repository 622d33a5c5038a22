//! `vlal report`: read every results file under a folder with polars (the same scan a user runs
//! in Python) and print accuracy mean ± std over seeds per round, one table per
//! (pipeline, trainer), one column per strategy.

use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Per (pipeline, trainer, strategy, round): mean and std of accuracy over seeds, seed count,
/// mean number of labels.
/// Files written by older versions may lack newer columns, so each file is read for the
/// columns the summary needs and the frames are stacked. Polars' eager API: its lazy engine
/// (planner, streaming engine) would double polars' share of the build for this one group-by.
#[allow(deprecated)] // the eager GroupBy aggregations
pub fn summary(results_dir: &Path, pipelines: &[&str]) -> Result<DataFrame> {
    let cols = [
        "pipeline",
        "trainer",
        "strategy",
        "round",
        "seed",
        "accuracy",
        "n_labeled",
    ];
    let df = scan(results_dir, pipelines, &cols)?;
    let at = |e: PolarsError| anyhow!("{}: {e}", results_dir.display());
    let keys = ["pipeline", "trainer", "strategy", "round"];
    // group_by_stable: groups in order of first appearance, so the three aggregations align
    let groups = || df.group_by_stable(keys);
    let mean = groups()
        .and_then(|g| g.select(["accuracy", "n_labeled"]).mean())
        .map_err(at)?;
    let std = groups()
        .and_then(|g| g.select(["accuracy"]).std(1))
        .map_err(at)?;
    let seeds = groups()
        .and_then(|g| g.select(["seed"]).n_unique())
        .map_err(at)?;
    let column = |f: &DataFrame, from: &str, to: &str| -> Result<Column> {
        Ok(f.column(from).map_err(at)?.clone().with_name(to.into()))
    };
    let acc_std = column(&std, "accuracy_agg_std", "acc_std")?
        .fill_null(FillNullStrategy::Zero)
        .map_err(at)?;
    let seeds = column(&seeds, "seed_n_unique", "seeds")?
        .cast(&DataType::Int64)
        .map_err(at)?;
    let mut out: Vec<Column> = keys
        .iter()
        .map(|k| column(&mean, k, k))
        .collect::<Result<_>>()?;
    out.push(column(&mean, "accuracy_mean", "acc_mean")?);
    out.push(acc_std);
    out.push(seeds);
    out.push(column(&mean, "n_labeled_mean", "n_labeled")?);
    DataFrame::new_infer_height(out)
        .and_then(|f| f.sort(keys, SortMultipleOptions::default()))
        .map_err(at)
}

/// `cols` of every results file under `results_dir` (only `pipelines`, unless empty), stacked.
fn scan(results_dir: &Path, pipelines: &[&str], cols: &[&str]) -> Result<DataFrame> {
    let files = parquet_files(results_dir);
    if files.is_empty() {
        bail!(
            "{}: no results files (*.parquet) found",
            results_dir.display()
        );
    }
    let mut all: Option<DataFrame> = None;
    for f in &files {
        let at = |e: PolarsError| anyhow!("{}: {e}", f.display());
        let file =
            std::fs::File::open(f).with_context(|| format!("{}: cannot open", f.display()))?;
        let mut df = ParquetReader::new(file)
            .with_columns(Some(cols.iter().map(|c| c.to_string()).collect()))
            .finish()
            .and_then(|d| d.select(cols.iter().copied()))
            .map_err(at)?;
        if !pipelines.is_empty() {
            let names = df
                .column("pipeline")
                .and_then(|c| c.str().cloned())
                .map_err(at)?;
            let keep: BooleanChunked = names
                .iter()
                .map(|p| Some(p.is_some_and(|p| pipelines.contains(&p))))
                .collect();
            df = df.filter(&keep).map_err(at)?;
        }
        match &mut all {
            None => all = Some(df),
            Some(a) => {
                a.vstack_mut_owned(df).map_err(at)?;
            }
        }
    }
    Ok(all.expect("at least one file"))
}

/// Area under the learning curve of one run: the trapezoid area of accuracy over labels,
/// divided by the label range (so in [0, 1]); a single point gives its accuracy.
pub fn aulc(points: &mut [(f64, f64)]) -> f64 {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return f64::NAN;
    };
    let range = last.0 - first.0;
    if range <= 0.0 {
        return points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    }
    let area: f64 = points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    area / range
}

/// AULC per (pipeline, trainer, strategy): mean and std over runs (seeds), the runs' round
/// counts, as text.
pub fn aulc_report(results_dir: &Path, pipelines: &[&str]) -> Result<String> {
    let cols = [
        "run_id",
        "pipeline",
        "trainer",
        "strategy",
        "accuracy",
        "n_labeled",
    ];
    let df = scan(results_dir, pipelines, &cols)?;
    let s = |n: &str| str_col(&df, n);
    let f = |n: &str| f64_col(&df, n);
    let (run, pipe, trainer, strat) = (s("run_id")?, s("pipeline")?, s("trainer")?, s("strategy")?);
    let (acc, nl) = (f("accuracy")?, f("n_labeled")?);
    let mut runs: BTreeMap<(String, String, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for i in 0..df.height() {
        runs.entry((
            pipe[i].clone(),
            trainer[i].clone(),
            strat[i].clone(),
            run[i].clone(),
        ))
        .or_default()
        .push((nl[i], acc[i]));
    }
    let mut groups: BTreeMap<(String, String, String), Vec<(f64, usize)>> = BTreeMap::new();
    for ((p, t, s, _), mut pts) in runs {
        let n = pts.len();
        groups
            .entry((p, t, s))
            .or_default()
            .push((aulc(&mut pts), n));
    }
    let mut out =
        String::from("AULC (area under accuracy vs labels, normalised), mean ± std over seeds\n");
    out += &format!(
        "{:<16} {:<10} {:<18} {:>8} {:>8} {:>6} {:>7}\n",
        "pipeline", "trainer", "strategy", "aulc", "std", "seeds", "rounds"
    );
    for ((p, t, s), v) in &groups {
        let n = v.len() as f64;
        let mean = v.iter().map(|x| x.0).sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x.0 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let rounds = v.iter().map(|x| x.1).min().unwrap_or(0);
        out += &format!(
            "{p:<16} {t:<10} {s:<18} {mean:>8.4} {sd:>8.4} {:>6} {rounds:>7}\n",
            v.len()
        );
    }
    Ok(out)
}

pub(crate) fn str_col(df: &DataFrame, n: &str) -> Result<Vec<String>> {
    let c = df.column(n)?.as_materialized_series().str()?.clone();
    Ok((0..c.len())
        .map(|i| c.get(i).unwrap_or("").to_string())
        .collect())
}

pub(crate) fn f64_col(df: &DataFrame, n: &str) -> Result<Vec<f64>> {
    let c = df
        .column(n)?
        .as_materialized_series()
        .cast(&DataType::Float64)?;
    let c = c.f64()?;
    Ok((0..c.len()).map(|i| c.get(i).unwrap_or(f64::NAN)).collect())
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
pub fn render(df: &DataFrame, spread: Spread) -> Result<String> {
    let s = |n: &str| str_col(df, n);
    let f = |n: &str| f64_col(df, n);
    let (pipe, trainer, strat) = (s("pipeline")?, s("trainer")?, s("strategy")?);
    let (round, mean, std, seeds, nl) = (
        f("round")?,
        f("acc_mean")?,
        f("acc_std")?,
        f("seeds")?,
        f("n_labeled")?,
    );
    // (pipeline, trainer) → round → strategy → cell
    let mut blocks: BTreeMap<(String, String), BTreeMap<i64, (f64, BTreeMap<String, String>)>> =
        BTreeMap::new();
    let mut strategies: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for i in 0..df.height() {
        let key = (pipe[i].clone(), trainer[i].clone());
        let n = seeds[i] as usize;
        let half = match spread {
            Spread::Std => std[i],
            Spread::Ci95 if n > 1 => t975(n - 1) * std[i] / (n as f64).sqrt(),
            Spread::Ci95 => 0.0,
        };
        let cell = format!("{:.4} ± {half:.4} (n={n})", mean[i]);
        let row = blocks
            .entry(key.clone())
            .or_default()
            .entry(round[i] as i64)
            .or_insert((nl[i], BTreeMap::new()));
        row.1.insert(strat[i].clone(), cell);
        let list = strategies.entry(key).or_default();
        if !list.contains(&strat[i]) {
            list.push(strat[i].clone());
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

    #[test]
    fn aulc_is_the_normalised_trapezoid_area() {
        // accuracy 0.5 → 1.0 linearly over 10 → 30 labels: mean height 0.75
        let mut p = vec![(30.0, 1.0), (10.0, 0.5), (20.0, 0.75)];
        assert!((aulc(&mut p) - 0.75).abs() < 1e-12);
        // a step: 0.2 on [0, 10], then 0.8 at 20 → (10·0.2 + 10·0.5)/20
        let mut q = vec![(0.0, 0.2), (10.0, 0.2), (20.0, 0.8)];
        assert!((aulc(&mut q) - 0.35).abs() < 1e-12);
        assert_eq!(aulc(&mut [(5.0, 0.4)]), 0.4);
        assert!(aulc(&mut []).is_nan());
    }
}
