//! Stopping rules: when more labels stop paying, read from the round ledger (each round's
//! predictions against the previous round's, and the teacher's). One value and one verdict per
//! rule and round, written to the `stopping` table by `eval`; `vlal report --stopping` says at
//! which round each rule would have stopped each run, and `[stopping] stop_when` ends a run there.
//!
//! - `kappa_average` — stabilizing predictions: Cohen's κ between consecutive rounds' predictions
//!   on a fixed stop set (the whole train pool), stop when the mean of the last `kappa_window`
//!   κ values is ≥ `kappa` (Bloodgood & Vijay-Shanker, "A Method for Stopping Active Learning
//!   Based on Stabilizing Predictions and the Need for User-Adjustable Stopping", CoNLL 2009;
//!   small-text's `KappaAverage`, κ = 1 for identical predictions).
//! - `delta_f` — predicted change of F: ΔF = 1 − 2a/(2a + b + c) between consecutive rounds'
//!   predictions, stop when the last `delta_f_window` values are all < `delta_f` (Altschuler &
//!   Bloodgood, "Stopping Active Learning Based on Predicted Change of F Measure for Text
//!   Classification", ICSC 2019). The paper and small-text's `DeltaFScore` are binary (a, b, c
//!   count the positive class); for C classes this is the macro mean over the classes either
//!   round predicts, which is the binary formula for C = 2 with both classes counted.
//! - `classification_change` — stop when at most a share `change` of the unlabeled pool's
//!   predictions changed since the previous round (Zhu, Wang & Hovy, "Multi-Criteria-Based
//!   Strategy to Stop Active Learning for Data Annotation", COLING 2008; small-text's
//!   `ClassificationChange`, 0 = the paper's "no change").
//! - `overall_uncertainty` — stop when the mean entropy of the unlabeled pool, divided by ln C,
//!   is < `overall_uncertainty` (Zhu et al. 2008; small-text's `OverallUncertainty`).
//! - `low_avg_uncertainty` — baal's `LowAverageUncertaintyStoppingCriterion`: stop when the
//!   mean uncertainty (entropy, nats) of the unlabeled pool is < `avg_uncertainty` (Atighehchian
//!   et al., "Bayesian active learning for production, a systematic study and a reusable
//!   library", 2020).
//! - `disagreement` — CCMA's teacher–student disagreement collapse: stop when the share of the
//!   unlabeled pool where the student's top-1 class differs from the teacher's is <
//!   `disagreement` and their mean Jensen–Shannon divergence is < `js` (CCMA: once the student
//!   agrees with the teacher everywhere, the teacher has nothing left to point the queries at).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The rules, in table order.
pub const RULES: [&str; 6] = [
    "kappa_average",
    "delta_f",
    "classification_change",
    "overall_uncertainty",
    "low_avg_uncertainty",
    "disagreement",
];

/// The pipeline's `[stopping]` table: each rule's threshold, and the rule that ends a run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoppingCfg {
    /// End a run at the first round where this rule fires (one of [`RULES`]; default: none).
    pub stop_when: Option<String>,
    /// Load the teacher's logits to measure `disagreement` even when neither the trainer nor
    /// the strategy needs them (at 1.28M × 1000 classes they are 5 GB); `stop_when =
    /// "disagreement"` implies it.
    pub teacher: bool,
    pub kappa: f64,
    pub kappa_window: usize,
    pub delta_f: f64,
    pub delta_f_window: usize,
    pub change: f64,
    pub overall_uncertainty: f64,
    pub avg_uncertainty: f64,
    pub disagreement: f64,
    pub js: f64,
}

impl Default for StoppingCfg {
    fn default() -> Self {
        Self {
            stop_when: None,
            teacher: false,
            kappa: 0.99,
            kappa_window: 3,
            delta_f: 0.05,
            delta_f_window: 3,
            change: 0.0,
            overall_uncertainty: 0.05,
            avg_uncertainty: 0.002,
            disagreement: 0.05,
            js: 0.02,
        }
    }
}

impl StoppingCfg {
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = &self.stop_when {
            if !RULES.contains(&r.as_str()) {
                bail!(
                    "stopping.stop_when: unknown rule '{r}' (one of {})",
                    RULES.join(", ")
                );
            }
        }
        if self.kappa_window == 0 || self.delta_f_window == 0 {
            bail!("stopping: kappa_window and delta_f_window must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.change) {
            bail!("stopping.change must be in [0, 1]");
        }
        Ok(())
    }
}

/// One round's measurements (None where the round has no previous one, or no teacher).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Values {
    pub kappa: Option<f64>,
    pub delta_f: Option<f64>,
    pub changed: Option<f64>,
    pub overall_uncertainty: f64,
    pub avg_uncertainty: f64,
    pub disagreement: Option<f64>,
    pub js: Option<f64>,
}

