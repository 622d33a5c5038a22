//! CoOp prompt learning (Zhou et al.; the CB+SQ paper, §3.2): M learnable context vectors (N(0, 0.02²))
//! replace the "X" placeholders of "X X … X {class name}." in the frozen CLIP text tower's token
//! embeddings; the normalised text features classify cached, normalised CLIP image features by
//! cos/τ, trained with cross-entropy by SGD with a cosine learning-rate decay, re-initialised every
//! round. Contexts are unified (one shared by all classes), class-wise (one per class), or both,
//! whose similarities are averaged (eq. 14 of the paper).
//!
//! As the `coop` trainer ([`fit_head`]) the learned prompts become a [`PromptHead`]: the text
//! features of the class prompts, which classify any row of teacher image features.

use crate::mat::Mat;
use crate::models::clip::{l2_normalize, Clip};
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::rng::VRng;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Normal};

use super::api::{
    minus_onehot, named, predict_chunked, run_epochs, Head, Model, Saved, TrainData, Trainer,
};
use super::params::TrainParams;
pub use super::params::{CoopCfg, CoopMode as Mode};
use crate::cache::Need;

/// The class prompts' token embeddings with placeholder context, and where each row pools.
pub struct Prompts {
    /// (C, L, H) token embeddings; positions 1..=M are replaced by the context.
    emb: Tensor,
    eos: Vec<usize>,
    n_ctx: usize,
}

impl Prompts {
    pub fn new(clip: &Clip, tok: &ClipTokenizer, names: &[String], n_ctx: usize) -> Result<Self> {
        let placeholder = vec!["X"; n_ctx].join(" ");
        let mut ids = Vec::with_capacity(names.len() * tok.context_length);
        let mut eos = Vec::with_capacity(names.len());
        for n in names {
            let row = tok.encode(&format!("{placeholder} {n}."))?;
            let e = clip.eos_position(&row);
            if e <= n_ctx {
                bail!(
                    "class '{n}': the prompt does not fit {n_ctx} context tokens in {} positions",
                    tok.context_length
                );
            }
            eos.push(e);
            ids.extend(row);
        }
        let ids = Tensor::from_vec(ids, (names.len(), tok.context_length), clip.device())?;
        // positions after the last EOS never reach a pooled output (causal mask): drop them
        let len = eos.iter().max().map_or(tok.context_length, |e| e + 1);
        let ids = ids.narrow(1, 0, len)?;
        Ok(Self {
            emb: clip.token_embeddings(&ids)?.detach(),
            eos,
            n_ctx,
        })
    }

    /// Text features (C, D), L2-normalised, with context `ctx` ((M, H) unified or (C, M, H)).
    pub fn features(&self, clip: &Clip, ctx: &Tensor) -> Result<Tensor> {
        let (c, l, h) = self.emb.dims3()?;
        let ctx = if ctx.rank() == 2 {
            ctx.unsqueeze(0)?.expand((c, self.n_ctx, h))?
        } else {
            ctx.clone()
        };
        let m = self.n_ctx;
        let emb = Tensor::cat(
            &[
                &self.emb.narrow(1, 0, 1)?,
                &ctx,
                &self.emb.narrow(1, 1 + m, l - 1 - m)?,
            ],
            1,
        )?;
        Ok(l2_normalize(
            &clip.text_features_from_embeddings(&emb, &self.eos)?,
        )?)
    }
}

/// The learned contexts of one round.
pub struct PromptLearner {
    pub unified: Option<Var>,
    pub class_wise: Option<Var>,
    tau: f64,
}

