//! CLIP image and text towers in the Hugging Face `CLIPModel` layout (`config.json` +
//! `model.safetensors` with `vision_model.*`, `text_model.*`, `visual_projection`,
//! `text_projection`), candle-transformers style: [`Config`], [`Clip::load`], and forwards that
//! return the projected embeddings. Unlike candle-transformers' CLIP it reads the activation
//! from the config (`quick_gelu` for OpenAI, `gelu` for OpenCLIP conversions) and its text tower
//! also takes token *embeddings*, which prompt learning (CoOp) feeds it.

use super::layers::LayerNorm;
use super::layers::Linear;
use anyhow::{bail, Result};
use candle_core::{Device, IndexOp, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// Activation of the MLPs, by its Hugging Face name.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    #[default]
    QuickGelu,
    Gelu,
    #[serde(alias = "gelu_new")]
    GeluPytorchTanh,
}

impl Act {
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::QuickGelu if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 => {
                x.apply_op1(QuickGelu)
            }
            Act::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Act::Gelu => x.gelu_erf(),
            Act::GeluPytorchTanh => x.gelu(),
        }
    }
}

/// x·σ(1.702·x) in one parallel pass on the CPU (the composed form takes three passes and
/// three buffers); its backward pass uses candle's ops.
struct QuickGelu;

impl candle_core::CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let mut out = super::layers::cpu_f32(s, l, "quick-gelu")?.to_vec();
        out.par_chunks_mut(1 << 14).for_each(|c| {
            for v in c {
                *v /= 1.0 + (-1.702 * *v).exp();
            }
        });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let s = candle_nn::ops::sigmoid(&(x * 1.702)?)?;
        let d = (&s + ((x * 1.702)? * &s)?.mul(&(1.0 - &s)?)?)?;
        Ok(Some(dy.mul(&d)?))
    }
}

/// `text_config` of a CLIP `config.json` (defaults: transformers' `CLIPTextConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Act,
    pub layer_norm_eps: f64,
    /// 2 in configs written before transformers 4.31: then the pooled token is the argmax id.
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Act::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }
}

/// `vision_config` of a CLIP `config.json` (defaults: transformers' `CLIPVisionConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Act,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Act::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
}

fn default_projection() -> usize {
    512
}

impl Config {
    /// Parse a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Config> {
        let c: Config = super::layers::read_config(path, "CLIP")?;
        for (what, h, n) in [
            (
                "text",
                c.text_config.hidden_size,
                c.text_config.num_attention_heads,
            ),
            (
                "vision",
                c.vision_config.hidden_size,
                c.vision_config.num_attention_heads,
            ),
        ] {
            if n == 0 || h % n != 0 {
                bail!(
                    "{}: {what} hidden_size {h} is not divisible by {n} heads",
                    path.display()
                );
            }
        }
        Ok(c)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, h: usize, heads: usize) -> candle_core::Result<Self> {
        Ok(Self {
            q: Linear::load(h, h, true, vb.pp("q_proj"))?,
            k: Linear::load(h, h, true, vb.pp("k_proj"))?,
            v: Linear::load(h, h, true, vb.pp("v_proj"))?,
            out: Linear::load(h, h, true, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Multi-head self-attention; `mask` is added to the scores (−∞ above the diagonal for text).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let o = super::layers::attention(&q, &k, &v, (hd as f64).powf(-0.5), mask)?
            .transpose(1, 2)?
            .reshape((b, n, h))?;
        self.out.forward(&o)
    }
}

/// One pre-norm transformer block in the Hugging Face CLIP names (SigLIP's are the same).
pub(crate) struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Act,
}

impl Layer {
    fn new(
        vb: VarBuilder,
        h: usize,
        inter: usize,
        heads: usize,
        act: Act,
        eps: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            ln1: LayerNorm::load(h, eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(vb.pp("self_attn"), h, heads)?,
            ln2: LayerNorm::load(h, eps, vb.pp("layer_norm2"))?,
            fc1: Linear::load(h, inter, true, vb.pp("mlp.fc1"))?,
            fc2: Linear::load(inter, h, true, vb.pp("mlp.fc2"))?,
            act,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let m = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln2.forward(&x)?)?)?,
        )?;
        x + m
    }
}

