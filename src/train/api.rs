//! What every trainer shares: the [`TrainData`] it fits on, the [`Trainer`] trait, the fitted
//! [`Head`] behind the [`Model`] trait (saved as safetensors with its kind in the metadata), and
//! the candle helpers the trainers use (PyTorch-style init, shuffled batches, AdamW epochs).

use crate::cache::{FeatureModel, Need};
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
    /// A labeled validation split (features, labels): the calibration split, for trainers that
    /// tune their inference on one (`[dho] tune`).
    pub validation: Option<(&'a Mat, &'a [u32])>,
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

/// Which teacher signal a trainer distils from; the train stage assembles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeacherSignal {
    None,
    /// The cache's teacher logits cos/τ (with the retrieved rows' for `+rda` runs).
    Logits,
    /// CLAP logits re-fitted on the round's labels (needs image embeddings and prototypes).
    Clap,
}

/// One trainer with its settings: what it reads and how it fits a head.
pub trait Trainer: Send + Sync {
    fn name(&self) -> &'static str;
    /// The cache tables it reads.
    fn needs(&self) -> Need {
        Need::default()
    }
    /// The teacher signal `fit` expects in [`TrainData::teacher`].
    fn teacher(&self) -> TeacherSignal {
        TeacherSignal::None
    }
    /// The settings that enter the run's config hash.
    fn params(&self) -> serde_json::Value;
    /// Fit a head; returns it and the mean training loss of each epoch.
    fn fit(&self, data: &TrainData, rng: &mut VRng, device: &Device) -> Result<(Head, Vec<f32>)>;
    /// The head before any label (a round with none, `initial_per_class = 0`): the teacher's
    /// zero-shot classifier, for trainers whose task model is the teacher; None for the others.
    fn zero_shot(&self, _data: &TrainData, _device: &Device) -> Option<Result<Head>> {
        None
    }
}

/// A fitted head's computations.
pub trait Model: Send + Sync {
    /// The kind recorded in the saved file's metadata (`vlal.head`), which picks the loader.
    fn kind(&self) -> &'static str;
    /// Class probabilities for each row of `x`.
    fn predict(&self, x: &Mat) -> Result<Mat>;
    /// The input of the head's last linear layer(s) (default: the features themselves).
    fn embed(&self, x: &Mat) -> Result<Mat> {
        Ok(x.clone())
    }
    /// Class probabilities from embedded rows (differentiable).
    fn probs_t(&self, h: &Tensor) -> Result<Tensor>;
    fn device(&self) -> &Device;
    /// BADGE's factors (h(x), a(x)) of the last-layer gradient embedding a ⊗ h.
    fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)>;
    /// The tensors that [`Head::load`] reads back.
    fn tensors(&self) -> Result<HashMap<String, Tensor>>;
}

/// A fitted head.
pub struct Head(pub Box<dyn Model>);

/// The metadata key of a saved head's kind.
pub const KIND_KEY: &str = "vlal.head";

impl Head {
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// Class probabilities for each row of `x`.
    pub fn predict(&self, x: &Mat) -> Result<Mat> {
        self.0.predict(x)
    }

    /// The input of the head's last linear layer(s): BatchNorm-normalised features for the linear
    /// probe, the features themselves for the dual head. Interpolating or dropping units here is
    /// what MC dropout and Alfa-mix do.
    pub fn embed(&self, x: &Mat) -> Result<Mat> {
        self.0.embed(x)
    }

    /// Class probabilities from embedded rows (differentiable).
    pub fn probs_t(&self, h: &Tensor) -> Result<Tensor> {
        self.0.probs_t(h)
    }

    /// Class probabilities of embedded rows.
    pub fn predict_embedded(&self, h: &Mat) -> Result<Mat> {
        predict_chunked(h, self.0.device(), |t| self.probs_t(t))
    }

    /// ∇_h of −log p_y(h) for each embedded row and its target class (Alfa-mix's gradient).
    pub fn input_grad(&self, h: &Mat, y: &[u32]) -> Result<Mat> {
        let dev = self.0.device().clone();
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

    /// BADGE's factors of the last-layer gradient embedding g(x) = a(x) ⊗ h(x): the layer's input
    /// h(x) and a(x) = p − e_ŷ (ŷ = the predicted class), one block per head for the dual head.
    pub fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        self.0.grad_factors(x)
    }

