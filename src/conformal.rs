//! Split-conformal set predictors and CCMA's cross-modal disagreement (CCMA paper, §3.3–3.4):
//! nonconformity −log p, size- and coverage-targeted thresholds, label sets with a top-1 fallback,
//! the union-renormalised Jensen–Shannon divergence, the confidence gate, and the per-round
//! teacher–student diagnostics.

use crate::mat::{argmax, Mat};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// ε of the JS divergence and of the gate.
pub const EPS: f64 = 1e-9;

/// Nonconformity of class c: a_c(x) = −log p_c(x).
#[inline]
pub fn nonconformity(p: f32) -> f64 {
    -(p.max(1e-30) as f64).ln()
}

/// How a threshold is calibrated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Mean set size k (bisection, 30 iterations).
    Size(f64),
    /// Marginal coverage 1 − α on labeled calibration data.
    Coverage(f64),
}

/// A calibrated threshold q: Γ(x) = {c : a_c(x) ≤ q}.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub q: f64,
}

/// Mean raw set size of `rows` at threshold q.
fn mean_size(probs: &Mat, rows: &[usize], q: f64) -> f64 {
    let n: usize = rows
        .par_iter()
        .map(|&r| {
            probs
                .row(r)
                .iter()
                .filter(|&&p| nonconformity(p) <= q)
                .count()
        })
        .sum();
    n as f64 / rows.len().max(1) as f64
}

/// Size-targeted threshold: the q whose mean set size over `rows` is k, by 30 bisection steps
/// between 0 and the largest nonconformity (returns the upper end, so the mean size is ≥ k up to
/// the bisection's resolution, or every class when k ≥ C).
pub fn size_threshold(probs: &Mat, rows: &[usize], k: f64) -> Result<Threshold> {
    if rows.is_empty() {
        bail!("conformal: no rows to calibrate the set size on");
    }
    let mut hi = rows
        .iter()
        .flat_map(|&r| probs.row(r).iter().map(|&p| nonconformity(p)))
        .fold(0f64, f64::max);
    let mut lo = 0f64;
    for _ in 0..30 {
        let mid = 0.5 * (lo + hi);
        if mean_size(probs, rows, mid) < k {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Threshold { q: hi })
}

/// The CCMA repository's size-targeted threshold: 30 bisection steps between the largest row
/// minimum of a and the largest a, a mean size above k (clipped to [1, C]) moving the upper end,
/// and the midpoint of the final bracket (so the mean size lands on either side of a step); a k
/// outside the sizes of those ends gives that end.
pub fn size_threshold_released(probs: &Mat, rows: &[usize], k: f64) -> Result<Threshold> {
    if rows.is_empty() {
        bail!("conformal: no rows to calibrate the set size on");
    }
    let a = |r: usize| probs.row(r).iter().map(|&p| nonconformity(p));
    let low = rows
        .iter()
        .map(|&r| a(r).fold(f64::INFINITY, f64::min))
        .fold(f64::NEG_INFINITY, f64::max);
    let high = rows
        .iter()
        .flat_map(|&r| a(r))
        .fold(f64::NEG_INFINITY, f64::max);
    let k = k.clamp(1.0, probs.cols as f64);
    if k <= mean_size(probs, rows, low) + 1e-6 {
        return Ok(Threshold { q: low });
    }
    if k >= mean_size(probs, rows, high) - 1e-6 {
        return Ok(Threshold { q: high });
    }
    let (mut l, mut h) = (low, high);
    for _ in 0..30 {
        let mid = 0.5 * (l + h);
        if mean_size(probs, rows, mid) > k {
            h = mid;
        } else {
            l = mid;
        }
    }
    Ok(Threshold { q: 0.5 * (l + h) })
}

/// Coverage-targeted split-conformal threshold on labeled calibration rows: the
/// ⌈(n+1)(1−α)⌉-th smallest a_y(x); +∞ (every class) when that rank exceeds n.
pub fn coverage_threshold(
    probs: &Mat,
    rows: &[usize],
    labels: &[u32],
    alpha: f64,
) -> Result<Threshold> {
    if rows.is_empty() || rows.len() != labels.len() {
        bail!(
            "conformal: coverage calibration needs labeled rows ({} rows, {} labels)",
            rows.len(),
            labels.len()
        );
    }
    if !(0.0..1.0).contains(&alpha) || alpha == 0.0 {
        bail!("conformal: alpha must be in (0, 1), got {alpha}");
    }
    let mut s: Vec<f64> = rows
        .iter()
        .zip(labels)
        .map(|(&r, &y)| nonconformity(probs.row(r)[y as usize]))
        .collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let rank = ((n as f64 + 1.0) * (1.0 - alpha)).ceil() as usize;
    let q = if rank > n {
        f64::INFINITY
    } else {
        s[rank.max(1) - 1]
    };
    Ok(Threshold { q })
}

/// Γ(x) for a probability row: classes with a_c ≤ q, ascending; `fallback` turns an empty set
/// into the top-1 class.
pub fn set(p: &[f32], t: Threshold, fallback: bool) -> Vec<u32> {
    let mut s: Vec<u32> = (0..p.len() as u32)
        .filter(|&c| nonconformity(p[c as usize]) <= t.q)
        .collect();
    if s.is_empty() && fallback {
        s.push(argmax(p) as u32);
    }
    s
}

/// Sorted union of two sorted sets.
pub fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut u: Vec<u32> = a.iter().chain(b).copied().collect();
    u.sort_unstable();
    u.dedup();
    u
}

