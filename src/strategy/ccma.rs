//! CCMA, conformal cross-modal acquisition (CCMA paper, §3): a diverse subpool by k-means on
//! the teacher's image embeddings, conformal label sets of student and teacher, the gated
//! JS-disagreement + student-entropy score, the top ρ·B, and a final diversity step (k-means
//! centroid-nearest or UHerding's uncertainty-weighted coverage). `ccma-v1` … `ccma-v5` are the
//! paper's ablation variants (V1 = selective subpool + diversity, V2 = whole pool + diversity,
//! V3 = random subpool + diversity, V4 = selective subpool alone, V5 = neither), `ccma-uherding`
//! is V1 with the UHerding final step; `ccma` takes every switch from `[select.ccma]`.

use super::uherding;
use super::api::{hashed, top_scores, Build, Pick, SelectContext, Strategy};
use crate::cache::Need;
use crate::conformal::{calibrate, ccma_score, set, CalibrationCfg};
use crate::rng::{self, VRng};
use anyhow::{bail, Result};
use rayon::prelude::*;
use crate::variant::Variant;
use serde::{Deserialize, Serialize};

/// `[select.ccma]`: conformal sets, subpool, score, final diversity (also read by `eval` for
/// the teacher–student diagnostics).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Target mean set sizes of the size-targeted calibration.
    pub k_student: f64,
    pub k_teacher: f64,
    /// "size" (bisection to k) or "coverage" (1 − alpha on the calib split).
    pub calibration: String,
    pub alpha: f64,
    /// Oversampling factor: the top ρ·B scores go to the final diversity step.
    pub rho: usize,
    /// "selective" (k-means medoids on CLIP embeddings), "random" or "none" (whole pool).
    pub subpool: String,
    /// Subpool size: clusters ≤ min(subpool_size, |U|/3).
    pub subpool_size: usize,
    /// "kmeans" (K = B, point nearest each centroid), "uherding" or "none" (top B).
    pub diversity: String,
    pub kmeans_iters: usize,
    /// The size-targeted bisection: `paper` (sets of the target mean size) or `released` (the
    /// midpoint of the final bracket, as the repository).
    #[serde(skip_serializing_if = "Variant::is_paper")]
    pub bisection: Variant,
    /// Realign the teacher's class prototypes to the labels every round by Hungarian matching,
    /// as the repository does (`_align_text_embeds_to_labels`).
    #[serde(skip_serializing_if = "crate::variant::is_false")]
    pub realign: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            k_student: 5.0,
            k_teacher: 3.0,
            calibration: "size".into(),
            alpha: 0.1,
            rho: 20,
            subpool: "selective".into(),
            subpool_size: 10_000,
            diversity: "kmeans".into(),
            kmeans_iters: 20,
            bisection: Variant::Paper,
            realign: false,
        }
    }
}

impl super::api::Params for Params {
    fn validate(&self) -> Result<()> {
        let one_of = |key: &str, v: &str, allowed: &[&str]| -> Result<()> {
            if !allowed.contains(&v) {
                bail!("{key} must be {} (got '{v}')", allowed.join(", "));
            }
            Ok(())
        };
        one_of("calibration", &self.calibration, &["size", "coverage"])?;
        one_of("subpool", &self.subpool, &["selective", "random", "none"])?;
        one_of("diversity", &self.diversity, &["kmeans", "uherding", "none"])
    }
}

impl Params {
    /// The conformal calibration these settings ask for.
    pub fn calibration(&self) -> CalibrationCfg<'_> {
        CalibrationCfg {
            k_student: self.k_student,
            k_teacher: self.k_teacher,
            calibration: &self.calibration,
            alpha: self.alpha,
            bisection: self.bisection,
        }
    }
}

pub fn build(name: &'static str, b: &Build) -> Result<Box<dyn Strategy>> {
    let mut s = Ccma::by_name(name)?;
    s.p = b.params("ccma")?;
    s.tau = b.teacher_tau;
    Ok(Box::new(s))
}

pub struct Ccma {
    name: &'static str,
    p: Params,
    /// The teacher's temperature (part of the run's identity: it shapes p_T).
    tau: Option<f64>,
    /// Overrides of `[select.ccma]`: subpool kind, and whether the final diversity step runs.
    subpool: Option<&'static str>,
    diversity: Option<bool>,
}

