//! SigLIP and SigLIP 2 image and text towers in the Hugging Face layout (`SiglipModel`,
//! `Siglip2Model`: `config.json` + `model.safetensors`), candle-transformers style: [`Config`],
//! [`Siglip::load`], and forwards that return the pooled embeddings; plus the checkpoint's own
//! `logit_scale` and `logit_bias`, since a sigmoid-trained model's logits are
//! exp(scale)·cos + bias (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023;
//! Tschannen et al., "SigLIP 2", 2025).
//!
//! The vision tower has no class token and no pre-norm; it pools with a multi-head attention
//! head over a learned probe. The text tower attends bidirectionally and pools the *last*
//! position, so prompts are padded to the full context ([`SiglipTokenizer`] does). SigLIP 2's
//! NaFlex checkpoints (`model_type` `siglip2`: patches through a linear layer, a position grid
//! resized to each image's aspect ratio) run here at their native square grid
//! (√num_patches patches a side), where the resize is the identity.

use super::clip::{encoder, Act, Layer, TextDims, TextStack, RANDN};
use super::layers::{LayerNorm, Linear, PatchEmbed};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

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
    pub projection_size: Option<usize>,
    pub pad_token_id: Option<u32>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: Act::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
            projection_size: None,
            pad_token_id: Some(1),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    /// SigLIP: the square input side. SigLIP 2 NaFlex has none (see `num_patches`).
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Act,
    pub layer_norm_eps: f64,
    pub vision_use_head: bool,
    /// SigLIP 2 NaFlex: the positions of the learned grid (√num_patches a side).
    pub num_patches: usize,
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
            patch_size: 16,
            hidden_act: Act::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
            vision_use_head: true,
            num_patches: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// `siglip` (SigLIP, and SigLIP 2 at a fixed resolution) or `siglip2` (NaFlex).
    pub model_type: String,
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let c: Config = super::layers::read_config(path, "SigLIP")?;
        if !matches!(c.model_type.as_str(), "siglip" | "siglip2") {
            bail!(
                "{}: model_type '{}' is not siglip or siglip2",
                path.display(),
                c.model_type
            );
        }
        let (t, v) = (&c.text_config, &c.vision_config);
        for (what, h, n) in [
            ("text", t.hidden_size, t.num_attention_heads),
            ("vision", v.hidden_size, v.num_attention_heads),
        ] {
            if n == 0 || h % n != 0 {
                bail!(
                    "{}: {what} hidden_size {h} is not divisible by {n} heads",
                    path.display()
                );
            }
        }
        if c.dim() != v.hidden_size {
            bail!(
                "{}: text projection_size {} differs from the vision hidden_size {}",
                path.display(),
                c.dim(),
                v.hidden_size
            );
        }
        if !v.vision_use_head {
            bail!(
                "{}: vision_use_head is false: the checkpoint has no pooled image embedding",
                path.display()
            );
        }
        let g = c.grid();
        if c.is_naflex() && g * g != v.num_patches {
            bail!(
                "{}: num_patches {} is not a square grid",
                path.display(),
                v.num_patches
            );
        }
        if v.patch_size == 0 || (!c.is_naflex() && v.image_size % v.patch_size != 0) {
            bail!(
                "{}: image_size {} is not a multiple of patch_size {}",
                path.display(),
                v.image_size,
                v.patch_size
            );
        }
        Ok(c)
    }

    pub fn is_naflex(&self) -> bool {
        self.model_type == "siglip2"
    }

    /// Patches a side.
    pub fn grid(&self) -> usize {
        let v = &self.vision_config;
        if self.is_naflex() {
            (v.num_patches as f64).sqrt().round() as usize
        } else {
            v.image_size / v.patch_size.max(1)
        }
    }

    /// The square input side in pixels.
    pub fn image_size(&self) -> usize {
        self.grid() * self.vision_config.patch_size
    }

    /// Dimension of both embeddings.
    pub fn dim(&self) -> usize {
        self.text_config
            .projection_size
            .unwrap_or(self.text_config.hidden_size)
    }
}

/// `torch.nn.MultiheadAttention` of one learned probe over the tokens, then a residual MLP.
struct PoolingHead {
    probe: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Act,
    heads: usize,
}

impl PoolingHead {
    fn new(vb: VarBuilder, c: &VisionConfig) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let w = vb.get_with_hints((3 * h, h), "attention.in_proj_weight", RANDN)?;
        let b = vb.get_with_hints(3 * h, "attention.in_proj_bias", RANDN)?;
        let part = |j: usize| -> candle_core::Result<Linear> {
            Linear::from_tensors(w.narrow(0, j * h, h)?, Some(b.narrow(0, j * h, h)?))
        };
        Ok(Self {
            probe: vb.get_with_hints((1, 1, h), "probe", RANDN)?,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out: Linear::load(h, h, true, vb.pp("attention.out_proj"))?,
            ln: LayerNorm::load(h, c.layer_norm_eps, vb.pp("layernorm"))?,
            fc1: Linear::load(h, c.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Linear::load(c.intermediate_size, h, true, vb.pp("mlp.fc2"))?,
            act: c.hidden_act,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let hd = h / self.heads;
        let heads = |t: Tensor, len: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, len, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let probe = self.probe.expand((b, 1, h))?.contiguous()?;
        let q = heads(self.q.forward(&probe)?, 1)?;
        let k = heads(self.k.forward(x)?, n)?;
        let v = heads(self.v.forward(x)?, n)?;
        let o = super::layers::attention(&q, &k, &v, (hd as f64).powf(-0.5), None)?
            .transpose(1, 2)?
            .reshape((b, 1, h))?;
        let o = self.out.forward(&o)?;
        let m = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln.forward(&o)?)?)?,
        )?;
        (o + m)?.i((.., 0, ..))
    }
}