fn intersection_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().filter(|c| b.binary_search(c).is_ok()).count()
}

/// JS(p‖q) of the two posteriors renormalised over the classes in `support` (natural log).
pub fn js_on_support(p: &[f32], q: &[f32], support: &[u32]) -> f64 {
    let sp: f64 = support.iter().map(|&c| p[c as usize] as f64).sum();
    let sq: f64 = support.iter().map(|&c| q[c as usize] as f64).sum();
    let (mut kp, mut kq) = (0f64, 0f64);
    for &c in support {
        let a = p[c as usize] as f64 / (sp + EPS);
        let b = q[c as usize] as f64 / (sq + EPS);
        let m = 0.5 * (a + b);
        kp += a * ((a + EPS) / (m + EPS)).ln();
        kq += b * ((b + EPS) / (m + EPS)).ln();
    }
    0.5 * kp + 0.5 * kq
}

pub use crate::metrics::entropy;

/// How [`calibrate`] sets the two thresholds (CCMA's `[select.ccma]` keys of the same names).
#[derive(Clone, Copy, Debug)]
pub struct CalibrationCfg<'a> {
    /// Target mean set sizes of the size-targeted calibration.
    pub k_student: f64,
    pub k_teacher: f64,
    /// "size" (bisection to k) or "coverage" (1 − alpha on the calib split).
    pub calibration: &'a str,
    pub alpha: f64,
    /// The size-targeted bisection: the paper's (the least q reaching k) or the released
    /// code's ([`size_threshold_released`]).
    pub bisection: crate::variant::Variant,
}

/// CCMA's score of one sample: the gate w = max p_T / (max p_T + max p_S) mixes the JS
/// divergence on Γ_S ∪ Γ_T with the student's entropy. Returns (score, JS).
pub fn ccma_score(ps: &[f32], pt: &[f32], gs: &[u32], gt: &[u32]) -> (f64, f64) {
    let js = js_on_support(ps, pt, &union(gs, gt));
    let ms = ps.iter().cloned().fold(0f32, f32::max) as f64;
    let mt = pt.iter().cloned().fold(0f32, f32::max) as f64;
    let w = mt / (mt + ms + EPS);
    (w * js + (1.0 - w) * entropy(ps), js)
}

/// The two thresholds of a round and how they were calibrated ("size@calib", "coverage@calib",
/// "size@pool").
#[derive(Clone, Debug, PartialEq)]
pub struct Calibrated {
    pub student: Threshold,
    pub teacher: Threshold,
    pub how: String,
}

