//! Class-balanced sampling (PCoreSet Alg. 5): pseudo-label the pool by the student's argmax,
//! give class c the quota K_c = round(B·w_c/Σw) with w_c = 1/n_c (1 when class c has no label),
//! draw K_c at random among the pool points predicted as c, then top up at random if the batch
//! is short (a class with too few candidates, or rounding) and trim if rounding overshoots.

use super::api::{Build, Pick, SelectContext, Strategy};
use crate::mat::argmax;
use crate::rng::{self, VRng};
use anyhow::Result;

pub struct ClassBalanced;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(ClassBalanced))
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
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::strategy::testutil::Owned;

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
        let picks = ClassBalanced
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
