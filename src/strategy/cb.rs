//! CB, cluster-balanced acquisition (active prompt learning, CB+SQ): k-means on class-guided
//! features F(x) = [z(x), Σ_c p_c(x)·t_c] (each half L2-normalised; z = teacher image embedding,
//! t_c = class prototypes, p = the current model's probabilities) over L ∪ U, then one query per
//! cluster, nearest its centroid.
//!
//! K follows the paper: K = B at a cold start (no labels), else K = B·r for the r-th round, with
//! r = ⌈|L|/B⌉ + 1 read off the labeled set (seed labels count as a round); clusters without a
//! labeled member come first, largest first. `cb-released` follows the released code instead:
//! K = 4C + |L|, and each of the B queries goes to the cluster with the lowest labeled ratio
//! (ties to the larger cluster), counting earlier picks as labeled.

use super::api::{finish_at_random, hashed_unless_default, Build, Pick, SelectContext, Strategy};
use crate::cache::Need;
use crate::kmeans::{kmeans, KMeansCfg};
use crate::mat::Mat;
use crate::rng::VRng;
use crate::variant::Variant;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `[select.cb]` (read by `cb` and `cb-released`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// `paper`: F = [z/‖z‖, s/‖s‖]; `released`: [z, s]/‖[z, s]‖ (`cbsq.py` normalises the
    /// concatenation).
    pub features: Variant,
}

impl super::api::Params for Params {}

pub struct Cb {
    pub released: bool,
    pub p: Params,
}

pub fn build(name: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Cb {
        released: name == "cb-released",
        p: b.params("cb")?,
    }))
}

/// F(x) for the given train rows: [z/‖z‖, s/‖s‖] with s = Σ_c p_c t_c.
pub fn class_guided(probs: &Mat, image: &Mat, protos: &Mat, rows: &[usize]) -> Result<Mat> {
    class_guided_as(probs, image, protos, rows, Variant::Paper)
}

/// [`class_guided`], or with `Variant::Released` the whole concatenation [z, s] normalised.
pub fn class_guided_as(
    probs: &Mat,
    image: &Mat,
    protos: &Mat,
    rows: &[usize],
    variant: Variant,
) -> Result<Mat> {
    if protos.rows != probs.cols || protos.cols != image.cols {
        bail!(
            "class-guided features: {} prototypes of {}-d for {} classes and {}-d images",
            protos.rows,
            protos.cols,
            probs.cols,
            image.cols
        );
    }
    let d = image.cols;
    let mut f = Mat::zeros(rows.len(), 2 * d);
    // s = P·T as a product (tᵀ's rows are the prototype dimensions), a block of rows at a time
    let protos_t = protos.transpose();
    for (b, block) in rows.chunks(8192).enumerate() {
        let s = crate::geometry::matmul_nt(&probs.select_rows(block), &protos_t)?;
        for (j, &r) in block.iter().enumerate() {
            let o = f.row_mut(b * 8192 + j);
            o[..d].copy_from_slice(image.row(r));
            o[d..].copy_from_slice(s.row(j));
            let part = if variant.released() { 2 * d } else { d };
            for half in o.chunks_mut(part) {
                let n = crate::geometry::dot(half, half).sqrt();
                if n > 0.0 {
                    half.iter_mut().for_each(|v| *v /= n);
                }
            }
        }
    }
    Ok(f)
}

/// K of the paper's schedule for a labeled set of `n_labeled` and budget B.
pub fn paper_k(n_labeled: usize, budget: usize) -> usize {
    if n_labeled == 0 {
        budget
    } else {
        budget * (n_labeled.div_ceil(budget) + 1)
    }
}

