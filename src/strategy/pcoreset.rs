//! PCoreSet (ActiveKD): k-center greedy in the probability simplex — f(x) = the student's
//! probability vector p_S(x) (the DHO mixture under the dho trainer), Euclidean distance.

use super::api::{picks, Build, Pick, SelectContext, Strategy};
use crate::geometry::kcenter_greedy;
use crate::rng::VRng;
use anyhow::Result;

pub struct PCoreSet;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(PCoreSet))
}

impl Strategy for PCoreSet {
    fn name(&self) -> &'static str {
        "pcoreset"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        Ok(simplex_kcenter(ctx, budget, true))
    }
}

/// k-center greedy over the student's probability vectors, labeled rows as the initial centers;
/// `farthest = false` is the counterfactual (PCoreSet+R).
pub(super) fn simplex_kcenter(ctx: &SelectContext, budget: usize, farthest: bool) -> Vec<Pick> {
    picks(kcenter_greedy(
        ctx.probs,
        ctx.pool,
        ctx.labeled,
        budget,
        farthest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn picks_the_uncovered_corners_of_the_simplex() {
        // labeled: near vertex e0. pool: near e0, the centroid, vertex e1, vertex e2, near e1.
        let probs = Mat::from_rows(&[
            vec![0.9, 0.05, 0.05],
            vec![0.85, 0.1, 0.05],
            vec![1. / 3., 1. / 3., 1. / 3.],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![0.1, 0.85, 0.05],
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(6, 1), vec![0], vec![0]);
        let picks = PCoreSet
            .select(&o.ctx(), 3, &mut rng::stream(0, "x", 0))
            .unwrap();
        // e1 (row 3) and e2 (row 4) are equally far from row 0 → the lower position, row 3, first;
        // e2 stays the farthest from {row 0, e1}; then the centroid (row 2), farther than rows 1, 5.
        assert_eq!(picked_rows(&o, &picks), vec![3, 4, 2]);
        let d0 = ((0.9f64).powi(2) + (0.95f64).powi(2) + (0.05f64).powi(2)).sqrt();
        assert!((picks[0].score - d0).abs() < 1e-5, "{}", picks[0].score);
    }
}
