//! DHO dual-head distillation (PCoreSet/ActiveKD): one shared (cached) feature, two linear heads.
//! Loss = λ·CE(g_CE(h), y) over labeled + (1−λ)·η²·KL(p_T^η ‖ softmax(g_KD(h)/η)) over the
//! labeled batch and a batch drawn from labeled ∪ unlabeled, with p_T^η = softmax(cos/(ζ·η)).
//! Prediction: α·softmax(g_CE) + (1−α)·softmax(g_KD/β). `distill = false` is the CE-only
//! ablation ("No Distill"): the KD branch is not built and predictions use g_CE alone.

use super::api::{
    affine, batches, init_linear, minus_onehot, named, predict_chunked, rows, run_epochs, targets,
    Head, Model, Saved, TeacherSignal, TrainData, Trainer,
};
use super::params::{ClapCfg, DhoCfg, TeacherCfg, TrainParams};
use crate::variant::Variant;
use crate::cache::Need;
use crate::mat::{softmax_rows, Mat};
use crate::rng::{self, VRng};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var, D};
use std::collections::HashMap;

pub struct DualHead {
    pub w_ce: Var,
    pub b_ce: Var,
    pub w_kd: Var,
    pub b_kd: Var,
    pub alpha: f64,
    pub beta: f64,
    dev: Device,
}

impl DualHead {
    pub fn from_tensors(
        w_ce: Tensor,
        b_ce: Tensor,
        w_kd: Tensor,
        b_kd: Tensor,
        alpha: f64,
        beta: f64,
    ) -> Result<Self> {
        let dev = w_ce.device().clone();
        Ok(Self {
            w_ce: Var::from_tensor(&w_ce)?,
            b_ce: Var::from_tensor(&b_ce)?,
            w_kd: Var::from_tensor(&w_kd)?,
            b_kd: Var::from_tensor(&b_kd)?,
            alpha,
            beta,
            dev,
        })
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mix =
            Tensor::new(&[self.alpha as f32, self.beta as f32], &self.dev).expect("cpu tensor");
        let mut m = named(vec![
            ("ce.weight", self.w_ce.as_tensor()),
            ("ce.bias", self.b_ce.as_tensor()),
            ("kd.weight", self.w_kd.as_tensor()),
            ("kd.bias", self.b_kd.as_tensor()),
        ]);
        m.insert("mix".into(), mix);
        m
    }
}

/// The saved head's kind.
pub const HEAD: &str = "dual";

pub fn load_head(s: &Saved) -> Result<Box<dyn Model>> {
    Ok(Box::new(DualHead::from_tensors(
        s.get("ce.weight")?,
        s.get("ce.bias")?,
        s.get("kd.weight")?,
        s.get("kd.bias")?,
        s.scalar("mix", 0)?,
        s.scalar("mix", 1)?,
    )?))
}

impl Model for DualHead {
    fn kind(&self) -> &'static str {
        HEAD
    }
    fn predict(&self, x: &Mat) -> Result<Mat> {
        predict_chunked(x, &self.dev, |t| self.probs_t(t))
    }
    /// α·softmax(g_CE(h)) + (1−α)·softmax(g_KD(h)/β), differentiable.
    fn probs_t(&self, t: &Tensor) -> Result<Tensor> {
        // the composed softmax (unlike softmax_last_dim) has a backward pass
        let p_ce = candle_nn::ops::softmax(&affine(t, &self.w_ce, &self.b_ce)?, 1)?;
        if self.alpha >= 1.0 {
            return Ok(p_ce);
        }
        let p_kd = candle_nn::ops::softmax(&(affine(t, &self.w_kd, &self.b_kd)? / self.beta)?, 1)?;
        Ok(((p_ce * self.alpha)? + (p_kd * (1.0 - self.alpha))?)?)
    }
    fn device(&self) -> &Device {
        &self.dev
    }
    /// (h, [a_CE | a_KD]): the shared feature and p − e_ŷ of each head's own softmax, with ŷ the
    /// mixed prediction's class (only the CE block for the CE-only head).
    fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        let pred = self.predict(x)?;
        let ce = predict_chunked(x, &self.dev, |t| {
            Ok(candle_nn::ops::softmax_last_dim(&affine(
                t, &self.w_ce, &self.b_ce,
            )?)?)
        })?;
        let a_ce = minus_onehot(&ce, &pred);
        if self.alpha >= 1.0 {
            return Ok((x.clone(), a_ce));
        }
        let kd = predict_chunked(x, &self.dev, |t| {
            Ok(candle_nn::ops::softmax_last_dim(&affine(
                t, &self.w_kd, &self.b_kd,
            )?)?)
        })?;
        let a_kd = minus_onehot(&kd, &pred);
        let c = a_ce.cols;
        let mut a = Mat::zeros(x.rows, 2 * c);
        for i in 0..x.rows {
            a.row_mut(i)[..c].copy_from_slice(a_ce.row(i));
            a.row_mut(i)[c..].copy_from_slice(a_kd.row(i));
        }
        Ok((x.clone(), a))
    }
    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok(DualHead::tensors(self))
    }
}

