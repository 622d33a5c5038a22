//! Contrastive tuning (ALOR's CT, after FLYP) on cached teacher image embeddings. The classifier
//! is the teacher's class prototypes t_c; a linear projection of the image features (initialised
//! to the identity) and the class embeddings (initialised to t_c) are trained with CLIP's
//! symmetric contrastive loss at temperature τ: image → class texts, and each image's class text
//! → the batch's images (same-class images share the target). Prediction is softmax(cos(Px, w_c)/τ),
//! so before any step the head is the teacher's zero-shot classifier.

use super::api::{
    fit_labeled, minus_onehot, named, predict_chunked, targets, Head, Model, Saved, TrainData,
    Trainer,
};
use super::params::{CtCfg, TrainParams};
use crate::cache::Need;
use crate::mat::Mat;
use crate::rng::VRng;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;

pub struct CtHead {
    /// The image-side projection P; `None`: the identity, not trained (`ct.projection = false`).
    proj: Option<Var>,
    text: Var,
    tau: f64,
}

fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

impl CtHead {
    pub fn from_tensors(proj: Option<Tensor>, text: Tensor, tau: f64) -> Result<CtHead> {
        if proj.as_ref().is_some_and(|p| p.rank() != 2) || text.rank() != 2 || tau <= 0.0 {
            bail!("a contrastive head needs (D, D) projection, (C, D) class embeddings and τ > 0");
        }
        Ok(CtHead {
            proj: proj.map(|p| Var::from_tensor(&p)).transpose()?,
            text: Var::from_tensor(&text)?,
            tau,
        })
    }

    /// Unit-norm projected image features.
    fn image(&self, x: &Tensor) -> Result<Tensor> {
        match &self.proj {
            Some(p) => unit_rows(&x.matmul(&p.as_tensor().t()?)?),
            None => unit_rows(x),
        }
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let w = unit_rows(self.text.as_tensor())?;
        Ok((self.image(x)?.matmul(&w.t()?)? / self.tau)?)
    }

    /// The symmetric contrastive loss of one batch.
    fn loss(&self, x: &Tensor, y: &[u32]) -> Result<Tensor> {
        let dev = x.device();
        let z = self.image(x)?;
        let w = unit_rows(self.text.as_tensor())?;
        // image → every class text
        let i2t =
            candle_nn::loss::cross_entropy(&(z.matmul(&w.t()?)? / self.tau)?, &targets(y, dev)?)?;
        // each image's class text → the batch's images; same-class images share the target:
        // −(1/n) Σ_i Σ_{j: y_j = y_i} (1/n_{y_i}) log softmax_j(w_{y_i}·z_j/τ). The n_c rows of a
        // class are equal, so it is −(1/n) Σ_c Σ_{j ∈ c} log softmax_j(w_c·z_j/τ) over the classes
        // present (k × n, not n × n).
        let n = y.len();
        let mut present: Vec<u32> = y.to_vec();
        present.sort_unstable();
        present.dedup();
        let wp = w.index_select(&targets(&present, dev)?, 0)?;
        let s = (wp.matmul(&z.t()?)? / self.tau)?;
        let mut mask = vec![0f32; present.len() * n];
        for (j, c) in y.iter().enumerate() {
            let r = present.binary_search(c).expect("present");
            mask[r * n + j] = 1.0;
        }
        let mask = Tensor::from_vec(mask, (present.len(), n), dev)?;
        let t2i = (candle_nn::ops::log_softmax(&s, 1)? * mask)?
            .sum_all()?
            .neg()?
            .affine(1.0 / n as f64, 0.0)?;
        Ok(((i2t + t2i)? * 0.5)?)
    }
}

/// The saved head's kind.
pub const HEAD: &str = "contrastive";

pub fn load_head(s: &Saved) -> Result<Box<dyn Model>> {
    let proj = if s.has("ct.proj") {
        Some(s.get("ct.proj")?)
    } else {
        None
    };
    Ok(Box::new(CtHead::from_tensors(
        proj,
        s.get("ct.text")?,
        s.scalar("ct.tau", 0)?,
    )?))
}

