//! Acquisition strategies: each file implements [`Strategy`] for one method; [`by_name`] is the
//! registry. A strategy returns `budget` positions of the unlabeled pool with a score, in pick
//! order; ties are broken by lower pool position, and all randomness comes from the given seeded
//! generator, so the same inputs give the same batch.

mod alfa_mix;
pub mod badge;
mod bald;
pub mod cb;
pub mod ccma;
mod class_balanced;
mod coreset;
mod dropquery;
mod entropy;
pub mod params;
pub use entropy::entropy;
mod least_confidence;
mod margin;
pub mod mc;
mod pcb;
mod pcoreset;
mod pcoreset_r;
mod power_bald;
mod probcover;
mod random;
pub mod sq;
mod tfs;
mod typiclust;
pub mod uherding;

use crate::cache::Need;
use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::{bail, Result};
use params::SelectCfg;
use std::sync::Mutex;

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
    pub cfg: &'a SelectCfg,
    /// MC dropout rate when a strategy's table leaves it unset (the linear probe's).
    pub dropout: f32,
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
}

pub const NAMES: [&str; 29] = [
    "random",
    "entropy",
    "margin",
    "least-confidence",
    "coreset",
    "pcoreset",
    "pcoreset-r",
    "class-balanced",
    "badge",
    "bald",
    "power-bald",
    "alfa-mix",
    "typiclust",
    "probcover",
    "dropquery",
    "uherding",
    "ccma",
    "ccma-v1",
    "ccma-v2",
    "ccma-v3",
    "ccma-v4",
    "ccma-v5",
    "ccma-uherding",
    "cb",
    "cb-released",
    "pcb-entropy",
    "pcb-badge",
    "pcb-coreset",
    "tfs",
];

/// A strategy name without its `+rda` suffix, and whether it had it. A `+rda` run trains on the
/// labeled ∪ retrieved data of the cache, and TFS counts the retrieved labels.
pub fn rda_split(name: &str) -> (&str, bool) {
    match name.strip_suffix("+rda") {
        Some(base) => (base, true),
        None => (name, false),
    }
}

/// `name` with retrieved data switched on or off (`--rda on|off`).
pub fn with_rda(name: &str, on: bool) -> String {
    let base = rda_split(name).0;
    if on {
        format!("{base}+rda")
    } else {
        base.to_string()
    }
}

/// The registry: a strategy by its name.
pub fn by_name(name: &str) -> Result<Box<dyn Strategy>> {
    if let (base, true) = rda_split(name) {
        return by_name(base);
    }
    if let (base, true) = sq::split(name) {
        return by_name(base);
    }
    Ok(match name {
        "random" => Box::new(random::Random),
        "entropy" => Box::new(entropy::Entropy),
        "margin" => Box::new(margin::Margin),
        "least-confidence" => Box::new(least_confidence::LeastConfidence),
        "coreset" => Box::new(coreset::Coreset),
        "pcoreset" => Box::new(pcoreset::PCoreSet),
        "pcoreset-r" => Box::new(pcoreset_r::PCoreSetR),
        "class-balanced" => Box::new(class_balanced::ClassBalanced),
        "badge" => Box::new(badge::Badge),
        "bald" => Box::new(bald::Bald),
        "power-bald" => Box::new(power_bald::PowerBald),
        "alfa-mix" => Box::new(alfa_mix::AlfaMix),
        "typiclust" => Box::new(typiclust::TypiClust),
        "probcover" => Box::new(probcover::ProbCover),
        "dropquery" => Box::new(dropquery::DropQuery),
        "uherding" => Box::new(uherding::UHerding),
        s if s.starts_with("ccma") => Box::new(ccma::Ccma::by_name(s)?),
        "cb" => Box::new(cb::Cb { released: false }),
        "cb-released" => Box::new(cb::Cb { released: true }),
        "pcb-entropy" => Box::new(pcb::Pcb {
            base: Box::new(entropy::Entropy),
            name: "pcb-entropy",
        }),
        "pcb-badge" => Box::new(pcb::Pcb {
            base: Box::new(badge::Badge),
            name: "pcb-badge",
        }),
        "pcb-coreset" => Box::new(pcb::Pcb {
            base: Box::new(coreset::Coreset),
            name: "pcb-coreset",
        }),
        "tfs" => Box::new(tfs::Tfs),
        other => bail!(
            "unknown strategy '{other}' (known: {}; any of them + `+sq` for selective querying, \
             then + `+rda` to add the retrieved data)",
            NAMES.join(", ")
        ),
    })
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

    pub static DEFAULT_CFG: std::sync::LazyLock<SelectCfg> =
        std::sync::LazyLock::new(SelectCfg::default);

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
                cfg: &DEFAULT_CFG,
                dropout: 0.5,
                notes: Notes::default(),
            }
        }
    }

    pub fn picked_rows(o: &Owned, picks: &[Pick]) -> Vec<usize> {
        picks.iter().map(|p| o.pool[p.pos]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_every_name() {
        for n in NAMES {
            assert_eq!(by_name(n).unwrap().name(), n);
        }
        let e = by_name("nope").err().unwrap().to_string();
        assert!(
            e.starts_with("unknown strategy 'nope' (known: random, entropy"),
            "{e}"
        );
    }

    #[test]
    fn top_scores_breaks_ties_by_position() {
        let p = top_scores(&[0.5, 0.9, 0.5, 0.9, 0.1], 3);
        assert_eq!(p.iter().map(|p| p.pos).collect::<Vec<_>>(), vec![1, 3, 0]);
    }
}
