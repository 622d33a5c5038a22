//! Tail First Sampling (ALOR): label the pool sample the model is least sure of in the class that
//! has the fewest labels so far. Counts n_c run over the labeled set and, when the run uses
//! retrieved data (`+rda`), the retrieved set too; the classes of pool samples are the model's
//! predictions. Each pick adds one to its class's count, so a batch walks up from the tail.

use crate::metrics::entropy;
use super::api::{Build, Pick, SelectContext, Strategy};
use crate::rng::VRng;
use anyhow::Result;

pub struct Tfs;

pub fn build(_: &'static str, _: &Build) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Tfs))
}

impl Strategy for Tfs {
    fn name(&self) -> &'static str {
        "tfs"
    }
    fn select(&self, ctx: &SelectContext, budget: usize, _rng: &mut VRng) -> Result<Vec<Pick>> {
        let c = ctx.n_classes;
        let mut counts = vec![0usize; c];
        for &l in ctx.labels.iter().chain(ctx.retrieved_labels.unwrap_or(&[])) {
            counts[l as usize] += 1;
        }
        // per predicted class: pool positions by entropy, highest first (ties: lower position)
        let mut by_class: Vec<Vec<(f64, usize)>> = vec![Vec::new(); c];
        for (pos, &row) in ctx.pool.iter().enumerate() {
            let p = ctx.probs.row(row);
            by_class[crate::mat::argmax(p)].push((entropy(p), pos));
        }
        for v in &mut by_class {
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            v.reverse(); // pop() takes the best
        }
        let mut picks = Vec::with_capacity(budget);
        while picks.len() < budget {
            // the class with the fewest labels that still has a predicted sample (ties: lower id)
            let Some(k) = (0..c)
                .filter(|&k| !by_class[k].is_empty())
                .min_by_key(|&k| (counts[k], k))
            else {
                break;
            };
            let (score, pos) = by_class[k].pop().expect("non-empty");
            picks.push(Pick { pos, score });
            counts[k] += 1;
        }
        Ok(picks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    /// Three classes; labeled: two of class 0, one of class 1, none of class 2.
    #[test]
    fn walks_up_from_the_tail_by_entropy() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.05, 0.05], // 0 labeled (class 0)
            vec![0.9, 0.05, 0.05], // 1 labeled (class 0)
            vec![0.1, 0.8, 0.1],   // 2 labeled (class 1)
            vec![0.5, 0.4, 0.1],   // 3 pred 0, H=0.943
            vec![0.7, 0.2, 0.1],   // 4 pred 0, H=0.802
            vec![0.2, 0.7, 0.1],   // 5 pred 1, H=0.802
            vec![0.3, 0.6, 0.1],   // 6 pred 1, H=0.898
            vec![0.1, 0.1, 0.8],   // 7 pred 2, H=0.639
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(8, 1), vec![0, 1, 2], vec![0, 0, 1]);
        let picks = Tfs
            .select(&o.ctx(), 5, &mut rng::stream(0, "x", 0))
            .unwrap();
        // counts (2,1,0): class 2 → row 7; (2,1,1): class 1 → row 6 (higher H than 5);
        // (2,2,1): class 2 has nothing left → class 0 (tie with 1, lower id) → row 3;
        // (3,2,1): class 1 → row 5; (3,3,1): class 0 → row 4
        assert_eq!(picked_rows(&o, &picks), vec![7, 6, 3, 5, 4]);
        assert!((picks[0].score - entropy(&[0.1, 0.1, 0.8])).abs() < 1e-12);
    }

    /// Retrieved labels change the counts: with many retrieved samples of class 2 and none of
    /// class 1, the first pick comes from class 1.
    #[test]
    fn retrieved_labels_count() {
        let probs = Mat::from_rows(&[
            vec![0.9, 0.05, 0.05], // 0 labeled (class 0)
            vec![0.1, 0.6, 0.3],   // 1 pred 1
            vec![0.1, 0.3, 0.6],   // 2 pred 2
        ])
        .unwrap();
        let o = Owned::new(probs, Mat::zeros(3, 1), vec![0], vec![0]);
        let without = Tfs
            .select(&o.ctx(), 1, &mut rng::stream(0, "x", 0))
            .unwrap();
        // counts (1,0,0): class 1 (lower id) → row 1
        assert_eq!(picked_rows(&o, &without), vec![1]);
        let retrieved = vec![1u32, 1, 0];
        let mut ctx = o.ctx();
        ctx.retrieved_labels = Some(&retrieved);
        let with = Tfs.select(&ctx, 1, &mut rng::stream(0, "x", 0)).unwrap();
        // counts (2,2,0): class 2 → row 2
        assert_eq!(picked_rows(&o, &with), vec![2]);
    }
}