impl PromptLearner {
    pub fn init(cfg: &CoopCfg, c: usize, h: usize, rng: &mut VRng, dev: &Device) -> Result<Self> {
        let normal = Normal::new(0.0f32, 0.02).expect("valid std");
        let mut draw = |shape: &[usize]| -> Result<Var> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
        };
        let m = cfg.n_ctx;
        Ok(Self {
            unified: matches!(cfg.mode, Mode::Unified | Mode::Both)
                .then(|| draw(&[m, h]))
                .transpose()?,
            class_wise: matches!(cfg.mode, Mode::ClassWise | Mode::Both)
                .then(|| draw(&[c, m, h]))
                .transpose()?,
            tau: cfg.tau,
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.unified
            .iter()
            .chain(&self.class_wise)
            .cloned()
            .collect()
    }

    /// Logits (N, C) of normalised image features z (N, D): cos/τ, averaged over the contexts.
    pub fn logits(&self, clip: &Clip, prompts: &Prompts, z: &Tensor) -> Result<Tensor> {
        let t = self.text_features(clip, prompts)?;
        Ok((z.matmul(&t.t()?)? / self.tau)?)
    }

    /// The mean over the contexts of the class prompts' normalised text features (C, D): the
    /// classifier whose cosines, averaged, are eq. 14's.
    pub fn text_features(&self, clip: &Clip, prompts: &Prompts) -> Result<Tensor> {
        let vars = self.vars();
        let mut sum: Option<Tensor> = None;
        for v in &vars {
            let t = prompts.features(clip, v.as_tensor())?;
            sum = Some(match sum {
                Some(a) => (a + t)?,
                None => t,
            });
        }
        Ok((sum.expect("at least one context") / vars.len() as f64)?)
    }
}

/// Cross-entropy of logits against class ids.
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&y.unsqueeze(1)?, 1)?.neg()?.mean_all()?)
}

/// Train a fresh learner on image features `z` (rows normalised) with labels `y`; returns it,
/// with the loss of each epoch.
pub fn fit(
    cfg: &CoopCfg,
    clip: &Clip,
    prompts: &Prompts,
    z: &Mat,
    y: &[u32],
    rng: &mut VRng,
) -> Result<(PromptLearner, Vec<f32>)> {
    if z.rows != y.len() || z.rows == 0 {
        bail!(
            "prompt learning: {} features for {} labels",
            z.rows,
            y.len()
        );
    }
    crate::models::keep_freed_memory();
    let dev = clip.device().clone();
    let c = prompts.eos.len();
    let h = clip.config.text_config.hidden_size;
    let learner = PromptLearner::init(cfg, c, h, rng, &dev)?;
    let mut opt = candle_nn::SGD::new(learner.vars(), cfg.lr)?;
    let zt = z.to_tensor(&dev)?;
    let mut order: Vec<usize> = (0..z.rows).collect();
    let mut epoch = 0;
    let losses = run_epochs(cfg.epochs, "coop epochs", || {
        // cosine decay from lr to 0 over the epochs
        let lr =
            0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / cfg.epochs as f64).cos());
        opt.set_learning_rate(lr);
        order.shuffle(rng);
        let mut total = 0f32;
        for batch in order.chunks(cfg.batch_size.max(1)) {
            let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
            let idx = Tensor::from_vec(idx, batch.len(), &dev)?;
            let yb: Vec<u32> = batch.iter().map(|&i| y[i]).collect();
            let yb = Tensor::from_vec(yb, batch.len(), &dev)?;
            let loss = cross_entropy(
                &learner.logits(clip, prompts, &zt.index_select(&idx, 0)?)?,
                &yb,
            )?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * batch.len() as f32;
        }
        epoch += 1;
        Ok((total / z.rows as f32, 1))
    })?;
    Ok((learner, losses))
}

/// The fitted prompts as a classifier head: softmax(z·Tᵀ/τ), T the mean over the contexts of the
/// class prompts' normalised text features (so "both" averages the two similarities, eq. 14).
pub struct PromptHead {
    text: Tensor,
    tau: f64,
    /// The learned context vectors, saved with the head for reuse (not needed to predict).
    contexts: Vec<(&'static str, Tensor)>,
}

impl PromptHead {
    pub fn from_learner(
        learner: &PromptLearner,
        clip: &Clip,
        prompts: &Prompts,
    ) -> Result<PromptHead> {
        let text = learner.text_features(clip, prompts)?.detach();
        let mut contexts = Vec::new();
        if let Some(u) = &learner.unified {
            contexts.push(("prompt.ctx_unified", u.as_tensor().detach()));
        }
        if let Some(c) = &learner.class_wise {
            contexts.push(("prompt.ctx_class_wise", c.as_tensor().detach()));
        }
        Ok(PromptHead {
            text,
            tau: learner.tau,
            contexts,
        })
    }