/// Cohen's κ between two labelings of the same rows over `c` classes; 1 when they are equal
/// (κ's 0/0 case included).
pub fn kappa(a: &[usize], b: &[usize], c: usize) -> f64 {
    if a == b {
        return 1.0;
    }
    let n = a.len() as f64;
    let (mut ca, mut cb) = (vec![0f64; c], vec![0f64; c]);
    let mut agree = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        ca[x] += 1.0;
        cb[y] += 1.0;
        agree += (x == y) as u8 as f64;
    }
    let po = agree / n;
    let pe: f64 = ca.iter().zip(&cb).map(|(x, y)| x * y).sum::<f64>() / (n * n);
    if pe >= 1.0 {
        return 0.0;
    }
    (po - pe) / (1.0 - pe)
}

/// ΔF between consecutive predictions: 1 − the macro mean, over the classes either predicts,
/// of 2a/(2a + b + c) (a: rows both give the class, b and c: rows only one gives it).
pub fn delta_f(prev: &[usize], cur: &[usize], c: usize) -> f64 {
    let mut abc = vec![(0f64, 0f64, 0f64); c];
    for (&p, &q) in prev.iter().zip(cur) {
        if p == q {
            abc[p].0 += 1.0;
        } else {
            abc[p].1 += 1.0;
            abc[q].2 += 1.0;
        }
    }
    let f: Vec<f64> = abc
        .iter()
        .filter(|(a, b, c)| a + b + c > 0.0)
        .map(|(a, b, c)| 2.0 * a / (2.0 * a + b + c))
        .collect();
    if f.is_empty() {
        return 0.0;
    }
    1.0 - f.iter().sum::<f64>() / f.len() as f64
}

/// The share of `rows` whose prediction changed.
pub fn changed(prev: &[usize], cur: &[usize], rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().filter(|&&i| prev[i] != cur[i]).count() as f64 / rows.len() as f64
}

/// What one row of a round's predictions gives the rules: its top-1 class, its entropy (nats)
/// and, against the teacher's probabilities, whether their top-1 classes differ and their
/// Jensen–Shannon divergence (nats, over `all` = every class).
pub struct Row {
    pub top1: usize,
    pub entropy: f64,
    pub teacher: Option<(bool, f64)>,
}

pub fn row(p: &[f32], teacher: Option<&[f32]>, all: &[u32]) -> Row {
    let top1 = crate::mat::argmax(p);
    Row {
        top1,
        entropy: crate::metrics::entropy(p),
        teacher: teacher.map(|t| {
            (
                top1 != crate::mat::argmax(t),
                crate::conformal::js_on_support(p, t, all),
            )
        }),
    }
}

/// The mean of `v` over `rows` (0 without rows), summed in `rows`' order.
pub fn mean_over(v: &[f64], rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().map(|&i| v[i]).sum::<f64>() / rows.len() as f64
}

/// What each rule compares with its threshold at a round, given its values and the earlier
/// rounds' (oldest first): the mean κ of the window, the largest ΔF of the window, the changed
/// share, the two uncertainties, and the top-1 disagreement. None where a window is not full
/// (or holds a round without a previous one) or nothing was measured.
pub fn statistics(cfg: &StoppingCfg, history: &[Values], now: &Values) -> [Option<f64>; 6] {
    // the last `w` values of a rule, this round's included; None when fewer exist
    let window = |w: usize, get: &dyn Fn(&Values) -> Option<f64>| -> Option<Vec<f64>> {
        let v: Vec<Option<f64>> = history
            .iter()
            .chain(std::iter::once(now))
            .map(get)
            .collect();
        if v.len() < w {
            return None;
        }
        v[v.len() - w..].iter().copied().collect()
    };
    let kappa =
        window(cfg.kappa_window, &|v| v.kappa).map(|k| k.iter().sum::<f64>() / k.len() as f64);
    let delta_f = window(cfg.delta_f_window, &|v| v.delta_f)
        .map(|d| d.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    [
        kappa,
        delta_f,
        now.changed,
        Some(now.overall_uncertainty),
        Some(now.avg_uncertainty),
        now.disagreement,
    ]
}

/// Which rules fire at a round (see [`statistics`]).
pub fn fires(cfg: &StoppingCfg, history: &[Values], now: &Values) -> [bool; 6] {
    let [kappa, delta_f, change, overall, low, dis] = statistics(cfg, history, now);
    [
        kappa.is_some_and(|k| k >= cfg.kappa),
        delta_f.is_some_and(|d| d < cfg.delta_f),
        change.is_some_and(|c| c <= cfg.change),
        overall.is_some_and(|u| u < cfg.overall_uncertainty),
        low.is_some_and(|u| u < cfg.avg_uncertainty),
        dis.zip(now.js)
            .is_some_and(|(d, j)| d < cfg.disagreement && j < cfg.js),
    ]
}

/// Each rule's threshold, in [`RULES`] order (the disagreement rule's top-1 share).
pub fn thresholds(cfg: &StoppingCfg) -> [f64; 6] {
    [
        cfg.kappa,
        cfg.delta_f,
        cfg.change,
        cfg.overall_uncertainty,
        cfg.avg_uncertainty,
        cfg.disagreement,
    ]
}

/// The `stopping` column of a rule's verdict.
pub fn column(rule: &str) -> &'static str {
    match rule {
        "kappa_average" => "stop_kappa_average",
        "delta_f" => "stop_delta_f",
        "classification_change" => "stop_classification_change",
        "overall_uncertainty" => "stop_overall_uncertainty",
        "low_avg_uncertainty" => "stop_low_avg_uncertainty",
        _ => "stop_disagreement",
    }
}