impl Model for CtHead {
    fn kind(&self) -> &'static str {
        HEAD
    }
    fn predict(&self, x: &Mat) -> Result<Mat> {
        predict_chunked(x, self.device(), |t| self.probs_t(t))
    }
    /// Class probabilities of rows of image features (differentiable).
    fn probs_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&self.logits(x)?, 1)?)
    }
    fn device(&self) -> &Device {
        self.text.device()
    }
    /// The last layer's input is the projected unit feature; a(x) = p − e_ŷ.
    fn grad_factors(&self, x: &Mat) -> Result<(Mat, Mat)> {
        let h = predict_chunked(x, self.device(), |t| self.image(t))?;
        let p = self.predict(x)?;
        Ok((h, minus_onehot(&p, &p)))
    }
    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let tau = Tensor::new(&[self.tau as f32], self.device())?;
        let mut pairs = vec![("ct.text", self.text.as_tensor()), ("ct.tau", &tau)];
        if let Some(p) = &self.proj {
            pairs.push(("ct.proj", p.as_tensor()));
        }
        Ok(named(pairs))
    }
}

/// The `ct` trainer.
pub struct Ct(pub CtCfg);

pub fn build(_: &'static str, p: &TrainParams) -> Result<Box<dyn Trainer>> {
    let c = &p.ct;
    if c.batch_size < 2 || c.tau <= 0.0 || c.lr <= 0.0 {
        bail!("ct.batch_size must be at least 2, ct.lr and ct.tau positive");
    }
    Ok(Box::new(Ct(c.clone())))
}

impl Trainer for Ct {
    fn name(&self) -> &'static str {
        "ct"
    }
    fn needs(&self) -> Need {
        Need {
            teacher_features: true,
            prototypes: true,
            ..Need::default()
        }
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).expect("serialisable")
    }
    /// Before any step the head is the zero-shot teacher (identity projection, t_c).
    fn zero_shot(&self, data: &TrainData, device: &Device) -> Option<Result<Head>> {
        let p = data.prototypes?;
        Some((|| {
            let h = CtHead::from_tensors(None, p.to_tensor(device)?, self.0.tau)?;
            Ok(Head(Box::new(h)))
        })())
    }
    fn fit(&self, data: &TrainData, rng: &mut VRng, device: &Device) -> Result<(Head, Vec<f32>)> {
        let (h, l) = fit(&self.0, data, rng, device)?;
        Ok((Head(Box::new(h)), l))
    }
}

