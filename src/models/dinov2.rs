//! DINOv2 vision transformer in the Hugging Face `Dinov2Model` layout (`config.json` +
//! `model.safetensors` with `embeddings.*`, `encoder.layer.N.*`, `layernorm.*`), candle-
//! transformers style: [`Config`], [`Dinov2::load`], [`Dinov2::forward`]. Covers ViT-S/B/L/g-14
//! (g uses the SwiGLU MLP). Position embeddings are interpolated bicubically to the input's patch
//! grid as transformers does. Output: the CLS token after the final LayerNorm, optionally
//! concatenated with the mean patch token.

use super::layers::Linear;
use anyhow::{bail, Result};
use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub mlp_ratio: f64,
    pub hidden_act: super::clip::Act,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub use_swiglu_ffn: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            hidden_act: super::clip::Act::Gelu,
            layer_norm_eps: 1e-6,
            image_size: 518,
            patch_size: 14,
            num_channels: 3,
            qkv_bias: true,
            use_swiglu_ffn: false,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let c: Config = super::layers::read_config(path, "DINOv2")?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            bail!(
                "{}: hidden_size {} is not divisible by {} heads",
                path.display(),
                c.hidden_size,
                c.num_attention_heads
            );
        }
        Ok(c)
    }

    fn mlp_hidden(&self) -> usize {
        let h = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn {
            (h * 2 / 3).div_ceil(8) * 8
        } else {
            h
        }
    }
}

enum Mlp {
    Plain {
        fc1: Linear,
        fc2: Linear,
        act: super::clip::Act,
    },
    SwiGlu {
        w_in: Linear,
        w_out: Linear,
    },
}

struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    scale1: Tensor,
    norm2: LayerNorm,
    mlp: Mlp,
    scale2: Tensor,
    heads: usize,
}

const ONES: candle_nn::Init = candle_nn::Init::Const(1.0);
const RANDN: candle_nn::Init = candle_nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

impl Layer {
    fn new(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let a = vb.pp("attention");
        let m = vb.pp("mlp");
        let mlp = if c.use_swiglu_ffn {
            Mlp::SwiGlu {
                w_in: Linear::load(h, 2 * c.mlp_hidden(), true, m.pp("weights_in"))?,
                w_out: Linear::load(c.mlp_hidden(), h, true, m.pp("weights_out"))?,
            }
        } else {
            Mlp::Plain {
                fc1: Linear::load(h, c.mlp_hidden(), true, m.pp("fc1"))?,
                fc2: Linear::load(c.mlp_hidden(), h, true, m.pp("fc2"))?,
                act: c.hidden_act,
            }
        };
        Ok(Self {
            norm1: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("norm1"))?,
            q: Linear::load(h, h, c.qkv_bias, a.pp("attention.query"))?,
            k: Linear::load(h, h, c.qkv_bias, a.pp("attention.key"))?,
            v: Linear::load(h, h, c.qkv_bias, a.pp("attention.value"))?,
            out: Linear::load(h, h, true, a.pp("output.dense"))?,
            scale1: vb.get_with_hints(h, "layer_scale1.lambda1", ONES)?,
            norm2: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("norm2"))?,
            mlp,
            scale2: vb.get_with_hints(h, "layer_scale2.lambda1", ONES)?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let hd = h / self.heads;
        let y = self.norm1.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(&y)?)?;
        let k = split(self.k.forward(&y)?)?;
        let v = split(self.v.forward(&y)?)?;
        let o = super::layers::attention(&q, &k, &v, (hd as f64).powf(-0.5), None)?
            .transpose(1, 2)?
            .reshape((b, n, h))?;
        let x = (x + self.out.forward(&o)?.broadcast_mul(&self.scale1)?)?;
        let y = self.norm2.forward(&x)?;
        let m = match &self.mlp {
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&act.forward(&fc1.forward(&y)?)?)?,
            Mlp::SwiGlu { w_in, w_out } => {
                let z = w_in.forward(&y)?;
                let half = z.dim(2)? / 2;
                let (a, g) = (z.narrow(2, 0, half)?, z.narrow(2, half, half)?);
                w_out.forward(&(a.silu()? * g)?)?
            }
        };
        x + m.broadcast_mul(&self.scale2)?
    }
}