/// Calibrate student and teacher thresholds as `cfg` says: on the labeled calib split
/// `calib` = (student probs, teacher probs, labels; row i ↔ labels[i]) when there is one, else
/// size-targeted on `pool_rows` of (ps, pt) — the released code's choice.
pub fn calibrate(
    cfg: &CalibrationCfg,
    ps: &Mat,
    pt: &Mat,
    pool_rows: &[usize],
    calib: Option<(&Mat, &Mat, &[u32])>,
) -> Result<Calibrated> {
    let size = match cfg.bisection {
        crate::variant::Variant::Paper => size_threshold,
        crate::variant::Variant::Released => size_threshold_released,
    };
    let sized = |a: &Mat, b: &Mat, rows: &[usize], how: &str| -> Result<Calibrated> {
        Ok(Calibrated {
            student: size(a, rows, cfg.k_student)?,
            teacher: size(b, rows, cfg.k_teacher)?,
            how: how.into(),
        })
    };
    match (cfg.calibration, calib) {
        ("coverage", Some((cs, ct, y))) => {
            let rows: Vec<usize> = (0..y.len()).collect();
            Ok(Calibrated {
                student: coverage_threshold(cs, &rows, y, cfg.alpha)?,
                teacher: coverage_threshold(ct, &rows, y, cfg.alpha)?,
                how: "coverage@calib".into(),
            })
        }
        (_, Some((cs, ct, y))) => {
            let rows: Vec<usize> = (0..y.len()).collect();
            sized(cs, ct, &rows, "size@calib")
        }
        (mode, None) => sized(
            ps,
            pt,
            pool_rows,
            if mode == "coverage" {
                "size@pool (no labeled calib split for coverage)"
            } else {
                "size@pool"
            },
        ),
    }
}

/// Teacher–student diagnostics of one round (the CCMA paper's analysis): mean |Γ_S ∩ Γ_T| and
/// |Γ_S △ Γ_T|, top-1 disagreement, mean JS, mean max p_S and max p_T, set coverage on the
/// calibration split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics {
    pub set_overlap: f64,
    pub set_symdiff: f64,
    pub mean_set_student: f64,
    pub mean_set_teacher: f64,
    pub top1_disagreement: f64,
    pub mean_js: f64,
    pub mean_max_student: f64,
    pub mean_max_teacher: f64,
    /// Coverage of the sets on the labeled calibration rows (None without them).
    pub calib_coverage_student: Option<f64>,
    pub calib_coverage_teacher: Option<f64>,
}