/// The `encoder.layers.{i}` blocks of a tower.
pub(crate) fn encoder(
    vb: VarBuilder,
    n: usize,
    h: usize,
    inter: usize,
    heads: usize,
    act: Act,
    eps: f64,
) -> candle_core::Result<Vec<Layer>> {
    (0..n)
        .map(|i| {
            Layer::new(
                vb.pp(format!("encoder.layers.{i}")),
                h,
                inter,
                heads,
                act,
                eps,
            )
        })
        .collect()
}

/// The sizes of a text transformer (CLIP's and SigLIP's share its layout and names).
pub(crate) struct TextDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub positions: usize,
    pub act: Act,
    pub eps: f64,
}

/// A text transformer under `text_model`: token and position embeddings, the blocks and the
/// final LayerNorm.
pub(crate) struct TextStack {
    token_embedding: candle_nn::Embedding,
    positions: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
}

impl TextStack {
    pub(crate) fn new(tv: VarBuilder, d: &TextDims) -> candle_core::Result<TextStack> {
        Ok(TextStack {
            token_embedding: candle_nn::embedding(
                d.vocab,
                d.hidden,
                tv.pp("embeddings.token_embedding"),
            )?,
            positions: tv.get_with_hints(
                (d.positions, d.hidden),
                "embeddings.position_embedding.weight",
                RANDN,
            )?,
            layers: encoder(
                tv.clone(),
                d.layers,
                d.hidden,
                d.intermediate,
                d.heads,
                d.act,
                d.eps,
            )?,
            final_ln: LayerNorm::load(d.hidden, d.eps, tv.pp("final_layer_norm"))?,
        })
    }

    pub(crate) fn token_embeddings(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.token_embedding.forward(ids)
    }

    /// Final-normed hidden states (B, L, H) of token embeddings (B, L, H); `mask` is added to
    /// the attention scores.
    pub(crate) fn forward(
        &self,
        emb: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let l = emb.dim(1)?;
        let mut x = emb.broadcast_add(&self.positions.narrow(0, 0, l)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        self.final_ln.forward(&x)
    }
}

/// Initialiser of tensors created (not loaded) through a `VarMap`: random test checkpoints.
pub(crate) const RANDN: candle_nn::Init = candle_nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// The two towers and their projections.
pub struct Clip {
    pub config: Config,
    // vision
    class_embedding: Tensor,
    patch_embedding: super::layers::PatchEmbed,
    vision_positions: Tensor,
    pre_ln: LayerNorm,
    vision_layers: Vec<Layer>,
    post_ln: LayerNorm,
    visual_projection: Linear,
    // text
    text: TextStack,
    text_projection: Linear,
    device: Device,
}

impl Clip {
    /// Build from a var builder in the Hugging Face layout.
    pub fn new(vb: VarBuilder, config: Config) -> candle_core::Result<Clip> {
        let (v, t) = (&config.vision_config, &config.text_config);
        let vv = vb.pp("vision_model");
        let patches = (v.image_size / v.patch_size).pow(2);
        let vision_layers = encoder(
            vv.clone(),
            v.num_hidden_layers,
            v.hidden_size,
            v.intermediate_size,
            v.num_attention_heads,
            v.hidden_act,
            v.layer_norm_eps,
        )?;
        let text = TextStack::new(
            vb.pp("text_model"),
            &TextDims {
                vocab: t.vocab_size,
                hidden: t.hidden_size,
                intermediate: t.intermediate_size,
                layers: t.num_hidden_layers,
                heads: t.num_attention_heads,
                positions: t.max_position_embeddings,
                act: t.hidden_act,
                eps: t.layer_norm_eps,
            },
        )?;
        Ok(Clip {
            class_embedding: vv.get_with_hints(
                v.hidden_size,
                "embeddings.class_embedding",
                RANDN,
            )?,
            patch_embedding: super::layers::PatchEmbed::load(
                v.num_channels,
                v.hidden_size,
                v.patch_size,
                false,
                vv.pp("embeddings.patch_embedding"),
            )?,
            vision_positions: vv.get_with_hints(
                (patches + 1, v.hidden_size),
                "embeddings.position_embedding.weight",
                RANDN,
            )?,
            pre_ln: LayerNorm::load(v.hidden_size, v.layer_norm_eps, vv.pp("pre_layrnorm"))?,
            vision_layers,
            post_ln: LayerNorm::load(v.hidden_size, v.layer_norm_eps, vv.pp("post_layernorm"))?,
            visual_projection: Linear::load(
                v.hidden_size,
                config.projection_dim,
                false,
                vb.pp("visual_projection"),
            )?,
            text,
            text_projection: Linear::load(
                t.hidden_size,
                config.projection_dim,
                false,
                vb.pp("text_projection"),
            )?,
            device: vb.device().clone(),
            config,
        })
    }

