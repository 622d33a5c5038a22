//! Entropy sampling: the pool points with the largest predictive entropy H(p) = −Σ p log p.

use super::api::{pool_scores, top_scores, Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct Entropy;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Entropy))
}

pub use crate::metrics::entropy;

impl Strategy for Entropy {
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        Ok(top_scores(&pool_scores(ctx, entropy), budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn most_uncertain_first() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.05, 0.05], // row 0: labeled
            vec![0.98, 0.01, 0.01],
            vec![1. / 3., 1. / 3., 1. / 3.],
            vec![0.5, 0.5, 0.0],
            vec![0.6, 0.3, 0.1],
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(5, 1), vec![0], vec![0]);
        let picks = Entropy
            .select(&o.ctx(), 3, &mut rng::stream(0, "x", 0))
            .unwrap();
        // H: uniform ln3=1.099 > (0.6,0.3,0.1)=0.898 > (0.5,0.5)=0.693 > peaked
        assert_eq!(picked_rows(&o, &picks), vec![2, 4, 3]);
        assert!((picks[0].score - 3f64.ln()).abs() < 1e-6);
    }
}