impl Ccma {
    pub fn by_name(name: &str) -> Result<Ccma> {
        let (name, subpool, diversity) = match name {
            "ccma" => ("ccma", None, None),
            "ccma-v1" => ("ccma-v1", Some("selective"), Some(true)),
            "ccma-v2" => ("ccma-v2", Some("none"), Some(true)),
            "ccma-v3" => ("ccma-v3", Some("random"), Some(true)),
            "ccma-v4" => ("ccma-v4", Some("selective"), Some(false)),
            "ccma-v5" => ("ccma-v5", Some("none"), Some(false)),
            "ccma-uherding" => ("ccma-uherding", Some("selective"), None),
            other => bail!("unknown CCMA variant '{other}' (ccma, ccma-v1 … ccma-v5)"),
        };
        Ok(Ccma {
            name,
            p: Params::default(),
            tau: None,
            subpool,
            diversity,
        })
    }
}

impl Strategy for Ccma {
    fn name(&self) -> &'static str {
        self.name
    }
    fn params(&self) -> serde_json::Value {
        hashed((&self.p, self.tau))
    }
    fn needs(&self) -> Need {
        Need {
            logits: true,
            image: true,
            prototypes: self.p.realign,
            ..Need::default()
        }
    }
    fn select(&self, ctx: &SelectContext, budget: usize, rng: &mut VRng) -> Result<Vec<Pick>> {
        let cfg = &self.p;
        let z = ctx.teacher_image(self.name)?;
        // the released code's realignment: the teacher's classes permuted to match the labels
        let perm = if cfg.realign {
            let perm = realignment(z, ctx.prototypes(self.name)?, ctx.labeled, ctx.labels)?;
            ctx.notes.add(
                "realignment",
                match &perm {
                    Some(p) => format!(
                        "{} of {} teacher classes moved",
                        p.iter().enumerate().filter(|(c, &t)| *c != t).count(),
                        p.len()
                    ),
                    None => "fewer than 5 labeled classes: none".into(),
                },
            );
            perm
        } else {
            None
        };
        let cached = ctx.teacher_probs(self.name)?;
        let realigned = perm.as_ref().map(|p| permute_columns(cached, p));
        let pt = realigned.as_ref().unwrap_or(cached);
        let calib_teacher = match (&perm, ctx.calib.as_ref().and_then(|c| c.teacher)) {
            (Some(p), Some(t)) => Some(permute_columns(t, p)),
            _ => None,
        };
        let ps = ctx.probs;
        let pool = ctx.pool;
        let n = pool.len();
        // 1. subpool (positions in the pool)
        let k = cfg.subpool_size.min(n / 3).max(budget).min(n);
        let sub: Vec<usize> = match self.subpool.unwrap_or(cfg.subpool.as_str()) {
            "selective" => {
                let mut s = crate::kmeans::centroid_picks(z, pool, k, cfg.kmeans_iters, rng)?;
                s.sort_unstable();
                s
            }
            "random" => {
                let mut s = rng::sample(&(0..n).collect::<Vec<_>>(), k, rng);
                s.sort_unstable();
                s
            }
            _ => (0..n).collect(),
        };
        let rows: Vec<usize> = sub.iter().map(|&p| pool[p]).collect();
        // 2–3. conformal thresholds
        let calib = ctx.calib.as_ref().and_then(|c| {
            c.teacher
                .map(|t| (c.student, calib_teacher.as_ref().unwrap_or(t), c.labels))
        });
        let cal = calibrate(&cfg.calibration(), ps, pt, &rows, calib)?;
        ctx.notes.add("calibration", cal.how.clone());
        ctx.notes.add("q_student", format!("{}", cal.student.q));
        ctx.notes.add("q_teacher", format!("{}", cal.teacher.q));
        // 4–6. scores on the subpool
        let s: Vec<f64> = rows
            .par_iter()
            .map(|&r| {
                let (a, b) = (ps.row(r), pt.row(r));
                ccma_score(a, b, &set(a, cal.student, true), &set(b, cal.teacher, true)).0
            })
            .collect();
        // 7. the top ρ·B, then the final diversity step
        let top = top_scores(&s, (cfg.rho * budget).min(s.len()));
        let trows: Vec<usize> = top.iter().map(|t| rows[t.pos]).collect();
        let diversity = match self.diversity {
            _ if self.name == "ccma-uherding" => "uherding",
            Some(false) => "none",
            Some(true) if cfg.diversity == "none" => "kmeans",
            _ => cfg.diversity.as_str(),
        };
        let chosen: Vec<usize> = match diversity {
            "kmeans" if trows.len() > budget => {
                let mut c =
                    crate::kmeans::centroid_picks(z, &trows, budget, cfg.kmeans_iters, rng)?;
                // a cluster left empty: top up in score order
                for j in 0..trows.len() {
                    if c.len() >= budget {
                        break;
                    }
                    if !c.contains(&j) {
                        c.push(j);
                    }
                }
                c
            }
            "uherding" if trows.len() > budget => {
                let u: Vec<f64> = top.iter().map(|t| t.score).collect();
                let h = uherding::bandwidth(z, ctx.labeled, &trows);
                uherding::herd(z, &trows, &u, ctx.labeled, h, budget)
                    .into_iter()
                    .map(|(j, _)| j)
                    .collect()
            }
            _ => (0..budget.min(trows.len())).collect(),
        };
        Ok(chosen
            .into_iter()
            .map(|j| Pick {
                pos: sub[top[j].pos],
                score: top[j].score,
            })
            .collect())
    }
}

