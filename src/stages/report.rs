//! `vlal report`: read every results file under a folder with polars (the same scan a user runs
//! in Python) and print accuracy mean ± std over seeds per round, one table per
//! (pipeline, trainer), one column per strategy.

use anyhow::{anyhow, bail, Result};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Per (pipeline, trainer, strategy, round): mean and std of accuracy over seeds, seed count,
/// mean number of labels.
/// Files written by older versions may lack newer columns, so each file is scanned for the
/// columns the summary needs and the scans are concatenated.
pub fn summary(results_dir: &Path, pipeline: Option<&str>) -> Result<DataFrame> {
    let files = parquet_files(results_dir);
    if files.is_empty() {
        bail!(
            "{}: no results files (*.parquet) found",
            results_dir.display()
        );
    }
    let cols = [
        "pipeline",
        "trainer",
        "strategy",
        "round",
        "seed",
        "accuracy",
        "n_labeled",
    ];
    let mut scans = Vec::with_capacity(files.len());
    for f in &files {
        let lf = LazyFrame::scan_parquet(
            PlRefPath::new(f.to_string_lossy().as_ref()),
            ScanArgsParquet::default(),
        )
        .map_err(|e| anyhow!("{}: {e}", f.display()))?;
        scans.push(lf.select(cols.iter().map(|c| col(*c)).collect::<Vec<_>>()));
    }
    let lf = concat(scans, UnionArgs::default())
        .map_err(|e| anyhow!("{}: {e}", results_dir.display()))?;
    let lf = match pipeline {
        Some(p) => lf.filter(col("pipeline").eq(lit(p))),
        None => lf,
    };
    let df = lf
        .group_by([
            col("pipeline"),
            col("trainer"),
            col("strategy"),
            col("round"),
        ])
        .agg([
            col("accuracy").mean().alias("acc_mean"),
            col("accuracy").std(1).fill_null(lit(0.0)).alias("acc_std"),
            col("seed").n_unique().cast(DataType::Int64).alias("seeds"),
            col("n_labeled").mean().alias("n_labeled"),
        ])
        .sort(
            ["pipeline", "trainer", "strategy", "round"],
            SortMultipleOptions::default(),
        )
        .collect()
        .map_err(|e| anyhow!("{}: {e}", results_dir.display()))?;
    Ok(df)
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
    let s = |n: &str| -> Result<Vec<String>> {
        let c = df.column(n)?.as_materialized_series().str()?.clone();
        Ok((0..c.len())
            .map(|i| c.get(i).unwrap_or("").to_string())
            .collect())
    };
    let f = |n: &str| -> Result<Vec<f64>> {
        let c = df
            .column(n)?
            .as_materialized_series()
            .cast(&DataType::Float64)?;
        let c = c.f64()?;
        Ok((0..c.len()).map(|i| c.get(i).unwrap_or(f64::NAN)).collect())
    };
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