/// Diagnostics over `rows` of the two posteriors with thresholds (qs, qt); coverage on
/// `calib` = (student probs, teacher probs, rows, labels) when given.
pub fn diagnostics(
    ps: &Mat,
    pt: &Mat,
    rows: &[usize],
    qs: Threshold,
    qt: Threshold,
    calib: Option<(&Mat, &Mat, &[usize], &[u32])>,
) -> Diagnostics {
    let per: Vec<[f64; 8]> = rows
        .par_iter()
        .map(|&r| {
            let (a, b) = (ps.row(r), pt.row(r));
            let gs = set(a, qs, true);
            let gt = set(b, qt, true);
            let inter = intersection_len(&gs, &gt) as f64;
            let (_, js) = ccma_score(a, b, &gs, &gt);
            [
                inter,
                gs.len() as f64 + gt.len() as f64 - 2.0 * inter,
                gs.len() as f64,
                gt.len() as f64,
                (argmax(a) != argmax(b)) as u8 as f64,
                js,
                a.iter().cloned().fold(0f32, f32::max) as f64,
                b.iter().cloned().fold(0f32, f32::max) as f64,
            ]
        })
        .collect();
    let n = rows.len().max(1) as f64;
    let mean = |k: usize| per.iter().map(|v| v[k]).sum::<f64>() / n;
    let cover = |p: &Mat, rows: &[usize], labels: &[u32], q: Threshold| {
        let hit = rows
            .iter()
            .zip(labels)
            .filter(|(&r, &y)| set(p.row(r), q, true).contains(&y))
            .count();
        hit as f64 / rows.len().max(1) as f64
    };
    Diagnostics {
        set_overlap: mean(0),
        set_symdiff: mean(1),
        mean_set_student: mean(2),
        mean_set_teacher: mean(3),
        top1_disagreement: mean(4),
        mean_js: mean(5),
        mean_max_student: mean(6),
        mean_max_teacher: mean(7),
        calib_coverage_student: calib.map(|(cs, _, r, l)| cover(cs, r, l, qs)),
        calib_coverage_teacher: calib.map(|(_, ct, r, l)| cover(ct, r, l, qt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn sets_union_and_fallback() {
        let p = [0.6f32, 0.3, 0.1];
        // q = −ln 0.25 keeps classes with p ≥ 0.25
        let t = Threshold { q: -(0.25f64).ln() };
        assert_eq!(set(&p, t, true), vec![0, 1]);
        let tight = Threshold { q: 0.1 };
        assert_eq!(set(&p, tight, false), Vec::<u32>::new());
        assert_eq!(set(&p, tight, true), vec![0]);
        assert_eq!(union(&[0, 2], &[1, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn js_is_zero_for_equal_posteriors_and_ln2_for_disjoint() {
        let p = [0.5f32, 0.5, 0.0];
        assert!(js_on_support(&p, &p, &[0, 1, 2]).abs() < 1e-9);
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        assert!((js_on_support(&a, &b, &[0, 1]) - 2f64.ln()).abs() < 1e-6);
        // renormalisation: on support {0,1} these two agree exactly
        let s = [0.2f32, 0.2, 0.6];
        let t = [0.4f32, 0.4, 0.2];
        assert!(js_on_support(&s, &t, &[0, 1]).abs() < 1e-9);
        assert!(js_on_support(&s, &t, &[0, 1, 2]) > 0.05);
    }

    #[test]
    fn ccma_score_gate_hand_checked() {
        // confident teacher (0.9), unsure student (0.5): w = 0.9/1.4
        let ps = [0.5f32, 0.5];
        let pt = [0.9f32, 0.1];
        let (s, js) = ccma_score(&ps, &pt, &[0, 1], &[0]);
        let w = 0.9 / 1.4;
        let expect = w * js + (1.0 - w) * 2f64.ln();
        assert!((s - expect).abs() < 1e-6, "{s} vs {expect}");
        assert!(js > 0.0);
    }

    #[test]
    fn released_bisection_returns_the_midpoint_of_its_bracket() {
        // a = −ln p: row 1 (0.69, 1.20, 1.61), row 2 (0.51, 1.20, 2.30). The mean size is 2 for
        // q in [−ln 0.3, −ln 0.2): the paper's threshold is the least such q, the released
        // code's search moves its lower end up to the top of that step, −ln 0.2.
        let probs = Mat::from_rows(&[vec![0.5, 0.3, 0.2], vec![0.6, 0.3, 0.1]]).unwrap();
        let rows = [0, 1];
        let paper = size_threshold(&probs, &rows, 2.0).unwrap().q;
        let released = size_threshold_released(&probs, &rows, 2.0).unwrap().q;
        let (a3, a2) = (-(0.3f32 as f64).ln(), -(0.2f32 as f64).ln());
        assert!(paper >= a3 && paper - a3 < 1e-6, "{paper} vs {a3}");
        assert!((released - a2).abs() < 1e-6, "{released} vs {a2}");
        // out of range: k = 1 is reached at the lower end, k ≥ C at the upper
        let low = size_threshold_released(&probs, &rows, 1.0).unwrap().q;
        assert!((low - -(0.5f32 as f64).ln()).abs() < 1e-12);
        let high = size_threshold_released(&probs, &rows, 7.0).unwrap().q;
        assert!((high - -(0.1f32 as f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn size_threshold_hits_the_target_mean_size() {
        let mut r = rng::stream(1, "conf", 0);
        let probs = random_probs(500, 20, 2.0, &mut r);
        let rows: Vec<usize> = (0..500).collect();
        for k in [1.0, 3.0, 5.0] {
            let t = size_threshold(&probs, &rows, k).unwrap();
            let m = mean_size(&probs, &rows, t.q);
            assert!((m - k).abs() < 0.05, "k = {k}: mean size {m}");
        }
        let all = size_threshold(&probs, &rows, 20.0).unwrap();
        assert_eq!(mean_size(&probs, &rows, all.q), 20.0);
    }

    fn random_probs(n: usize, c: usize, scale: f32, r: &mut rng::VRng) -> Mat {
        let l: Vec<f32> = (0..n * c)
            .map(|_| {
                let z: f32 = StandardNormal.sample(r);
                scale * z
            })
            .collect();
        crate::mat::softmax_rows(&Mat::new(n, c, l).unwrap(), 1.0)
    }

    /// Split conformal: on exchangeable data, 1−α ≤ E[coverage] ≤ 1−α + 1/(n+1), whatever the
    /// model. The labels here come from a different distribution than the model's probabilities.
    #[test]
    fn coverage_guarantee_holds_over_many_trials() {
        let (n_cal, n_test, c, alpha, trials) = (50usize, 200usize, 10usize, 0.1, 400usize);
        let mut r = rng::stream(2, "conf", 0);
        let mut covs = Vec::new();
        for _ in 0..trials {
            let n = n_cal + n_test;
            let probs = random_probs(n, c, 1.5, &mut r);
            // the true label agrees with the model's argmax 40% of the time, else uniform
            let labels: Vec<u32> = (0..n)
                .map(|i| {
                    if r.random::<f64>() < 0.4 {
                        argmax(probs.row(i)) as u32
                    } else {
                        r.random_range(0..c as u32)
                    }
                })
                .collect();
            let cal: Vec<usize> = (0..n_cal).collect();
            let t = coverage_threshold(&probs, &cal, &labels[..n_cal], alpha).unwrap();
            let hit = (n_cal..n)
                .filter(|&i| set(probs.row(i), t, false).contains(&labels[i]))
                .count();
            covs.push(hit as f64 / n_test as f64);
        }
        let mean = covs.iter().sum::<f64>() / trials as f64;
        let sd = (covs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / trials as f64).sqrt();
        let se = sd / (trials as f64).sqrt();
        let lo = 1.0 - alpha;
        let hi = 1.0 - alpha + 1.0 / (n_cal as f64 + 1.0);
        assert!(
            mean >= lo - 3.0 * se,
            "mean coverage {mean} < {lo} (se {se})"
        );
        assert!(
            mean <= hi + 3.0 * se,
            "mean coverage {mean} > {hi} (se {se})"
        );
    }

    #[test]
    fn coverage_threshold_edge_cases() {
        let probs = Mat::from_rows(&[vec![0.9, 0.1], vec![0.2, 0.8]]).unwrap();
        // n = 2, α = 0.1: rank ⌈3·0.9⌉ = 3 > 2 → every class
        let t = coverage_threshold(&probs, &[0, 1], &[0, 1], 0.1).unwrap();
        assert!(t.q.is_infinite());
        assert_eq!(set(probs.row(0), t, false), vec![0, 1]);
        assert!(coverage_threshold(&probs, &[0, 1], &[0], 0.1).is_err());
        assert!(coverage_threshold(&probs, &[0, 1], &[0, 1], 0.0).is_err());
    }

    #[test]
    fn diagnostics_hand_checked() {
        let ps = Mat::from_rows(&[vec![0.7, 0.3], vec![0.5, 0.5]]).unwrap();
        let pt = Mat::from_rows(&[vec![0.2, 0.8], vec![0.5, 0.5]]).unwrap();
        let t = Threshold { q: -(0.6f64).ln() }; // keeps p ≥ 0.6, else top-1
        let d = diagnostics(&ps, &pt, &[0, 1], t, t, Some((&ps, &pt, &[0, 1], &[0, 1])));
        // row 0: {0} vs {1}; row 1: {0} vs {0} (both fall back to top-1 = class 0)
        assert_eq!(d.set_overlap, 0.5);
        assert_eq!(d.set_symdiff, 1.0);
        assert_eq!(d.top1_disagreement, 0.5);
        assert!((d.mean_max_student - 0.6).abs() < 1e-6);
        assert_eq!(d.calib_coverage_student, Some(0.5));
        assert_eq!(d.calib_coverage_teacher, Some(0.0));
    }
}
