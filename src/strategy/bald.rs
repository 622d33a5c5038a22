//! BALD (Houlsby et al.; Gal et al.): mutual information between the prediction and the head's
//! weights, estimated with T MC-dropout passes; the top B.

use super::{mc, top_scores, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct Bald;

impl Strategy for Bald {
    fn name(&self) -> &'static str {
        "bald"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let head = ctx.head("bald")?;
        let emb = mc::pool_embedding(head, ctx.features, ctx.pool)?;
        let m = &ctx.cfg.mc;
        let s = mc::bald_scores(head, &emb, m.passes, m.dropout.unwrap_or(ctx.dropout), rng)?;
        Ok(top_scores(&s, budget))
    }
}