/// The `dho` trainer (distilling from the cache's teacher logits), `dho-clap` (from CLAP logits
/// re-fitted on each round's labels) and `ce` (the CE-only ablation).
pub struct Dho {
    name: &'static str,
    cfg: DhoCfg,
    teacher: TeacherCfg,
    clap: ClapCfg,
}

pub fn build(name: &'static str, p: &TrainParams) -> Result<Box<dyn Trainer>> {
    Ok(Box::new(Dho {
        name,
        cfg: p.dho.clone(),
        teacher: p.teacher.clone(),
        clap: p.clap.clone(),
    }))
}

impl Trainer for Dho {
    fn name(&self) -> &'static str {
        self.name
    }
    fn needs(&self) -> Need {
        match self.name {
            "dho" => Need {
                logits: true,
                ..Need::default()
            },
            "dho-clap" => Need {
                logits: true,
                image: true,
                clap: true,
                prototypes: true,
                ..Need::default()
            },
            _ => Need::default(),
        }
    }
    fn teacher(&self) -> TeacherSignal {
        match self.name {
            "dho" => TeacherSignal::Logits,
            "dho-clap" => TeacherSignal::Clap,
            _ => TeacherSignal::None,
        }
    }
    fn params(&self) -> serde_json::Value {
        match self.name {
            "ce" => serde_json::to_value(&self.cfg),
            "dho" => serde_json::to_value((&self.cfg, &self.teacher)),
            _ => serde_json::to_value((&self.cfg, &self.teacher, &self.clap)),
        }
        .expect("serialisable")
    }
    fn fit(&self, data: &TrainData, rng: &mut VRng, device: &Device) -> Result<(Head, Vec<f32>)> {
        let (h, l) = fit(&self.cfg, self.name != "ce", data, rng, device)?;
        Ok((Head(Box::new(h)), l))
    }
}

