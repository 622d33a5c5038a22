//! EfficientNet-Lite (the EfficientNet family without squeeze-excite, with ReLU6, a fixed
//! 32-channel stem and a fixed 1280-d head) as a candle model, for ImageNet-pretrained students
//! and classifier teachers: [`Config`], [`EfficientNetLite::load`], [`EfficientNetLite::forward`].
//!
//! Weights use the names of the PyTorch ports (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
//! `_depthwise_conv`, `_project_conv`, `_bn0/1/2`, `_conv_head`, `_bn1`, `_fc`), converted to
//! safetensors. The block layout is read from the weights: a block's kernel from its depthwise
//! filter, its expansion from the presence of `_expand_conv`, a new stage where the output width
//! changes; the stage strides are EfficientNet's (1, 2, 2, 2, 1, 2, 1). Batch norms (ε = 1e-3)
//! are folded into the convolutions at load; convolutions pad symmetrically by k/2.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The strides of EfficientNet's seven stages.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Input resolution the weights were trained at (Lite0 224, Lite1 240, Lite2 260, …).
    pub image_size: usize,
    pub batch_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 224,
            batch_norm_eps: 1e-3,
        }
    }
}

/// A convolution with its batch norm folded in: weight (C_out, C_in/groups, k, k) and bias.
struct ConvBn {
    w: Tensor,
    b: Tensor,
    stride: usize,
    depthwise: bool,
}

impl ConvBn {
    fn new(
        t: &HashMap<String, Tensor>,
        conv: &str,
        bn: &str,
        stride: usize,
        eps: f64,
    ) -> Result<ConvBn> {
        let get = |k: &str| t.get(k).ok_or_else(|| anyhow!("missing tensor '{k}'"));
        let w = get(&format!("{conv}.weight"))?.to_dtype(DType::F32)?;
        let (cout, cin_g, kh, kw) = w.dims4()?;
        if kh != kw {
            bail!("{conv}: {kh}×{kw} kernels are not supported");
        }
        let gamma = get(&format!("{bn}.weight"))?.to_dtype(DType::F32)?;
        let beta = get(&format!("{bn}.bias"))?.to_dtype(DType::F32)?;
        let mean = get(&format!("{bn}.running_mean"))?.to_dtype(DType::F32)?;
        let var = get(&format!("{bn}.running_var"))?.to_dtype(DType::F32)?;
        if gamma.dims1()? != cout {
            bail!("{bn}: {} channels for {conv}'s {cout}", gamma.dims1()?);
        }
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let b = (beta - (mean * &scale)?)?;
        let w = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        Ok(ConvBn {
            w,
            b,
            stride,
            depthwise: cin_g == 1 && conv.ends_with("_depthwise_conv"),
        })
    }

    fn forward(&self, x: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
        let (cout, _, k, _) = self.w.dims4()?;
        let fast = x.device().is_cpu() && x.dtype() == DType::F32;
        if self.depthwise && fast {
            return depthwise(x, &self.w, &self.b, self.stride, relu6);
        }
        #[cfg(feature = "blas")]
        if k == 1 && self.stride == 1 && fast {
            return pointwise_blas(x, &self.w, &self.b, relu6);
        }
        let y = if self.depthwise {
            x.conv2d(&self.w, k / 2, self.stride, 1, x.dim(1)?)?
        } else if k == 1 && self.stride == 1 {
            // pointwise: (C_out, C_in) · (B, C_in, H·W)
            let (b, c, h, w) = x.dims4()?;
            let x2 = x.reshape((b, c, h * w))?;
            self.w
                .reshape((cout, c))?
                .broadcast_matmul(&x2)?
                .reshape((b, cout, h, w))?
        } else {
            x.conv2d(&self.w, k / 2, self.stride, 1, 1)?
        };
        let y = y.broadcast_add(&self.b.reshape((1, cout, 1, 1))?)?;
        if relu6 {
            y.clamp(0f32, 6f32)
        } else {
            Ok(y)
        }
    }
}

/// ReLU6 in place.
fn relu6_slice(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0));
}

