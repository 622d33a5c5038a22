//! Linear probe (the students of the PCoreSet/ActiveKD and CCMA papers): BatchNorm without
//! affine → Dropout → Linear, trained with AdamW on cross-entropy from a cold start every round.

use super::api::{
    affine, fit_labeled, init_linear, minus_onehot, named, predict_chunked, targets, Head, Model,
    Saved, TrainData, Trainer,
};
use super::params::{LinearCfg, TrainParams};
use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use candle_nn::{BatchNorm, ModuleT};
use rand::Rng;
use std::collections::HashMap;

pub struct LinearProbe {
    bn: BatchNorm,
    w: Var,
    b: Var,
    dev: Device,
}

impl LinearProbe {
    fn logits(&self, x: &Tensor, train: bool, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.bn.forward_t(x, train)?;
        if let Some(m) = mask {
            h = (h * m)?;
        }
        affine(&h, &self.w, &self.b)
    }

    pub fn from_tensors(mean: Tensor, var: Tensor, w: Tensor, b: Tensor) -> Result<Self> {
        let dev = w.device().clone();
        let d = mean.dim(0)?;
        Ok(Self {
            bn: BatchNorm::new_no_bias(d, mean, var, 1e-5)?,
            w: Var::from_tensor(&w)?,
            b: Var::from_tensor(&b)?,
            dev,
        })
    }

    pub fn probs_from_embedded(&self, h: &Tensor) -> Result<Tensor> {
        // the composed softmax (unlike softmax_last_dim) has a backward pass
        Ok(candle_nn::ops::softmax(&affine(h, &self.w, &self.b)?, 1)?)
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        named(vec![
            ("bn.running_mean", self.bn.running_mean()),
            ("bn.running_var", self.bn.running_var()),
            ("linear.weight", self.w.as_tensor()),
            ("linear.bias", self.b.as_tensor()),
        ])
    }
}

/// The saved head's kind.
pub const HEAD: &str = "linear";

pub fn load_head(s: &Saved) -> Result<Box<dyn Model>> {
    Ok(Box::new(LinearProbe::from_tensors(
        s.get("bn.running_mean")?,
        s.get("bn.running_var")?,
        s.get("linear.weight")?,
        s.get("linear.bias")?,
    )?))
}

impl Model for LinearProbe {
    fn kind(&self) -> &'static str {
        HEAD
    }
    fn predict(&self, x: &Mat) -> Result<Mat> {
        predict_chunked(x, &self.dev, |t| {
            Ok(candle_nn::ops::softmax_last_dim(
                &self.logits(t, false, None)?,
            )?)
        })
    }
    fn embed(&self, x: &Mat) -> Result<Mat> {
        predict_chunked(x, &self.dev, |t| Ok(self.bn.forward_t(t, false)?))
    }
    fn probs_t(&self, h: &Tensor) -> Result<Tensor> {
        self.probs_from_embedded(h)
    }
    fn device(&self) -> &Device {
        &self.dev
    }
    /// (h, a): the normalised input of the linear layer and p − e_ŷ.
    fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        let h = self.embed(x)?;
        let p = self.predict(x)?;
        Ok((h, minus_onehot(&p, &p)))
    }
    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok(LinearProbe::tensors(self))
    }
}

/// The `linear` trainer.
pub struct Linear(pub LinearCfg);

pub fn build(_: &'static str, p: &TrainParams) -> Result<Box<dyn Trainer>> {
    Ok(Box::new(Linear(p.linear.clone())))
}

impl Trainer for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).expect("serialisable")
    }
    fn fit(&self, data: &TrainData, rng: &mut VRng, device: &Device) -> Result<(Head, Vec<f32>)> {
        let (h, l) = fit(&self.0, data, rng, device)?;
        Ok((Head(Box::new(h)), l))
    }
}

/// Inverted-dropout mask (kept units scaled by 1/(1−p)) drawn from the run's generator.
fn dropout_mask(
    rows: usize,
    cols: usize,
    p: f32,
    rng: &mut VRng,
    dev: &Device,
) -> Result<Option<Tensor>> {
    if p <= 0.0 {
        return Ok(None);
    }
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    Ok(Some(Tensor::from_vec(v, (rows, cols), dev)?))
}

pub fn fit(
    cfg: &LinearCfg,
    data: &TrainData,
    rng: &mut VRng,
    dev: &Device,
) -> Result<(LinearProbe, Vec<f32>)> {
    let d = data.features.cols;
    let (w, b) = init_linear(d, data.n_classes, rng, dev)?;
    let bn = BatchNorm::new_no_bias(
        d,
        Tensor::zeros(d, candle_core::DType::F32, dev)?,
        Tensor::ones(d, candle_core::DType::F32, dev)?,
        1e-5,
    )?;
    let head = LinearProbe {
        bn,
        w,
        b,
        dev: dev.clone(),
    };
    let params = candle_nn::ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = super::adamw::AdamW::new(vec![head.w.clone(), head.b.clone()], params)?;
    let losses = fit_labeled(
        cfg.epochs,
        "linear",
        data,
        cfg.batch_size,
        &mut opt,
        rng,
        dev,
        |x, y, rng| {
            let n = y.len();
            let mask = dropout_mask(n, d, cfg.dropout, rng, dev)?;
            // BatchNorm needs two rows for a batch variance; a single labeled sample trains without it.
            let logits = if n > 1 {
                head.logits(&x, true, mask.as_ref())?
            } else {
                let h = match &mask {
                    Some(m) => (x * m)?,
                    None => x,
                };
                affine(&h, &head.w, &head.b)?
            };
            Ok(candle_nn::loss::cross_entropy(&logits, &targets(y, dev)?)?)
        },
    )?;
    Ok((head, losses))
}
