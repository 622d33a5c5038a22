//! Acquisition strategies. Each file implements [`Strategy`] for one method and owns its
//! settings (`Params`, a `[select.<table>]` of the pipeline) and its constructor `build`; the
//! [`registry!`] below is the one list of them, from which [`names`] and [`by_name`] derive. A
//! strategy returns `budget` positions of the unlabeled pool with a score, in pick order; ties
//! are broken by lower pool position, and all randomness comes from the given seeded generator,
//! so the same inputs give the same batch.
//!
//! Adding a strategy: a file `foo.rs` with `pub fn build(name: &'static str, b: &Build) ->
//! Result<Box<dyn Strategy>>` (reading its table with `b.params::<Params>("foo")`), and one line
//! `foo ["foo"],` in the registry.

pub mod api;
pub mod mc;
pub mod sq;

#[cfg(test)]
pub(crate) use api::testutil;
pub use api::{
    fill_random, finish_at_random, hashed, hashed_unless_default, picks, pool_scores,
    representatives, top_scores, Build, Calib, Notes, Params, Pick, SelectCfg, SelectContext,
    Strategy,
};
pub use entropy::entropy;

use anyhow::{bail, Result};
use std::collections::BTreeSet;

/// One registered strategy: its name and the constructor of its module.
pub struct Entry {
    pub name: &'static str,
    pub build: fn(&'static str, &Build) -> Result<Box<dyn Strategy>>,
}

/// `module ["name", …],` per line: declares the module and registers each name with the
/// module's `build`.
macro_rules! registry {
    ($($module:ident [$($name:literal),+ $(,)?]),+ $(,)?) => {
        $(pub mod $module;)+
        /// Every strategy, in the order `names()` lists them.
        pub static REGISTRY: &[Entry] = &[
            $($(Entry { name: $name, build: $module::build },)+)+
        ];
    };
}

registry! {
    random ["random"],
    entropy ["entropy"],
    margin ["margin"],
    least_confidence ["least-confidence"],
    coreset ["coreset"],
    pcoreset ["pcoreset"],
    pcoreset_r ["pcoreset-r"],
    class_balanced ["class-balanced"],
    badge ["badge"],
    bald ["bald"],
    power_bald ["power-bald"],
    alfa_mix ["alfa-mix"],
    typiclust ["typiclust"],
    probcover ["probcover"],
    dropquery ["dropquery"],
    uherding ["uherding"],
    ccma ["ccma", "ccma-v1", "ccma-v2", "ccma-v3", "ccma-v4", "ccma-v5", "ccma-uherding"],
    cb ["cb", "cb-released"],
    pcb ["pcb-entropy", "pcb-badge", "pcb-coreset"],
    tfs ["tfs"],
}

/// The registered strategy names, in registry order.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|e| e.name)
}

/// A strategy as a run names it: a registered base strategy and whether selective querying
/// runs on top of it (`<base>+sq`). Parsed once, from the pipeline or the command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StrategySpec {
    pub base: &'static str,
    pub selective: bool,
}

impl std::str::FromStr for StrategySpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (base, selective) = match s.strip_suffix("+sq") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let Some(e) = REGISTRY.iter().find(|e| e.name == base) else {
            bail!(
                "unknown strategy '{s}' (known: {}; any of them + `+sq` for selective querying, \
                 then + `+rda` to add the retrieved data)",
                names().collect::<Vec<_>>().join(", ")
            );
        };
        Ok(Self {
            base: e.name,
            selective,
        })
    }
}

impl std::fmt::Display for StrategySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}",
            self.base,
            if self.selective { "+sq" } else { "" }
        )
    }
}

impl StrategySpec {
    /// The strategy with the settings of `b`, wrapped in selective querying when asked.
    pub fn build(&self, b: &Build) -> Result<Box<dyn Strategy>> {
        let e = REGISTRY
            .iter()
            .find(|e| e.name == self.base)
            .expect("a parsed spec names a registered strategy");
        let s = (e.build)(e.name, b)?;
        Ok(if self.selective {
            Box::new(sq::Selective {
                base: s,
                p: b.params("sq")?,
            })
        } else {
            s
        })
    }
}

/// A strategy (`<base>[+sq]`) with default settings.
pub fn by_name(name: &str) -> Result<Box<dyn Strategy>> {
    let cfg = SelectCfg::default();
    name.parse::<StrategySpec>()?
        .build(&Build::new(&cfg, 0.5, None))
}