    /// [`Head::grad_factors`] of the rows `rows` of `x`, in blocks: the rows' features are never
    /// copied whole (at 1.28M × 768 a copy is 3.9 GB). A block is a whole number of prediction
    /// chunks, so the values are those of one call on the copied rows.
    pub fn grad_factors_of(&self, x: &Mat, rows: &[usize]) -> Result<(Mat, Mat)> {
        let mut out = by_blocks(x, rows, |b| {
            let (h, a) = self.0.grad_factors(b)?;
            Ok(vec![h, a])
        })?;
        let a = out.pop().expect("two factors");
        Ok((out.pop().expect("two factors"), a))
    }

    /// [`Head::embed`] of the rows `rows` of `x`, in blocks (as [`Head::grad_factors_of`]).
    pub fn embed_of(&self, x: &Mat, rows: &[usize]) -> Result<Mat> {
        Ok(by_blocks(x, rows, |b| Ok(vec![self.0.embed(b)?]))?
            .pop()
            .expect("one output"))
    }

    /// Save the head's tensors as safetensors with its kind in the metadata (temporary file,
    /// then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.0.tensors()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = crate::table::temp_file_for(path)?;
        let meta = HashMap::from([(KIND_KEY.to_string(), self.kind().to_string())]);
        safetensors::serialize_to_file(&tensors, Some(meta), tmp.path())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tmp.persist(path)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.error))?;
        crate::progress::log(format!("wrote {}", path.display()));
        Ok(())
    }
}

/// A saved head's tensors, for a head kind's loader.
pub struct Saved<'a> {
    pub path: &'a Path,
    pub tensors: HashMap<String, Tensor>,
}

impl Saved<'_> {
    pub fn get(&self, k: &str) -> Result<Tensor> {
        self.tensors
            .get(k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{}: missing tensor '{k}'", self.path.display()))
    }
    pub fn has(&self, k: &str) -> bool {
        self.tensors.contains_key(k)
    }
    /// The first value of a 1-d tensor (a saved scalar).
    pub fn scalar(&self, k: &str, i: usize) -> Result<f64> {
        let v = self.get(k)?.to_vec1::<f32>()?;
        v.get(i).map(|&x| x as f64).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: tensor '{k}' has {} values",
                self.path.display(),
                v.len()
            )
        })
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

/// Rows a head's forward pass takes at once ([`predict_chunked`]).
const PREDICT_CHUNK: usize = 8192;

/// `f` on the rows `rows` of `x`, copied a block at a time (8 prediction chunks), its outputs
/// stacked: row-wise maps whose values do not depend on how the rows were cut into blocks.
fn by_blocks(x: &Mat, rows: &[usize], f: impl Fn(&Mat) -> Result<Vec<Mat>>) -> Result<Vec<Mat>> {
    if rows.is_empty() {
        return f(&x.select_rows(rows));
    }
    let mut outs: Vec<Mat> = Vec::new();
    for_blocks(x, rows, |k, block| {
        let part = f(block)?;
        if k == 0 {
            outs = part
                .iter()
                .map(|m| Mat {
                    rows: 0,
                    cols: m.cols,
                    data: Vec::with_capacity(rows.len() * m.cols),
                })
                .collect();
        }
        for (o, m) in outs.iter_mut().zip(part) {
            o.data.extend_from_slice(&m.data);
            o.rows += m.rows;
        }
        Ok(())
    })?;
    Ok(outs)
}

/// `f(k, block)` on the k-th block of the rows `rows` of `x` (copied, 8 prediction chunks at a
/// time), in order: a head's row-wise maps on many rows without copying them all at once, with
/// the values of one call on all of them.
pub fn for_blocks(
    x: &Mat,
    rows: &[usize],
    mut f: impl FnMut(usize, &Mat) -> Result<()>,
) -> Result<()> {
    for (k, block) in rows.chunks(8 * PREDICT_CHUNK).enumerate() {
        f(k, &x.select_rows(block))?;
    }
    Ok(())
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
    for chunk in idx.chunks(PREDICT_CHUNK) {
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
    opt: &mut super::adamw::AdamW,
    rng: &mut VRng,
    dev: &Device,
    mut loss: impl FnMut(Tensor, &[u32], &mut VRng) -> Result<Tensor>,
) -> Result<Vec<f32>> {
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