pub struct Dinov2 {
    pub config: Config,
    cls: Tensor,
    pos: Tensor,
    patch: super::layers::PatchEmbed,
    layers: Vec<Layer>,
    norm: LayerNorm,
}

impl Dinov2 {
    pub fn new(vb: VarBuilder, config: Config) -> candle_core::Result<Dinov2> {
        let c = &config;
        let e = vb.pp("embeddings");
        let grid = c.image_size / c.patch_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layer.{i}")), c))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // mask_token is part of the layout (used only for masked pre-training); check it exists
        e.get_with_hints((1, c.hidden_size), "mask_token", RANDN)?;
        Ok(Dinov2 {
            cls: e.get_with_hints((1, 1, c.hidden_size), "cls_token", RANDN)?,
            pos: e.get_with_hints(
                (1, grid * grid + 1, c.hidden_size),
                "position_embeddings",
                RANDN,
            )?,
            patch: super::layers::PatchEmbed::load(
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                true,
                e.pp("patch_embeddings.projection"),
            )?,
            layers,
            norm: candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layernorm"))?,
            config,
        })
    }

    /// Load `config.json` and `model.safetensors` (HF layout) from a directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Dinov2> {
        let config = Config::from_file(&dir.join("config.json"))?;
        super::layers::load_weights(dir, device, "DINOv2", |vb| Dinov2::new(vb, config))
    }

    /// Position embeddings for a g_h × g_w patch grid: the stored grid interpolated bicubically
    /// (transformers' `interpolate_pos_encoding`, align_corners = False), CLS position first.
    fn positions(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let n = self.pos.dim(1)? - 1;
        let g = (n as f64).sqrt() as usize;
        if gh == g && gw == g {
            return Ok(self.pos.clone());
        }
        let h = self.config.hidden_size;
        let cls = self.pos.i((.., 0..1, ..))?;
        let grid = self.pos.i((0, 1.., ..))?.to_vec2::<f32>()?; // (g·g, H)
                                                                // transformers ≥ 4.45 passes the target size (older versions added 0.1 to it)
        let sy = gh as f64 / g as f64;
        let sx = gw as f64 / g as f64;
        let wy = bicubic_weights(g, gh, sy);
        let wx = bicubic_weights(g, gw, sx);
        let mut out = vec![0f32; gh * gw * h];
        for (oy, ry) in wy.iter().enumerate() {
            for (ox, rx) in wx.iter().enumerate() {
                let o = &mut out[(oy * gw + ox) * h..(oy * gw + ox + 1) * h];
                for &(iy, a) in ry {
                    for &(ix, b) in rx {
                        let w = (a * b) as f32;
                        for (o, &v) in o.iter_mut().zip(&grid[iy * g + ix]) {
                            *o += w * v;
                        }
                    }
                }
            }
        }
        let patch = Tensor::from_vec(out, (1, gh * gw, h), self.pos.device())?;
        Tensor::cat(&[&cls, &patch], 1)
    }

    /// Final-LayerNorm tokens (B, 1 + N, H) of pixel batches (B, C, S_h, S_w).
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (x, gh, gw) = self.patch.forward(pixels)?;
        let (b, _, h) = x.dims3()?;
        let cls = self.cls.expand((b, 1, h))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positions(gh, gw)?)?;
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        self.norm.forward(&x)
    }

    /// The CLS token, or [CLS | mean patch token] (2H) with `with_mean_patch`.
    pub fn embed(&self, pixels: &Tensor, with_mean_patch: bool) -> candle_core::Result<Tensor> {
        let t = self.forward(pixels)?;
        let cls = t.i((.., 0, ..))?;
        if !with_mean_patch {
            return Ok(cls);
        }
        let mean = t.i((.., 1.., ..))?.mean(1)?;
        Tensor::cat(&[&cls, &mean], 1)
    }
}

