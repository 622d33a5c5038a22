//! Seeded Lloyd k-means and nearest-centroid search in pure Rust (candle's gemm for the distance
//! products), used by CCMA's subpool and final diversity, DropQuery, Alfa-mix, TypiClust and CB.
//!
//! Centroids start at k-means++ seeds when that is cheap (k ≤ 1000 and k·n·d ≤ 2^33), else at
//! distinct random points. The rest follows faiss's `Kmeans` defaults: training uses
//! at most `max_points_per_centroid · k` sampled points, an empty cluster is re-seeded by splitting
//! the largest one, and a final pass assigns every point. Distances are computed in blocks of rows,
//! so memory stays at O(block · k + k · d) besides the data.

use crate::mat::Mat;
use crate::rng::{self, VRng};
use anyhow::{bail, Result};

#[derive(Clone, Debug)]
pub struct KMeansCfg {
    pub k: usize,
    pub iters: usize,
    pub max_points_per_centroid: usize,
    /// k-means++ seeding (sklearn's default) up to this k; above it, distinct random points
    /// (faiss's default), since ++ seeding costs k sequential passes over the data.
    pub plusplus_up_to: usize,
}

impl KMeansCfg {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            iters: 20,
            max_points_per_centroid: 256,
            plusplus_up_to: 1000,
        }
    }
}

/// The result: `assign[i]` is the cluster of `rows[i]`, `dist[i]` its squared distance to the
/// cluster's centroid.
pub struct Clusters {
    pub centroids: Mat,
    pub assign: Vec<u32>,
    pub dist: Vec<f32>,
}

impl Clusters {
    pub fn k(&self) -> usize {
        self.centroids.rows
    }
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![0; self.k()];
        self.assign.iter().for_each(|&a| s[a as usize] += 1);
        s
    }
    /// For each non-empty cluster, the position (in the clustered rows) of its member nearest the
    /// centroid; ties go to the lower position. Clusters in index order.
    pub fn medoids(&self) -> Vec<usize> {
        let mut best: Vec<Option<usize>> = vec![None; self.k()];
        for (i, &a) in self.assign.iter().enumerate() {
            let b = &mut best[a as usize];
            if b.is_none_or(|j| self.dist[i] < self.dist[j]) {
                *b = Some(i);
            }
        }
        best.into_iter().flatten().collect()
    }
}

/// For each row of `x` selected by `rows`, the nearest row of `centroids` and the squared
/// distance to it (ties: lower centroid index).
pub fn nearest(x: &Mat, rows: &[usize], centroids: &Mat) -> Result<(Vec<u32>, Vec<f32>)> {
    if x.cols != centroids.cols {
        bail!(
            "k-means: points are {}-d, centroids {}-d",
            x.cols,
            centroids.cols
        );
    }
    use rayon::prelude::*;
    let mut assign = Vec::with_capacity(rows.len());
    let mut dist = Vec::with_capacity(rows.len());
    crate::geometry::sqdist_blocks(x, rows, centroids, |_, d| {
        let best: Vec<(u32, f32)> = d
            .data
            .par_chunks(d.cols)
            .map(|r| {
                let (mut bj, mut bv) = (0u32, f32::INFINITY);
                for (j, &v) in r.iter().enumerate() {
                    if v < bv {
                        (bj, bv) = (j as u32, v);
                    }
                }
                (bj, bv)
            })
            .collect();
        for (a, d) in best {
            assign.push(a);
            dist.push(d);
        }
        Ok(())
    })?;
    Ok((assign, dist))
}

/// Largest k·n·d for which k-means++ seeding is used.
pub const PLUSPLUS_WORK: usize = 1 << 33;