/// The two towers, their pooling heads, and the logit scale and bias.
pub struct Siglip {
    pub config: Config,
    patch_embedding: PatchEmbed,
    vision_positions: Tensor,
    vision_layers: Vec<Layer>,
    post_ln: LayerNorm,
    head: PoolingHead,
    text: TextStack,
    text_head: Linear,
    /// exp(logit_scale): the checkpoint's inverse temperature.
    pub scale: f32,
    pub bias: f32,
    device: Device,
}

impl Siglip {
    pub fn new(vb: VarBuilder, config: Config) -> candle_core::Result<Siglip> {
        let (v, t) = (&config.vision_config, &config.text_config);
        let vv = vb.pp("vision_model");
        let tv = vb.pp("text_model");
        let g = config.grid();
        let patch_embedding = if config.is_naflex() {
            PatchEmbed::load_flat(
                v.num_channels,
                v.hidden_size,
                v.patch_size,
                vv.pp("embeddings.patch_embedding"),
            )?
        } else {
            PatchEmbed::load(
                v.num_channels,
                v.hidden_size,
                v.patch_size,
                true,
                vv.pp("embeddings.patch_embedding"),
            )?
        };
        let scalar = |name: &str| -> candle_core::Result<f32> {
            vb.get_with_hints(1, name, candle_nn::Init::Const(0.0))?
                .to_vec1::<f32>()
                .map(|v| v[0])
        };
        let proj = config.dim();
        Ok(Siglip {
            patch_embedding,
            vision_positions: vv.get_with_hints(
                (g * g, v.hidden_size),
                "embeddings.position_embedding.weight",
                RANDN,
            )?,
            vision_layers: encoder(
                vv.clone(),
                v.num_hidden_layers,
                v.hidden_size,
                v.intermediate_size,
                v.num_attention_heads,
                v.hidden_act,
                v.layer_norm_eps,
            )?,
            post_ln: LayerNorm::load(v.hidden_size, v.layer_norm_eps, vv.pp("post_layernorm"))?,
            head: PoolingHead::new(vv.pp("head"), v)?,
            text: TextStack::new(
                tv.clone(),
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
            )?,
            text_head: Linear::load(t.hidden_size, proj, true, tv.pp("head"))?,
            scale: scalar("logit_scale")?.exp(),
            bias: scalar("logit_bias")?,
            device: vb.device().clone(),
            config,
        })
    }

    /// Load `config.json` and `model.safetensors` from a Hugging Face folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Siglip> {
        let config = Config::from_file(&dir.join("config.json"))?;
        super::layers::load_weights(dir, device, "SigLIP", |vb| Siglip::new(vb, config))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pooled image embeddings (not normalised) of pixel batches (B, C, S, S) at
    /// [`Config::image_size`].
    pub fn image_features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (x, gh, gw) = self.patch_embedding.forward(pixels)?;
        let g = self.config.grid();
        if (gh, gw) != (g, g) {
            candle_core::bail!("SigLIP: a {gh}×{gw} patch grid, the model's is {g}×{g}");
        }
        let mut x = x.broadcast_add(&self.vision_positions)?;
        for l in &self.vision_layers {
            x = l.forward(&x, None)?;
        }
        self.head.forward(&self.post_ln.forward(&x)?)
    }

    /// Pooled text embeddings (not normalised) of token rows (B, L) padded to the context: the
    /// last position after bidirectional attention, through the head.
    pub fn text_features(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let x = self.text.forward(&self.text.token_embeddings(ids)?, None)?;
        let last = x.i((.., l - 1, ..))?;
        self.text_head.forward(&last)
    }
}

/// SigLIP's tokenizer from the checkpoint's `tokenizer.json` (the `tokenizers` library, as
/// transformers' fast tokenizer): special tokens as the file's post-processor adds them,
/// truncated and right-padded with the pad token to the text tower's full context — the
/// `padding="max_length"` the model was trained with.
pub struct SiglipTokenizer {
    tok: tokenizers::Tokenizer,
    pub context_length: usize,
    vocab: usize,
}

impl SiglipTokenizer {
    pub fn new(dir: &Path, config: &Config) -> Result<SiglipTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!(
                "{}: missing (a SigLIP teacher needs its tokenizer.json; transformers writes one \
                 with AutoTokenizer.from_pretrained(...).save_pretrained(folder))",
                path.display()
            );
        }
        let mut tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: not a tokenizer.json ({e})", path.display()))?;
        let t = &config.text_config;
        let len = t.max_position_embeddings;
        let (pad_id, pad_token) = match tok.token_to_id("<pad>") {
            Some(id) => (id, "<pad>".to_string()),
            None => {
                let id = t.pad_token_id.unwrap_or(0);
                (id, tok.id_to_token(id).unwrap_or_default())
            }
        };
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length: len,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        tok.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(len),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(SiglipTokenizer {
            tok,
            context_length: len,
            vocab: t.vocab_size,
        })
    }

    /// `context_length` ids of one prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self
            .tok
            .encode(text, true)
            .map_err(|e| anyhow!("cannot tokenize {text:?} ({e})"))?
            .get_ids()
            .to_vec();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            bail!(
                "the tokenizer gives id {bad}, beyond the text tower's vocab_size {}",
                self.vocab
            );
        }
        if ids.len() != self.context_length {
            bail!(
                "the tokenizer gave {} ids, not {}",
                ids.len(),
                self.context_length
            );
        }
        Ok(ids)
    }
}