    /// Load `config.json` and `model.safetensors` from a directory in the Hugging Face layout;
    /// a missing file, a missing tensor or a shape that does not match the config is an error
    /// naming the file.
    pub fn load(dir: &Path, device: &Device) -> Result<Clip> {
        let config = Config::from_file(&dir.join("config.json"))?;
        super::layers::load_weights(dir, device, "CLIP", |vb| Clip::new(vb, config))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Projected image embeddings (not normalised) of pixel batches (B, C, S, S), already
    /// resized, cropped and normalised.
    pub fn image_features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (x, _, _) = self.patch_embedding.forward(pixels)?; // (B, N, H)
        let (b, _, h) = x.dims3()?;
        let cls = self.class_embedding.reshape((1, 1, h))?.expand((b, 1, h))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.vision_positions)?;
        let mut x = self.pre_ln.forward(&x)?;
        for l in &self.vision_layers {
            x = l.forward(&x, None)?;
        }
        let pooled = self.post_ln.forward(&x.i((.., 0, ..))?)?;
        self.visual_projection.forward(&pooled)
    }

    /// Token embeddings of ids (B, L): the input [`Clip::text_features_from_embeddings`] takes.
    pub fn token_embeddings(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.text.token_embeddings(ids)
    }

    /// Projected text embeddings (not normalised) of token ids (B, L), L ≤ max positions.
    pub fn text_features(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let rows = ids.to_vec2::<u32>()?;
        let eos: Vec<usize> = rows.iter().map(|r| self.eos_position(r)).collect();
        self.text_features_from_embeddings(&self.token_embeddings(ids)?, &eos)
    }

