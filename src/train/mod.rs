//! Student heads fitted on cached features with candle autograd: the linear probe, DHO
//! dual-head distillation (plus its CE-only ablation), and CoOp prompt learning on the teacher's
//! own features. Every random draw is seeded (see `rng`).

pub mod coop;
pub mod ct;
pub mod dho;
pub mod linear;
pub mod params;

use crate::mat::Mat;
use crate::rng::{self, VRng};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// What a trainer sees: the train pool's features, which rows are labeled, and the teacher.
pub struct TrainData<'a> {
    pub features: &'a Mat,
    pub labeled: &'a [usize],
    pub labels: &'a [u32],
    pub n_classes: usize,
    /// Teacher logits cos/τ for every train row, and τ.
    pub teacher: Option<(&'a Mat, f32)>,
    /// Class names, by class id (the prompt learner's prompts).
    pub class_names: &'a [String],
    /// The model whose embeddings `features` are.
    pub feature_model: &'a FeatureModel,
    /// The teacher's class prototypes t_c (contrastive tuning's initial classifier).
    pub prototypes: Option<&'a Mat>,
}

impl TrainData<'_> {
    /// The label of each labeled row, by row.
    pub(crate) fn label_of(&self) -> HashMap<usize, u32> {
        self.labeled
            .iter()
            .copied()
            .zip(self.labels.iter().copied())
            .collect()
    }
}

// the features' model is recorded by the cache that holds them
pub use crate::cache::FeatureModel;

/// A fitted head.
pub enum Head {
    Linear(linear::LinearProbe),
    Dual(dho::DualHead),
    Prompt(coop::PromptHead),
    Contrastive(ct::CtHead),
}

impl Head {
    /// Class probabilities for each row of `x`.
    pub fn predict(&self, x: &Mat) -> Result<Mat> {
        match self {
            Head::Linear(h) => h.predict(x),
            Head::Dual(h) => h.predict(x),
            Head::Prompt(h) => h.predict(x),
            Head::Contrastive(h) => h.predict(x),
        }
    }

    /// The input of the head's last linear layer(s): BatchNorm-normalised features for the linear
    /// probe, the features themselves for the dual head. Interpolating or dropping units here is
    /// what MC dropout and Alfa-mix do.
    pub fn embed(&self, x: &Mat) -> Result<Mat> {
        match self {
            Head::Linear(h) => h.embed(x),
            Head::Dual(_) | Head::Prompt(_) | Head::Contrastive(_) => Ok(x.clone()),
        }
    }

