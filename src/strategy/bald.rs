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
        Ok(top_scores(&mc::pool_bald(ctx, "bald", rng)?, budget))
    }
}
