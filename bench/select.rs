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
    /// pcoreset | badge | ccma-v1 … ccma-v5 | ccma-uherding | cb
    #[arg(long)]
    strategy: String,
    /// Teacher (CLIP) embedding dimension (CCMA).
    #[arg(long, default_value_t = 768)]
    teacher_dim: usize,
    /// Labeled calibration rows (CCMA).
    #[arg(long, default_value_t = 1000)]
    calib: usize,
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
    /// k-means clusters (cb; default: the budget, CB's cold-start K = B).
    #[arg(long)]
    k: Option<usize>,
    /// k-means iterations (cb).
    #[arg(long, default_value_t = 20)]
    iters: usize,
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

/// CLIP-like data: class means in a dt-d space, n images = normalised mean of a random class +
/// noise (σ 1.5), prototypes = normalised mean + smaller noise (σ 0.5). Returns (z, prototypes, y).
fn clip_like(n: usize, c: usize, dt: usize, r: &mut rng::VRng) -> Result<(Mat, Mat, Vec<usize>)> {
    use rand::Rng;
    let means = Mat::new(c, dt, normal(c * dt, r))?;
    let y: Vec<usize> = (0..n).map(|_| r.random_range(0..c)).collect();
    let mut z = Mat::new(n, dt, normal(n * dt, r).iter().map(|v| v * 1.5).collect())?;
    for i in 0..n {
        for (o, m) in z.row_mut(i).iter_mut().zip(means.row(y[i])) {
            *o += m;
        }
    }
    z.normalize_rows();
    let mut protos = Mat::new(c, dt, normal(c * dt, r).iter().map(|v| v * 0.5).collect())?;
    for k in 0..c {
        for (o, m) in protos.row_mut(k).iter_mut().zip(means.row(k)) {
            *o += m;
        }
    }
    protos.normalize_rows();
    Ok((z, protos, y))
}

/// CCMA on generated CLIP-like data (`clip_like`): class means in the teacher space, images = normalised
/// mean + noise, prototypes = normalised mean + smaller noise, teacher p = softmax(cos/0.03);
/// student p = softmax(3·N(0,1) + 4·e_y). Rows: pool, then labeled, then calib.
fn ccma(a: &Args, name: &str, r: &mut rng::VRng) -> Result<f64> {
    use vlal::strategy::{Calib, SelectContext};
    let (c, dt) = (a.classes, a.teacher_dim);
    let n = a.pool + a.labeled + a.calib;
    let (z, protos, y) = clip_like(n, c, dt, r)?;
    let mut cos = Mat::zeros(n, c);
    for i in 0..n {
        for k in 0..c {
            cos.row_mut(i)[k] = vlal::geometry::dot(z.row(i), protos.row(k));
        }
    }
    let pt = softmax_rows(&cos, 1.0 / 0.03);
    let mut sl = Mat::new(n, c, normal(n * c, r).iter().map(|v| v * 3.0).collect())?;
    for i in 0..n {
        sl.row_mut(i)[y[i]] += 4.0;
    }
    let ps = softmax_rows(&sl, 1.0);
    let student = Mat::new(n, a.dim, normal(n * a.dim, r))?;
    let pool: Vec<usize> = (0..a.pool).collect();
    let labeled: Vec<usize> = (a.pool..a.pool + a.labeled).collect();
    let labels: Vec<u32> = labeled.iter().map(|&i| y[i] as u32).collect();
    let cal: Vec<usize> = (a.pool + a.labeled..n).collect();
    let (cs, ct) = (ps.select_rows(&cal), pt.select_rows(&cal));
    let cy: Vec<u32> = cal.iter().map(|&i| y[i] as u32).collect();
    let cfg = vlal::config::SelectCfg::default();
    let ctx = SelectContext {
        n_classes: c,
        probs: &ps,
        features: &student,
        labeled: &labeled,
        labels: &labels,
        pool: &pool,
        head: None,
        teacher_probs: Some(&pt),
        teacher_image: Some(&z),
        prototypes: None,
        calib: Some(Calib {
            student: &cs,
            teacher: Some(&ct),
            labels: &cy,
        }),
        retrieved_labels: None,
        notes: Default::default(),
    };
    let s = name
        .parse::<vlal::strategy::StrategySpec>()?
        .build(&vlal::strategy::Build::new(&cfg, 0.75, None))?;
    let t = Instant::now();
    let picks = s.select(&ctx, a.budget, &mut rng::stream(a.seed, "select", 0))?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(picks.len(), a.budget);
    Ok(secs)
}

/// CB at ImageNet scale: generated CLIP-like image embeddings z and prototypes (as for CCMA),
/// p = softmax(cos/0.01) as the prompt learner would give; times the class-guided features
/// F = [z, Σ p·t] over the pool and the k-means on them. Returns (features s, k-means s).
fn cb(a: &Args, r: &mut rng::VRng) -> Result<(f64, f64)> {
    use vlal::kmeans::{kmeans, KMeansCfg};
    let (n, c, dt) = (a.pool, a.classes, a.teacher_dim);
    let (z, protos, _) = clip_like(n, c, dt, r)?;
    let mut probs = Mat::zeros(n, c);
    let all: Vec<usize> = (0..n).collect();
    for block in all.chunks(65_536) {
        let cos = vlal::geometry::matmul_nt(&z.select_rows(block), &protos)?;
        let p = softmax_rows(&cos, 100.0);
        let start = block[0] * c;
        probs.data[start..start + p.data.len()].copy_from_slice(&p.data);
    }
    let t = Instant::now();
    let f = vlal::strategy::cb::class_guided(&probs, &z, &protos, &all)?;
    let features_s = t.elapsed().as_secs_f64();
    drop(probs);
    let cfg = KMeansCfg {
        iters: a.iters,
        ..KMeansCfg::new(a.k.unwrap_or(a.budget))
    };
    let t = Instant::now();
    let cl = kmeans(&f, &all, &cfg, &mut rng::stream(a.seed, "select", 0))?;
    let kmeans_s = t.elapsed().as_secs_f64();
    assert_eq!(cl.assign.len(), n);
    Ok((features_s, kmeans_s))
}

fn main() -> Result<()> {
    let a = Args::parse();
    vlal::progress::set_quiet(true);
    let mut r = rng::stream(a.seed, "bench", 0);
    if a.strategy == "cb" {
        let (features_s, kmeans_s) = cb(&a, &mut r)?;
        println!(
            "{{\"impl\": \"vlal\", \"strategy\": \"cb\", \"pool\": {}, \"classes\": {}, \"dim\": {}, \"k\": {}, \"iters\": {}, \"features_seconds\": {features_s:.3}, \"kmeans_seconds\": {kmeans_s:.3}, \"peak_rss_mib\": {:.0}}}",
            a.pool,
            a.classes,
            2 * a.teacher_dim,
            a.k.unwrap_or(a.budget),
            a.iters,
            peak_rss_mib()
        );
        return Ok(());
    }
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
        s if s.starts_with("ccma") => ccma(&a, s, &mut r)?,
        other => bail!("unknown strategy '{other}' (pcoreset, badge or ccma-*)"),
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
