//! DropQuery (Gupte et al., 2024): candidates are pool points whose prediction changes in more
//! than half of a few dropout passes; k-means with K = B on the candidates' features, and the
//! candidate nearest each centroid is queried. Short of candidates, the rest is drawn at random.

use super::{mc, representatives, Pick, SelectContext, Strategy};
use crate::mat::argmax;
use crate::rng::VRng;
use anyhow::Result;

pub struct DropQuery;

impl Strategy for DropQuery {
    fn name(&self) -> &'static str {
        "dropquery"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let head = ctx.head("dropquery")?;
        let emb = mc::pool_embedding(head, ctx.features, ctx.pool)?;
        let cfg = &ctx.cfg.dropquery;
        let base: Vec<usize> = ctx.pool.iter().map(|&r| argmax(ctx.probs.row(r))).collect();
        let mut changed = vec![0usize; ctx.pool.len()];
        let rate = cfg.dropout.unwrap_or(ctx.dropout);
        mc::passes(head, &emb, cfg.passes, rate, rng, |p| {
            for (i, c) in changed.iter_mut().enumerate() {
                *c += (argmax(p.row(i)) != base[i]) as usize;
            }
            Ok(())
        })?;
        let cand: Vec<usize> = (0..ctx.pool.len())
            .filter(|&i| 2 * changed[i] > cfg.passes)
            .collect();
        let rows: Vec<usize> = cand.iter().map(|&i| ctx.pool[i]).collect();
        let picked = representatives(ctx, ctx.features, &rows, &cand, budget, rng, "dropquery")?;
        Ok(picked
            .into_iter()
            .map(|pos| Pick {
                pos,
                score: changed[pos] as f64,
            })
            .collect())
    }
}