    /// Class probabilities from embedded rows (differentiable).
    pub fn probs_t(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Head::Linear(l) => l.probs_from_embedded(h),
            Head::Dual(d) => d.probs_t(h),
            Head::Prompt(p) => p.probs_t(h),
            Head::Contrastive(c) => c.probs_t(h),
        }
    }

    fn dev(&self) -> &Device {
        match self {
            Head::Linear(l) => l.device(),
            Head::Dual(d) => d.device(),
            Head::Prompt(p) => p.device(),
            Head::Contrastive(c) => c.device(),
        }
    }

    /// Class probabilities of embedded rows.
    pub fn predict_embedded(&self, h: &Mat) -> Result<Mat> {
        predict_chunked(h, self.dev(), |t| self.probs_t(t))
    }

    /// ∇_h of −log p_y(h) for each embedded row and its target class (Alfa-mix's gradient).
    pub fn input_grad(&self, h: &Mat, y: &[u32]) -> Result<Mat> {
        let dev = self.dev().clone();
        let mut out = Vec::with_capacity(h.rows * h.cols);
        let idx: Vec<usize> = (0..h.rows).collect();
        for chunk in idx.chunks(4096) {
            let v = Var::from_tensor(&rows(h, chunk, &dev)?)?;
            let p = self.probs_t(v.as_tensor())?;
            let t: Vec<u32> = chunk.iter().map(|&i| y[i]).collect();
            let py = p.gather(&targets(&t, &dev)?.unsqueeze(1)?, 1)?;
            let loss = (py + 1e-12)?.log()?.neg()?.sum_all()?;
            let g = loss.backward()?;
            let gv = g
                .get(v.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("no gradient for the embedded input"))?;
            out.extend(gv.flatten_all()?.to_vec1::<f32>()?);
        }
        Mat::new(h.rows, h.cols, out)
    }

    /// Load a head written by [`Head::save`].
    pub fn load(path: &Path, dev: &Device) -> Result<Head> {
        let t = candle_core::safetensors::load(path, dev)
            .map_err(|e| anyhow::anyhow!("{}: not a readable head ({e})", path.display()))?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{}: missing tensor '{k}'", path.display()))
        };
        if t.contains_key("ct.text") {
            let tau = get("ct.tau")?.to_vec1::<f32>()?;
            Ok(Head::Contrastive(ct::CtHead::from_tensors(
                t.get("ct.proj").cloned(),
                get("ct.text")?,
                tau.first().copied().unwrap_or(0.0) as f64,
            )?))
        } else if t.contains_key("prompt.text") {
            let tau = get("prompt.tau")?.to_vec1::<f32>()?;
            Ok(Head::Prompt(coop::PromptHead::from_tensors(
                get("prompt.text")?,
                tau.first().copied().unwrap_or(0.0) as f64,
            )?))
        } else if t.contains_key("linear.weight") {
            Ok(Head::Linear(linear::LinearProbe::from_tensors(
                get("bn.running_mean")?,
                get("bn.running_var")?,
                get("linear.weight")?,
                get("linear.bias")?,
            )?))
        } else {
            let mix = get("mix")?.to_vec1::<f32>()?;
            Ok(Head::Dual(dho::DualHead::from_tensors(
                get("ce.weight")?,
                get("ce.bias")?,
                get("kd.weight")?,
                get("kd.bias")?,
                mix[0] as f64,
                mix[1] as f64,
            )?))
        }
    }

    /// BADGE's factors of the last-layer gradient embedding g(x) = a(x) ⊗ h(x): the layer's input
    /// h(x) and a(x) = p − e_ŷ (ŷ = the predicted class), one block per head for the dual head.
    pub fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        match self {
            Head::Linear(h) => h.grad_factors(x),
            Head::Dual(h) => h.grad_factors(x),
            Head::Prompt(h) => h.grad_factors(x),
            Head::Contrastive(h) => h.grad_factors(x),
        }
    }

    /// Save the head's tensors as safetensors (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = match self {
            Head::Linear(h) => h.tensors(),
            Head::Dual(h) => h.tensors(),
            Head::Prompt(h) => h.tensors()?,
            Head::Contrastive(h) => h.tensors()?,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = crate::table::temp_file_for(path)?;
        candle_core::safetensors::save(&tensors, tmp.path())?;
        tmp.persist(path)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.error))?;
        crate::progress::log(format!("wrote {}", path.display()));
        Ok(())
    }
}

/// Fit the named trainer; returns the head and the mean training loss of each epoch.
pub fn fit(
    trainer: &str,
    p: &params::TrainParams,
    data: &TrainData,
    rng: &mut VRng,
    device: &Device,
) -> Result<(Head, Vec<f32>)> {
    if data.labeled.is_empty() {
        bail!("no labeled samples to train on");
    }
    match trainer {
        "linear" => {
            let (h, l) = linear::fit(&p.linear, data, rng, device)?;
            Ok((Head::Linear(h), l))
        }
        "dho" | "dho-clap" => {
            let (h, l) = dho::fit(&p.dho, true, data, rng, device)?;
            Ok((Head::Dual(h), l))
        }
        "ce" => {
            let (h, l) = dho::fit(&p.dho, false, data, rng, device)?;
            Ok((Head::Dual(h), l))
        }
        "coop" => {
            let (h, l) = coop::fit_head(&p.coop, data, rng, device)?;
            Ok((Head::Prompt(h), l))
        }
        "ct" => {
            let (h, l) = ct::fit(&p.ct, data, rng, device)?;
            Ok((Head::Contrastive(h), l))
        }
        other => bail!("unknown trainer '{other}'"),
    }
}

/// The compute device by name: `cpu`, or `cuda` when built with the `cuda` feature.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::new_cuda(0)?)
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!(
                    "this vlal was built without CUDA; rebuild with `cargo build --features cuda`"
                )
            }
        }
        other => bail!("unknown device '{other}' (cpu or cuda)"),
    }
}

