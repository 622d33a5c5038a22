//! PowerBALD (Kirsch et al., 2023): draw B pool points without replacement with probability
//! ∝ I^β (BALD's mutual information), via the Gumbel-top-k trick on β·log I.

use super::mc;
use super::api::{Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;
use rand::Rng;

pub struct PowerBald(mc::Mc);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(PowerBald(mc::Mc::new(b)?)))
}

impl Strategy for PowerBald {
    fn params(&self) -> serde_json::Value {
        self.0.hashed()
    }
    fn name(&self) -> &'static str {
        "power-bald"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let s = mc::pool_bald(ctx, &self.0, "power-bald", rng)?;
        Ok(gumbel_top_k(&s, self.0.p.power_beta, budget, rng))
    }
}

/// Successive sampling without replacement ∝ s^β: the top k of β·ln s + Gumbel noise.
pub fn gumbel_top_k(s: &[f64], beta: f64, k: usize, rng: &mut VRng) -> Vec<Pick> {
    let keys: Vec<f64> = s
        .iter()
        .map(|&v| {
            let u: f64 = rng.random::<f64>().max(1e-300);
            beta * v.max(1e-12).ln() - (-u.ln()).ln()
        })
        .collect();
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|pos| Pick { pos, score: s[pos] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_frequency_follows_the_power() {
        // two items with I = 3 and 1: with β = 1 the first is drawn first 3/4 of the time,
        // with β = 2 9/10 of the time.
        let mut r = crate::rng::stream(1, "pb", 0);
        for (beta, expect) in [(1.0, 0.75), (2.0, 0.9)] {
            let n = 20_000;
            let first = (0..n)
                .filter(|_| gumbel_top_k(&[3.0, 1.0], beta, 1, &mut r)[0].pos == 0)
                .count();
            let f = first as f64 / n as f64;
            assert!((f - expect).abs() < 0.015, "β = {beta}: {f} vs {expect}");
        }
        let all = gumbel_top_k(&[1.0, 2.0, 3.0], 1.0, 3, &mut r);
        let mut pos: Vec<usize> = all.iter().map(|p| p.pos).collect();
        pos.sort();
        assert_eq!(pos, vec![0, 1, 2]);
    }
}
