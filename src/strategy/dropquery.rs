//! DropQuery (Gupte et al., 2024): candidates are pool points whose prediction changes in more
//! than half of a few dropout passes; k-means with K = B on the candidates' features, and the
//! candidate nearest each centroid is queried. Short of candidates, the rest is drawn at random.

use super::mc;
use super::api::{hashed, representatives, Build, Pick, SelectContext, Strategy};
use crate::mat::argmax;
use crate::rng::VRng;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// `[select.dropquery]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub passes: usize,
    /// Dropout rate; default: the linear probe's training rate.
    pub dropout: Option<f32>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            passes: 3,
            dropout: None,
        }
    }
}

impl super::api::Params for Params {}

pub struct DropQuery {
    p: Params,
    /// The dropout rate in effect.
    rate: f32,
}

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    let p: Params = b.params("dropquery")?;
    let rate = p.dropout.unwrap_or(b.dropout);
    Ok(Box::new(DropQuery { p, rate }))
}

impl Strategy for DropQuery {
    fn params(&self) -> serde_json::Value {
        hashed((&self.p, self.rate))
    }
    fn name(&self) -> &'static str {
        "dropquery"
    }
    fn needs_head(&self) -> bool {
        true
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let head = ctx.head("dropquery")?;
        let emb = mc::pool_embedding(head, ctx.features, ctx.pool)?;
        let cfg = &self.p;
        let base: Vec<usize> = ctx.pool.iter().map(|&r| argmax(ctx.probs.row(r))).collect();
        let mut changed = vec![0usize; ctx.pool.len()];
        let rate = self.rate;
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