/// A linear layer's (weight, bias) initialised like PyTorch: U(−1/√fan_in, 1/√fan_in).
pub(crate) fn init_linear(
    d_in: usize,
    d_out: usize,
    rng: &mut VRng,
    dev: &Device,
) -> Result<(Var, Var)> {
    let a = 1.0 / (d_in as f32).sqrt();
    let w = Tensor::from_vec(rng::uniform(d_in * d_out, a, rng), (d_out, d_in), dev)?;
    let b = Tensor::from_vec(rng::uniform(d_out, a, rng), d_out, dev)?;
    Ok((Var::from_tensor(&w)?, Var::from_tensor(&b)?))
}

/// Shuffled mini-batches of `idx`; a trailing batch smaller than `min_last` joins the one before.
pub(crate) fn batches(
    idx: &[usize],
    size: usize,
    min_last: usize,
    rng: &mut VRng,
) -> Vec<Vec<usize>> {
    let mut v = idx.to_vec();
    rng::shuffle(&mut v, rng);
    let mut out: Vec<Vec<usize>> = v.chunks(size.max(1)).map(|c| c.to_vec()).collect();
    if out.len() > 1 && out.last().map_or(false, |b| b.len() < min_last) {
        let last = out.pop().expect("non-empty");
        out.last_mut().expect("non-empty").extend(last);
    }
    out
}

pub(crate) fn rows(features: &Mat, idx: &[usize], dev: &Device) -> Result<Tensor> {
    features.select_rows(idx).to_tensor(dev)
}

pub(crate) fn targets(labels: &[u32], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(labels, labels.len(), dev)?)
}

