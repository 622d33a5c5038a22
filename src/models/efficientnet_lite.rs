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
    k: usize,
    stride: usize,
    depthwise: bool,
    /// The CPU path's copies: depthwise weights as (k·k, C), others as (C_out, C_in·k·k).
    raw_w: Vec<f32>,
    raw_b: Vec<f32>,
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
        let depthwise = cin_g == 1 && conv.ends_with("_depthwise_conv");
        let raw_w = if depthwise {
            w.reshape((cout, kh * kw))?.t()?.contiguous()?
        } else {
            w.reshape((cout, cin_g * kh * kw))?
        }
        .flatten_all()?
        .to_vec1::<f32>()?;
        Ok(ConvBn {
            raw_b: b.to_vec1::<f32>()?,
            w,
            b,
            k: kh,
            stride,
            depthwise,
            raw_w,
        })
    }

    fn forward(&self, x: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
        let (cout, _, k, _) = self.w.dims4()?;
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

/// The CPU path, one image per rayon task, single-threaded within: feature maps are channels
/// last ((H·W, C) row-major), so a 1×1 convolution is one sgemm over the image's pixels and a
/// depthwise tap is a multiply-add over contiguous channels (vectorised; with AVX2 where the
/// CPU has it). An image's largest map (112² × 96 floats for Lite0) stays in cache.
#[cfg(feature = "blas")]
mod cpu {
    use super::{relu6_slice, ConvBn};
    use crate::geometry::sgemm_1;

    /// A channels-last feature map of one image.
    pub struct Map {
        pub h: usize,
        pub w: usize,
        pub c: usize,
        pub data: Vec<f32>,
    }

    /// out = bias + x·Wᵀ (1×1 convolution), (+ ReLU6).
    pub fn pointwise(conv: &ConvBn, x: &Map, relu6: bool) -> Map {
        let cout = conv.raw_b.len();
        let hw = x.h * x.w;
        let mut data = Vec::with_capacity(hw * cout);
        for _ in 0..hw {
            data.extend_from_slice(&conv.raw_b);
        }
        sgemm_1(&x.data, &conv.raw_w, hw, cout, x.c, true, 1.0, &mut data);
        if relu6 {
            relu6_slice(&mut data);
        }
        Map {
            h: x.h,
            w: x.w,
            c: cout,
            data,
        }
    }

    /// The stem: a dense k×k, stride-s convolution of a (3, S, S) image (channels first, as
    /// preprocessed) by im2col + sgemm, + bias + ReLU6.
    pub fn stem(conv: &ConvBn, px: &[f32], cin: usize, size: usize) -> Map {
        let (k, s) = (conv.k, conv.stride);
        let p = k / 2;
        let o = (size + 2 * p - k) / s + 1;
        let cols = cin * k * k;
        let mut im = vec![0f32; o * o * cols];
        for (pix, row) in im.chunks_mut(cols).enumerate() {
            let (oy, ox) = (pix / o, pix % o);
            for ci in 0..cin {
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= size as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - p as isize;
                        if ix >= 0 && ix < size as isize {
                            row[(ci * k + ky) * k + kx] =
                                px[(ci * size + iy as usize) * size + ix as usize];
                        }
                    }
                }
            }
        }
        pointwise(
            conv,
            &Map {
                h: o,
                w: o,
                c: cols,
                data: im,
            },
            true,
        )
    }

    /// Depthwise k×k convolution, zero padding k/2, + bias (+ ReLU6); weights (k·k, C).
    pub fn depthwise(conv: &ConvBn, x: &Map, relu6: bool) -> Map {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { depthwise_avx2(conv, x, relu6) };
        }
        depthwise_generic(conv, x, relu6)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn depthwise_avx2(conv: &ConvBn, x: &Map, relu6: bool) -> Map {
        depthwise_generic(conv, x, relu6)
    }

    #[inline(always)]
    fn depthwise_generic(conv: &ConvBn, x: &Map, relu6: bool) -> Map {
        let (k, s, c) = (conv.k, conv.stride, x.c);
        let p = k / 2;
        let (oh, ow) = ((x.h + 2 * p - k) / s + 1, (x.w + 2 * p - k) / s + 1);
        let mut data = vec![0f32; oh * ow * c];
        for (pix, out) in data.chunks_mut(c).enumerate() {
            let (oy, ox) = (pix / ow, pix % ow);
            out.copy_from_slice(&conv.raw_b);
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - p as isize;
                if iy < 0 || iy >= x.h as isize {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s + kx) as isize - p as isize;
                    if ix < 0 || ix >= x.w as isize {
                        continue;
                    }
                    let at = (iy as usize * x.w + ix as usize) * c;
                    let w = &conv.raw_w[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                    for ((o, &xv), &wv) in out.iter_mut().zip(&x.data[at..at + c]).zip(w) {
                        *o += wv * xv;
                    }
                }
            }
        }
        if relu6 {
            relu6_slice(&mut data);
        }
        Map {
            h: oh,
            w: ow,
            c,
            data,
        }
    }
}

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
    /// sha256 over the config and the tensors other than the classifier (`_fc.*`): equal for
    /// two checkpoints whose pooled features are equal.
    pub backbone: String,
}

