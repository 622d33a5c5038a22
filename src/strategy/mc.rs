//! MC dropout through the head (BALD, PowerBALD, DropQuery): inverted-dropout masks on the
//! embedded rows (the linear probe's own dropout position), drawn from the run's seeded stream.

use crate::mat::Mat;
use crate::rng::VRng;
use crate::train::Head;
use anyhow::Result;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// `[select.mc]`: MC dropout of BALD and PowerBALD, passes through the head's dropout.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub passes: usize,
    /// Dropout rate; default: the linear probe's training rate.
    pub dropout: Option<f32>,
    /// PowerBALD's exponent β (sample ∝ I^β without replacement).
    pub power_beta: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            passes: 20,
            dropout: None,
            power_beta: 1.0,
        }
    }
}

impl super::api::Params for Params {}

/// MC-dropout settings with the rate in effect (the table's, else the linear probe's).
pub struct Mc {
    pub p: Params,
    pub rate: f32,
}

impl Mc {
    pub fn new(b: &super::api::Build) -> Result<Mc> {
        let p: Params = b.params("mc")?;
        let rate = p.dropout.unwrap_or(b.dropout);
        Ok(Mc { p, rate })
    }
    /// What enters the config hash: the table and the rate in effect.
    pub fn hashed(&self) -> serde_json::Value {
        super::api::hashed((&self.p, self.rate))
    }
}

/// Run `passes` stochastic passes over the embedded rows `emb`, handing each pass's class
/// probabilities (rows × C) to `each`.
pub fn passes(
    head: &Head,
    emb: &Mat,
    passes: usize,
    rate: f32,
    rng: &mut VRng,
    mut each: impl FnMut(&Mat) -> Result<()>,
) -> Result<()> {
    let keep = if rate < 1.0 { 1.0 / (1.0 - rate) } else { 0.0 };
    let mut x = emb.clone();
    for _ in 0..passes {
        for (o, &v) in x.data.iter_mut().zip(&emb.data) {
            *o = if rng.random::<f32>() < rate {
                0.0
            } else {
                v * keep
            };
        }
        each(&head.predict_embedded(&x)?)?;
    }
    Ok(())
}

/// BALD's mutual information per row: H(mean p) − mean H(p) over the passes.
pub fn bald_scores(
    head: &Head,
    emb: &Mat,
    n: usize,
    rate: f32,
    rng: &mut VRng,
) -> Result<Vec<f64>> {
    // sized by the first pass's class count
    let mut mean: Vec<f64> = Vec::new();
    let mut ent = vec![0f64; emb.rows];
    passes(head, emb, n, rate, rng, |p| {
        if mean.is_empty() {
            mean = vec![0f64; p.rows * p.cols];
        }
        for i in 0..p.rows {
            let r = p.row(i);
            ent[i] += crate::conformal::entropy(r);
            for (m, &v) in mean[i * p.cols..(i + 1) * p.cols].iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        Ok(())
    })?;
    let t = n.max(1) as f64;
    let c = mean.len() / emb.rows.max(1);
    Ok((0..emb.rows)
        .map(|i| {
            let h: f64 = mean[i * c..(i + 1) * c]
                .iter()
                .map(|&m| m / t)
                .filter(|&m| m > 0.0)
                .map(|m| -m * m.ln())
                .sum();
            (h - ent[i] / t).max(0.0)
        })
        .collect())
}

/// BALD scores of the pool rows with the `[select.mc]` settings (`who` names the strategy).
pub fn pool_bald(
    ctx: &super::api::SelectContext,
    mc: &Mc,
    who: &str,
    rng: &mut VRng,
) -> Result<Vec<f64>> {
    let head = ctx.head(who)?;
    let emb = pool_embedding(head, ctx.features, ctx.pool)?;
    bald_scores(head, &emb, mc.p.passes, mc.rate, rng)
}

/// The embedded student features of the pool rows.
pub fn pool_embedding(head: &Head, features: &Mat, pool: &[usize]) -> Result<Mat> {
    head.embed_of(features, pool)
}
