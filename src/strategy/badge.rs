//! BADGE (Ash et al. 2019): k-means++ seeding over last-layer gradient embeddings
//! g(x) = a(x) ⊗ h(x), a = p − e_ŷ (the dual head concatenates both heads' blocks of a).
//! The H×C (×2) vectors are never built: ‖g_i − g_j‖² = ‖a_i‖²‖h_i‖² + ‖a_j‖²‖h_j‖²
//! − 2(a_i·a_j)(h_i·h_j), so memory is O(n·(C + H)) — 1000 classes × 2048-d × 100k points
//! fit in a few GiB where the explicit embeddings would need terabytes.
//!
//! `[select.badge] variant = "released"`: the PCoreSet repository's BADGE instead: one block
//! a = p − e_ŷ from the head's (mixed) prediction, the embeddings L2-normalised, and a
//! deterministic farthest-first traversal in cosine distance from the first non-zero embedding
//! (the largest norm after normalisation; the repository's tie is decided by rounding), the
//! labeled set not counted ([`kcenter_cosine`]).

use super::api::{hashed_unless_default, picks, Build, Pick, SelectContext, Strategy};
use crate::geometry::dot;
use crate::mat::Mat;
use crate::variant::Variant;
use crate::{progress, rng::VRng};
use anyhow::{bail, Result};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `[select.badge]` (also read by `pcb-badge`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub variant: Variant,
}

impl super::api::Params for Params {}

#[derive(Default)]
pub struct Badge(pub Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Badge(b.params("badge")?)))
}