/// Apply `f` (rows → probabilities) to `x` in chunks, collecting a matrix.
pub(crate) fn predict_chunked(
    x: &Mat,
    dev: &Device,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Mat> {
    let mut data = Vec::with_capacity(x.rows * 8);
    let mut cols = 0;
    let idx: Vec<usize> = (0..x.rows).collect();
    for chunk in idx.chunks(8192) {
        let p = f(&rows(x, chunk, dev)?)?.to_dtype(DType::F32)?;
        cols = p.dim(1)?;
        data.extend(p.flatten_all()?.to_vec1::<f32>()?);
    }
    Mat::new(x.rows, cols, data)
}

/// x·Wᵀ + b.
pub(crate) fn affine(x: &Tensor, w: &Var, b: &Var) -> Result<Tensor> {
    Ok(x.matmul(&w.as_tensor().t()?)?
        .broadcast_add(b.as_tensor())?)
}

/// Run `epochs` epochs under a progress bar; `epoch` returns the summed loss and step count of
/// one epoch. Returns the mean loss of each epoch.
pub(crate) fn run_epochs(
    epochs: usize,
    what: &str,
    mut epoch: impl FnMut() -> Result<(f32, usize)>,
) -> Result<Vec<f32>> {
    let pb = crate::progress::bar(epochs as u64, what);
    let mut losses = Vec::with_capacity(epochs);
    for _ in 0..epochs {
        let (sum, steps) = epoch()?;
        losses.push(sum / steps.max(1) as f32);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(losses)
}

/// `epochs` epochs of AdamW steps over shuffled mini-batches of the labeled rows; `loss(x, y, rng)`
/// gives a batch's loss from its features and labels. Returns the mean loss of each epoch.
pub(crate) fn fit_labeled(
    epochs: usize,
    what: &str,
    data: &TrainData,
    batch_size: usize,
    opt: &mut candle_nn::AdamW,
    rng: &mut VRng,
    dev: &Device,
    mut loss: impl FnMut(Tensor, &[u32], &mut VRng) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    use candle_nn::Optimizer;
    let label_of = data.label_of();
    run_epochs(epochs, what, || {
        let mut sum = 0.0f32;
        let bs = batches(data.labeled, batch_size, 2, rng);
        for batch in &bs {
            let x = rows(data.features, batch, dev)?;
            let y: Vec<u32> = batch.iter().map(|i| label_of[i]).collect();
            let l = loss(x, &y, rng)?;
            opt.backward_step(&l)?;
            sum += l.to_scalar::<f32>()?;
        }
        Ok((sum, bs.len()))
    })
}

/// a = p − e_ŷ for each row, with ŷ the argmax of `pred` (the head's final prediction).
pub(crate) fn minus_onehot(p: &Mat, pred: &Mat) -> Mat {
    let mut a = p.clone();
    for i in 0..a.rows {
        let y = crate::mat::argmax(pred.row(i));
        a.row_mut(i)[y] -= 1.0;
    }
    a
}

pub(crate) fn named(pairs: Vec<(&str, &Tensor)>) -> HashMap<String, Tensor> {
    pairs
        .into_iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Mat, Vec<usize>, Vec<u32>, Mat) {
        let mut r = rng::stream(4, "head", 0);
        let f = Mat::new(30, 5, rng::uniform(150, 1.0, &mut r)).unwrap();
        let t = Mat::new(30, 3, rng::uniform(90, 10.0, &mut r)).unwrap();
        let labeled: Vec<usize> = (0..9).collect();
        let labels: Vec<u32> = labeled.iter().map(|&i| (i % 3) as u32).collect();
        (f, labeled, labels, t)
    }

    /// ∇_h(−log p_y) against central finite differences.
    fn check_input_grad(head: &Head, e: &Mat, trainer: &str) {
        let y: Vec<u32> = (0..e.rows as u32).map(|i| i % 3).collect();
        let g = head.input_grad(e, &y).unwrap();
        let nll = |m: &Mat, i: usize| -> f64 {
            let p = head.predict_embedded(m).unwrap();
            -(p.row(i)[y[i] as usize] as f64).ln()
        };
        for (i, j) in [(0usize, 0usize), (4, 3), (17, 2)] {
            let h = 1e-2f32;
            let mut a = e.clone();
            a.row_mut(i)[j] += h;
            let mut b = e.clone();
            b.row_mut(i)[j] -= h;
            let fd = (nll(&a, i) - nll(&b, i)) / (2.0 * h as f64);
            let an = g.row(i)[j] as f64;
            assert!(
                (fd - an).abs() < 2e-3 + 2e-2 * an.abs(),
                "{trainer}: fd {fd} vs {an}"
            );
        }
    }

    #[test]
    fn heads_round_trip_through_safetensors() {
        let (f, l, y, t) = toy();
        let mut p = params::TrainParams::default();
        p.linear.epochs = 5;
        p.dho.epochs = 5;
        p.dho.alpha = 0.3;
        let dir = tempfile::tempdir().unwrap();
        for trainer in ["linear", "dho", "ce"] {
            let data = TrainData {
                features: &f,
                labeled: &l,
                labels: &y,
                n_classes: 3,
                teacher: Some((&t, 0.01)),
                class_names: &[],
                feature_model: &FeatureModel::default(),
                prototypes: None,
            };
            let (head, _) = fit(
                trainer,
                &p,
                &data,
                &mut rng::stream(0, "t", 0),
                &Device::Cpu,
            )
            .unwrap();
            let path = dir.path().join(format!("{trainer}.safetensors"));
            head.save(&path).unwrap();
            let back = Head::load(&path, &Device::Cpu).unwrap();
            assert_eq!(
                head.predict(&f).unwrap(),
                back.predict(&f).unwrap(),
                "{trainer}"
            );
            // embed → predict_embedded is predict
            let e = back.embed(&f).unwrap();
            let pe = back.predict_embedded(&e).unwrap();
            let pd = back.predict(&f).unwrap();
            assert!(pe
                .data
                .iter()
                .zip(&pd.data)
                .all(|(a, b)| (a - b).abs() < 1e-6));
            check_input_grad(&back, &e, trainer);
            let (h, a) = back.grad_factors(&f).unwrap();
            assert_eq!(h.rows, 30);
            // one block of C for a single head, two for the dual head
            assert_eq!(a.cols, if trainer == "dho" { 6 } else { 3 }, "{trainer}");
            // a = p − e_ŷ sums to 0 per head block
            for i in 0..a.rows {
                let s: f32 = a.row(i)[..3].iter().sum();
                assert!(s.abs() < 1e-5);
            }
        }
    }
}