/// Every `[select.<table>]` is read by some registered strategy, and every strategy accepts
/// the settings in `b` (unknown keys, bad values).
pub fn check_tables(b: &Build) -> Result<()> {
    for e in REGISTRY {
        (e.build)(e.name, b)?;
    }
    b.params::<sq::Params>("sq")?;
    let known: BTreeSet<&str> = b.read.borrow().iter().copied().collect();
    for t in b.select.tables.keys() {
        if !known.contains(t.as_str()) {
            bail!(
                "select.{t}: no strategy reads this table (known: diagnostics, {})",
                known.iter().copied().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_every_name() {
        for n in names() {
            assert_eq!(by_name(n).unwrap().name(), n);
            let s: StrategySpec = format!("{n}+sq").parse().unwrap();
            assert_eq!(
                (s.base, s.selective, s.to_string()),
                (n, true, format!("{n}+sq"))
            );
        }
        assert!(names().count() >= 29);
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

    /// Every registered strategy, alone and under selective querying, on a context with every
    /// input a strategy may read (a trained head, teacher logits and image embeddings,
    /// prototypes, a labeled calibration split, retrieved labels): `budget` picks, distinct, in
    /// the pool, finite scores, and the same picks for the same seed.
    #[test]
    fn every_strategy_keeps_the_contract() {
        use crate::mat::{softmax_rows, Mat};
        use crate::rng;
        let (n, c, d, dt) = (120, 4, 8, 6);
        let mut r = rng::stream(11, "contract", 0);
        let class: Vec<usize> = (0..n).map(|i| i % c).collect();
        let blob = |dim: usize, scale: f32, r: &mut crate::rng::VRng| {
            let mut m = Mat::new(n, dim, rng::uniform(n * dim, 0.6, r)).unwrap();
            for i in 0..n {
                m.row_mut(i)[class[i] % dim] += scale;
            }
            m.normalize_rows();
            m
        };
        let features = blob(d, 1.0, &mut r);
        let image = blob(dt, 1.5, &mut r);
        let mut prototypes = Mat::new(c, dt, rng::uniform(c * dt, 0.2, &mut r)).unwrap();
        for k in 0..c {
            prototypes.row_mut(k)[k] += 1.0;
        }
        prototypes.normalize_rows();
        let cos = crate::geometry::matmul_nt(&image, &prototypes).unwrap();
        let teacher = softmax_rows(&cos, 1.0 / 0.05);
        let labeled: Vec<usize> = (0..2 * c).collect();
        let labels: Vec<u32> = labeled.iter().map(|&i| class[i] as u32).collect();
        let pool: Vec<usize> = (2 * c..n).collect();
        let mut tp = crate::train::params::TrainParams::default();
        tp.linear.epochs = 5;
        let data = crate::train::TrainData {
            features: &features,
            labeled: &labeled,
            labels: &labels,
            n_classes: c,
            teacher: None,
            class_names: &[],
            feature_model: &Default::default(),
            prototypes: None,
            validation: None,
        };
        let (head, _) = crate::train::by_name("linear", &tp)
            .unwrap()
            .fit(
                &data,
                &mut rng::stream(0, "t", 0),
                &candle_core::Device::Cpu,
            )
            .unwrap();
        let probs = head.predict(&features).unwrap();
        let calib_rows: Vec<usize> = (n - 20..n).collect();
        let (cs, ct) = (
            probs.select_rows(&calib_rows),
            teacher.select_rows(&calib_rows),
        );
        let cy: Vec<u32> = calib_rows.iter().map(|&i| class[i] as u32).collect();
        let retrieved: Vec<u32> = vec![0, 0, 1];
        let ctx = || SelectContext {
            n_classes: c,
            probs: &probs,
            features: &features,
            labeled: &labeled,
            labels: &labels,
            pool: &pool,
            head: Some(&head),
            teacher_probs: Some(&teacher),
            teacher_image: Some(&image),
            prototypes: Some(&prototypes),
            calib: Some(Calib {
                student: &cs,
                teacher: Some(&ct),
                labels: &cy,
            }),
            retrieved_labels: Some(&retrieved),
            notes: Notes::default(),
        };
        let mut checked = 0;
        for name in names() {
            for spec in [name.to_string(), format!("{name}+sq")] {
                let s = by_name(&spec).unwrap();
                for budget in [1, 7] {
                    let run = || {
                        s.select(&ctx(), budget, &mut rng::stream(5, "select", 1))
                            .unwrap_or_else(|e| panic!("{spec}: {e:#}"))
                    };
                    let picks = run();
                    assert_eq!(picks.len(), budget, "{spec}: batch size");
                    let mut pos: Vec<usize> = picks.iter().map(|p| p.pos).collect();
                    assert!(pos.iter().all(|&p| p < pool.len()), "{spec}: {pos:?}");
                    pos.sort_unstable();
                    pos.dedup();
                    assert_eq!(pos.len(), budget, "{spec}: repeated picks");
                    assert!(picks.iter().all(|p| p.score.is_finite()), "{spec}");
                    assert_eq!(run(), picks, "{spec}: same seed, other picks");
                    let rows: Vec<usize> = picks.iter().map(|p| pool[p.pos]).collect();
                    let pseudo = s.pseudo_labels(&ctx(), &rows);
                    assert_eq!(pseudo.is_some(), spec.ends_with("+sq"), "{spec}");
                    if let Some(pl) = pseudo {
                        assert_eq!(pl.len(), budget);
                        assert!(pl.iter().flatten().all(|&l| (l as usize) < c));
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, names().count() * 2 * 2);
    }
}
