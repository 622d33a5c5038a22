//! Random sampling: a seeded uniform draw from the pool (score = draw order, higher first).

use super::api::{Build, Pick, SelectContext, Strategy};
use crate::rng::{self, VRng};
use anyhow::Result;

pub struct Random;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Random))
}

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let pos: Vec<usize> = (0..ctx.pool.len()).collect();
        let picks = rng::sample(&pos, budget, rng);
        Ok(picks
            .into_iter()
            .enumerate()
            .map(|(k, pos)| Pick {
                pos,
                score: (budget - k) as f64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::strategy::testutil::Owned;

    #[test]
    fn seeded_distinct_and_reproducible() {
        let o = Owned::new(Mat::zeros(50, 2), Mat::zeros(50, 2), vec![0, 1], vec![0, 1]);
        let a = Random
            .select(&o.ctx(), 10, &mut rng::stream(3, "s", 0))
            .unwrap();
        let b = Random
            .select(&o.ctx(), 10, &mut rng::stream(3, "s", 0))
            .unwrap();
        let c = Random
            .select(&o.ctx(), 10, &mut rng::stream(4, "s", 0))
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut p: Vec<usize> = a.iter().map(|p| p.pos).collect();
        p.sort();
        p.dedup();
        assert_eq!(p.len(), 10);
    }
}
