//! Acquisition strategies: each file implements [`Strategy`] for one method; [`by_name`] is the
//! registry. A strategy returns `budget` positions of the unlabeled pool with a score, in pick
//! order; ties are broken by lower pool position, and all randomness comes from the given seeded
//! generator, so the same inputs give the same batch.

pub mod badge;
mod class_balanced;
mod coreset;
mod entropy;
pub use entropy::entropy;
mod least_confidence;
mod margin;
mod pcoreset;
mod pcoreset_r;
mod random;

use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::{bail, Result};

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
    /// Pick `budget` distinct pool positions (`budget ≤ pool.len()` is checked by the caller).
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>>;
}

pub const NAMES: [&str; 9] = [
    "random",
    "entropy",
    "margin",
    "least-confidence",
    "coreset",
    "pcoreset",
    "pcoreset-r",
    "class-balanced",
    "badge",
];

/// The registry: a strategy by its name.
pub fn by_name(name: &str) -> Result<Box<dyn Strategy>> {
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
        other => bail!("unknown strategy '{other}' (known: {})", NAMES.join(", ")),
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

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

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