pub fn fit(
    cfg: &DhoCfg,
    distill: bool,
    data: &TrainData,
    rng: &mut VRng,
    dev: &Device,
) -> Result<(DualHead, Vec<f32>)> {
    let (n, d, c) = (data.features.rows, data.features.cols, data.n_classes);
    let (w_ce, b_ce) = init_linear(d, c, rng, dev)?;
    let (w_kd, b_kd) = init_linear(d, c, rng, dev)?;
    // the released mix (1−α)·CE + α·KD is the paper's with α and 1−α swapped
    let alpha = match (distill, cfg.mix) {
        (false, _) => 1.0,
        (true, Variant::Paper) => cfg.alpha,
        (true, Variant::Released) => 1.0 - cfg.alpha,
    };
    let head = DualHead {
        w_ce,
        b_ce,
        w_kd,
        b_kd,
        alpha,
        beta: cfg.beta,
        dev: dev.clone(),
    };
    // Softened teacher p_T^η = softmax(cos/(ζη)) with cos = logits·τ; and Σ p log p per row.
    let soft = if distill {
        let Some((logits, tau)) = data.teacher else {
            bail!("the dho trainer needs the teacher's logits")
        };
        let p = softmax_rows(logits, (tau as f64 / (cfg.zeta * cfg.eta)) as f32);
        let plogp: Vec<f32> = (0..p.rows)
            .map(|i| {
                p.row(i)
                    .iter()
                    .map(|&v| if v > 0.0 { v * v.ln() } else { 0.0 })
                    .sum()
            })
            .collect();
        Some((p, plogp))
    } else {
        None
    };
    let mut vars = vec![head.w_ce.clone(), head.b_ce.clone()];
    if distill {
        vars.extend([head.w_kd.clone(), head.b_kd.clone()]);
    }
    let params = candle_nn::ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = super::adamw::AdamW::new(vars, params)?;
    // Unlabeled batches come from their own stream, so the labeled batches are the same with
    // and without distillation.
    let mut rng_u = rng::stream(rand::Rng::random(rng), "dho-unlabeled", 0);
    let all: Vec<usize> = (0..n).collect();
    let label_of = data.label_of();
    let losses = run_epochs(cfg.epochs, if distill { "dho" } else { "ce" }, || {
        let mut sum = 0.0f32;
        let bs = batches(data.labeled, cfg.batch_labeled, 1, rng);
        for batch in &bs {
            let x = rows(data.features, batch, dev)?;
            let y: Vec<u32> = batch.iter().map(|i| label_of[i]).collect();
            let ce = candle_nn::loss::cross_entropy(
                &affine(&x, &head.w_ce, &head.b_ce)?,
                &targets(&y, dev)?,
            )?;
            let loss = match &soft {
                None => ce,
                Some((p, plogp)) => {
                    let mut kb = batch.clone();
                    kb.extend(rng::sample(&all, cfg.batch_unlabeled, &mut rng_u));
                    let xk = rows(data.features, &kb, dev)?;
                    let pk = p.select_rows(&kb).to_tensor(dev)?;
                    let logq = candle_nn::ops::log_softmax(
                        &(affine(&xk, &head.w_kd, &head.b_kd)? / cfg.eta)?,
                        D::Minus1,
                    )?;
                    let ent: f32 = kb.iter().map(|&i| plogp[i]).sum();
                    let cross = (pk * logq)?.sum_all()?;
                    let kl = ((cross.neg()? + ent as f64)? / kb.len() as f64)?;
                    ((ce * cfg.lambda)? + (kl * ((1.0 - cfg.lambda) * cfg.eta * cfg.eta))?)?
                }
            };
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()?;
        }
        Ok((sum, bs.len()))
    })?;
    let mut head = head;
    if distill && cfg.tune {
        match data.validation {
            Some((x, y)) => {
                let (a, b, acc) = tune(&head, x, y)?;
                crate::progress::log(format!(
                    "dho: α = {a:.2}, β = {b} tuned on {} validation samples (accuracy {acc:.4})",
                    y.len()
                ));
                (head.alpha, head.beta) = (a, b);
            }
            None => crate::progress::log(
                "dho: no labeled calibration split to tune α, β on; they stay as set",
            ),
        }
    }
    Ok((head, losses))
}

/// The β values of the DHO repository's inference search.
pub const TUNE_BETAS: [f64; 7] = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0];

