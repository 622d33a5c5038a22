//! Selective querying (CB+SQ), on top of any strategy (`<strategy>+sq`): class-wise thresholds
//! ε_c = mean over the labeled samples of class c of the current model's probability of c; a
//! picked candidate whose predicted class ŷ has p_ŷ ≥ ε_ŷ gets the pseudo-label ŷ at no cost,
//! the others go to the oracle. A class with no labeled sample has no threshold and is never
//! pseudo-labelled. [`Selective`] wraps any strategy with it.
//!
//! `[select.sq] threshold = "released"` takes the released code's thresholds instead: ε_c = mean
//! over the labeled samples of class c of the model's top-class probability max_k p_k.

use super::api::{hashed, Pick, SelectContext, Strategy};
use crate::cache::Need;
use crate::mat::{argmax, Mat};
use crate::rng::VRng;
use crate::variant::Variant;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// `[select.sq]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// `paper`: ε_c from the probability of class c (eq. 11); `released`: from the top-class
    /// probability (`cbsq.py`).
    pub threshold: Variant,
}

impl super::api::Params for Params {}

/// A strategy with selective querying on top: the base picks, then the confident picks are
/// pseudo-labelled.
pub struct Selective {
    pub base: Box<dyn Strategy>,
    pub p: Params,
}

impl Strategy for Selective {
    fn name(&self) -> &'static str {
        self.base.name()
    }
    fn needs_head(&self) -> bool {
        self.base.needs_head()
    }
    fn needs(&self) -> Need {
        self.base.needs()
    }
    fn params(&self) -> serde_json::Value {
        if self.p == Params::default() {
            self.base.params()
        } else {
            hashed((self.base.params(), &self.p))
        }
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        self.base.select(ctx, budget, rng)
    }
    fn pseudo_labels(&self, ctx: &SelectContext, rows: &[usize]) -> Option<Vec<Option<i32>>> {
        let eps = match self.p.threshold {
            Variant::Paper => thresholds(ctx.probs, ctx.labeled, ctx.labels),
            Variant::Released => top_thresholds(ctx.probs, ctx.labeled, ctx.labels),
        };
        Some(pseudo_labels(ctx.probs, rows, &eps))
    }
}

/// ε_c for every class (None for a class without labeled samples).
pub fn thresholds(probs: &Mat, labeled: &[usize], labels: &[u32]) -> Vec<Option<f32>> {
    class_means(probs, labeled, labels, |p, l| p[l])
}

/// The released code's ε_c: the mean top-class probability max_k p_k over the labeled samples of
/// class c (None for a class without labeled samples).
pub fn top_thresholds(probs: &Mat, labeled: &[usize], labels: &[u32]) -> Vec<Option<f32>> {
    class_means(probs, labeled, labels, |p, _| p[argmax(p)])
}

/// Per class c, the mean of `value(probability row, c)` over the labeled rows of class c.
fn class_means(
    probs: &Mat,
    labeled: &[usize],
    labels: &[u32],
    value: impl Fn(&[f32], usize) -> f32,
) -> Vec<Option<f32>> {
    let c = probs.cols;
    let mut sum = vec![0f64; c];
    let mut n = vec![0usize; c];
    for (&r, &l) in labeled.iter().zip(labels) {
        sum[l as usize] += value(probs.row(r), l as usize) as f64;
        n[l as usize] += 1;
    }
    (0..c)
        .map(|k| (n[k] > 0).then(|| (sum[k] / n[k] as f64) as f32))
        .collect()
}

/// The pseudo-label of each picked row (None: query it).
pub fn pseudo_labels(probs: &Mat, rows: &[usize], eps: &[Option<f32>]) -> Vec<Option<i32>> {
    rows.iter()
        .map(|&r| {
            let p = probs.row(r);
            let y = argmax(p);
            eps[y].filter(|&e| p[y] >= e).map(|_| y as i32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_pseudo_labels() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.1, 0.0],   // labeled 0
            vec![0.7, 0.3, 0.0],   // labeled 0
            vec![0.4, 0.6, 0.0],   // labeled 1
            vec![0.85, 0.15, 0.0], // ≥ ε_0 = 0.8 → pseudo 0
            vec![0.75, 0.25, 0.0], // < 0.8 → query
            vec![0.3, 0.6, 0.1],   // = ε_1 = 0.6 → pseudo 1
            vec![0.0, 0.01, 0.99], // class 2 has no label → query
        ])
        .unwrap();
        let eps = thresholds(&probs, &[0, 1, 2], &[0, 0, 1]);
        assert!((eps[0].unwrap() - 0.8).abs() < 1e-6);
        assert!((eps[1].unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(eps[2], None);
        assert_eq!(
            pseudo_labels(&probs, &[3, 4, 5, 6], &eps),
            vec![Some(0), None, Some(1), None]
        );
        // released: ε_0 = mean top probability of rows 0, 1 = 0.8; ε_1 = row 2's top = 0.6 (its
        // p_1); a labeled row predicted as another class counts its top class's probability
        let probs2 = Mat::from_rows(&[
            vec![0.9, 0.1, 0.0],
            vec![0.3, 0.7, 0.0], // labeled 0, predicted 1: paper counts 0.3, released 0.7
            vec![0.4, 0.6, 0.0],
            vec![0.78, 0.22, 0.0], // paper ε_0 = 0.6 → pseudo 0; released ε_0 = 0.8 → query
        ])
        .unwrap();
        let paper = thresholds(&probs2, &[0, 1, 2], &[0, 0, 1]);
        let released = top_thresholds(&probs2, &[0, 1, 2], &[0, 0, 1]);
        assert!((paper[0].unwrap() - 0.6).abs() < 1e-6);
        assert!((released[0].unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(pseudo_labels(&probs2, &[3], &paper), vec![Some(0)]);
        assert_eq!(pseudo_labels(&probs2, &[3], &released), vec![None]);
    }
}