impl Strategy for Cb {
    fn name(&self) -> &'static str {
        if self.released {
            "cb-released"
        } else {
            "cb"
        }
    }
    fn needs(&self) -> Need {
        Need {
            image: true,
            prototypes: true,
            ..Need::default()
        }
    }
    fn params(&self) -> serde_json::Value {
        hashed_unless_default(&self.p)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let who = self.name();
        let rows = ctx.all_rows();
        let f = class_guided_as(
            ctx.probs,
            ctx.teacher_image(who)?,
            ctx.prototypes(who)?,
            &rows,
            self.p.features,
        )?;
        let nl = ctx.labeled.len();
        let k = if self.released {
            4 * ctx.n_classes + nl
        } else {
            paper_k(nl, budget)
        }
        .clamp(1, rows.len());
        let idx: Vec<usize> = (0..rows.len()).collect();
        let cl = kmeans(&f, &idx, &KMeansCfg::new(k), rng)?;
        // per cluster: labeled members, size, unlabeled members nearest-first
        let mut labeled = vec![false; ctx.probs.rows];
        ctx.labeled.iter().for_each(|&r| labeled[r] = true);
        let pos_of = |r: usize| ctx.pool.binary_search(&r).ok();
        let mut lab = vec![0usize; k];
        let size = cl.sizes();
        let mut cand: Vec<Vec<(f32, usize)>> = vec![Vec::new(); k];
        for (i, &r) in rows.iter().enumerate() {
            let a = cl.assign[i] as usize;
            if labeled[r] {
                lab[a] += 1;
            } else if let Some(p) = pos_of(r) {
                cand[a].push((cl.dist[i], p));
            }
        }
        for c in &mut cand {
            c.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            c.reverse(); // pop() takes the nearest
        }
        let mut picks = Vec::with_capacity(budget);
        if self.released {
            for _ in 0..budget {
                let ratio = |a: usize| lab[a] as f64 / size[a].max(1) as f64;
                let best = (0..k).filter(|&a| !cand[a].is_empty()).min_by(|&a, &b| {
                    ratio(a)
                        .total_cmp(&ratio(b))
                        .then(size[b].cmp(&size[a]))
                        .then(a.cmp(&b))
                });
                let Some(a) = best else { break };
                let score = 1.0 - ratio(a);
                let (_, pos) = cand[a].pop().expect("non-empty");
                lab[a] += 1;
                picks.push(Pick { pos, score });
            }
        } else {
            // clusters without labels first, largest first; further passes take the next-nearest
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| {
                lab[a]
                    .cmp(&lab[b])
                    .then(size[b].cmp(&size[a]))
                    .then(a.cmp(&b))
            });
            while picks.len() < budget && cand.iter().any(|c| !c.is_empty()) {
                for &a in &order {
                    if picks.len() == budget {
                        break;
                    }
                    if let Some((_, pos)) = cand[a].pop() {
                        picks.push(Pick {
                            pos,
                            score: size[a] as f64 / (1 + lab[a]) as f64,
                        });
                    }
                }
            }
        }
        ctx.notes.add(
            "cb",
            format!("K = {k} clusters on class-guided features ({} labeled)", nl),
        );
        Ok(finish_at_random(ctx, picks, budget, rng, who))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;
    use crate::strategy::testutil::Owned;

    #[test]
    fn class_guided_halves_are_unit_and_follow_the_probabilities() {
        let image = Mat::from_rows(&[vec![3.0, 4.0], vec![1.0, 0.0]]).unwrap();
        let protos = Mat::from_rows(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        let probs = Mat::from_rows(&[vec![0.5, 0.5], vec![1.0, 0.0]]).unwrap();
        let f = class_guided(&probs, &image, &protos, &[0, 1]).unwrap();
        let s = 0.5f32.sqrt();
        let want = [[0.6, 0.8, s, s], [1.0, 0.0, 1.0, 0.0]];
        for i in 0..2 {
            for j in 0..4 {
                assert!((f.row(i)[j] - want[i][j]).abs() < 1e-6);
            }
        }
        assert!(class_guided(&probs, &image, &Mat::zeros(3, 2), &[0]).is_err());
        assert_eq!(paper_k(0, 10), 10);
        assert_eq!(paper_k(10, 10), 20);
        assert_eq!(paper_k(25, 10), 40);
    }

    #[test]
    fn released_features_normalise_the_concatenation() {
        // z = (3, 4) (norm 5), s = p·T = (0, 0.5) with p = (0.5, 0.5), t_0 = (0, 0), t_1 = (0, 1)
        let probs = Mat::from_rows(&[vec![0.5, 0.5]]).unwrap();
        let image = Mat::from_rows(&[vec![3.0, 4.0]]).unwrap();
        let protos = Mat::from_rows(&[vec![0.0, 0.0], vec![0.0, 1.0]]).unwrap();
        let paper = class_guided_as(&probs, &image, &protos, &[0], Variant::Paper).unwrap();
        let released = class_guided_as(&probs, &image, &protos, &[0], Variant::Released).unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(paper.row(0), &[0.6, 0.8, 0.0, 1.0]), "{:?}", paper.row(0));
        // ‖(3, 4, 0, 0.5)‖ = √25.25
        let n = 25.25f32.sqrt();
        assert!(
            close(released.row(0), &[3.0 / n, 4.0 / n, 0.0, 0.5 / n]),
            "{:?}",
            released.row(0)
        );
    }

    /// The blocked product (BLAS above 2^22 multiply-adds) against the definition, on rows out
    /// of order.
    #[test]
    fn class_guided_product_matches_the_sum_over_classes() {
        let mut r = rng::stream(3, "cg", 0);
        let (n, c, d) = (300, 100, 200);
        let image = Mat::new(n, d, rng::uniform(n * d, 1.0, &mut r)).unwrap();
        let protos = Mat::new(c, d, rng::uniform(c * d, 1.0, &mut r)).unwrap();
        let probs = crate::mat::softmax_rows(
            &Mat::new(n, c, rng::uniform(n * c, 5.0, &mut r)).unwrap(),
            1.0,
        );
        let rows: Vec<usize> = (0..n).rev().step_by(2).collect();
        let f = class_guided(&probs, &image, &protos, &rows).unwrap();
        for (i, &row) in rows.iter().enumerate() {
            let mut s = vec![0f64; d];
            for k in 0..c {
                for (a, &t) in s.iter_mut().zip(protos.row(k)) {
                    *a += probs.row(row)[k] as f64 * t as f64;
                }
            }
            let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            for j in 0..d {
                let want = s[j] / norm;
                assert!(
                    (f.row(i)[d + j] as f64 - want).abs() < 1e-5,
                    "row {row}, dim {j}"
                );
            }
        }
    }

    /// Four tight groups on a line; group 0 is labeled. The teacher image = the student feature.
    fn groups() -> (Owned, Mat, Mat) {
        let mut rows = Vec::new();
        let mut probs = Vec::new();
        for g in 0..4 {
            for i in 0..(3 + g) {
                rows.push(vec![g as f32 * 10.0 + i as f32 * 0.01, 1.0]);
                let mut p = vec![0.0; 4];
                p[g] = 1.0;
                probs.push(p);
            }
        }
        let image = Mat::from_rows(&rows).unwrap();
        let o = Owned::new(
            Mat::from_rows(&probs).unwrap(),
            image.clone(),
            vec![0, 1, 2],
            vec![0, 0, 0],
        );
        let protos = Mat::from_rows(&[
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![-1.0, 0.0],
            vec![0.0, -1.0],
        ])
        .unwrap();
        (o, image, protos)
    }

    #[test]
    fn picks_one_per_unlabeled_cluster_largest_first_and_is_seeded() {
        let (o, image, protos) = groups();
        for released in [false, true] {
            let mut ctx = o.ctx();
            ctx.teacher_image = Some(&image);
            ctx.prototypes = Some(&protos);
            let s = Cb {
                released,
                p: Params::default(),
            };
            let a = s.select(&ctx, 3, &mut rng::stream(1, "t", 0)).unwrap();
            let b = s.select(&ctx, 3, &mut rng::stream(1, "t", 0)).unwrap();
            assert_eq!(a, b, "seeded");
            let mut groups: Vec<usize> = a
                .iter()
                .map(|p| (image.row(o.pool[p.pos])[0] / 10.0).round() as usize)
                .collect();
            if !released {
                // K = B·2 = 6 ≥ 4 groups: the three unlabeled groups, largest (3) first
                assert_eq!(groups[0], 3, "{groups:?}");
            }
            groups.sort();
            assert_eq!(groups, vec![1, 2, 3], "released = {released}");
        }
        // without prototypes: a clear error
        let ctx = o.ctx();
        let e = Cb {
            released: false,
            p: Params::default(),
        }
            .select(&ctx, 2, &mut rng::stream(1, "t", 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cb needs the teacher's image embeddings"), "{e}");
    }
}
