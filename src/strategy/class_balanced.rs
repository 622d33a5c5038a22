//! Class-balanced sampling (PCoreSet Alg. 5): pseudo-label the pool by the student's argmax,
//! give class c the quota K_c = round(B·w_c/Σw) with w_c = 1/n_c (1 when class c has no label),
//! draw K_c at random among the pool points predicted as c, then top up at random if the batch
//! is short (a class with too few candidates, or rounding) and trim if rounding overshoots.
//!
//! `[select.class-balanced] weights = "released"`: the PCoreSet repository's allocation instead
//! ([`released_quotas`]).

use super::api::{hashed_unless_default, Build, Pick, SelectContext, Strategy};
use crate::mat::argmax;
use crate::rng::{self, VRng};
use crate::variant::Variant;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// `[select.class-balanced]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// `paper`: Alg. 5; `released`: the repository's weights and remainder rule.
    pub weights: Variant,
}

impl super::api::Params for Params {}

#[derive(Default)]
pub struct ClassBalanced(pub Params);

pub fn build(_: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(ClassBalanced(b.params("class-balanced")?)))
}

/// The PCoreSet repository's quotas over the classes predicted in the pool (`present`,
/// ascending): w_c = N / (n_c + 1) with N the labeled total and a class without labels counted
/// as n_c = 1 (every w_c = 1 with no labels at all), normalised; K_c = ⌊B·w_c⌋, and the
/// remainder one each to the largest weights (ties: lower class). Classes not predicted get 0.
pub fn released_quotas(counts: &[usize], present: &[usize], budget: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let w: Vec<f64> = present
        .iter()
        .map(|&c| {
            if total == 0 {
                1.0
            } else {
                total as f64 / (counts[c].max(1) as f64 + 1.0)
            }
        })
        .collect();
    let sum: f64 = w.iter().sum();
    let w: Vec<f64> = w.iter().map(|v| v / sum).collect();
    let mut q = vec![0usize; counts.len()];
    let mut left = budget;
    for (i, &c) in present.iter().enumerate() {
        q[c] = (budget as f64 * w[i]) as usize;
        left = left.saturating_sub(q[c]);
    }
    let mut order: Vec<usize> = (0..present.len()).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    for i in order {
        if left == 0 {
            break;
        }
        q[present[i]] += 1;
        left -= 1;
    }
    q
}

/// Quotas K_c = round(B·w_c/Σw), w_c = 1/n_c or 1 for an unlabeled class.
pub fn quotas(counts: &[usize], budget: usize) -> Vec<usize> {
    let w: Vec<f64> = counts
        .iter()
        .map(|&n| if n == 0 { 1.0 } else { 1.0 / n as f64 })
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter()
        .map(|wc| (budget as f64 * wc / sum).round() as usize)
        .collect()
}

impl Strategy for ClassBalanced {
    fn name(&self) -> &'static str {
        "class-balanced"
    }
    fn params(&self) -> serde_json::Value {
        hashed_unless_default(&self.0)
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        if self.0.weights.released() {
            return Ok(select_released(ctx, budget, rng));
        }
        let c = ctx.n_classes;
        let mut counts = vec![0usize; c];
        for &l in ctx.labels {
            counts[l as usize] += 1;
        }
        let q = quotas(&counts, budget);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); c];
        for (pos, &r) in ctx.pool.iter().enumerate() {
            by_class[argmax(ctx.probs.row(r))].push(pos);
        }
        // Classes with the largest quota first, so a trim removes the least needed picks.
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| q[b].cmp(&q[a]).then(a.cmp(&b)));
        let mut taken = vec![false; ctx.pool.len()];
        let mut picks = Vec::with_capacity(budget);
        for &k in &order {
            for pos in rng::sample(&by_class[k], q[k], rng) {
                taken[pos] = true;
                picks.push(Pick {
                    pos,
                    score: 1.0 / counts[k].max(1) as f64,
                });
            }
        }
        picks.truncate(budget);
        if picks.len() < budget {
            let rest: Vec<usize> = (0..ctx.pool.len()).filter(|&p| !taken[p]).collect();
            for pos in rng::sample(&rest, budget - picks.len(), rng) {
                picks.push(Pick { pos, score: 0.0 });
            }
        }
        Ok(picks)
    }
}