/// The column of the teacher's probabilities each class takes after the released code's
/// realignment (`_align_text_embeds_to_labels`): the labeled samples' mean teacher image
/// embedding per class (normalised) is matched to the normalised class prototypes by a
/// maximum-similarity assignment; the classes without labels take the remaining prototypes in
/// order of their similarity to the mean of all labeled embeddings. None (no realignment) with
/// fewer than 5 labeled classes, as there.
pub fn realignment(
    z: &crate::mat::Mat,
    prototypes: &crate::mat::Mat,
    labeled: &[usize],
    labels: &[u32],
) -> Result<Option<Vec<usize>>> {
    let (c, d) = (prototypes.rows, prototypes.cols);
    if z.cols != d {
        bail!("realignment: {}-d image embeddings, {d}-d prototypes", z.cols);
    }
    let unit = |v: &mut [f64]| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= n);
    };
    let mut t: Vec<Vec<f64>> = (0..c)
        .map(|k| prototypes.row(k).iter().map(|&x| x as f64).collect())
        .collect();
    t.iter_mut().for_each(|r| unit(r));
    let mut sums = vec![vec![0f64; d]; c];
    let mut all = vec![0f64; d];
    let mut count = vec![0usize; c];
    for (&r, &l) in labeled.iter().zip(labels) {
        let mut x: Vec<f64> = z.row(r).iter().map(|&v| v as f64).collect();
        unit(&mut x);
        for j in 0..d {
            sums[l as usize][j] += x[j];
            all[j] += x[j];
        }
        count[l as usize] += 1;
    }
    let present: Vec<usize> = (0..c).filter(|&k| count[k] > 0).collect();
    if present.len() < 5 {
        return Ok(None);
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut cost = Vec::with_capacity(present.len() * c);
    for &k in &present {
        let mut p: Vec<f64> = sums[k].iter().map(|v| v / count[k] as f64).collect();
        unit(&mut p);
        cost.extend(t.iter().map(|tj| -dot(&p, tj)));
    }
    let col = crate::assignment::min_cost(&cost, present.len(), c)?;
    let mut perm = vec![usize::MAX; c];
    let mut taken = vec![false; c];
    for (i, &k) in present.iter().enumerate() {
        perm[k] = col[i];
        taken[col[i]] = true;
    }
    unit(&mut all);
    let mut rest: Vec<usize> = (0..c).filter(|&j| !taken[j]).collect();
    rest.sort_by(|&a, &b| dot(&all, &t[b]).total_cmp(&dot(&all, &t[a])).then(a.cmp(&b)));
    let mut fill = rest.into_iter();
    for p in perm.iter_mut().filter(|p| **p == usize::MAX) {
        *p = fill.next().expect("as many prototypes left as classes");
    }
    Ok(Some(perm))
}