/// Cluster the rows `rows` of `x` into `cfg.k` clusters (at most `rows.len()`).
pub fn kmeans(x: &Mat, rows: &[usize], cfg: &KMeansCfg, rng: &mut VRng) -> Result<Clusters> {
    let n = rows.len();
    let k = cfg.k.min(n);
    if k == 0 {
        bail!("k-means: nothing to cluster (k = {}, {n} points)", cfg.k);
    }
    let cap = cfg.max_points_per_centroid.max(1).saturating_mul(k);
    let train: Vec<usize> = if n > cap {
        let mut s = rng::sample(rows, cap, rng);
        s.sort_unstable();
        s
    } else {
        rows.to_vec()
    };
    // ++ seeding is k sequential passes over the training points: memory-bound, so only where
    // they are cheap (≤ 2^33 multiply-adds: ~1000 × 8M floats); else faiss's random points
    let init = if k <= cfg.plusplus_up_to && k * train.len() * x.cols <= PLUSPLUS_WORK {
        plusplus(x, &train, k, rng)
    } else {
        rng::sample(&train, k, rng)
    };
    let mut centroids = x.select_rows(&init);
    let d = x.cols;
    let mut prev: Vec<u32> = Vec::new();
    for _ in 0..cfg.iters {
        let (assign, dist) = nearest(x, &train, &centroids)?;
        if assign == prev {
            // converged: without subsampling this pass already is the final assignment
            if train.len() == n {
                return Ok(Clusters {
                    centroids,
                    assign,
                    dist,
                });
            }
            break;
        }
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for (&r, &a) in train.iter().zip(&assign) {
            let a = a as usize;
            counts[a] += 1;
            let s = &mut sums[a * d..(a + 1) * d];
            for (s, &v) in s.iter_mut().zip(x.row(r)) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                let inv = 1.0 / counts[c] as f64;
                for (o, s) in centroids.row_mut(c).iter_mut().zip(&sums[c * d..]) {
                    *o = (s * inv) as f32;
                }
            }
        }
        split_empty(&mut centroids, &mut counts);
        prev = assign;
    }
    let (assign, dist) = nearest(x, rows, &centroids)?;
    Ok(Clusters {
        centroids,
        assign,
        dist,
    })
}

/// k-means with K = k on `rows`, then the member nearest each centroid: positions in `rows`,
/// in cluster order (fewer than k only when clusters stay empty).
pub fn centroid_picks(
    x: &Mat,
    rows: &[usize],
    k: usize,
    iters: usize,
    rng: &mut VRng,
) -> Result<Vec<usize>> {
    let cfg = KMeansCfg {
        iters,
        ..KMeansCfg::new(k)
    };
    Ok(kmeans(x, rows, &cfg, rng)?.medoids())
}

/// k-means++ seeding: the first centre uniformly, each next one with probability ∝ D(x)².
fn plusplus(x: &Mat, rows: &[usize], k: usize, rng: &mut VRng) -> Vec<usize> {
    use rand::Rng;
    use rayon::prelude::*;
    let mut chosen = vec![rows[rng.random_range(0..rows.len())]];
    let mut d: Vec<f32> = rows
        .par_iter()
        .map(|&r| crate::geometry::sqdist(x.row(r), x.row(chosen[0])))
        .collect();
    while chosen.len() < k {
        let total: f64 = d.iter().map(|&v| v as f64).sum();
        let next = if total <= 0.0 {
            // every point sits on a centre: any point not chosen yet
            match rows.iter().find(|r| !chosen.contains(r)) {
                Some(&r) => r,
                None => break,
            }
        } else {
            let mut u = rng.random::<f64>() * total;
            let mut pick = rows.len() - 1;
            for (i, &v) in d.iter().enumerate() {
                u -= v as f64;
                if u < 0.0 {
                    pick = i;
                    break;
                }
            }
            rows[pick]
        };
        chosen.push(next);
        let c = x.row(next);
        d.par_iter_mut().zip(rows).for_each(|(v, &r)| {
            *v = v.min(crate::geometry::sqdist(x.row(r), c));
        });
    }
    chosen
}