/// 1×1 convolution + bias (+ ReLU6) of (B, C_in, H, W) through OpenBLAS: per image,
/// W (C_out × C_in) · X (C_in × H·W), the images spread over rayon.
#[cfg(feature = "blas")]
fn pointwise_blas(x: &Tensor, w: &Tensor, b: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let (n, cin, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    let hw = h * wd;
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let bs = b.to_vec1::<f32>()?;
    let mut out = vec![0f32; n * cout * hw];
    out.par_chunks_mut(cout * hw)
        .zip(xs.par_chunks(cin * hw))
        .for_each(|(o, xb)| {
            for (row, &bv) in o.chunks_mut(hw).zip(&bs) {
                row.iter_mut().for_each(|v| *v = bv);
            }
            crate::geometry::sgemm_1(&ws, xb, cout, hw, cin, false, 1.0, o);
            if relu6 {
                relu6_slice(o);
            }
        });
    Tensor::from_vec(out, (n, cout, h, wd), x.device())
}

/// Depthwise k×k convolution (one filter per channel) + bias (+ ReLU6), zero padding k/2, on
/// (B, C, H, W).
fn depthwise(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    relu6: bool,
) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let (b, c, h, wd) = x.dims4()?;
    let k = w.dim(3)?;
    let p = k / 2;
    let (oh, ow) = ((h + 2 * p - k) / stride + 1, (wd + 2 * p - k) / stride + 1);
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let bs = bias.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * c * oh * ow];
    let (ph, pw) = (h + 2 * p, wd + 2 * p);
    out.par_chunks_mut(oh * ow).enumerate().for_each_init(
        || vec![0f32; ph * pw],
        |pad, (bc, o)| {
            // the plane, zero-padded, so that every tap is a plain (vectorisable) row update
            let img = &xs[bc * h * wd..(bc + 1) * h * wd];
            for y in 0..h {
                pad[(y + p) * pw + p..(y + p) * pw + p + wd]
                    .copy_from_slice(&img[y * wd..(y + 1) * wd]);
            }
            let f = &ws[(bc % c) * k * k..(bc % c + 1) * k * k];
            o.iter_mut().for_each(|v| *v = bs[bc % c]);
            for oy in 0..oh {
                let orow = &mut o[oy * ow..(oy + 1) * ow];
                for ky in 0..k {
                    let prow = &pad[(oy * stride + ky) * pw..(oy * stride + ky + 1) * pw];
                    for kx in 0..k {
                        let wv = f[ky * k + kx];
                        if stride == 1 {
                            for (ov, &xv) in orow.iter_mut().zip(&prow[kx..kx + ow]) {
                                *ov += wv * xv;
                            }
                        } else {
                            for (ox, ov) in orow.iter_mut().enumerate() {
                                *ov += wv * prow[ox * stride + kx];
                            }
                        }
                    }
                }
            }
            if relu6 {
                relu6_slice(o);
            }
        },
    );
    Tensor::from_vec(out, (b, c, oh, ow), x.device())
}

/// One inverted-residual block (MBConv without squeeze-excite).
struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

pub struct EfficientNetLite {
    pub config: Config,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    /// The ImageNet classifier (1000 × 1280), when the checkpoint has one.
    fc: Option<(Tensor, Tensor)>,
}

