//! PCB (CB+SQ paper): a base strategy proposes candidates (10% of the pool, at least B), then
//! the batch is balanced over predicted classes: B times, the class with the fewest labels
//! (earlier picks included) gets a random candidate predicted as it; a class with no candidate
//! left is passed over.

use super::api::{finish_at_random, Build, Pick, SelectContext, Strategy};
use crate::cache::Need;
use crate::mat::argmax;
use crate::rng::VRng;
use anyhow::Result;
use rand::Rng;

pub struct Pcb {
    pub base: Box<dyn Strategy>,
    pub name: &'static str,
}

/// `pcb-<base>`: PCB over the base strategy `<base>`.
pub fn build(name: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    let base = match name {
        "pcb-entropy" => super::entropy::build("entropy", b)?,
        "pcb-badge" => super::badge::build("badge", b)?,
        "pcb-coreset" => super::coreset::build("coreset", b)?,
        other => anyhow::bail!("unknown PCB base in '{other}'"),
    };
    Ok(Box::new(Pcb { base, name }))
}

impl Strategy for Pcb {
    fn name(&self) -> &'static str {
        self.name
    }
    fn needs_head(&self) -> bool {
        self.base.needs_head()
    }
    fn needs(&self) -> Need {
        self.base.needs()
    }
    fn params(&self) -> serde_json::Value {
        self.base.params()
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let n = budget.max(ctx.pool.len().div_ceil(10)).min(ctx.pool.len());
        let proposed = self.base.select(ctx, n, rng)?;
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ctx.n_classes];
        for p in &proposed {
            by_class[argmax(ctx.probs.row(ctx.pool[p.pos]))].push(p.pos);
        }
        let mut counts = vec![0usize; ctx.n_classes];
        ctx.labels.iter().for_each(|&l| counts[l as usize] += 1);
        let mut picks = Vec::with_capacity(budget);
        while picks.len() < budget {
            let Some(c) = (0..ctx.n_classes)
                .filter(|&c| !by_class[c].is_empty())
                .min_by_key(|&c| (counts[c], c))
            else {
                break;
            };
            let i = rng.random_range(0..by_class[c].len());
            let pos = by_class[c].swap_remove(i);
            picks.push(Pick {
                pos,
                score: 1.0 / (1 + counts[c]) as f64,
            });
            counts[c] += 1;
        }
        Ok(finish_at_random(ctx, picks, budget, rng, self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;
    use crate::strategy::testutil::{picked_rows, Owned};

    #[test]
    fn serves_the_class_with_fewest_labels_among_the_base_candidates() {
        // labels: class 0 ×2, class 1 ×1, class 2 ×0. Pool: 30 rows predicted as class i % 3, all
        // with the same entropy, so entropy proposes the lowest positions.
        let mut probs = vec![
            vec![0.9, 0.05, 0.05],
            vec![0.9, 0.05, 0.05],
            vec![0.05, 0.9, 0.05],
        ];
        for i in 0..30 {
            let mut p = vec![0.25; 3];
            p[i % 3] = 0.5;
            probs.push(p);
        }
        let o = Owned::new(
            Mat::from_rows(&probs).unwrap(),
            Mat::zeros(33, 2),
            vec![0, 1, 2],
            vec![0, 0, 1],
        );
        let s = Pcb {
            base: Box::new(crate::strategy::entropy::Entropy),
            name: "pcb-entropy",
        };
        let ctx = o.ctx();
        let classes = |b: usize| -> Vec<usize> {
            let p = s.select(&ctx, b, &mut rng::stream(0, "t", 0)).unwrap();
            picked_rows(&o, &p)
                .iter()
                .map(|&r| argmax(o.probs.row(r)))
                .collect()
        };
        // B = 3: candidates = max(3, ⌈30/10⌉) = positions 0..3 (one per class); class 2 (no
        // label), then 1, then 2 has no candidate left → 0
        assert_eq!(classes(3), vec![2, 1, 0]);
        // B = 6: two candidates per class
        assert_eq!(classes(6), vec![2, 1, 2, 0, 1, 0]);
        // B = 12 > 10% of the pool: candidates = 12
        assert_eq!(classes(12).len(), 12);
    }
}