    pub fn from_tensors(text: Tensor, tau: f64) -> Result<PromptHead> {
        if text.rank() != 2 || tau <= 0.0 {
            bail!("a prompt head needs (C, D) text features and τ > 0");
        }
        Ok(PromptHead {
            text,
            tau,
            contexts: Vec::new(),
        })
    }

}

/// The saved head's kind.
pub const HEAD: &str = "prompt";

pub fn load_head(s: &Saved) -> Result<Box<dyn Model>> {
    Ok(Box::new(PromptHead::from_tensors(
        s.get("prompt.text")?,
        s.scalar("prompt.tau", 0)?,
    )?))
}

impl Model for PromptHead {
    fn kind(&self) -> &'static str {
        HEAD
    }
    fn predict(&self, x: &Mat) -> Result<Mat> {
        predict_chunked(x, self.device(), |t| self.probs_t(t))
    }
    /// Class probabilities of rows of (normalised) teacher image features (differentiable).
    fn probs_t(&self, z: &Tensor) -> Result<Tensor> {
        let logits = (z.matmul(&self.text.t()?)? / self.tau)?;
        Ok(candle_nn::ops::softmax(&logits, 1)?)
    }
    fn device(&self) -> &Device {
        self.text.device()
    }
    /// The last layer's input is the image feature itself; a(x) = p − e_ŷ.
    fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        let p = self.predict(x)?;
        Ok((x.clone(), minus_onehot(&p, &p)))
    }
    fn tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let tau = Tensor::new(&[self.tau as f32], self.device())?;
        let mut pairs = vec![("prompt.text", &self.text), ("prompt.tau", &tau)];
        pairs.extend(self.contexts.iter().map(|(k, t)| (*k, t)));
        Ok(named(pairs))
    }
}

/// The `coop` trainer.
pub struct Coop(pub CoopCfg);

pub fn build(_: &'static str, p: &TrainParams) -> Result<Box<dyn Trainer>> {
    let c = &p.coop;
    if c.model.is_none() {
        bail!("trainer coop needs coop.model: the teacher's CLIP checkpoint (a folder or hub id)");
    }
    if c.n_ctx == 0 || c.epochs == 0 || c.batch_size == 0 || c.tau <= 0.0 || c.lr <= 0.0 {
        bail!("coop.n_ctx, coop.epochs, coop.batch_size, coop.lr and coop.tau must be positive");
    }
    Ok(Box::new(Coop(c.clone())))
}

impl Trainer for Coop {
    fn name(&self) -> &'static str {
        "coop"
    }
    fn needs(&self) -> Need {
        Need {
            teacher_features: true,
            prototypes: true,
            ..Need::default()
        }
    }
    /// The class prototypes as the text features: the teacher's zero-shot classifier.
    fn zero_shot(&self, data: &TrainData, device: &Device) -> Option<Result<Head>> {
        let p = data.prototypes?;
        Some((|| {
            let h = PromptHead::from_tensors(p.to_tensor(device)?, self.0.tau)?;
            Ok(Head(Box::new(h)))
        })())
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).expect("serialisable")
    }
    fn fit(&self, data: &TrainData, rng: &mut VRng, device: &Device) -> Result<(Head, Vec<f32>)> {
        let (h, l) = fit_head(&self.0, data, rng, device)?;
        Ok((Head(Box::new(h)), l))
    }
}

