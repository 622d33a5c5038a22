//! What every strategy sees and returns: the [`Strategy`] trait, the round's [`SelectContext`],
//! a [`Pick`], the [`Build`] a constructor reads its settings from, and the helpers several
//! strategies share (top-k by score, k-means representatives, a random top-up).

use crate::cache::Need;
use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The `[select]` table of a pipeline: `diagnostics`, and one sub-table per strategy family
/// (`[select.ccma]`, `[select.mc]`, …), each read by the strategies that own it (their
/// `Params`). A table no registered strategy reads is an error (see [`super::check_tables`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SelectCfg {
    /// Write CCMA's teacher–student diagnostics table every round (needs the teacher's logits).
    pub diagnostics: bool,
    #[serde(flatten)]
    pub tables: BTreeMap<String, toml::Value>,
}

/// A strategy's own settings: a `[select.<table>]` table with defaults, checked once.
pub trait Params: DeserializeOwned + Serialize + Default {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// What a strategy's constructor reads: the pipeline's `[select]` tables and the two pipeline
/// settings some strategies default to or fold into their identity.
pub struct Build<'a> {
    pub select: &'a SelectCfg,
    /// MC dropout's rate where a table leaves it unset: the linear probe's training rate.
    pub dropout: f32,
    /// The teacher's temperature τ (None: the cache's), part of CCMA's identity.
    pub teacher_tau: Option<f64>,
    /// The tables the constructors asked for (to find the ones no strategy reads).
    pub(super) read: RefCell<Vec<&'static str>>,
}

impl<'a> Build<'a> {
    pub fn new(select: &'a SelectCfg, dropout: f32, teacher_tau: Option<f64>) -> Self {
        Self {
            select,
            dropout,
            teacher_tau,
            read: RefCell::new(Vec::new()),
        }
    }

    /// `[select.<table>]` as `P` (its defaults where the table or a key is absent), validated.
    pub fn params<P: Params>(&self, table: &'static str) -> Result<P> {
        self.read.borrow_mut().push(table);
        let p: P = match self.select.tables.get(table) {
            None => P::default(),
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "select.{table}: {}",
                    e.to_string().replace('\n', " ").trim()
                )
            })?,
        };
        p.validate().with_context(|| format!("select.{table}"))?;
        Ok(p)
    }
}

/// The JSON of what enters a run's config hash for a strategy.
pub fn hashed(v: impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("serialisable")
}

/// [`hashed`] for settings that were added later: null while they are at their defaults, so runs
/// from before them keep their ids.
pub fn hashed_unless_default<P: Serialize + Default + PartialEq>(p: &P) -> serde_json::Value {
    if *p == P::default() {
        serde_json::Value::Null
    } else {
        hashed(p)
    }
}

/// The labeled calibration split as a strategy sees it: student and teacher probabilities of
/// its rows (row i ↔ labels[i]).
pub struct Calib<'a> {
    pub student: &'a Mat,
    pub teacher: Option<&'a Mat>,
    pub labels: &'a [u32],
}

/// Key–value notes a strategy leaves about a selection (its calibration, a fallback); the select
/// stage logs them and stores them in the queries file's metadata.
#[derive(Default)]
pub struct Notes(Mutex<Vec<(String, String)>>);

impl Notes {
    pub fn add(&self, key: &str, value: impl Into<String>) {
        let v = value.into();
        crate::progress::log(format!("{key}: {v}"));
        self.0.lock().expect("notes lock").push((key.into(), v));
    }
    pub fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().expect("notes lock"))
    }
}

/// Everything a strategy may look at. Row indices refer to the train pool's rows.
pub struct SelectContext<'a> {
    pub n_classes: usize,
    /// Student class probabilities of every train row.
    pub probs: &'a Mat,
    /// Student features of every train row (L2-normalised).
    pub features: &'a Mat,
    /// Labeled rows and their labels.
    pub labeled: &'a [usize],
    pub labels: &'a [u32],
    /// Unlabeled rows, ascending.
    pub pool: &'a [usize],
    /// The round's trained head, for strategies that say [`Strategy::needs_head`].
    pub head: Option<&'a crate::train::Head>,
    /// Teacher probabilities softmax(cos/τ) of every train row ([`Strategy::needs`] logits).
    pub teacher_probs: Option<&'a Mat>,
    /// Teacher (CLIP) image embeddings of every train row ([`Strategy::needs`] image).
    pub teacher_image: Option<&'a Mat>,
    /// The teacher's class prototypes t_c (C × D, [`Strategy::needs`] prototypes).
    pub prototypes: Option<&'a Mat>,
    pub calib: Option<Calib<'a>>,
    /// Labels of the retrieved samples the run trains on (`+rda` runs; TFS counts them).
    pub retrieved_labels: Option<&'a [u32]>,
    pub notes: Notes,
}

impl SelectContext<'_> {
    pub fn teacher_probs(&self, who: &str) -> Result<&Mat> {
        self.teacher_probs
            .ok_or_else(|| anyhow::anyhow!("{who} needs the teacher's logits in the cache"))
    }
    pub fn teacher_image(&self, who: &str) -> Result<&Mat> {
        self.teacher_image.ok_or_else(|| {
            anyhow::anyhow!("{who} needs the teacher's image embeddings in the cache")
        })
    }
    pub fn prototypes(&self, who: &str) -> Result<&Mat> {
        self.prototypes.ok_or_else(|| {
            anyhow::anyhow!("{who} needs the teacher's class prototypes in the cache")
        })
    }
    pub fn head(&self, who: &str) -> Result<&crate::train::Head> {
        self.head
            .ok_or_else(|| anyhow::anyhow!("{who} needs the round's trained head"))
    }
}