impl Values {
    /// The measurements of row `i` of a stopping table.
    pub fn of_row(t: &crate::table::Frame, i: usize) -> Result<Values> {
        let one = |n: &str| -> Result<Option<f64>> { Ok(t.f64s(n)?.get(i).copied().flatten()) };
        Ok(Values {
            kappa: one("kappa")?,
            delta_f: one("delta_f")?,
            changed: one("classification_change")?,
            overall_uncertainty: one("overall_uncertainty")?.unwrap_or(f64::NAN),
            avg_uncertainty: one("avg_uncertainty")?.unwrap_or(f64::NAN),
            disagreement: one("top1_disagreement")?,
            js: one("mean_js")?,
        })
    }

    /// The measurements of a stopping row's file.
    pub fn read(path: &std::path::Path) -> Result<Values> {
        Values::of_row(
            &crate::table::read(path, crate::schema::Table::Stopping)?,
            0,
        )
    }
}

/// Whether a rule fired at a round, as its stopping row (`RunSpec::stopping_path`) says.
pub fn fired(stopping_row: &std::path::Path, rule: &str) -> bool {
    crate::table::read(stopping_row, crate::schema::Table::Stopping)
        .and_then(|t| t.bools(column(rule)))
        .is_ok_and(|v| v.first().copied().flatten() == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn kappa_matches_its_definition_and_sklearn() {
        assert_eq!(kappa(&[0, 1, 2], &[0, 1, 2], 3), 1.0);
        // sklearn.metrics.cohen_kappa_score([0,0,1,1,2,2],[0,1,1,1,2,0]) = 0.5
        let k = kappa(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0], 3);
        assert!((k - 0.5).abs() < 1e-12, "{k}");
        // all rows one class in a, another in b: po = 0, pe = 0 → 0
        assert_eq!(kappa(&[0, 0], &[1, 1], 2), 0.0);
    }

    #[test]
    fn delta_f_is_the_binary_formula_per_class() {
        assert_eq!(delta_f(&[0, 1, 1], &[0, 1, 1], 2), 0.0);
        // class 1: a = 1, b = 1, c = 0 → F = 2/3; class 0: a = 1, b = 0, c = 1 → F = 2/3
        let d = delta_f(&[0, 1, 1], &[0, 0, 1], 2);
        assert!((d - (1.0 - 2.0 / 3.0)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn rules_fire_on_their_thresholds_and_windows() {
        let cfg = StoppingCfg::default();
        let v = |k: f64, d: f64, ch: f64, u: f64| Values {
            kappa: Some(k),
            delta_f: Some(d),
            changed: Some(ch),
            overall_uncertainty: u,
            avg_uncertainty: u,
            disagreement: Some(0.01),
            js: Some(0.001),
        };
        let first = Values {
            overall_uncertainty: 0.9,
            avg_uncertainty: 0.9,
            ..Default::default()
        };
        // round 0 has no previous round: only the pool rules can fire
        assert_eq!(fires(&cfg, &[], &first), [false; 6]);
        let h = vec![first, v(1.0, 0.0, 0.0, 0.5), v(0.995, 0.01, 0.1, 0.5)];
        // the window of 3 κ (0.995, 1.0 and now 0.99) averages ≥ 0.99; a None inside a window
        // (round 0) keeps it from firing earlier
        let now = v(0.99, 0.01, 0.0, 0.001);
        assert_eq!(fires(&cfg, &h, &now), [true, true, true, true, true, true]);
        assert_eq!(fires(&cfg, &h[..2], &now)[..2], [false, false]);
        let now = v(0.9, 0.06, 0.01, 0.06);
        assert_eq!(
            fires(&cfg, &h, &now),
            [false, false, false, false, false, true]
        );
    }

    #[test]
    fn pool_measures() {
        let all = [0u32, 1];
        let (p, q) = ([0.5f32, 0.5], [1.0f32, 0.0]);
        let r = row(&p, Some(&p), &all);
        assert!((r.entropy - 2f64.ln()).abs() < 1e-6);
        assert_eq!(r.top1, 0);
        let (differ, js) = r.teacher.unwrap();
        assert!(!differ && js.abs() < 1e-9);
        let r = row(&q, Some(&[0.0, 1.0]), &all);
        assert_eq!((r.entropy, r.teacher.unwrap().0), (0.0, true));
        assert!(row(&q, None, &all).teacher.is_none());
        assert_eq!(mean_over(&[1.0, 5.0, 3.0], &[0, 2]), 2.0);
        assert_eq!(mean_over(&[1.0], &[]), 0.0);
        assert_eq!(changed(&[0, 1, 1], &[0, 0, 1], &[1, 2]), 0.5);
    }
}