/// PyTorch's bicubic resampling (A = −0.75, align_corners = False, border clamped) from `n_in`
/// to `n_out` samples with scale factor `scale` (source = (dst + 0.5)/scale − 0.5): for each
/// output, its (input index, weight) taps.
fn bicubic_weights(n_in: usize, n_out: usize, scale: f64) -> Vec<Vec<(usize, f64)>> {
    const A: f64 = -0.75;
    let cubic = |x: f64| -> f64 {
        let x = x.abs();
        if x <= 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    (0..n_out)
        .map(|o| {
            let src = (o as f64 + 0.5) / scale - 0.5;
            let f = src.floor();
            let t = src - f;
            let mut taps: Vec<(usize, f64)> = Vec::with_capacity(4);
            for k in -1i64..=2 {
                let idx = (f as i64 + k).clamp(0, n_in as i64 - 1) as usize;
                let w = cubic(k as f64 - t);
                match taps.iter_mut().find(|(i, _)| *i == idx) {
                    Some(e) => e.1 += w,
                    None => taps.push((idx, w)),
                }
            }
            taps
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const TINY: &str = r#"{"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
      "image_size": 28, "patch_size": 7, "layerscale_value": 1.0, "model_type": "dinov2"}"#;

    pub fn tiny_checkpoint(dir: &Path, config: &str) -> Dinov2 {
        let c: Config = serde_json::from_str(config).unwrap();
        crate::models::random_checkpoint(dir, config, |vb| Dinov2::new(vb, c))
    }

    #[test]
    fn loads_and_embeds_at_native_and_other_resolutions() {
        for cfg in [
            TINY.to_string(),
            TINY.replace(
                "\"layerscale_value\"",
                "\"use_swiglu_ffn\": true, \"layerscale_value\"",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let built = tiny_checkpoint(dir.path(), &cfg);
            let m = Dinov2::load(dir.path(), &Device::Cpu).unwrap();
            let px = Tensor::randn(0f32, 1.0, (2, 3, 28, 28), &Device::Cpu).unwrap();
            let a = m.embed(&px, false).unwrap();
            assert_eq!(a.dims(), &[2, 16]);
            let d = (a - built.embed(&px, false).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            assert_eq!(m.embed(&px, true).unwrap().dims(), &[2, 32]);
            // 42 px → a 6×6 grid: positions are interpolated from the stored 4×4
            let big = Tensor::randn(0f32, 1.0, (1, 3, 42, 42), &Device::Cpu).unwrap();
            assert_eq!(m.forward(&big).unwrap().dims(), &[1, 37, 16]);
        }
    }

    #[test]
    fn bicubic_taps_sum_to_one_and_identity_scale_is_exact() {
        for (n_in, n_out) in [(4, 6), (37, 16), (5, 5)] {
            let w = bicubic_weights(n_in, n_out, n_out as f64 / n_in as f64);
            for taps in &w {
                let s: f64 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-12);
            }
        }
        let id = bicubic_weights(5, 5, 1.0);
        for (o, taps) in id.iter().enumerate() {
            let w: f64 = taps.iter().filter(|t| t.0 == o).map(|t| t.1).sum();
            assert!((w - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn mismatched_config_names_the_files() {
        let dir = tempfile::tempdir().unwrap();
        tiny_checkpoint(dir.path(), TINY);
        std::fs::write(
            dir.path().join("config.json"),
            TINY.replace("\"patch_size\": 7", "\"patch_size\": 14"),
        )
        .unwrap();
        let e = Dinov2::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.safetensors: does not match"), "{e}");
    }
}