/// sha256 over the feature-relevant config and every tensor but the classifier's, by name.
fn backbone_digest(t: &HashMap<String, Tensor>, config: &Config) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{} {}", config.image_size, config.batch_norm_eps).as_bytes());
    let mut names: Vec<&String> = t.keys().filter(|k| !k.starts_with("_fc.")).collect();
    names.sort();
    for n in names {
        let v = &t[n];
        h.update(format!("\0{n}{:?}", v.dims()).as_bytes());
        let x = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        h.update(x.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    Ok(super::hub::hex(&h.finalize()))
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
        let backbone = backbone_digest(t, &config)?;
        Ok(EfficientNetLite {
            config,
            stem,
            blocks,
            head,
            fc,
            backbone,
        })
    }

    /// Load `config.json` (optional) and `model.safetensors` from a directory.
    pub fn load(dir: &Path, device: &Device) -> Result<EfficientNetLite> {
        let cfg_path = dir.join("config.json");
        let config = if cfg_path.exists() {
            super::layers::read_config(&cfg_path, "EfficientNet-Lite")?
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
        #[cfg(feature = "blas")]
        if pixels.device().is_cpu() && pixels.dtype() == DType::F32 {
            return self.forward_cpu(pixels);
        }
        self.forward_candle(pixels)
    }

    /// [`Self::forward`] in candle ops: any device, and the CPU without BLAS.
    fn forward_candle(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
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

    /// [`Self::forward`] on the CPU path (module `cpu`), one image per rayon task.
    #[cfg(feature = "blas")]
    fn forward_cpu(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        use rayon::prelude::*;
        let (n, cin, size, size2) = pixels.dims4()?;
        if size != size2 || cin != self.stem.w.dim(1)? {
            candle_core::bail!(
                "EfficientNet-Lite: expected square {}-channel images, got {:?}",
                self.stem.w.dim(1)?,
                pixels.dims()
            );
        }
        let px = pixels.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let dim = self.feature_dim();
        let mut out = vec![0f32; n * dim];
        out.par_chunks_mut(dim)
            .zip(px.par_chunks(cin * size * size))
            .for_each(|(o, img)| {
                let mut x = cpu::stem(&self.stem, img, cin, size);
                for b in &self.blocks {
                    let expanded;
                    let h = match &b.expand {
                        Some(e) => {
                            expanded = cpu::pointwise(e, &x, true);
                            &expanded
                        }
                        None => &x,
                    };
                    let h = cpu::depthwise(&b.depthwise, h, true);
                    let mut h = cpu::pointwise(&b.project, &h, false);
                    if b.residual {
                        h.data.iter_mut().zip(&x.data).for_each(|(a, v)| *a += v);
                    }
                    x = h;
                }
                let f = cpu::pointwise(&self.head, &x, true);
                for row in f.data.chunks(dim) {
                    o.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                let hw = (f.h * f.w) as f32;
                o.iter_mut().for_each(|a| *a /= hw);
            });
        Tensor::from_vec(out, (n, dim), pixels.device())
    }

    /// The classifier (weights K × 1280, bias K), when the checkpoint has one.
    pub fn fc(&self) -> Option<(&Tensor, &Tensor)> {
        self.fc.as_ref().map(|(w, b)| (w, b))
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

/// The tensors of a random tiny EfficientNet-Lite (stem 3→8, a block without expansion, a
/// stride-2 5×5 block, a residual block, head 6→16, a classifier 16→`classes`), for tests and
/// `vlal tiny`.
pub fn random_tensors(classes: usize, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let mut r = crate::rng::stream(0, "efficientnet-lite", classes);
    let mut t = HashMap::new();
    // uniform on [lo, hi)
    let mut put = |name: String, shape: &[usize], lo: f32, hi: f32| -> Result<()> {
        let n = shape.iter().product();
        let v = crate::rng::uniform(n, 1.0, &mut r)
            .into_iter()
            .map(|u| lo + (u + 1.0) / 2.0 * (hi - lo))
            .collect::<Vec<f32>>();
        t.insert(name, Tensor::from_vec(v, shape, dev)?);
        Ok(())
    };
    for (conv, bn, shape) in [
        ("_conv_stem", "_bn0", [8, 3, 3, 3]),
        ("_blocks.0._depthwise_conv", "_blocks.0._bn1", [8, 1, 3, 3]),
        ("_blocks.0._project_conv", "_blocks.0._bn2", [4, 8, 1, 1]),
        ("_blocks.1._expand_conv", "_blocks.1._bn0", [12, 4, 1, 1]),
        ("_blocks.1._depthwise_conv", "_blocks.1._bn1", [12, 1, 5, 5]),
        ("_blocks.1._project_conv", "_blocks.1._bn2", [6, 12, 1, 1]),
        ("_blocks.2._expand_conv", "_blocks.2._bn0", [12, 6, 1, 1]),
        ("_blocks.2._depthwise_conv", "_blocks.2._bn1", [12, 1, 3, 3]),
        ("_blocks.2._project_conv", "_blocks.2._bn2", [6, 12, 1, 1]),
        ("_conv_head", "_bn1", [16, 6, 1, 1]),
    ] {
        put(format!("{conv}.weight"), &shape, -0.7, 0.7)?;
        let c = [shape[0]];
        put(format!("{bn}.weight"), &c, 0.5, 1.5)?;
        put(format!("{bn}.bias"), &c, -0.5, 0.5)?;
        put(format!("{bn}.running_mean"), &c, -0.5, 0.5)?;
        put(format!("{bn}.running_var"), &c, 0.5, 2.0)?;
    }
    put("_fc.weight".into(), &[classes, 16], -1.0, 1.0)?;
    put("_fc.bias".into(), &[classes], -1.0, 1.0)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::tests::max_diff;

    /// The CPU path (channels last, im2col stem, direct depthwise, sgemm) against candle's
    /// convolutions, on odd and even image sizes.
    #[test]
    fn cpu_path_matches_candle_convolutions() {
        let dev = Device::Cpu;
        let m =
            EfficientNetLite::from_tensors(&random_tensors(5, &dev).unwrap(), Config::default())
                .unwrap();
        assert_eq!(m.blocks.len(), 3);
        assert!(m.blocks[2].residual && !m.blocks[1].residual);
        assert_eq!(m.blocks[1].depthwise.stride, 2);
        for size in [17, 16] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev).unwrap();
            let want = m.forward_candle(&x).unwrap();
            assert_eq!(want.dims(), &[2, 16]);
            #[cfg(feature = "blas")]
            {
                let got = m.forward_cpu(&x).unwrap();
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "size {size}: {}",
                    max_diff(&got, &want)
                );
            }
            assert_eq!(m.classify(&want).unwrap().dims(), &[2, 5]);
        }
    }
}
