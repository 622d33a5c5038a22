//! Alfa-mix (Parvaneh et al., CVPR 2022): interpolate each unlabeled embedding towards the mean
//! labeled embedding of every class (the anchors) with the closed-form α of the paper,
//! α = ε·‖z*−z‖/‖∇ℓ‖ · ∇ℓ ⊘ (z*−z), clamped to [0, ε]; points whose prediction changes are
//! candidates. ε grows until more than B candidates appear; k-means with K = B on the candidates
//! and the candidate nearest each centroid is queried; short of candidates, the rest is random.

use super::api::{hashed, representatives, Build, Pick, SelectContext, Strategy};
use crate::mat::{argmax, Mat};
use crate::rng::VRng;
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `[select.alfamix]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The cap ε of the interpolation factors α ∈ [0, ε] grows by this step …
    pub eps_step: f32,
    /// … until more than B candidates are found or it passes this value (released code).
    pub eps_max: f32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            eps_step: 0.03125,
            eps_max: 1.0,
        }
    }
}

impl super::api::Params for Params {
    fn validate(&self) -> Result<()> {
        if !(self.eps_step > 0.0) {
            anyhow::bail!("eps_step must be positive");
        }
        Ok(())
    }
}

pub struct AlfaMix(Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(AlfaMix(b.params("alfamix")?)))
}

impl Strategy for AlfaMix {
    fn params(&self) -> serde_json::Value {
        hashed(&self.0)
    }
    fn name(&self) -> &'static str {
        "alfa-mix"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let head = ctx.head("alfa-mix")?;
        let emb = head.embed_of(ctx.features, ctx.pool)?;
        let lab = head.embed(&ctx.features.select_rows(ctx.labeled))?;
        let pred: Vec<usize> = head.predict_embedded(&emb)?.argmax_rows();
        let y: Vec<u32> = pred.iter().map(|&c| c as u32).collect();
        let grad = head.input_grad(&emb, &y)?;
        let anchors = class_means(&lab, ctx.labels, ctx.n_classes);
        let cfg = &self.0;
        let n = emb.rows;
        let mut min_alpha = vec![f64::INFINITY; n];
        let mut eps = cfg.eps_step;
        while eps <= cfg.eps_max + 1e-6 {
            for a in anchors.iter().flatten() {
                let mixed = mix(&emb, &grad, a, eps);
                let p = head.predict_embedded(&mixed.0)?;
                for i in 0..n {
                    if argmax(p.row(i)) != pred[i] {
                        min_alpha[i] = min_alpha[i].min(mixed.1[i]);
                    }
                }
            }
            if min_alpha.iter().filter(|v| v.is_finite()).count() > budget {
                break;
            }
            eps += cfg.eps_step;
        }
        let cand: Vec<usize> = (0..n).filter(|&i| min_alpha[i].is_finite()).collect();
        // emb's rows are pool positions
        let picked = representatives(ctx, &emb, &cand, &cand, budget, rng, "alfa-mix")?;
        // smaller α needed to flip the prediction = more uncertain
        Ok(picked
            .into_iter()
            .map(|pos| Pick {
                pos,
                score: -min_alpha[pos].min(1e9),
            })
            .collect())
    }
}

/// Mean embedding of each class's labeled rows (None for a class without labels).
fn class_means(lab: &Mat, labels: &[u32], c: usize) -> Vec<Option<Vec<f32>>> {
    let mut sums = vec![vec![0f64; lab.cols]; c];
    let mut n = vec![0usize; c];
    for (i, &y) in labels.iter().enumerate() {
        n[y as usize] += 1;
        for (s, &v) in sums[y as usize].iter_mut().zip(lab.row(i)) {
            *s += v as f64;
        }
    }
    sums.into_iter()
        .zip(n)
        .map(|(s, k)| (k > 0).then(|| s.iter().map(|&v| (v / k as f64) as f32).collect()))
        .collect()
}

/// (1−α)⊙z + α⊙anchor for every row with the closed-form α capped at ε, and ‖α‖ per row.
fn mix(emb: &Mat, grad: &Mat, anchor: &[f32], eps: f32) -> (Mat, Vec<f64>) {
    let d = emb.cols;
    let rows: Vec<(Vec<f32>, f64)> = (0..emb.rows)
        .into_par_iter()
        .map(|i| {
            let (z, g) = (emb.row(i), grad.row(i));
            let diff: Vec<f32> = anchor.iter().zip(z).map(|(a, z)| a - z).collect();
            let dn = diff.iter().map(|v| v * v).sum::<f32>().sqrt();
            let gn = g.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            let scale = eps * dn / gn;
            let mut out = Vec::with_capacity(d);
            let mut an = 0f64;
            for j in 0..d {
                let a = (scale * g[j] / (diff[j] + 1e-8)).clamp(0.0, eps);
                an += (a * a) as f64;
                out.push(z[j] + a * diff[j]);
            }
            (out, an.sqrt())
        })
        .collect();
    let mut data = Vec::with_capacity(emb.rows * d);
    let mut norms = Vec::with_capacity(emb.rows);
    for (r, a) in rows {
        data.extend(r);
        norms.push(a);
    }
    (Mat::new(emb.rows, d, data).expect("shape"), norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_moves_towards_the_anchor_within_the_cap() {
        let emb = Mat::from_rows(&[vec![0.0, 0.0]]).unwrap();
        // gradient along +x, anchor at (1, 1): only the x coordinate moves, by at most ε
        let grad = Mat::from_rows(&[vec![1.0, 0.0]]).unwrap();
        let (m, a) = mix(&emb, &grad, &[1.0, 1.0], 0.25);
        assert!((m.row(0)[0] - 0.25).abs() < 1e-6);
        assert_eq!(m.row(0)[1], 0.0);
        assert!((a[0] - 0.25).abs() < 1e-6);
        // gradient pointing away from the anchor: α clamps to 0, no move
        let away = Mat::from_rows(&[vec![-1.0, 0.0]]).unwrap();
        let (m, a) = mix(&emb, &away, &[1.0, 1.0], 0.25);
        assert_eq!(m.row(0), &[0.0, 0.0]);
        assert_eq!(a[0], 0.0);
    }

    #[test]
    fn class_means_skip_unlabeled_classes() {
        let lab = Mat::from_rows(&[vec![1.0, 0.0], vec![3.0, 2.0]]).unwrap();
        let m = class_means(&lab, &[1, 1], 3);
        assert!(m[0].is_none() && m[2].is_none());
        assert_eq!(m[1].as_deref(), Some(&[2.0f32, 1.0][..]));
    }
}