/// The DHO repository's inference search on labeled rows `x`, `y`: for β in [`TUNE_BETAS`] and
/// then α = 0, 0.05, …, 1, the accuracy of argmax α·softmax(g_CE) + (1−α)·softmax(g_KD/β) (in
/// f32, as there); the first (α, β) with the best accuracy wins, starting from (0, 1) at
/// accuracy 0. Returns (α, β, accuracy).
pub fn tune(head: &DualHead, x: &Mat, y: &[u32]) -> Result<(f64, f64, f64)> {
    if x.rows != y.len() || y.is_empty() {
        bail!(
            "dho tuning: {} validation rows, {} labels",
            x.rows,
            y.len()
        );
    }
    let logits = |w: &Var, b: &Var| predict_chunked(x, &head.dev, |t| affine(t, w, b));
    let ce = softmax_rows(&logits(&head.w_ce, &head.b_ce)?, 1.0);
    let kd_logits = logits(&head.w_kd, &head.b_kd)?;
    let mut best = (0.0, 1.0, 0.0);
    for beta in TUNE_BETAS {
        let kd = softmax_rows(&kd_logits, (1.0 / beta) as f32);
        for i in 0..=20 {
            let alpha = i as f64 * 0.05;
            let (a, b) = (alpha as f32, (1.0 - alpha) as f32);
            let right = (0..x.rows)
                .filter(|&r| {
                    let p: Vec<f32> = ce.row(r).iter().zip(kd.row(r)).map(|(c, k)| a * c + b * k).collect();
                    crate::mat::argmax(&p) == y[r] as usize
                })
                .count();
            let acc = right as f64 / x.rows as f64;
            if acc > best.2 {
                best = (alpha, beta, acc);
            }
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Head;

    fn fit_named(
        name: &str,
        p: &TrainParams,
        data: &TrainData,
        rng: &mut VRng,
        dev: &Device,
    ) -> Result<(Head, Vec<f32>)> {
        crate::train::by_name(name, p)?.fit(data, rng, dev)
    }

    /// Three well-separated classes in 4-d with a teacher that is right on most points.
    fn toy() -> (Mat, Vec<usize>, Vec<u32>, Mat) {
        let mut r = rng::stream(7, "toy", 0);
        let n = 90;
        let mut f = Mat::zeros(n, 4);
        let mut t = Mat::zeros(n, 3);
        let mut truth = Vec::new();
        for i in 0..n {
            let c = i % 3;
            truth.push(c as u32);
            let noise = rng::uniform(4, 0.3, &mut r);
            for k in 0..4 {
                f.row_mut(i)[k] = noise[k] + if k == c { 1.0 } else { 0.0 };
            }
            // teacher cosines: 0.3 for the true class, 0.1 otherwise (τ = 0.01 → logits /0.01)
            for k in 0..3 {
                t.row_mut(i)[k] = if k == c { 30.0 } else { 10.0 };
            }
        }
        f.normalize_rows();
        let labeled: Vec<usize> = (0..9).collect();
        let labels = labeled.iter().map(|&i| truth[i]).collect();
        (f, labeled, labels, t)
    }

    fn pipeline(lambda: f64, epochs: usize) -> crate::train::params::TrainParams {
        let mut p = crate::train::params::TrainParams::default();
        p.dho.lambda = lambda;
        p.dho.epochs = epochs;
        p.dho.lr = 1e-2;
        p
    }

    fn weights(h: &Head) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(h.kind(), "dual");
        let t = h.0.tensors().unwrap();
        let v = |k: &str| t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (v("ce.weight"), v("kd.weight"))
    }

    #[test]
    fn loss_decreases() {
        let (f, l, y, t) = toy();
        let data = TrainData {
            features: &f,
            labeled: &l,
            labels: &y,
            n_classes: 3,
            teacher: Some((&t, 0.01)),
            class_names: &[],
            feature_model: &crate::train::FeatureModel::default(),
            prototypes: None,
            validation: None,
        };
        let (_, losses) = fit_named(
            "dho",
            &pipeline(0.5, 60),
            &data,
            &mut rng::stream(0, "t", 0),
            &Device::Cpu,
        )
        .unwrap();
        assert!(losses.last().unwrap() < &(losses[0] * 0.7), "{losses:?}");
    }

    #[test]
    fn lambda_one_equals_the_ce_only_head() {
        let (f, l, y, t) = toy();
        let data = TrainData {
            features: &f,
            labeled: &l,
            labels: &y,
            n_classes: 3,
            teacher: Some((&t, 0.01)),
            class_names: &[],
            feature_model: &crate::train::FeatureModel::default(),
            prototypes: None,
            validation: None,
        };
        let p1 = pipeline(1.0, 30);
        let (dho1, _) =
            fit_named("dho", &p1, &data, &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        let (ce, _) =
            fit_named("ce", &p1, &data, &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        let (a, _) = weights(&dho1);
        let (b, _) = weights(&ce);
        let maxdiff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(maxdiff < 1e-6, "CE heads differ by {maxdiff}");
        // ... and λ matters where it can: the heads are separate and AdamW is invariant to the
        // scale of the CE gradient, so λ acts through the KD branch, which moves only when λ < 1.
        let (dho5, _) = fit_named(
            "dho",
            &pipeline(0.5, 30),
            &data,
            &mut rng::stream(0, "t", 0),
            &Device::Cpu,
        )
        .unwrap();
        let (_, kd1) = weights(&dho1);
        let (_, kd5) = weights(&dho5);
        let d5 = kd1
            .iter()
            .zip(&kd5)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d5 > 1e-2, "the KD head did not learn with λ = 0.5 ({d5})");
    }

    #[test]
    fn prediction_mixes_heads_with_alpha_and_beta() {
        let dev = Device::Cpu;
        // 1-d feature, 2 classes: g_CE = [x, 0], g_KD = [0, 2x]
        let h = DualHead::from_tensors(
            Tensor::new(&[[1f32], [0.]], &dev).unwrap(),
            Tensor::new(&[0f32, 0.], &dev).unwrap(),
            Tensor::new(&[[0f32], [2.]], &dev).unwrap(),
            Tensor::new(&[0f32, 0.], &dev).unwrap(),
            0.25,
            2.0,
        )
        .unwrap();
        let x = Mat::new(1, 1, vec![1.0]).unwrap();
        let p = h.predict(&x).unwrap();
        let sm = |a: f64, b: f64| (a.exp() / (a.exp() + b.exp()), b.exp() / (a.exp() + b.exp()));
        let (ce0, ce1) = sm(1.0, 0.0);
        let (kd0, kd1) = sm(0.0, 2.0 / 2.0); // g_KD / β
        let want = [0.25 * ce0 + 0.75 * kd0, 0.25 * ce1 + 0.75 * kd1];
        for k in 0..2 {
            assert!(
                (p.row(0)[k] as f64 - want[k]).abs() < 1e-6,
                "{:?} vs {want:?}",
                p.row(0)
            );
        }
    }

    #[test]
    fn released_mix_swaps_alpha_and_tuning_searches_the_grid() {
        let (f, l, y, t) = toy();
        let fm = crate::train::FeatureModel::default();
        fn with<'a>(
            (f, l, y, t, fm): (&'a Mat, &'a [usize], &'a [u32], &'a Mat, &'a crate::cache::FeatureModel),
            validation: Option<(&'a Mat, &'a [u32])>,
        ) -> TrainData<'a> {
            TrainData {
                features: f,
                labeled: l,
                labels: y,
                n_classes: 3,
                teacher: Some((t, 0.01)),
                class_names: &[],
                feature_model: fm,
                prototypes: None,
                validation,
            }
        }
        let parts = (&f, l.as_slice(), y.as_slice(), &t, &fm);
        let data = |v| with(parts, v);
        // the repository's (1−α)·CE + α·KD at α = 0.3 is the paper's mix at α = 0.7
        let mut p = pipeline(0.5, 5);
        p.dho.alpha = 0.7;
        let (paper, _) = fit(&p.dho, true, &data(None), &mut rng::stream(0, "t", 0), &Device::Cpu)
            .unwrap();
        p.dho.alpha = 0.3;
        p.dho.mix = Variant::Released;
        let (released, _) =
            fit(&p.dho, true, &data(None), &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        assert!((released.alpha - 0.7).abs() < 1e-12);
        assert_eq!(paper.predict(&f).unwrap(), released.predict(&f).unwrap());
        // tuning: on the 1-d head of the test above, g_CE = [x, 0] says class 0 for x > 0 and
        // g_KD = [0, 2x] class 1; validation rows x = 1 labeled 1 → only α small enough
        // for KD to win is right: the first best of the grid (β = 0.5, α = 0)
        let dev = Device::Cpu;
        let h = DualHead::from_tensors(
            Tensor::new(&[[1f32], [0.]], &dev).unwrap(),
            Tensor::new(&[0f32, 0.], &dev).unwrap(),
            Tensor::new(&[[0f32], [2.]], &dev).unwrap(),
            Tensor::new(&[0f32, 0.], &dev).unwrap(),
            0.5,
            1.0,
        )
        .unwrap();
        let x = Mat::new(2, 1, vec![1.0, -1.0]).unwrap();
        assert_eq!(tune(&h, &x, &[1, 0]).unwrap(), (0.0, 0.5, 1.0));
        // labels only the CE head gets right: the first α at which both rows are right wins
        let (a, b, acc) = tune(&h, &x, &[0, 1]).unwrap();
        assert_eq!((b, acc), (0.5, 1.0));
        // both rows are right once 0.462·α > 0.964·(1−α), α > 0.676: the grid's 0.7
        assert!((a - 0.7).abs() < 1e-9, "{a}");
        let mix = |c: f64, k: f64| a * c + (1.0 - a) * k;
        let sm = |u: f64, v: f64| u.exp() / (u.exp() + v.exp());
        // row x = 1: p_0 = α·σ(1) + (1−α)·σ(−4) must beat p_1; the α before it must not
        assert!(mix(sm(1.0, 0.0), sm(0.0, 4.0)) > mix(sm(0.0, 1.0), sm(4.0, 0.0)));
        let a0 = a - 0.05;
        let prev = a0 * sm(1.0, 0.0) + (1.0 - a0) * sm(0.0, 4.0);
        assert!(prev <= a0 * sm(0.0, 1.0) + (1.0 - a0) * sm(4.0, 0.0));
        // fit with tune = true applies the search to the trained head
        let mut p = pipeline(0.5, 5);
        p.dho.tune = true;
        let fl = f.select_rows(&l);
        let (tuned, _) = fit(
            &p.dho,
            true,
            &data(Some((&fl, &y))),
            &mut rng::stream(0, "t", 0),
            &Device::Cpu,
        )
        .unwrap();
        let (ta, tb, _) = tune(&tuned, &fl, &y).unwrap();
        assert_eq!((tuned.alpha, tuned.beta), (ta, tb));
    }
}