/// `m` with column c replaced by column `perm[c]`.
pub fn permute_columns(m: &crate::mat::Mat, perm: &[usize]) -> crate::mat::Mat {
    let mut out = m.clone();
    for i in 0..m.rows {
        let (src, dst) = (m.row(i), out.row_mut(i));
        for (c, &p) in perm.iter().enumerate() {
            dst[c] = src[p];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::strategy::testutil::Owned;

    /// 40 pool points: rows 0..20 the teacher and student agree and are sure; rows 20..40 the
    /// confident teacher disagrees with the student. Every variant must pick from the second half.
    fn case() -> (Owned, Mat, Mat) {
        let mut ps = Vec::new();
        let mut pt = Vec::new();
        let mut z = Vec::new();
        for i in 0..40 {
            if i < 20 {
                ps.push(vec![0.97, 0.01, 0.01, 0.01]);
                pt.push(vec![0.97, 0.01, 0.01, 0.01]);
            } else {
                ps.push(vec![0.7, 0.2, 0.05, 0.05]);
                pt.push(vec![0.02, 0.02, 0.9, 0.06]);
            }
            let a = i as f32 * 0.37;
            z.push(vec![a.cos(), a.sin()]);
        }
        let ps = Mat::from_rows(&ps).unwrap();
        let pt = Mat::from_rows(&pt).unwrap();
        let z = Mat::from_rows(&z).unwrap();
        let mut o = Owned::new(ps, z.clone(), vec![], vec![]);
        o.pool = (0..40).collect();
        (o, pt, z)
    }

    #[test]
    fn every_variant_picks_disagreement_and_is_seeded() {
        let (o, pt, z) = case();
        for diversity in ["kmeans", "uherding"] {
            let p = Params {
                rho: 2,
                diversity: diversity.into(),
                ..Params::default()
            };
            for v in [
                "ccma",
                "ccma-v1",
                "ccma-v2",
                "ccma-v3",
                "ccma-v4",
                "ccma-v5",
                "ccma-uherding",
            ] {
                let mut ctx = o.ctx();
                ctx.teacher_probs = Some(&pt);
                ctx.teacher_image = Some(&z);
                let mut s = Ccma::by_name(v).unwrap();
                s.p = p.clone();
                let p = s.select(&ctx, 4, &mut rng::stream(1, "c", 0)).unwrap();
                assert_eq!(p.len(), 4, "{v}");
                let mut pos: Vec<usize> = p.iter().map(|p| p.pos).collect();
                pos.sort();
                pos.dedup();
                assert_eq!(pos.len(), 4, "{v}: duplicates");
                // the random subpool may hold few disagreeing points; the others must pick them
                if v != "ccma-v3" {
                    assert!(pos.iter().all(|&q| q >= 20), "{v}/{diversity}: {pos:?}");
                }
                let again = s.select(&ctx, 4, &mut rng::stream(1, "c", 0)).unwrap();
                assert_eq!(p, again, "{v}");
                let notes = ctx.notes.take();
                assert!(notes
                    .iter()
                    .any(|(k, v)| k == "calibration" && v == "size@pool"));
            }
        }
    }

    #[test]
    fn realignment_matches_classes_to_their_prototypes() {
        // prototypes e_0 … e_5; classes 0–4 labeled with images near e_σ(c), σ = [1, 0, 2, 4, 3]:
        // the assignment recovers σ, and unlabeled class 5 takes the prototype left, e_5
        let eye = |k: usize, d: usize| -> Vec<f32> { (0..d).map(|j| (j == k) as u8 as f32).collect() };
        let protos = Mat::from_rows(&(0..6).map(|k| eye(k, 6)).collect::<Vec<_>>()).unwrap();
        let sigma = [1, 0, 2, 4, 3];
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (c, &s) in sigma.iter().enumerate() {
            for j in 0..2 {
                let mut v = eye(s, 6);
                v[(s + 1) % 6] = 0.1 * j as f32; // not exactly on the prototype
                rows.push(v);
                labels.push(c as u32);
            }
        }
        let z = Mat::from_rows(&rows).unwrap();
        let labeled: Vec<usize> = (0..rows.len()).collect();
        let perm = realignment(&z, &protos, &labeled, &labels).unwrap().unwrap();
        assert_eq!(perm, vec![1, 0, 2, 4, 3, 5]);
        // the teacher's column c becomes its column perm[c]
        let pt = Mat::from_rows(&[vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]).unwrap();
        assert_eq!(permute_columns(&pt, &perm).row(0), &[0.1, 0.5, 0.1, 0.1, 0.1, 0.1]);
        // fewer than 5 labeled classes: no realignment
        let four: Vec<usize> = (0..8).collect();
        assert_eq!(realignment(&z, &protos, &four, &labels[..8]).unwrap(), None);
    }

    #[test]
    fn calibrates_on_the_calib_split_when_there_is_one() {
        let (o, pt, z) = case();
        let cs = Mat::from_rows(&vec![vec![0.7, 0.1, 0.1, 0.1]; 30]).unwrap();
        let labels: Vec<u32> = (0..30).map(|i| (i % 4) as u32).collect();
        let mut ctx = o.ctx();
        ctx.teacher_probs = Some(&pt);
        ctx.teacher_image = Some(&z);
        ctx.calib = Some(crate::strategy::Calib {
            student: &cs,
            teacher: Some(&cs),
            labels: &labels,
        });
        let mut s = Ccma::by_name("ccma-v2").unwrap();
        s.p.calibration = "coverage".into();
        s.select(&ctx, 3, &mut rng::stream(1, "c", 0))
            .unwrap();
        let notes = ctx.notes.take();
        assert!(notes
            .iter()
            .any(|(k, v)| k == "calibration" && v == "coverage@calib"));
        assert!(Ccma::by_name("ccma-v9").is_err());
    }
}
