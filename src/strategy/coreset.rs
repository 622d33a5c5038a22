//! Coreset (Sener & Savarese): k-center greedy in the student's feature space, cosine geometry
//! (Euclidean on L2-normalised features), with the labeled set as the initial centers.

use super::api::{picks, Build, Pick, SelectContext, Strategy};
use crate::geometry::kcenter_greedy;
use crate::rng::VRng;
use anyhow::Result;

pub struct Coreset;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Coreset))
}

impl Strategy for Coreset {
    fn name(&self) -> &'static str {
        "coreset"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        let mut f = ctx.features.clone();
        f.normalize_rows();
        Ok(picks(kcenter_greedy(
            &f,
            ctx.pool,
            ctx.labeled,
            budget,
            true,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn covers_directions_far_from_the_labeled_set() {
        // unit vectors at angles 0°, 10°, 90°, 100°, 180°; labeled: 0°.
        let deg = [0f32, 10., 90., 100., 180.];
        let feats = Mat::from_rows(
            &deg.iter()
                .map(|d| vec![d.to_radians().cos(), d.to_radians().sin()])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let o = Owned::new(Mat::zeros(5, 2), feats, vec![0], vec![0]);
        let picks = Coreset
            .select(&o.ctx(), 2, &mut rng::stream(0, "x", 0))
            .unwrap();
        // farthest from 0° is 180°; then farthest from {0°,180°} is 90° (distance to both 90°) vs 100° (80° to 180°)
        assert_eq!(picked_rows(&o, &picks), vec![4, 2]);
        assert!((picks[0].score - 2.0).abs() < 1e-5);
    }
}