/// faiss's fix for empty clusters: move each onto the largest cluster's centroid, nudged by ±ε
/// per dimension in opposite directions, so the next assignment splits that cluster.
fn split_empty(centroids: &mut Mat, counts: &mut [usize]) {
    const EPS: f32 = 1.0 / 1024.0;
    for c in 0..counts.len() {
        if counts[c] > 0 {
            continue;
        }
        let big = (0..counts.len())
            .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)))
            .expect("k > 0");
        if counts[big] < 2 {
            continue;
        }
        let src = centroids.row(big).to_vec();
        for (j, v) in src.iter().enumerate() {
            let s = if j % 2 == 0 { 1.0 + EPS } else { 1.0 - EPS };
            centroids.row_mut(c)[j] = v * s;
            centroids.row_mut(big)[j] = v * (2.0 - s);
        }
        counts[c] = counts[big] / 2;
        counts[big] -= counts[c];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(per: usize, centers: &[[f32; 2]], r: &mut VRng) -> Mat {
        let mut rows = Vec::new();
        for c in centers {
            let noise = rng::uniform(per * 2, 0.2, r);
            for i in 0..per {
                rows.push(vec![c[0] + noise[2 * i], c[1] + noise[2 * i + 1]]);
            }
        }
        Mat::from_rows(&rows).unwrap()
    }

    #[test]
    fn recovers_separated_blobs_and_is_seeded() {
        let mut r = rng::stream(1, "test", 0);
        let x = blobs(50, &[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], &mut r);
        let rows: Vec<usize> = (0..x.rows).collect();
        let c = kmeans(&x, &rows, &KMeansCfg::new(3), &mut rng::stream(7, "km", 0)).unwrap();
        // every blob is one cluster
        for b in 0..3 {
            let a = c.assign[b * 50];
            assert!(c.assign[b * 50..(b + 1) * 50].iter().all(|&v| v == a));
        }
        assert_eq!(c.sizes().iter().filter(|&&s| s == 50).count(), 3);
        let m = c.medoids();
        assert_eq!(m.len(), 3);
        let again = kmeans(&x, &rows, &KMeansCfg::new(3), &mut rng::stream(7, "km", 0)).unwrap();
        assert_eq!(c.assign, again.assign);
        assert_eq!(c.centroids.data, again.centroids.data);
    }

    #[test]
    fn matmul_paths_agree() {
        let mut r = rng::stream(9, "test", 0);
        // 300·200·80 ≥ 2²² goes through BLAS when the feature is on
        let a = Mat::new(300, 80, rng::uniform(300 * 80, 1.0, &mut r)).unwrap();
        let b = Mat::new(200, 80, rng::uniform(200 * 80, 1.0, &mut r)).unwrap();
        let x = crate::geometry::matmul_nt(&a, &b).unwrap();
        let y = crate::geometry::matmul_nt_candle(&a, &b).unwrap();
        assert_eq!((x.rows, x.cols), (300, 200));
        for i in (0..300).step_by(7) {
            for j in (0..200).step_by(3) {
                let d = crate::geometry::dot(a.row(i), b.row(j));
                assert!((x.row(i)[j] - d).abs() < 1e-4 && (y.row(i)[j] - d).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn nearest_matches_direct_distances() {
        let mut r = rng::stream(2, "test", 0);
        let x = Mat::new(300, 7, rng::uniform(2100, 1.0, &mut r)).unwrap();
        let c = Mat::new(13, 7, rng::uniform(91, 1.0, &mut r)).unwrap();
        let rows: Vec<usize> = (0..300).rev().collect();
        let (a, d) = nearest(&x, &rows, &c).unwrap();
        for (i, &row) in rows.iter().enumerate() {
            let direct: Vec<f32> = (0..13)
                .map(|j| crate::geometry::sqdist(x.row(row), c.row(j)))
                .collect();
            let best = direct.iter().cloned().fold(f32::INFINITY, f32::min);
            assert!((direct[a[i] as usize] - best).abs() < 1e-4);
            assert!((d[i] - best).abs() < 1e-4);
        }
    }

    #[test]
    fn more_clusters_than_distinct_points_leaves_no_crash() {
        // 10 points, 4 of them identical: clusters ≤ points, empty ones are split, all assigned.
        let mut rows = vec![vec![1.0, 1.0]; 4];
        rows.extend((0..6).map(|i| vec![i as f32, -(i as f32)]));
        let x = Mat::from_rows(&rows).unwrap();
        let all: Vec<usize> = (0..10).collect();
        let c = kmeans(&x, &all, &KMeansCfg::new(20), &mut rng::stream(3, "km", 0)).unwrap();
        assert_eq!(c.k(), 10);
        assert_eq!(c.assign.len(), 10);
        assert!(c.medoids().len() >= 7);
        assert!(kmeans(&x, &[], &KMeansCfg::new(3), &mut rng::stream(3, "km", 0)).is_err());
    }

    #[test]
    fn training_subsample_is_bounded() {
        let mut r = rng::stream(4, "test", 0);
        let x = blobs(400, &[[0.0, 0.0], [5.0, 5.0]], &mut r);
        let rows: Vec<usize> = (0..x.rows).collect();
        let cfg = KMeansCfg {
            k: 2,
            iters: 10,
            max_points_per_centroid: 16,
            plusplus_up_to: 0,
        };
        let c = kmeans(&x, &rows, &cfg, &mut rng::stream(5, "km", 0)).unwrap();
        assert_eq!(c.assign.len(), 800);
        assert!(c.assign[..400].iter().all(|&a| a == c.assign[0]));
        assert!(c.assign[400..].iter().all(|&a| a == c.assign[400]));
        assert_ne!(c.assign[0], c.assign[400]);
    }
}