/// Farthest-first traversal of the normalised embeddings g = a ⊗ h in cosine distance
/// 1 − cos(g_i, g_j) = 1 − (a_i·a_j)(h_i·h_j)/(‖a_i‖‖h_i‖‖a_j‖‖h_j‖), from the first row whose
/// embedding is not zero; ties go to the lower row. Returns (row, distance at pick; 1 for the
/// first).
pub fn kcenter_cosine(a: &Mat, h: &Mat, budget: usize) -> Vec<(usize, f64)> {
    let n = a.rows;
    let norm: Vec<f32> = (0..n)
        .map(|i| (dot(a.row(i), a.row(i)) * dot(h.row(i), h.row(i))).sqrt())
        .collect();
    let cos = |i: usize, j: usize| -> f32 {
        let d = norm[i] * norm[j];
        if d > 0.0 {
            dot(a.row(i), a.row(j)) * dot(h.row(i), h.row(j)) / d
        } else {
            0.0
        }
    };
    let mut taken = vec![false; n];
    let mut out = Vec::with_capacity(budget.min(n));
    let first = (0..n).find(|&i| norm[i] > 0.0).unwrap_or(0);
    let mut min_d = vec![f32::INFINITY; n];
    let (mut center, mut score) = (first, if norm[first] > 0.0 { 1.0 } else { 0.0 });
    while out.len() < budget.min(n) {
        taken[center] = true;
        out.push((center, score));
        min_d.par_iter_mut().enumerate().for_each(|(i, d)| {
            *d = d.min(1.0 - cos(i, center));
        });
        let mut best = None;
        for i in (0..n).filter(|&i| !taken[i]) {
            if best.is_none_or(|b: usize| min_d[i] > min_d[b]) {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        (center, score) = (b, min_d[b] as f64);
    }
    out
}

/// ‖g_i − g_j‖² for g = a ⊗ h, from the factors alone.
#[inline]
pub fn grad_sqdist(a: &Mat, h: &Mat, na: &[f32], nh: &[f32], i: usize, j: usize) -> f32 {
    let v = na[i] * nh[i] + na[j] * nh[j] - 2.0 * dot(a.row(i), a.row(j)) * dot(h.row(i), h.row(j));
    v.max(0.0)
}

/// k-means++ seeding on implicit gradient embeddings of the rows of (a, h); returns (row, D² at pick).
pub fn kmeanspp(a: &Mat, h: &Mat, budget: usize, rng: &mut VRng) -> Vec<(usize, f64)> {
    let n = a.rows;
    let na: Vec<f32> = (0..n).map(|i| dot(a.row(i), a.row(i))).collect();
    let nh: Vec<f32> = (0..n).map(|i| dot(h.row(i), h.row(i))).collect();
    let mut taken = vec![false; n];
    let mut picks = Vec::with_capacity(budget);
    // first center: the largest gradient norm (ties: lowest row)
    let mut first = 0;
    for i in 1..n {
        if na[i] * nh[i] > na[first] * nh[first] {
            first = i;
        }
    }
    let mut d2: Vec<f32> = vec![f32::INFINITY; n];
    let mut center = first;
    let mut center_score = (na[first] * nh[first]) as f64;
    let pb = progress::bar(budget as u64, "badge");
    loop {
        taken[center] = true;
        picks.push((center, center_score));
        pb.inc(1);
        if picks.len() == budget.min(n) {
            break;
        }
        d2.par_iter_mut().enumerate().for_each(|(i, d)| {
            let v = if taken[i] {
                0.0
            } else {
                grad_sqdist(a, h, &na, &nh, i, center)
            };
            if v < *d {
                *d = v;
            }
        });
        let total: f64 = d2.iter().map(|&v| v as f64).sum();
        let next = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            let mut pick = None;
            for (i, &v) in d2.iter().enumerate() {
                if v > 0.0 {
                    pick = Some(i);
                    if u < v as f64 {
                        break;
                    }
                    u -= v as f64;
                }
            }
            pick.expect("positive total has a positive entry")
        } else {
            // every remaining point coincides with a center: take the first one left
            (0..n).find(|&i| !taken[i]).expect("budget ≤ n")
        };
        center_score = d2[next] as f64;
        center = next;
    }
    pb.finish_and_clear();
    picks
}

impl Strategy for Badge {
    fn name(&self) -> &'static str {
        "badge"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn params(&self) -> serde_json::Value {
        hashed_unless_default(&self.0)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let Some(head) = ctx.head else {
            bail!("badge needs the round's trained head")
        };
        if self.0.variant.released() {
            // one block from the head's final (for the dual head: mixed) prediction
            let x = ctx.features.select_rows(ctx.pool);
            let h = head.embed(&x)?;
            let p = head.predict(&x)?;
            let mut a = p.clone();
            for i in 0..a.rows {
                let y = crate::mat::argmax(p.row(i));
                a.row_mut(i)[y] -= 1.0;
            }
            return Ok(picks(kcenter_cosine(&a, &h, budget)));
        }
        let (h, a) = head.grad_factors_of(ctx.features, ctx.pool)?;
        Ok(picks(kmeanspp(&a, &h, budget, rng)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn implicit_distances_equal_explicit_ones() {
        let mut r = rng::stream(1, "badge", 0);
        let a = Mat::new(5, 6, rng::uniform(30, 1.0, &mut r)).unwrap(); // 2 heads × 3 classes
        let h = Mat::new(5, 4, rng::uniform(20, 2.0, &mut r)).unwrap();
        let g: Vec<Vec<f32>> = (0..5)
            .map(|i| {
                a.row(i)
                    .iter()
                    .flat_map(|&ai| h.row(i).iter().map(move |&hj| ai * hj))
                    .collect()
            })
            .collect();
        let na: Vec<f32> = (0..5).map(|i| dot(a.row(i), a.row(i))).collect();
        let nh: Vec<f32> = (0..5).map(|i| dot(h.row(i), h.row(i))).collect();
        for i in 0..5 {
            for j in 0..5 {
                let explicit: f32 = g[i].iter().zip(&g[j]).map(|(x, y)| (x - y) * (x - y)).sum();
                let implicit = grad_sqdist(&a, &h, &na, &nh, i, j);
                assert!(
                    (explicit - implicit).abs() < 1e-3 * (1.0 + explicit),
                    "{i},{j}: {explicit} vs {implicit}"
                );
            }
        }
    }

    #[test]
    fn kmeanspp_starts_at_the_largest_gradient_and_is_seeded() {
        let mut r = rng::stream(2, "badge", 0);
        let a = Mat::new(50, 3, rng::uniform(150, 1.0, &mut r)).unwrap();
        let mut h = Mat::new(50, 4, rng::uniform(200, 1.0, &mut r)).unwrap();
        h.row_mut(17).iter_mut().for_each(|v| *v *= 10.0);
        let p1 = kmeanspp(&a, &h, 10, &mut rng::stream(9, "s", 0));
        let p2 = kmeanspp(&a, &h, 10, &mut rng::stream(9, "s", 0));
        assert_eq!(p1, p2);
        assert_eq!(p1[0].0, 17);
        let mut rows: Vec<usize> = p1.iter().map(|p| p.0).collect();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), 10);
        // duplicates of a center are never picked while other points remain
        let a2 = Mat::from_rows(&[vec![1.0], vec![1.0], vec![-1.0]]).unwrap();
        let h2 = Mat::from_rows(&[vec![1.0], vec![1.0], vec![1.0]]).unwrap();
        let p = kmeanspp(&a2, &h2, 2, &mut rng::stream(0, "s", 0));
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn released_kcenter_walks_cosine_distances_from_the_first_nonzero_row() {
        // h = 1-d ones, a = 2-d: rows 0 (zero gradient), 1 (1, 0), 2 (0.9, 0.1), 3 (0, 1),
        // 4 (−1, 0). First: row 1 (row 0 is zero). Cosine distances from row 1: row 2 ≈ 0.006,
        // row 3 = 1, row 4 = 2, row 0 = 1 (zero vector: cos 0) → row 4; then min distances to
        // {1, 4}: row 3 = 1, row 0 = 1, row 2 ≈ 0.006 → row 0 (the lower of the tie)
        let a = Mat::from_rows(&[
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.9, 0.1],
            vec![0.0, 1.0],
            vec![-1.0, 0.0],
        ])
        .unwrap();
        let h = Mat::from_rows(&vec![vec![1.0]; 5]).unwrap();
        let p = kcenter_cosine(&a, &h, 3);
        let rows: Vec<usize> = p.iter().map(|x| x.0).collect();
        assert_eq!(rows, vec![1, 4, 0]);
        assert_eq!(p[0].1, 1.0);
        assert!((p[1].1 - 2.0).abs() < 1e-6 && (p[2].1 - 1.0).abs() < 1e-6);
        // the scale of an embedding does not matter, only its direction
        let mut a2 = a.clone();
        a2.row_mut(2).iter_mut().for_each(|v| *v *= 10.0);
        assert_eq!(kcenter_cosine(&a2, &h, 3), p);
    }
}
