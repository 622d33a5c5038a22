//! Least confidence: the pool points whose top class probability is lowest (score = 1 − max p).

use super::api::{pool_scores, top_scores, Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct LeastConfidence;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(LeastConfidence))
}

impl Strategy for LeastConfidence {
    fn name(&self) -> &'static str {
        "least-confidence"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        let scores = pool_scores(ctx, |p| 1.0 - p.iter().fold(0f32, |a, &b| a.max(b)) as f64);
        Ok(top_scores(&scores, budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn lowest_top_probability_first() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.1],
            vec![0.55, 0.45],
            vec![0.7, 0.3],
            vec![0.5, 0.5],
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(4, 1), vec![0], vec![0]);
        let picks = LeastConfidence
            .select(&o.ctx(), 2, &mut rng::stream(0, "x", 0))
            .unwrap();
        assert_eq!(picked_rows(&o, &picks), vec![3, 1]);
        assert!((picks[0].score - 0.5).abs() < 1e-9);
    }
}