pub fn fit(
    cfg: &CtCfg,
    data: &TrainData,
    rng: &mut VRng,
    dev: &Device,
) -> Result<(CtHead, Vec<f32>)> {
    let Some(protos) = data.prototypes else {
        bail!("trainer ct needs the teacher's class prototypes in the cache");
    };
    let d = data.features.cols;
    if protos.cols != d || protos.rows != data.n_classes {
        bail!(
            "trainer ct: prototypes are {}×{}, the features {d}-d with {} classes",
            protos.rows,
            protos.cols,
            data.n_classes
        );
    }
    let proj = if cfg.projection {
        Some(Tensor::eye(d, DType::F32, dev)?)
    } else {
        None
    };
    let head = CtHead::from_tensors(proj, protos.to_tensor(dev)?, cfg.tau)?;
    let params = candle_nn::ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut vars = vec![head.text.clone()];
    vars.extend(head.proj.clone());
    let mut opt = super::adamw::AdamW::new(vars, params)?;
    let losses = fit_labeled(
        cfg.epochs,
        "ct",
        data,
        cfg.batch_size,
        &mut opt,
        rng,
        dev,
        |x, y, _| head.loss(&x, y),
    )?;
    Ok((head, losses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;
    use crate::train::params::CtCfg;
    use crate::train::FeatureModel;

    /// Features near class directions, and prototypes that are rotated away from them: at step 0
    /// the head is the zero-shot classifier cos(x, t_c)/τ; training moves it toward the labels.
    /// The k × n form of the text → image loss equals the n × n soft-target form it replaces.
    #[test]
    fn text_to_image_loss_equals_the_soft_target_form() {
        let mut r = rng::stream(3, "ct", 0);
        let (c, d, n) = (4, 5, 9);
        let x = Tensor::from_vec(rng::uniform(n * d, 1.0, &mut r), (n, d), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(rng::uniform(c * d, 1.0, &mut r), (c, d), &Device::Cpu).unwrap();
        let y: Vec<u32> = vec![2, 0, 2, 3, 0, 2, 3, 3, 2];
        let h = CtHead::from_tensors(None, t, 0.07).unwrap();
        let got = h.loss(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        // the n × n form, by hand
        let z = unit_rows(&x).unwrap().to_vec2::<f32>().unwrap();
        let w = unit_rows(h.text.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum::<f64>();
        let (mut i2t, mut t2i) = (0.0, 0.0);
        for i in 0..n {
            let li: Vec<f64> = (0..c).map(|k| dot(&z[i], &w[k]) / 0.07).collect();
            let lse = li.iter().map(|v| v.exp()).sum::<f64>().ln();
            i2t += lse - li[y[i] as usize];
            let si: Vec<f64> = (0..n)
                .map(|j| dot(&w[y[i] as usize], &z[j]) / 0.07)
                .collect();
            let lse = si.iter().map(|v| v.exp()).sum::<f64>().ln();
            let same: Vec<usize> = (0..n).filter(|&j| y[j] == y[i]).collect();
            t2i += same.iter().map(|&j| lse - si[j]).sum::<f64>() / same.len() as f64;
        }
        let want = 0.5 * (i2t / n as f64 + t2i / n as f64);
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn starts_zero_shot_and_learns_the_labels() {
        let mut r = rng::stream(1, "ct", 0);
        let (c, d, n) = (3, 6, 60);
        let noise = rng::uniform(n * d, 0.3, &mut r);
        let mut f = Mat::zeros(n, d);
        for i in 0..n {
            for j in 0..d {
                f.row_mut(i)[j] = noise[i * d + j] + if j == i % c { 1.0 } else { 0.0 };
            }
        }
        // class k's prototype points half at its own direction, half at the next class's
        let mut p = Mat::zeros(c, d);
        for k in 0..c {
            p.row_mut(k)[k] = 0.5;
            p.row_mut(k)[(k + 1) % c] = 0.9;
        }
        let labeled: Vec<usize> = (0..n).collect();
        let labels: Vec<u32> = labeled.iter().map(|&i| (i % c) as u32).collect();
        let data = TrainData {
            features: &f,
            labeled: &labeled,
            labels: &labels,
            n_classes: c,
            teacher: None,
            class_names: &[],
            feature_model: &FeatureModel::default(),
            prototypes: Some(&p),
            validation: None,
        };
        let acc = |h: &CtHead| {
            let pr = h.predict(&f).unwrap();
            (0..n)
                .filter(|&i| crate::mat::argmax(pr.row(i)) == i % c)
                .count() as f64
                / n as f64
        };
        let mut cfg = CtCfg::default();
        cfg.epochs = 0;
        let (h0, _) = fit(&cfg, &data, &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        // zero-shot: softmax(cos(x, t_c)/τ) exactly
        let pr = h0.predict(&f).unwrap();
        let mut zs = p.clone();
        zs.normalize_rows();
        let mut fx = f.clone();
        fx.normalize_rows();
        let lg = crate::geometry::matmul_nt(&fx, &zs).unwrap();
        let want = crate::mat::softmax_rows(&lg, (1.0 / cfg.tau) as f32);
        assert!(pr
            .data
            .iter()
            .zip(&want.data)
            .all(|(a, b)| (a - b).abs() < 1e-4));
        let before = acc(&h0);
        cfg.epochs = 60;
        cfg.lr = 1e-2;
        let fit_once = || fit(&cfg, &data, &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        let (h1, losses) = fit_once();
        assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
        assert!(acc(&h1) > before + 0.2, "{before} → {}", acc(&h1));
        // seeded: the same run gives the same head
        let (h2, _) = fit_once();
        assert_eq!(h1.predict(&f).unwrap(), h2.predict(&f).unwrap());
        // the class embeddings alone also learn
        cfg.projection = false;
        let (h3, _) = fit(&cfg, &data, &mut rng::stream(0, "t", 0), &Device::Cpu).unwrap();
        assert!(acc(&h3) > before + 0.2, "{before} → {}", acc(&h3));
        assert!(!h3.tensors().unwrap().contains_key("ct.proj"));
    }
}
