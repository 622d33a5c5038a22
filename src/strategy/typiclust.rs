//! TypiClust (Hacohen et al., ICML 2022): k-means with K = |L| + B (at most `max_clusters`) on
//! the student features of L ∪ U; each pick goes to the cluster with the fewest labeled points
//! (ties: the larger), among clusters of at least `min_cluster_size`, and takes its most typical
//! unlabeled point, typicality = 1 / mean distance to its k nearest neighbours in the cluster.
//! When no cluster qualifies any more the strategy says so and draws the rest at random.

use super::api::{finish_at_random, hashed, Build, Pick, SelectContext, Strategy};
use crate::geometry::sqdist;
use crate::kmeans::{kmeans, KMeansCfg};
use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `[select.typiclust]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Neighbours of the typicality 1 / mean distance.
    pub k_nn: usize,
    /// Clusters smaller than this are never sampled.
    pub min_cluster_size: usize,
    pub max_clusters: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            k_nn: 20,
            min_cluster_size: 5,
            max_clusters: 500,
        }
    }
}

impl super::api::Params for Params {
    fn validate(&self) -> Result<()> {
        if self.k_nn == 0 || self.max_clusters == 0 {
            anyhow::bail!("k_nn and max_clusters must be at least 1");
        }
        Ok(())
    }
}

pub struct TypiClust(pub Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(TypiClust(b.params("typiclust")?)))
}

/// Members whose neighbours are searched exhaustively; a larger cluster uses this many sampled
/// neighbours (bounded time and memory).
const MAX_NEIGHBOURHOOD: usize = 5000;

impl Strategy for TypiClust {
    fn name(&self) -> &'static str {
        "typiclust"
    }
    fn params(&self) -> serde_json::Value {
        hashed(&self.0)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let cfg = &self.0;
        let all = ctx.all_rows();
        let mut pool_pos = vec![usize::MAX; ctx.features.rows];
        ctx.pool
            .iter()
            .enumerate()
            .for_each(|(p, &r)| pool_pos[r] = p);
        let k = (ctx.labeled.len() + budget).min(cfg.max_clusters).max(1);
        let cl = kmeans(ctx.features, &all, &KMeansCfg::new(k), rng)?;
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); cl.k()];
        let mut n_labeled = vec![0usize; cl.k()];
        for (i, &a) in cl.assign.iter().enumerate() {
            members[a as usize].push(all[i]);
            if pool_pos[all[i]] == usize::MAX {
                n_labeled[a as usize] += 1;
            }
        }
        let mut typ: Vec<Option<Vec<f64>>> = vec![None; cl.k()];
        let mut taken = vec![false; ctx.pool.len()];
        let mut picks = Vec::with_capacity(budget);
        while picks.len() < budget {
            let avail = |c: usize| {
                members[c]
                    .iter()
                    .any(|&r| pool_pos[r] != usize::MAX && !taken[pool_pos[r]])
            };
            let best = (0..cl.k())
                .filter(|&c| members[c].len() >= cfg.min_cluster_size && avail(c))
                .min_by(|&a, &b| {
                    n_labeled[a]
                        .cmp(&n_labeled[b])
                        .then(members[b].len().cmp(&members[a].len()))
                        .then(a.cmp(&b))
                });
            let Some(c) = best else { break };
            let t =
                typ[c].get_or_insert_with(|| typicality(ctx.features, &members[c], cfg.k_nn, rng));
            let (mut bi, mut bt) = (usize::MAX, f64::NEG_INFINITY);
            for (j, &r) in members[c].iter().enumerate() {
                let p = pool_pos[r];
                if p != usize::MAX && !taken[p] && t[j] > bt {
                    (bi, bt) = (p, t[j]);
                }
            }
            taken[bi] = true;
            n_labeled[c] += 1;
            picks.push(Pick { pos: bi, score: bt });
        }
        Ok(finish_at_random(
            ctx,
            picks,
            budget,
            rng,
            "typiclust (clusters exhausted)",
        ))
    }
}

/// 1 / (mean distance to the k = min(k_nn, n/2) nearest other members + 1e-5), per member.
fn typicality(f: &Mat, members: &[usize], k_nn: usize, rng: &mut VRng) -> Vec<f64> {
    let k = k_nn.min(members.len() / 2).max(1);
    let refs: Vec<usize> = if members.len() > MAX_NEIGHBOURHOOD {
        crate::rng::sample(members, MAX_NEIGHBOURHOOD, rng)
    } else {
        members.to_vec()
    };
    members
        .par_iter()
        .map(|&m| {
            let mut d: Vec<f32> = refs
                .iter()
                .filter(|&&r| r != m)
                .map(|&r| sqdist(f.row(m), f.row(r)).max(0.0).sqrt())
                .collect();
            if d.is_empty() {
                return 0.0;
            }
            let k = k.min(d.len());
            d.select_nth_unstable_by(k - 1, f32::total_cmp);
            let mean = d[..k].iter().map(|&v| v as f64).sum::<f64>() / k as f64;
            1.0 / (mean + 1e-5)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn picks_dense_centres_of_uncovered_clusters_and_falls_back() {
        // two tight blobs of 6 and one outlier; blob A (rows 0..6) has a labeled point.
        let mut rows = Vec::new();
        for i in 0..6 {
            rows.push(vec![0.0 + 0.01 * i as f32, 0.0]);
        }
        for i in 0..6 {
            rows.push(vec![5.0, 0.01 * i as f32]);
        }
        rows.push(vec![-9.0, -9.0]);
        let f = Mat::from_rows(&rows).unwrap();
        let probs = Mat::from_rows(&vec![vec![0.5, 0.5]; 13]).unwrap();
        let o = Owned::new(probs, f, vec![0], vec![0]);
        let ctx = o.ctx();
        let s = TypiClust(Params {
            k_nn: 2,
            min_cluster_size: 2,
            max_clusters: 3,
        });
        // budget 2 → K = |L| + B = 3 clusters: A, B and the outlier
        let p = s
            .select(&ctx, 2, &mut crate::rng::stream(0, "t", 0))
            .unwrap();
        // the unlabeled blob B goes first, at an inner (most typical) point
        let r = picked_rows(&o, &p);
        assert!((7..=10).contains(&r[0]), "{r:?}");
        assert!(ctx.notes.take().is_empty());
        // asking for more than the eligible clusters can give: the outlier cluster is too
        // small, so after blobs A and B are used up the rest is random and noted
        let p = s
            .select(&ctx, 12, &mut crate::rng::stream(0, "t", 0))
            .unwrap();
        assert_eq!(p.len(), 12);
        let notes = ctx.notes.take();
        assert!(
            notes
                .iter()
                .any(|(k, v)| k == "fallback" && v.contains("typiclust")),
            "{notes:?}"
        );
    }
}