    /// The pooled position of a token row: the first `eos_token_id`, or (configs with
    /// eos_token_id = 2, as transformers does) the largest id.
    pub fn eos_position(&self, ids: &[u32]) -> usize {
        let eos = self.config.text_config.eos_token_id;
        let argmax = || {
            ids.iter()
                .enumerate()
                .fold((0, 0u32), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0
        };
        if eos == 2 {
            argmax()
        } else {
            ids.iter().position(|&v| v == eos).unwrap_or_else(argmax)
        }
    }

    /// Text tower from token embeddings (B, L, H) — learned context vectors included — pooled at
    /// `eos[b]` for row b: causal self-attention, final LayerNorm, projection.
    pub fn text_features_from_embeddings(
        &self,
        emb: &Tensor,
        eos: &[usize],
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = emb.dims3()?;
        let mask: Vec<f32> = (0..l * l)
            .map(|k| {
                if k % l > k / l {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, l, l), &self.device)?.to_dtype(emb.dtype())?;
        let x = self.text.forward(emb, Some(&mask))?;
        let idx: Vec<u32> = (0..b).map(|i| (i * l + eos[i]) as u32).collect();
        let idx = Tensor::from_vec(idx, b, &self.device)?;
        let pooled = x.reshape((b * l, ()))?.index_select(&idx, 0)?;
        self.text_projection.forward(&pooled)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(
        &x.sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const TINY: &str = r#"{
      "projection_dim": 12,
      "text_config": {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 10,
        "eos_token_id": 49},
      "vision_config": {"hidden_size": 20, "intermediate_size": 28, "num_hidden_layers": 2,
        "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "hidden_act": "gelu"}
    }"#;

    /// A random-weight checkpoint in the HF layout: config.json + model.safetensors.
    pub fn tiny_checkpoint(dir: &Path) -> Clip {
        let c: Config = serde_json::from_str(TINY).unwrap();
        crate::models::random_checkpoint(dir, TINY, |vb| Clip::new(vb, c))
    }

    #[test]
    fn loads_the_hf_layout_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let built = tiny_checkpoint(dir.path());
        let m = Clip::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(m.config.vision_config.hidden_act, Act::Gelu);
        assert_eq!(m.config.text_config.hidden_act, Act::QuickGelu);
        let px = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
        let a = m.image_features(&px).unwrap();
        assert_eq!(a.dims(), &[3, 12]);
        let b = built.image_features(&px).unwrap();
        let d = (a.clone() - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "loaded = built");
        let n = l2_normalize(&a).unwrap().sqr().unwrap().sum(1).unwrap();
        for v in n.to_vec1::<f32>().unwrap() {
            assert!((v - 1.0).abs() < 1e-5);
        }
        // text: padding after EOS does not change the pooled output (causal mask)
        let ids =
            Tensor::new(&[[1u32, 5, 7, 49, 0, 0], [1, 5, 7, 49, 3, 9]], &Device::Cpu).unwrap();
        let t = m.text_features(&ids).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t[0].len(), 12);
        for (x, y) in t[0].iter().zip(&t[1]) {
            assert!((x - y).abs() < 1e-5);
        }
        assert_eq!(m.eos_position(&[1, 5, 49, 0]), 2);
    }

    #[test]
    fn fused_quick_gelu_matches_the_composed_form_and_its_gradient() {
        let x =
            candle_core::Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 9), &Device::Cpu).unwrap())
                .unwrap();
        let f = Act::QuickGelu.forward(x.as_tensor()).unwrap();
        let r = (x.as_tensor()
            * candle_nn::ops::sigmoid(&(x.as_tensor() * 1.702).unwrap()).unwrap())
        .unwrap();
        let d = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(d(&f, &r) < 1e-5);
        let w = Tensor::randn(0f32, 1.0, (4, 9), &Device::Cpu).unwrap();
        let gf = (&f * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&r * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            d(
                gf.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap()
            ) < 1e-4
        );
    }

    /// Prompt learning trains token embeddings through the frozen text tower: its gradient
    /// must be the true one (finite differences), through every fused op on the way.
    #[test]
    fn text_tower_gradient_matches_finite_differences() {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny_checkpoint(dir.path());
        let dev = Device::Cpu;
        let emb0 = (Tensor::randn(0f32, 1.0, (2, 6, 16), &dev).unwrap() * 0.5).unwrap();
        let emb = candle_core::Var::from_tensor(&emb0).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 12), &dev).unwrap();
        let eos = [3usize, 5];
        let loss = |e: &Tensor| -> Tensor {
            let z = l2_normalize(&m.text_features_from_embeddings(e, &eos).unwrap()).unwrap();
            (z * &w).unwrap().sum_all().unwrap()
        };
        let grads = loss(emb.as_tensor()).backward().unwrap();
        let g = grads
            .get(emb.as_tensor())
            .expect("a gradient reaches the embeddings")
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = emb0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let h = 1e-2f32;
        let mut checked = 0;
        for k in (0..base.len()).step_by(7) {
            let at = |d: f32| -> f32 {
                let mut v = base.clone();
                v[k] += d;
                let t = Tensor::from_vec(v, (2, 6, 16), &dev).unwrap();
                loss(&t).to_scalar::<f32>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g[k]).abs() <= 2e-3 + 3e-2 * fd.abs(),
                "coordinate {k}: autograd {} vs finite difference {fd}",
                g[k]
            );
            checked += 1;
        }
        // tokens after a row's EOS do not influence it (causal mask): zero gradient there
        let row1_after_eos = (6 - 1) * 16; // row 0, position 5 > eos 3
        assert!(g[row1_after_eos..row1_after_eos + 16]
            .iter()
            .all(|&v| v == 0.0));
        assert!(checked > 20);
    }

    #[test]
    fn embeddings_input_equals_ids_input() {
        let dir = tempfile::tempdir().unwrap();
        tiny_checkpoint(dir.path());
        let m = Clip::load(dir.path(), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 8, 49, 0]], &Device::Cpu).unwrap();
        let a = m.text_features(&ids).unwrap();
        let e = m.token_embeddings(&ids).unwrap();
        let b = m.text_features_from_embeddings(&e, &[2]).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn mismatched_or_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        tiny_checkpoint(dir.path());
        // a config that disagrees with the checkpoint
        let wrong = TINY.replace("\"hidden_size\": 16", "\"hidden_size\": 32");
        std::fs::write(dir.path().join("config.json"), wrong).unwrap();
        let e = Clip::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.safetensors: does not match") && e.contains("config.json"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = Clip::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.safetensors: missing"), "{e}");
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        let e = Clip::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("config.json: not a CLIP config"), "{e}");
    }
}
