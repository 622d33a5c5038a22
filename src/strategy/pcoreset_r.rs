//! PCoreSet+R, the paper's counterfactual: the PCoreSet greedy with argmin instead of argmax, so
//! it picks the pool points *nearest* the labeled set in probability space (suppresses coverage).

use super::api::{Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct PCoreSetR;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(PCoreSetR))
}

impl Strategy for PCoreSetR {
    fn name(&self) -> &'static str {
        "pcoreset-r"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        Ok(super::pcoreset::simplex_kcenter(ctx, budget, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn picks_what_pcoreset_avoids() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.05, 0.05],
            vec![0.85, 0.1, 0.05],
            vec![1. / 3., 1. / 3., 1. / 3.],
            vec![0.0, 1.0, 0.0],
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(4, 1), vec![0], vec![0]);
        let picks = PCoreSetR
            .select(&o.ctx(), 2, &mut rng::stream(0, "x", 0))
            .unwrap();
        assert_eq!(picked_rows(&o, &picks), vec![1, 2]);
    }
}
