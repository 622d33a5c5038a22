//! `vlal-bench select`: time one selection on generated data, apart from the tests.
//! Prints one JSON line: strategy, sizes, seconds for the selection alone, peak RSS (VmHWM).
//! `bench/select_bench.py` runs it next to a numpy version of the same algorithm.

use anyhow::{bail, Result};
use clap::Parser;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;
use vlal::geometry::kcenter_greedy;
use vlal::mat::{softmax_rows, Mat};
use vlal::rng;
use vlal::strategy::badge::kmeanspp;

#[derive(Parser)]
struct Args {
    /// pcoreset | badge
    #[arg(long)]
    strategy: String,
    #[arg(long, default_value_t = 100_000)]
    pool: usize,
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Feature dimension H (BADGE).
    #[arg(long, default_value_t = 2048)]
    dim: usize,
    #[arg(long, default_value_t = 1000)]
    budget: usize,
    /// Labeled points (the initial centers of PCoreSet).
    #[arg(long, default_value_t = 1000)]
    labeled: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn normal(n: usize, r: &mut rng::VRng) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(r)).collect()
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let a = Args::parse();
    vlal::progress::set_quiet(true);
    let mut r = rng::stream(a.seed, "bench", 0);
    let n = a.pool + a.labeled;
    let logits = Mat::new(
        n,
        a.classes,
        normal(n * a.classes, &mut r)
            .iter()
            .map(|v| v * 3.0)
            .collect(),
    )?;
    let probs = softmax_rows(&logits, 1.0);
    drop(logits);
    let secs = match a.strategy.as_str() {
        "pcoreset" => {
            let labeled: Vec<usize> = (0..a.labeled).collect();
            let pool: Vec<usize> = (a.labeled..n).collect();
            let t = Instant::now();
            let picks = kcenter_greedy(&probs, &pool, &labeled, a.budget, true);
            assert_eq!(picks.len(), a.budget);
            t.elapsed().as_secs_f64()
        }
        "badge" => {
            // dual head: a = [p_CE − e_ŷ | p_KD − e_ŷ], h = the shared feature
            let pool: Vec<usize> = (a.labeled..n).collect();
            let p = probs.select_rows(&pool);
            drop(probs);
            let c = a.classes;
            let mut am = Mat::zeros(a.pool, 2 * c);
            for i in 0..a.pool {
                let y = vlal::mat::argmax(p.row(i));
                let row = am.row_mut(i);
                row[..c].copy_from_slice(p.row(i));
                row[c..].copy_from_slice(p.row(i));
                row[y] -= 1.0;
                row[c + y] -= 1.0;
            }
            drop(p);
            let h = Mat::new(a.pool, a.dim, normal(a.pool * a.dim, &mut r))?;
            let t = Instant::now();
            let picks = kmeanspp(&am, &h, a.budget, &mut rng::stream(a.seed, "select", 0));
            assert_eq!(picks.len(), a.budget);
            t.elapsed().as_secs_f64()
        }
        other => bail!("unknown strategy '{other}' (pcoreset or badge)"),
    };
    println!(
        "{{\"impl\": \"vlal\", \"strategy\": \"{}\", \"pool\": {}, \"classes\": {}, \"dim\": {}, \"budget\": {}, \"seconds\": {secs:.3}, \"peak_rss_mib\": {:.0}}}",
        a.strategy,
        a.pool,
        a.classes,
        a.dim,
        a.budget,
        peak_rss_mib()
    );
    Ok(())
}
