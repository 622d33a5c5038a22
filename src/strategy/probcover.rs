//! ProbCover (Yehuda et al., NeurIPS 2022): a δ-ball graph on the student features of L ∪ U;
//! points covered by a labeled ball are removed, then each pick is the pool point whose ball
//! covers the most uncovered points. δ defaults to the largest grid value whose ball purity
//! under k-means (K = C) pseudo-labels is ≥ `purity`. Once everything is covered the strategy
//! says so and draws the rest at random, as the released code does.

use super::api::{finish_at_random, hashed, Build, Pick, SelectContext, Strategy};
use crate::kmeans::{kmeans, KMeansCfg};
use crate::mat::Mat;
use crate::rng::{self, VRng};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `[select.probcover]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Ball radius δ (Euclidean on L2-normalised features); default: the largest δ on a grid
    /// whose ball purity under k-means (K = C) pseudo-labels is ≥ `purity`.
    pub delta: Option<f32>,
    pub purity: f64,
    /// Points used to estimate the purity.
    pub purity_sample: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            delta: None,
            purity: 0.95,
            purity_sample: 5000,
        }
    }
}

impl super::api::Params for Params {
    fn validate(&self) -> Result<()> {
        if self.delta.is_some_and(|d| !(d > 0.0)) || self.purity_sample == 0 {
            anyhow::bail!("delta must be positive and purity_sample at least 1");
        }
        Ok(())
    }
}

pub struct ProbCover(pub Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(ProbCover(b.params("probcover")?)))
}

/// Edges kept at most (4 bytes each): a δ so large that the graph outgrows this is refused.
const MAX_EDGES: usize = 200_000_000;

impl Strategy for ProbCover {
    fn name(&self) -> &'static str {
        "probcover"
    }
    fn params(&self) -> serde_json::Value {
        hashed(&self.0)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let cfg = &self.0;
        let all = ctx.all_rows();
        let delta = match cfg.delta {
            Some(d) => d,
            None => {
                let d = auto_delta(ctx, &all, cfg.purity, cfg.purity_sample, rng)?;
                ctx.notes.add("probcover_delta", format!("{d}"));
                d
            }
        };
        let graph = ball_graph(ctx.features, &all, delta)?;
        let mut local = vec![usize::MAX; ctx.features.rows];
        all.iter().enumerate().for_each(|(i, &r)| local[r] = i);
        let mut covered = vec![false; all.len()];
        for &l in ctx.labeled {
            for &j in &graph[local[l]] {
                covered[j as usize] = true;
            }
        }
        let mut taken = vec![false; ctx.pool.len()];
        let mut picks = Vec::with_capacity(budget);
        while picks.len() < budget {
            let (mut best, mut best_deg) = (usize::MAX, 0usize);
            for (p, &r) in ctx.pool.iter().enumerate() {
                if taken[p] {
                    continue;
                }
                let deg = graph[local[r]]
                    .iter()
                    .filter(|&&j| !covered[j as usize])
                    .count();
                if deg > best_deg {
                    (best, best_deg) = (p, deg);
                }
            }
            if best_deg == 0 {
                break;
            }
            taken[best] = true;
            for &j in &graph[local[ctx.pool[best]]] {
                covered[j as usize] = true;
            }
            picks.push(Pick {
                pos: best,
                score: best_deg as f64,
            });
        }
        Ok(finish_at_random(
            ctx,
            picks,
            budget,
            rng,
            "probcover (all points covered)",
        ))
    }
}

/// For each row of `rows` (local index i), the local indices j with ‖f_i − f_j‖ ≤ δ (self
/// included), by blocked products.
fn ball_graph(f: &Mat, rows: &[usize], delta: f32) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut edges = 0usize;
    let d2 = delta * delta;
    for_each_block(f, rows, rows, |_, d| {
        for i in 0..d.rows {
            let nb: Vec<u32> = (0..d.cols as u32)
                .filter(|&j| d.row(i)[j as usize] <= d2)
                .collect();
            edges += nb.len();
            out.push(nb);
        }
        if edges > MAX_EDGES {
            bail!("probcover: δ = {delta} gives more than {MAX_EDGES} edges; set a smaller select.probcover.delta");
        }
        Ok(())
    })?;
    Ok(out)
}

/// Squared distances of blocks of rows `a` against all rows `b` of `f`.
fn for_each_block(
    f: &Mat,
    a: &[usize],
    b: &[usize],
    each: impl FnMut(usize, &Mat) -> Result<()>,
) -> Result<()> {
    crate::geometry::sqdist_blocks(f, a, &f.select_rows(b), each)
}

/// The largest δ on a 0.05 grid (up to 1.0) whose purity — the share of sampled points with no
/// point of another k-means (K = C) cluster within δ — is ≥ `purity`; the smallest grid value
/// when none reaches it.
fn auto_delta(
    ctx: &SelectContext,
    all: &[usize],
    purity: f64,
    sample: usize,
    rng: &mut VRng,
) -> Result<f32> {
    let cl = kmeans(ctx.features, all, &KMeansCfg::new(ctx.n_classes), rng)?;
    let mut pos: Vec<usize> = (0..all.len()).collect();
    if pos.len() > sample {
        pos = rng::sample(&pos, sample, rng);
        pos.sort_unstable();
    }
    let probe: Vec<usize> = pos.iter().map(|&i| all[i]).collect();
    // distance from each probe to the nearest point of another cluster
    let mut nearest_other = Vec::with_capacity(probe.len());
    for_each_block(ctx.features, &probe, all, |start, d| {
        for i in 0..d.rows {
            let own = cl.assign[pos[start + i]];
            let m = (0..d.cols)
                .filter(|&j| cl.assign[j] != own)
                .map(|j| d.row(i)[j])
                .fold(f32::INFINITY, f32::min);
            nearest_other.push(m.sqrt());
        }
        Ok(())
    })?;
    let grid: Vec<f32> = (1..=20).map(|i| i as f32 * 0.05).collect();
    let n = nearest_other.len().max(1) as f64;
    let best = grid
        .iter()
        .copied()
        .filter(|&d| nearest_other.iter().filter(|&&m| m > d).count() as f64 / n >= purity)
        .fold(None, |_, d| Some(d));
    Ok(best.unwrap_or(grid[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn greedy_covers_the_densest_ball_first_and_falls_back_when_covered() {
        // a ball of 5 points near (0,0), a pair near (3,0), and one isolated point at (9,9)
        let rows = vec![
            vec![0.0, 0.0],
            vec![0.1, 0.0],
            vec![0.0, 0.1],
            vec![-0.1, 0.0],
            vec![0.0, -0.1],
            vec![3.0, 0.0],
            vec![3.1, 0.0],
            vec![9.0, 9.0],
        ];
        let f = Mat::from_rows(&rows).unwrap();
        let probs = Mat::from_rows(&vec![vec![1.0]; 8]).unwrap();
        let o = Owned::new(probs, f, vec![7], vec![0]);
        let ctx = o.ctx();
        let s = ProbCover(Params {
            delta: Some(0.15),
            ..Default::default()
        });
        let p = s
            .select(&ctx, 2, &mut crate::rng::stream(0, "p", 0))
            .unwrap();
        // the centre (0,0) reaches all 5; then one of the pair
        assert_eq!(picked_rows(&o, &p), vec![0, 5]);
        assert_eq!(p[0].score, 5.0);
        // budget 4: after the two balls everything is covered → 2 at random, noted
        let p = s
            .select(&ctx, 4, &mut crate::rng::stream(0, "p", 0))
            .unwrap();
        assert_eq!(p.len(), 4);
        assert!(ctx
            .notes
            .take()
            .iter()
            .any(|(k, v)| k == "fallback" && v.contains("covered")));
    }
}
