//! BALD (Houlsby et al.; Gal et al.): mutual information between the prediction and the head's
//! weights, estimated with T MC-dropout passes; the top B.

use super::mc;
use super::api::{top_scores, Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct Bald(mc::Mc);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Bald(mc::Mc::new(b)?)))
}

impl Strategy for Bald {
    fn params(&self) -> serde_json::Value {
        self.0.hashed()
    }
    fn name(&self) -> &'static str {
        "bald"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        Ok(top_scores(&mc::pool_bald(ctx, &self.0, "bald", rng)?, budget))
    }
}
