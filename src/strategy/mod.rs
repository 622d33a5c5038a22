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
    fill_random, finish_at_random, hashed, picks, pool_scores, representatives, top_scores, Build,
    Calib, Notes, Params, Pick, SelectCfg, SelectContext, Strategy,
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
            Box::new(sq::Selective { base: s })
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
        assert_eq!(names().count(), 29);
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