/// The `coop` trainer: load the teacher CLIP named by `cfg.model` (it must be the model whose
/// image embeddings are the run's features), build the class prompts from the class names, and
/// fit fresh contexts on the labeled rows.
pub fn fit_head(
    cfg: &CoopCfg,
    data: &TrainData,
    rng: &mut VRng,
    dev: &Device,
) -> Result<(PromptHead, Vec<f32>)> {
    let spec = cfg.model.as_deref().ok_or_else(|| {
        anyhow::anyhow!("trainer coop needs coop.model: the teacher's CLIP checkpoint")
    })?;
    let model = crate::models::hub::resolve(
        spec,
        &crate::models::hub::Source {
            revision: cfg.revision.clone(),
            ..Default::default()
        },
    )?;
    let feat = &data.feature_model;
    let same = match &feat.fingerprint {
        Some(f) => *f == model.fingerprint,
        None => feat.key == model.key(),
    };
    if !same {
        bail!(
            "coop.model '{spec}' ({}) is not the model whose image embeddings are cached ({}); \
             prompts must be learned on the teacher that embedded the images",
            model.key(),
            feat.key
        );
    }
    let clip = crate::models::encoder::load_clip(&model.dir, dev)?;
    if clip.config.projection_dim != data.features.cols {
        bail!(
            "{}: text features are {}-d, the cached image embeddings {}-d",
            model.dir.join("config.json").display(),
            clip.config.projection_dim,
            data.features.cols
        );
    }
    let tok = crate::models::encoder::tokenizer_for(&model.dir, &clip)?;
    let prompts = Prompts::new(&clip, &tok, data.class_names, cfg.n_ctx)?;
    let z = data.features.select_rows(data.labeled);
    let (learner, losses) = fit(cfg, &clip, &prompts, &z, data.labels, rng)?;
    Ok((PromptHead::from_learner(&learner, &clip, &prompts)?, losses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::clip::tests::tiny_checkpoint;

    /// A word-level tokenizer over a few words, CLIP's special tokens last (ids < 50, the tiny
    /// tower's vocabulary).
    fn tokenizer(dir: &std::path::Path) -> ClipTokenizer {
        crate::models::write_word_tokenizer(dir, &["x", "cat", "dog", "bird", "."]).unwrap();
        let mut tok = ClipTokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
        tok.context_length = 10;
        tok
    }

    fn setup() -> (tempfile::TempDir, Clip, Prompts) {
        let dir = tempfile::tempdir().unwrap();
        // the tiny tower's eos_token_id is 49: use legacy argmax pooling on our ids instead
        let clip = tiny_checkpoint(dir.path());
        let tok = tokenizer(dir.path());
        let names: Vec<String> = ["cat", "dog", "bird"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let prompts = Prompts::new(&clip, &tok, &names, 4).unwrap();
        (dir, clip, prompts)
    }

    #[test]
    fn loss_gradient_wrt_the_contexts_matches_finite_differences() {
        let (_d, clip, prompts) = setup();
        let dev = Device::Cpu;
        let z = l2_normalize(&Tensor::randn(0f32, 1.0, (5, 12), &dev).unwrap()).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 1, 0], &dev).unwrap();
        for mode in [Mode::Unified, Mode::ClassWise, Mode::Both] {
            let cfg = CoopCfg {
                n_ctx: 4,
                mode,
                tau: 0.5,
                ..CoopCfg::default()
            };
            let mut r = crate::rng::stream(0, "coop", 0);
            let l = PromptLearner::init(&cfg, 3, 16, &mut r, &dev).unwrap();
            // larger contexts than the init, so the loss is not flat
            for v in l.vars() {
                v.set(&(v.as_tensor() * 50.0).unwrap()).unwrap();
            }
            let loss = |l: &PromptLearner| {
                cross_entropy(&l.logits(&clip, &prompts, &z).unwrap(), &y).unwrap()
            };
            let grads = loss(&l).backward().unwrap();
            for v in l.vars() {
                let g = grads
                    .get(v.as_tensor())
                    .expect("gradient")
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let base = v
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let shape = v.as_tensor().shape().clone();
                for k in (0..base.len()).step_by(5) {
                    let at = |d: f32| {
                        let mut b = base.clone();
                        b[k] += d;
                        v.set(&Tensor::from_vec(b, shape.clone(), &dev).unwrap())
                            .unwrap();
                        loss(&l).to_scalar::<f32>().unwrap()
                    };
                    let h = 1e-2;
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    v.set(&Tensor::from_vec(base.clone(), shape.clone(), &dev).unwrap())
                        .unwrap();
                    assert!(
                        (fd - g[k]).abs() <= 1e-3 + 5e-2 * fd.abs(),
                        "{mode:?} coordinate {k}: autograd {} vs finite difference {fd}",
                        g[k]
                    );
                }
            }
        }
    }

    #[test]
    fn training_fits_separable_features_and_is_seeded() {
        let (_d, clip, prompts) = setup();
        // image features: one direction per class plus noise
        let mut r = crate::rng::stream(1, "data", 0);
        let normal = Normal::new(0.0f32, 0.1).unwrap();
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..24 {
            let c = i % 3;
            let mut v: Vec<f32> = (0..12).map(|_| normal.sample(&mut r)).collect();
            v[c] += 1.0;
            rows.push(v);
            y.push(c as u32);
        }
        let mut z = Mat::from_rows(&rows).unwrap();
        z.normalize_rows();
        let cfg = CoopCfg {
            n_ctx: 4,
            epochs: 60,
            lr: 0.5,
            batch_size: 8,
            mode: Mode::Both,
            tau: 0.07,
            ..CoopCfg::default()
        };
        let run = || {
            fit(
                &cfg,
                &clip,
                &prompts,
                &z,
                &y,
                &mut crate::rng::stream(2, "coop", 0),
            )
            .unwrap()
        };
        let (l, losses) = run();
        assert!(losses.last().unwrap() < &(0.5 * losses[0]), "{losses:?}");
        let (_, again) = run();
        assert_eq!(losses, again, "same seed, same training");
        let logits = l
            .logits(&clip, &prompts, &z.to_tensor(&Device::Cpu).unwrap())
            .unwrap();
        let pred = Mat::from_tensor(&logits).unwrap().argmax_rows();
        let acc = pred
            .iter()
            .zip(&y)
            .filter(|(p, t)| **p == **t as usize)
            .count() as f64
            / 24.0;
        assert!(acc > 0.9, "training accuracy {acc}");
        // as a head: the same class probabilities, also after a save/load round trip
        let head = PromptHead::from_learner(&l, &clip, &prompts).unwrap();
        let want = Mat::from_tensor(&candle_nn::ops::softmax(&logits, 1).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        let h = crate::train::Head(Box::new(head));
        h.save(&path).unwrap();
        let back = crate::train::Head::load(&path, &Device::Cpu).unwrap();
        for got in [h.predict(&z).unwrap(), back.predict(&z).unwrap()] {
            let d = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-5, "prompt head vs learner: {d}");
        }
        let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert!(
            saved.contains_key("prompt.ctx_unified") && saved.contains_key("prompt.ctx_class_wise")
        );
    }
}

/// Timing of one prompt-learning step at ImageNet-100 scale (not a test; `cargo test --lib
/// coop_step_timing -- --ignored --nocapture` with VLAL_COOP_BENCH_DIR = a CLIP checkpoint folder
/// with its tokenizer, e.g. a random ViT-B/32 saved by transformers).
#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn coop_step_timing() {
        let Ok(dir) = std::env::var("VLAL_COOP_BENCH_DIR") else {
            eprintln!("set VLAL_COOP_BENCH_DIR");
            return;
        };
        let dir = std::path::Path::new(&dir);
        let clip = Clip::load(dir, &Device::Cpu).unwrap();
        let tok = crate::models::encoder::tokenizer_for(dir, &clip).unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("class number {i}")).collect();
        let prompts = Prompts::new(&clip, &tok, &names, 16).unwrap();
        let d = clip.config.projection_dim;
        let mut r = crate::rng::stream(0, "bench", 0);
        let mut z = Mat::new(
            32,
            d,
            (0..32 * d)
                .map(|i| ((i * 7919) % 101) as f32 - 50.0)
                .collect(),
        )
        .unwrap();
        z.normalize_rows();
        let y: Vec<u32> = (0..32).map(|i| (i * 3 % 100) as u32).collect();
        for mode in [Mode::Unified, Mode::Both] {
            let cfg = CoopCfg {
                epochs: 2,
                mode,
                ..CoopCfg::default()
            };
            let t0 = std::time::Instant::now();
            fit(&cfg, &clip, &prompts, &z, &y, &mut r).unwrap();
            let s = t0.elapsed().as_secs_f64() / 2.0;
            eprintln!("{mode:?}: C = 100, 16 context tokens, batch 32: {s:.2} s per step (forward + backward)");
        }
    }
}