impl EfficientNetLite {
    /// Build from the checkpoint's tensors (PyTorch port names).
    pub fn from_tensors(t: &HashMap<String, Tensor>, config: Config) -> Result<EfficientNetLite> {
        let eps = config.batch_norm_eps;
        let stem = ConvBn::new(t, "_conv_stem", "_bn0", 2, eps)?;
        let n = t
            .keys()
            .filter_map(|k| {
                k.strip_prefix("_blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if n == 0 {
            bail!("no '_blocks.N.*' tensors: not an EfficientNet checkpoint");
        }
        let mut blocks = Vec::with_capacity(n);
        let (mut stage, mut width) = (None::<usize>, stem.w.dim(0)?);
        for i in 0..n {
            let p = format!("_blocks.{i}.");
            let out = t
                .get(&format!("{p}_project_conv.weight"))
                .ok_or_else(|| anyhow!("missing tensor '{p}_project_conv.weight'"))?
                .dim(0)?;
            // a new stage where the width changes (EfficientNet's stages all differ in width)
            let first = stage.is_none() || out != width;
            if first {
                stage = Some(stage.map_or(0, |s| s + 1));
            }
            let s = stage.expect("set above");
            if s >= STAGE_STRIDES.len() {
                bail!("block {i}: more than {} stages", STAGE_STRIDES.len());
            }
            let stride = if first { STAGE_STRIDES[s] } else { 1 };
            let expand = if t.contains_key(&format!("{p}_expand_conv.weight")) {
                Some(ConvBn::new(
                    t,
                    &format!("{p}_expand_conv"),
                    &format!("{p}_bn0"),
                    1,
                    eps,
                )?)
            } else {
                None
            };
            let depthwise = ConvBn::new(
                t,
                &format!("{p}_depthwise_conv"),
                &format!("{p}_bn1"),
                stride,
                eps,
            )?;
            if !depthwise.depthwise {
                bail!("{p}_depthwise_conv: not a depthwise filter");
            }
            let project =
                ConvBn::new(t, &format!("{p}_project_conv"), &format!("{p}_bn2"), 1, eps)?;
            blocks.push(Block {
                expand,
                depthwise,
                project,
                residual: stride == 1 && width == out,
            });
            width = out;
        }
        let head = ConvBn::new(t, "_conv_head", "_bn1", 1, eps)?;
        let fc = match (t.get("_fc.weight"), t.get("_fc.bias")) {
            (Some(w), Some(b)) => Some((w.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?)),
            _ => None,
        };
        Ok(EfficientNetLite {
            config,
            stem,
            blocks,
            head,
            fc,
        })
    }

    /// Load `config.json` (optional) and `model.safetensors` from a directory.
    pub fn load(dir: &Path, device: &Device) -> Result<EfficientNetLite> {
        let cfg_path = dir.join("config.json");
        let config = if cfg_path.exists() {
            super::read_config(&cfg_path, "EfficientNet-Lite")?
        } else {
            Config::default()
        };
        let weights = dir.join("model.safetensors");
        let t = candle_core::safetensors::load(&weights, device)
            .with_context(|| format!("{}: cannot read the weights", weights.display()))?;
        EfficientNetLite::from_tensors(&t, config)
            .map_err(|e| anyhow!("{}: {e}", weights.display()))
    }

    pub fn feature_dim(&self) -> usize {
        self.head.w.dim(0).unwrap_or(0)
    }

    /// Pooled features (B, 1280) of normalised pixels (B, 3, S, S): the head's ReLU6 output
    /// averaged over space.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward(pixels, true)?;
        for b in &self.blocks {
            let mut h = match &b.expand {
                Some(e) => e.forward(&x, true)?,
                None => x.clone(),
            };
            h = b.depthwise.forward(&h, true)?;
            h = b.project.forward(&h, false)?;
            x = if b.residual { (h + &x)? } else { h };
        }
        self.head.forward(&x, true)?.mean((2, 3))
    }

    /// ImageNet logits (B, 1000) of pooled features, when the checkpoint has the classifier.
    pub fn classify(&self, features: &Tensor) -> Result<Tensor> {
        let (w, b) = self
            .fc
            .as_ref()
            .ok_or_else(|| anyhow!("this EfficientNet-Lite checkpoint has no classifier (_fc)"))?;
        Ok(features.matmul(&w.t()?)?.broadcast_add(b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::tests::max_diff;

    /// The direct depthwise and BLAS pointwise paths against candle's conv2d (+ bias, ReLU6).
    #[test]
    fn fast_convolutions_match_candle_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 6, 11, 9), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let reference = |y: Tensor, relu6: bool| {
            let y = y.broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap()).unwrap();
            if relu6 {
                y.clamp(0f32, 6f32).unwrap()
            } else {
                y
            }
        };
        for (k, stride) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            let w = Tensor::randn(0f32, 1.0, (6, 1, k, k), &dev).unwrap();
            for relu6 in [false, true] {
                let got = depthwise(&x, &w, &b, stride, relu6).unwrap();
                let want = reference(x.conv2d(&w, k / 2, stride, 1, 6).unwrap(), relu6);
                assert!(max_diff(&got, &want) < 1e-4, "k {k}, stride {stride}");
            }
        }
        #[cfg(feature = "blas")]
        {
            let w = Tensor::randn(0f32, 1.0, (6, 6, 1, 1), &dev).unwrap();
            let got = pointwise_blas(&x, &w, &b, true).unwrap();
            let want = reference(x.conv2d(&w, 0, 1, 1, 1).unwrap(), true);
            assert!(max_diff(&got, &want) < 1e-4);
        }
    }
}
