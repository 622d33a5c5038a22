//! Uncertainty Herding (Bae et al., 2024): greedily add the point that most raises the
//! uncertainty-weighted coverage mean_x u(x)·max_{s∈L∪S} k(x, s), k = exp(−‖x−s‖²/h²), h = the
//! smallest pairwise distance in L, u = margin uncertainty 1 − (p₁ − p₂), on student features.
//! Candidates and coverage targets are a seeded sample of at most `max_points` pool points, so the
//! kernel matrix stays max_points² floats. [`herd`] is also CCMA's final step.

use super::api::{hashed, Build, Pick, SelectContext, Strategy};
use crate::geometry::{min_sqdist, sqdist};
use crate::mat::Mat;
use crate::rng::{self, VRng};
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `[select.uherding]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Candidates and coverage targets are a seeded sample of at most this many pool points
    /// (the kernel matrix is max_points² floats).
    pub max_points: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            max_points: 5000,
        }
    }
}

impl super::api::Params for Params {}

pub struct UHerding(pub Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(UHerding(b.params("uherding")?)))
}

impl Strategy for UHerding {
    fn name(&self) -> &'static str {
        "uherding"
    }
    fn params(&self) -> serde_json::Value {
        hashed(&self.0)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let m = self.0.max_points.max(budget);
        let mut pos: Vec<usize> = (0..ctx.pool.len()).collect();
        if pos.len() > m {
            pos = rng::sample(&pos, m, rng);
            pos.sort_unstable();
            ctx.notes.add(
                "uherding_sample",
                format!("{m} of {} pool points", ctx.pool.len()),
            );
        }
        let rows: Vec<usize> = pos.iter().map(|&p| ctx.pool[p]).collect();
        let u: Vec<f64> = rows
            .iter()
            .map(|&r| 1.0 - super::margin::margin(ctx.probs.row(r)))
            .collect();
        let h = bandwidth(ctx.features, ctx.labeled, &rows);
        let picks = herd(ctx.features, &rows, &u, ctx.labeled, h, budget);
        Ok(picks
            .into_iter()
            .map(|(i, gain)| Pick {
                pos: pos[i],
                score: gain,
            })
            .collect())
    }
}

/// h = the smallest non-zero pairwise distance between labeled rows; with fewer than two
/// distinct labeled points, the median distance of the candidates to the nearest labeled one
/// (or 1 without labels).
pub fn bandwidth(f: &Mat, labeled: &[usize], rows: &[usize]) -> f64 {
    let mut h = f64::INFINITY;
    for (i, &a) in labeled.iter().enumerate() {
        for &b in &labeled[i + 1..] {
            let d = sqdist(f.row(a), f.row(b)) as f64;
            if d > 1e-12 {
                h = h.min(d.sqrt());
            }
        }
    }
    if h.is_finite() {
        return h;
    }
    let mut d: Vec<f32> = min_sqdist(f, rows, labeled)
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if d.is_empty() {
        return 1.0;
    }
    let mid = d.len() / 2;
    d.select_nth_unstable_by(mid, f32::total_cmp);
    (d[mid] as f64).sqrt()
}

/// Greedy uncertainty-weighted coverage over `rows` (both candidates and targets, weights `u`),
/// starting from the coverage of `labeled`. Returns (position in rows, gain) in pick order;
/// ties go to the lower position.
pub fn herd(
    f: &Mat,
    rows: &[usize],
    u: &[f64],
    labeled: &[usize],
    h: f64,
    budget: usize,
) -> Vec<(usize, f64)> {
    let n = rows.len();
    let inv = 1.0 / (h * h).max(1e-30);
    let kern = |d: f32| (-(d.max(0.0) as f64) * inv).exp() as f32;
    let mut cur: Vec<f32> = min_sqdist(f, rows, labeled)
        .into_iter()
        .map(|d| if d.is_finite() { kern(d) } else { 0.0 })
        .collect();
    // kernel matrix, row c = candidate c against every target
    let k: Vec<f32> = (0..n)
        .into_par_iter()
        .flat_map_iter(|c| {
            let x = f.row(rows[c]);
            rows.iter().map(move |&t| kern(sqdist(x, f.row(t))))
        })
        .collect();
    let mut taken = vec![false; n];
    let mut out = Vec::with_capacity(budget.min(n));
    for _ in 0..budget.min(n) {
        let gains: Vec<f64> = (0..n)
            .into_par_iter()
            .map(|c| {
                if taken[c] {
                    return f64::NEG_INFINITY;
                }
                let kr = &k[c * n..(c + 1) * n];
                kr.iter()
                    .zip(&cur)
                    .zip(u)
                    .map(|((&kv, &cv), &w)| if kv > cv { w * (kv - cv) as f64 } else { 0.0 })
                    .sum()
            })
            .collect();
        let mut best = usize::MAX;
        for c in 0..n {
            if !taken[c] && (best == usize::MAX || gains[c] > gains[best]) {
                best = c;
            }
        }
        taken[best] = true;
        let kr = &k[best * n..(best + 1) * n];
        for (cv, &kv) in cur.iter_mut().zip(kr) {
            *cv = cv.max(kv);
        }
        out.push((best, gains[best] / n.max(1) as f64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herding_prefers_uncertain_uncovered_regions() {
        // labeled at 0; candidates at 0.1 (covered), 5 and 5.1 (uncovered), 10 (uncovered but
        // with near-zero uncertainty)
        let f = Mat::from_rows(&[vec![0.0], vec![0.1], vec![5.0], vec![5.1], vec![10.0]]).unwrap();
        let rows = [1, 2, 3, 4];
        let u = [1.0, 1.0, 1.0, 0.01];
        let p = herd(&f, &rows, &u, &[0], 1.0, 2);
        // first the uncertain pair at 5 (one pick covers both)
        assert!(p[0].0 == 1 || p[0].0 == 2, "{p:?}");
        assert!(p[0].1 > 10.0 * p[1].1);
        assert_eq!(bandwidth(&f, &[0, 2], &rows), 5.0);
        // one labeled point: the median nearest-labeled distance of 0.1, 5, 5.1, 10
        assert!((bandwidth(&f, &[0], &rows) - 5.1).abs() < 1e-5);
    }
}