/// The repository's selection: per predicted class (ascending) a random draw of its quota,
/// then a random top-up from the rest of the pool.
fn select_released(ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Vec<Pick> {
    let c = ctx.n_classes;
    let mut counts = vec![0usize; c];
    for &l in ctx.labels {
        counts[l as usize] += 1;
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); c];
    for (pos, &r) in ctx.pool.iter().enumerate() {
        by_class[argmax(ctx.probs.row(r))].push(pos);
    }
    let present: Vec<usize> = (0..c).filter(|&k| !by_class[k].is_empty()).collect();
    let q = released_quotas(&counts, &present, budget);
    let mut taken = vec![false; ctx.pool.len()];
    let mut picks = Vec::with_capacity(budget);
    for &k in &present {
        let n = q[k].min(by_class[k].len()).min(budget - picks.len());
        for pos in rng::sample(&by_class[k], n, rng) {
            taken[pos] = true;
            picks.push(Pick {
                pos,
                score: q[k] as f64 / budget.max(1) as f64,
            });
        }
    }
    if picks.len() < budget {
        let rest: Vec<usize> = (0..ctx.pool.len()).filter(|&p| !taken[p]).collect();
        for pos in rng::sample(&rest, budget - picks.len(), rng) {
            picks.push(Pick { pos, score: 0.0 });
        }
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::strategy::testutil::Owned;

    #[test]
    fn released_quotas_hand_checked() {
        // labels n = [2, 0, 1, 5] (N = 8), classes 0–2 predicted in the pool, class 3 not:
        // w = 8/3, 8/2, 8/2 (class 1 counted as n = 1) → normalised [0.25, 0.375, 0.375];
        // B = 5: ⌊1.25, 1.875, 1.875⌋ = [1, 1, 1], remainder 2 to the largest weights (classes
        // 1 and 2, ties in class order) → [1, 2, 2, 0]
        assert_eq!(released_quotas(&[2, 0, 1, 5], &[0, 1, 2], 5), vec![1, 2, 2, 0]);
        // n = [1, 3, 0], B = 10: the paper's w = [1, 1/3, 1] rounds to [4, 1, 4] (9, topped up
        // at random); the released w = 4/2, 4/4, 4/2 floors to [4, 2, 4]
        assert_eq!(quotas(&[1, 3, 0], 10), vec![4, 1, 4]);
        assert_eq!(released_quotas(&[1, 3, 0], &[0, 1, 2], 10), vec![4, 2, 4]);
        // no labels: uniform over the predicted classes; B = 4 over 3 → [1, 1, 1] + 1 to class 0
        assert_eq!(released_quotas(&[0, 0, 0], &[0, 1, 2], 4), vec![2, 1, 1]);
    }

    #[test]
    fn quotas_hand_checked() {
        // n = [1, 3, 0]: w = [1, 1/3, 1], Σ = 7/3; B = 7 → [3, 1, 3]
        assert_eq!(quotas(&[1, 3, 0], 7), vec![3, 1, 3]);
        assert_eq!(quotas(&[2, 2], 4), vec![2, 2]);
    }

    #[test]
    fn fills_quotas_from_predicted_classes_and_tops_up() {
        // 3 classes; labeled: two of class 0, one of class 1, none of class 2 → w = [.5, 1, 1]
        // B = 5 → quotas round(5·[.2,.4,.4]) = [1, 2, 2]. Pool predicted: class 0 ×6, class 1 ×4, class 2 ×1.
        let mut rows = vec![vec![1.0, 0.0, 0.0]; 3];
        rows.extend(vec![vec![0.9, 0.1, 0.0]; 6]);
        rows.extend(vec![vec![0.1, 0.9, 0.0]; 4]);
        rows.push(vec![0.0, 0.1, 0.9]);
        let probs = Mat::from_rows(&rows).unwrap();
        let o = Owned::new(
            probs.clone(),
            Mat::zeros(rows.len(), 1),
            vec![0, 1, 2],
            vec![0, 0, 1],
        );
        let picks = ClassBalanced::default()
            .select(&o.ctx(), 5, &mut rng::stream(1, "cb", 0))
            .unwrap();
        assert_eq!(picks.len(), 5);
        let mut per = [0usize; 3];
        for p in &picks[..3] {
            per[argmax(probs.row(o.pool[p.pos]))] += 1;
        }
        // first the class-1 quota (2) and the only class-2 candidate (quota 2, 1 available)
        assert_eq!(per, [0, 2, 1]);
        let mut all: Vec<usize> = picks.iter().map(|p| p.pos).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5, "distinct picks");
    }
}
