//! Margin sampling: the pool points with the smallest gap between the two most probable classes
//! (score = −(p(1) − p(2)), so the smallest margin scores highest).

use super::api::{pool_scores, top_scores, Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct Margin;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Margin))
}

/// p(1) − p(2): the top probability minus the runner-up.
pub fn margin(p: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in p {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    if b.is_finite() {
        (a - b) as f64
    } else {
        a as f64
    }
}

impl Strategy for Margin {
    fn name(&self) -> &'static str {
        "margin"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        Ok(top_scores(&pool_scores(ctx, |p| -margin(p)), budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn smallest_margin_first_with_index_ties() {
        let probs = Mat::from_rows(&[
            vec![0.7, 0.2, 0.1],   // margin .5
            vec![0.4, 0.35, 0.25], // .05
            vec![0.45, 0.45, 0.1], // 0
            vec![0.1, 0.45, 0.45], // 0 (tie with row 2 → row 2 first)
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(4, 1), vec![], vec![]);
        let picks = Margin
            .select(&o.ctx(), 3, &mut rng::stream(0, "x", 0))
            .unwrap();
        assert_eq!(picked_rows(&o, &picks), vec![2, 3, 1]);
        assert_eq!(margin(&[0.7, 0.2, 0.1]) as f32, 0.5);
    }
}