/// One pick: a position in `ctx.pool` and the strategy's score for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    pub pos: usize,
    pub score: f64,
}

pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the strategy reads the round's trained head (e.g. for gradient embeddings).
    fn needs_head(&self) -> bool {
        false
    }
    /// Which teacher tables the strategy reads.
    fn needs(&self) -> Need {
        Need::default()
    }
    /// Pick `budget` distinct pool positions (`budget ≤ pool.len()` is checked by the caller).
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>>;
    /// The settings that enter the run's config hash (its `Params` and the defaults in effect);
    /// null for a strategy without settings.
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Pseudo-labels for the picked train rows (`None`: ask the oracle), for strategies that
    /// label some picks themselves (selective querying); `None` when every pick is queried.
    fn pseudo_labels(&self, _ctx: &SelectContext, _rows: &[usize]) -> Option<Vec<Option<i32>>> {
        None
    }
}

/// Picks from (pool position, score) pairs in pick order.
pub fn picks(pairs: Vec<(usize, f64)>) -> Vec<Pick> {
    pairs
        .into_iter()
        .map(|(pos, score)| Pick { pos, score })
        .collect()
}

/// The `budget` pool positions with the highest score (ties: lower position first).
pub fn top_scores(scores: &[f64], budget: usize) -> Vec<Pick> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(budget)
        .map(|pos| Pick {
            pos,
            score: scores[pos],
        })
        .collect()
}

/// A per-row score of the student probabilities for every pool row.
pub fn pool_scores(ctx: &SelectContext, f: impl Fn(&[f32]) -> f64 + Sync) -> Vec<f64> {
    use rayon::prelude::*;
    ctx.pool.par_iter().map(|&r| f(ctx.probs.row(r))).collect()
}

impl SelectContext<'_> {
    /// Labeled and unlabeled rows together, ascending (the space the coverage methods cluster).
    pub fn all_rows(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.labeled.iter().chain(self.pool).copied().collect();
        all.sort_unstable();
        all
    }
}

/// B representatives of candidate pool positions `cand` (their vectors: rows `rows` of `x`):
/// all of them when there are ≤ B, else k-means with K = B and the candidate nearest each
/// centroid; topped up at random (with a note) when short.
pub fn representatives(
    ctx: &SelectContext,
    x: &Mat,
    rows: &[usize],
    cand: &[usize],
    budget: usize,
    rng: &mut VRng,
    who: &str,
) -> Result<Vec<usize>> {
    let mut picked: Vec<usize> = if cand.len() > budget {
        crate::kmeans::centroid_picks(x, rows, budget, 20, rng)?
            .into_iter()
            .map(|j| cand[j])
            .collect()
    } else {
        cand.to_vec()
    };
    fill_random(ctx, &mut picked, budget, rng, who, cand.len());
    Ok(picked)
}

/// Complete `picks` to `budget` with random pool positions (score 0), noting the shortfall.
pub fn finish_at_random(
    ctx: &SelectContext,
    mut picks: Vec<Pick>,
    budget: usize,
    rng: &mut VRng,
    who: &str,
) -> Vec<Pick> {
    if picks.len() < budget {
        let mut pos: Vec<usize> = picks.iter().map(|p| p.pos).collect();
        let found = pos.len();
        fill_random(ctx, &mut pos, budget, rng, who, found);
        picks.extend(pos[found..].iter().map(|&pos| Pick { pos, score: 0.0 }));
    }
    picks
}

/// Top up `picked` (pool positions) to `budget` with random unpicked pool positions, noting how
/// many were drawn when the strategy ran short.
pub fn fill_random(
    ctx: &SelectContext,
    picked: &mut Vec<usize>,
    budget: usize,
    rng: &mut VRng,
    who: &str,
    candidates: usize,
) {
    if picked.len() >= budget {
        picked.truncate(budget);
        return;
    }
    let mut taken = vec![false; ctx.pool.len()];
    picked.iter().for_each(|&p| taken[p] = true);
    let rest: Vec<usize> = (0..ctx.pool.len()).filter(|&p| !taken[p]).collect();
    let need = budget - picked.len();
    ctx.notes.add(
        "fallback",
        format!("{who}: {candidates} candidates for a budget of {budget}; {need} drawn at random"),
    );
    picked.extend(crate::rng::sample(&rest, need, rng));
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::mat::Mat;

    /// A context over `probs` where rows in `labeled` are labeled (label = argmax) and the rest form the pool.
    pub struct Owned {
        pub probs: Mat,
        pub features: Mat,
        pub labeled: Vec<usize>,
        pub labels: Vec<u32>,
        pub pool: Vec<usize>,
    }

    impl Owned {
        pub fn new(probs: Mat, features: Mat, labeled: Vec<usize>, labels: Vec<u32>) -> Self {
            let pool = (0..probs.rows).filter(|i| !labeled.contains(i)).collect();
            Self {
                probs,
                features,
                labeled,
                labels,
                pool,
            }
        }
        pub fn ctx(&self) -> SelectContext<'_> {
            SelectContext {
                n_classes: self.probs.cols,
                probs: &self.probs,
                features: &self.features,
                labeled: &self.labeled,
                labels: &self.labels,
                pool: &self.pool,
                head: None,
                teacher_probs: None,
                teacher_image: None,
                prototypes: None,
                calib: None,
                retrieved_labels: None,
                notes: Notes::default(),
            }
        }
    }

    pub fn picked_rows(o: &Owned, picks: &[Pick]) -> Vec<usize> {
        picks.iter().map(|p| o.pool[p.pos]).collect()
    }
}
