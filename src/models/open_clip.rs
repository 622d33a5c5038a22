//! OpenCLIP checkpoints in the `open_clip` layout, as the hub ships them for
//! `timm/vit_base_patch32_clip_224.laion400m_e32` or `laion/CLIP-ViT-g-14-…`
//! (`open_clip_config.json` + `open_clip_model.safetensors` or the PyTorch pickle
//! `open_clip_pytorch_model.bin`), read directly as a [`Clip`] (Ilharco et al., OpenCLIP, 2021;
//! Cherti et al., "Reproducible scaling laws for contrastive language-image learning", CVPR 2023).
//!
//! OpenCLIP's ViT/text transformer is CLIP's: [`Config::to_clip`] maps its `model_cfg` onto the
//! Hugging Face config and [`load`] renames the tensors (the fused `in_proj` split into q/k/v, the
//! `proj` matrices transposed into linear layers). The text tower pools at the largest token id
//! (`pool_type = "argmax"`, the end-of-text token), as open_clip does. Settings this reader does
//! not implement (layer scale, attentional pooling, timm or Hugging Face towers, …) are errors
//! naming the file and the key, never silently different embeddings.

use super::clip::{Act, Clip, TextConfig, VisionConfig};
use crate::preprocess::{Preprocess, CLIP_MEAN, CLIP_STD};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "open_clip_config.json";
/// The weight files of the layout, in the order they are looked for.
pub const WEIGHTS: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// `open_clip_config.json`: the model and its preprocessing.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub model_cfg: ModelCfg,
    #[serde(default)]
    pub preprocess_cfg: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ModelCfg {
    pub embed_dim: usize,
    #[serde(default)]
    pub quick_gelu: bool,
    pub vision_cfg: VisionCfg,
    pub text_cfg: TextCfg,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A side length given as `n` or `[n, n]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Side {
    One(usize),
    Two([usize; 2]),
}

impl Side {
    fn square(&self, path: &Path, key: &str) -> Result<usize> {
        match *self {
            Side::One(n) => Ok(n),
            Side::Two([a, b]) if a == b => Ok(a),
            _ => bail!("{}: vision_cfg.{key} is not square", path.display()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct VisionCfg {
    pub layers: usize,
    pub width: usize,
    #[serde(default = "head_width")]
    pub head_width: usize,
    #[serde(default = "mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "patch_size")]
    pub patch_size: Side,
    #[serde(default = "image_size")]
    pub image_size: Side,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TextCfg {
    #[serde(default = "context_length")]
    pub context_length: usize,
    #[serde(default = "vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "text_width")]
    pub width: usize,
    #[serde(default = "text_heads")]
    pub heads: usize,
    #[serde(default = "text_layers")]
    pub layers: usize,
    #[serde(default = "mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

// open_clip's dataclass defaults (CLIPVisionCfg, CLIPTextCfg)
fn head_width() -> usize {
    64
}
fn mlp_ratio() -> f64 {
    4.0
}
fn patch_size() -> Side {
    Side::One(16)
}
fn image_size() -> Side {
    Side::One(224)
}
fn context_length() -> usize {
    77
}
fn vocab_size() -> usize {
    49408
}
fn text_width() -> usize {
    512
}
fn text_heads() -> usize {
    8
}
fn text_layers() -> usize {
    12
}

/// Keys whose value must be open_clip's default for the architecture read here (`None`: must be
/// null or absent), and keys that do not change the embeddings at inference.
const VISION_FIXED: [(&str, Option<&str>); 14] = [
    ("ls_init_value", None),
    ("attentional_pool", Some("false")),
    ("no_ln_pre", Some("false")),
    ("pos_embed_type", Some("\"learnable\"")),
    ("final_ln_after_pool", Some("false")),
    ("pool_type", Some("\"tok\"")),
    ("act_kwargs", None),
    ("norm_kwargs", None),
    ("block_type", None),
    ("qk_norm", Some("false")),
    ("scaled_cosine_attn", Some("false")),
    ("timm_model_name", None),
    ("scale_heads", Some("false")),
    ("scale_fc", Some("false")),
];
const VISION_FREE: [&str; 13] = [
    "patch_dropout",
    "output_tokens",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "scale_attn_inner",
    "scale_attn",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "global_average_pool",
];
const TEXT_FIXED: [(&str, Option<&str>); 16] = [
    ("hf_tokenizer_name", None),
    ("tokenizer_mode", None),
    ("ls_init_value", None),
    ("embed_cls", Some("false")),
    ("no_causal_mask", Some("false")),
    ("final_ln_after_pool", Some("false")),
    ("pool_type", Some("\"argmax\"")),
    ("proj_bias", Some("false")),
    ("proj_type", Some("\"linear\"")),
    ("act_kwargs", None),
    ("norm_kwargs", None),
    ("block_type", None),
    ("qk_norm", Some("false")),
    ("scaled_cosine_attn", Some("false")),
    ("hf_model_name", None),
    ("scale_fc", Some("false")),
];
const TEXT_FREE: [&str; 9] = [
    "tokenizer_kwargs",
    "pad_id",
    "eos_id",
    "output_tokens",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "hf_model_pretrained",
    "hf_proj_type",
];
const MODEL_FIXED: [(&str, Option<&str>); 2] =
    [("custom_text", Some("false")), ("multimodal_cfg", None)];
const MODEL_FREE: [&str; 6] = [
    "init_logit_scale",
    "init_logit_bias",
    "nonscalar_logit_scale",
    "cast_dtype",
    "output_dict",
    "hf_pooler_type",
];

/// Fail on a key outside `fixed` ∪ `free`, or a `fixed` key away from its required value.
fn check(
    path: &Path,
    section: &str,
    other: &BTreeMap<String, Value>,
    fixed: &[(&str, Option<&str>)],
    free: &[&str],
) -> Result<()> {
    for (k, v) in other {
        if free.contains(&k.as_str()) {
            continue;
        }
        let Some((_, want)) = fixed.iter().find(|(f, _)| f == k) else {
            bail!(
                "{}: {section}.{k} is not a setting this OpenCLIP reader knows",
                path.display()
            );
        };
        let ok = match want {
            None => v.is_null() || v.as_object().is_some_and(|o| o.is_empty()),
            Some(w) => v.is_null() || *v == serde_json::from_str::<Value>(w).expect("literal"),
        };
        if !ok {
            bail!(
                "{}: {section}.{k} = {v} is not supported (vlal reads OpenCLIP's plain ViT and \
                 text transformer; required: {})",
                path.display(),
                want.unwrap_or("null")
            );
        }
    }
    Ok(())
}

impl Config {
    /// Parse and check `open_clip_config.json`.
    pub fn from_file(path: &Path) -> Result<Config> {
        let c: Config = super::layers::read_config(path, "OpenCLIP")?;
        let m = &c.model_cfg;
        check(path, "model_cfg", &m.other, &MODEL_FIXED, &MODEL_FREE)?;
        check(
            path,
            "vision_cfg",
            &m.vision_cfg.other,
            &VISION_FIXED,
            &VISION_FREE,
        )?;
        check(path, "text_cfg", &m.text_cfg.other, &TEXT_FIXED, &TEXT_FREE)?;
        let v = &m.vision_cfg;
        if v.head_width == 0 || v.width % v.head_width != 0 {
            bail!(
                "{}: vision_cfg.width {} is not a multiple of head_width {}",
                path.display(),
                v.width,
                v.head_width
            );
        }
        let t = &m.text_cfg;
        if t.heads == 0 || t.width % t.heads != 0 {
            bail!(
                "{}: text_cfg.width {} is not divisible by {} heads",
                path.display(),
                t.width,
                t.heads
            );
        }
        let (s, p) = (
            v.image_size.square(path, "image_size")?,
            v.patch_size.square(path, "patch_size")?,
        );
        if p == 0 || s % p != 0 {
            bail!(
                "{}: vision_cfg.image_size {s} is not a multiple of patch_size {p}",
                path.display()
            );
        }
        for key in ["resize_mode", "interpolation"] {
            let ok = match c.preprocess_cfg.get(key).and_then(Value::as_str) {
                None => true,
                Some(v) => {
                    v == if key == "resize_mode" {
                        "shortest"
                    } else {
                        "bicubic"
                    }
                }
            };
            if !ok {
                bail!(
                    "{}: preprocess_cfg.{key} = {} is not supported (shortest, bicubic)",
                    path.display(),
                    c.preprocess_cfg[key]
                );
            }
        }
        Ok(c)
    }

    /// The same network as a Hugging Face CLIP config (MLP width `int(width · mlp_ratio)`, as
    /// open_clip computes it; GELU unless `quick_gelu`; LayerNorm ε 1e-5; argmax pooling).
    pub fn to_clip(&self) -> super::clip::Config {
        let m = &self.model_cfg;
        let act = if m.quick_gelu {
            Act::QuickGelu
        } else {
            Act::Gelu
        };
        let (v, t) = (&m.vision_cfg, &m.text_cfg);
        let side = |s: &Side| match *s {
            Side::One(n) | Side::Two([n, _]) => n,
        };
        super::clip::Config {
            text_config: TextConfig {
                vocab_size: t.vocab_size,
                hidden_size: t.width,
                intermediate_size: (t.width as f64 * t.mlp_ratio) as usize,
                num_hidden_layers: t.layers,
                num_attention_heads: t.heads,
                max_position_embeddings: t.context_length,
                hidden_act: act,
                layer_norm_eps: 1e-5,
                eos_token_id: 2,
            },
            vision_config: VisionConfig {
                hidden_size: v.width,
                intermediate_size: (v.width as f64 * v.mlp_ratio) as usize,
                num_hidden_layers: v.layers,
                num_attention_heads: v.width / v.head_width,
                num_channels: 3,
                image_size: side(&v.image_size),
                patch_size: side(&v.patch_size),
                hidden_act: act,
                layer_norm_eps: 1e-5,
            },
            projection_dim: m.embed_dim,
        }
    }

    /// open_clip's eval transform: bicubic shortest side → centre crop at the image size, with
    /// `preprocess_cfg`'s mean and std (OpenAI's statistics by default).
    pub fn preprocess(&self, path: &Path) -> Result<Preprocess> {
        let stats = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            let Some(v) = self.preprocess_cfg.get(key).filter(|v| !v.is_null()) else {
                return Ok(default);
            };
            let a: Vec<f32> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64())
                        .map(|x| x as f32)
                        .collect()
                })
                .unwrap_or_default();
            match a.as_slice() {
                [x] => Ok([*x; 3]),
                [a, b, c] => Ok([*a, *b, *c]),
                _ => bail!(
                    "{}: preprocess_cfg.{key} must be 1 or 3 numbers",
                    path.display()
                ),
            }
        };
        let size = self.to_clip().vision_config.image_size as u32;
        let std = stats("std", CLIP_STD)?;
        if std.iter().any(|&s| s <= 0.0) {
            bail!("{}: preprocess_cfg.std must be positive", path.display());
        }
        Ok(Preprocess {
            mean: stats("mean", CLIP_MEAN)?,
            std,
            ..Preprocess::clip(size)
        })
    }
}

/// Whether `dir` holds an OpenCLIP checkpoint to read: its config, and no Hugging Face
/// vision–language `config.json` beside it (timm's hub repos also hold a timm `config.json` and
/// `model.safetensors` of the image tower alone; LAION's hold a full HF CLIP, read as such).
pub fn is_open_clip(dir: &Path) -> bool {
    dir.join(CONFIG).is_file() && !has_text_tower(&dir.join("config.json"))
}

/// Whether a `config.json` describes a model with a text tower (a `text_config`).
pub fn has_text_tower(config: &Path) -> bool {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("text_config").is_some())
}

/// The weight file of an OpenCLIP folder: safetensors first, else the PyTorch pickle.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    WEIGHTS
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{}: missing (an OpenCLIP folder needs {} or {})",
                dir.join(WEIGHTS[0]).display(),
                WEIGHTS[0],
                WEIGHTS[1]
            )
        })
}

/// The tensors of an OpenCLIP weight file, by open_clip's names, as f32 on the CPU.
fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let list: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "bin") {
        candle_core::pickle::read_all(path).map_err(|e| {
            anyhow!(
                "{}: not a readable PyTorch state dict ({e})",
                path.display()
            )
        })?
    } else {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| anyhow!("{}: not a readable safetensors file ({e})", path.display()))?
            .into_iter()
            .collect()
    };
    list.into_iter()
        .map(|(k, t)| {
            // a checkpoint saved from a DataParallel or a `model.` wrapper
            let k = k.strip_prefix("module.").unwrap_or(&k).to_string();
            Ok((k, t.to_dtype(DType::F32)?))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

type Tensors = HashMap<String, Tensor>;

/// Move `from` (if present) to `to`, through `f`.
fn take(
    src: &mut Tensors,
    out: &mut Tensors,
    from: &str,
    to: &str,
    f: impl Fn(Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<()> {
    if let Some(t) = src.remove(from) {
        out.insert(to.to_string(), f(t)?);
    }
    Ok(())
}

/// open_clip's tensor names → the Hugging Face CLIP names [`Clip::new`] reads; also returns the
/// names left over.
fn rename(
    mut src: Tensors,
    cfg: &super::clip::Config,
) -> candle_core::Result<(Tensors, Vec<String>)> {
    let mut out = HashMap::new();
    let (s, o) = (&mut src, &mut out);
    let id = Ok;
    let tr = |t: Tensor| t.t()?.contiguous();
    for (from, to) in [
        (
            "visual.class_embedding",
            "vision_model.embeddings.class_embedding",
        ),
        (
            "visual.conv1.weight",
            "vision_model.embeddings.patch_embedding.weight",
        ),
        (
            "visual.positional_embedding",
            "vision_model.embeddings.position_embedding.weight",
        ),
        (
            "token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ),
        (
            "positional_embedding",
            "text_model.embeddings.position_embedding.weight",
        ),
    ] {
        take(s, o, from, to, id)?;
    }
    for p in ["weight", "bias"] {
        for (from, to) in [
            ("visual.ln_pre", "vision_model.pre_layrnorm"),
            ("visual.ln_post", "vision_model.post_layernorm"),
            ("ln_final", "text_model.final_layer_norm"),
        ] {
            take(s, o, &format!("{from}.{p}"), &format!("{to}.{p}"), id)?;
        }
    }
    take(s, o, "visual.proj", "visual_projection.weight", tr)?;
    take(s, o, "text_projection", "text_projection.weight", tr)?;
    let (v, t) = (&cfg.vision_config, &cfg.text_config);
    let towers = [
        (
            "visual.transformer",
            "vision_model",
            v.num_hidden_layers,
            v.hidden_size,
        ),
        (
            "transformer",
            "text_model",
            t.num_hidden_layers,
            t.hidden_size,
        ),
    ];
    for (from, to, layers, h) in towers {
        for i in 0..layers {
            let f = format!("{from}.resblocks.{i}");
            let t = format!("{to}.encoder.layers.{i}");
            for p in ["weight", "bias"] {
                for (a, b) in [
                    ("ln_1", "layer_norm1"),
                    ("ln_2", "layer_norm2"),
                    ("attn.out_proj", "self_attn.out_proj"),
                    ("mlp.c_fc", "mlp.fc1"),
                    ("mlp.c_proj", "mlp.fc2"),
                ] {
                    take(s, o, &format!("{f}.{a}.{p}"), &format!("{t}.{b}.{p}"), id)?;
                }
                // the fused [q; k; v] projection
                if let Some(w) = s.remove(&format!("{f}.attn.in_proj_{p}")) {
                    for (j, qkv) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        let part = w.narrow(0, j * h, h)?.contiguous()?;
                        o.insert(format!("{t}.self_attn.{qkv}.{p}"), part);
                    }
                }
            }
        }
    }
    // what the towers do not use: the contrastive temperature (and bias), the causal mask buffer
    for k in ["logit_scale", "logit_bias", "attn_mask"] {
        s.remove(k);
    }
    let mut left: Vec<String> = src.into_keys().collect();
    left.sort();
    Ok((out, left))
}

/// Load an OpenCLIP folder as a [`Clip`]; a tensor the architecture does not use, or one it
/// lacks, is an error naming the weight file.
pub fn load(dir: &Path, device: &Device) -> Result<Clip> {
    load_with(dir, &Config::from_file(&dir.join(CONFIG))?, device)
}

/// [`load`] with the folder's config already read.
pub fn load_with(dir: &Path, config: &Config, device: &Device) -> Result<Clip> {
    let cfg_path = dir.join(CONFIG);
    let cfg = config.to_clip();
    let weights = weights_file(dir)?;
    let tensors = read_tensors(&weights)?;
    let (renamed, left) =
        rename(tensors, &cfg).map_err(|e| anyhow!("{}: {e}", weights.display()))?;
    if let Some(k) = left.first() {
        bail!(
            "{}: tensor '{k}' (and {} more) is not part of the ViT/text transformer {} describes",
            weights.display(),
            left.len() - 1,
            cfg_path.display()
        );
    }
    let renamed = renamed
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(renamed, DType::F32, device);
    Clip::new(vb, cfg).with_context(|| {
        format!(
            "{}: does not match {}",
            weights.display(),
            cfg_path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"model_cfg": {"embed_dim": 12, "quick_gelu": true,
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 16, "head_width": 4, "patch_size": 8},
      "text_cfg": {"context_length": 10, "vocab_size": 60, "width": 16, "heads": 4, "layers": 2}},
      "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}"#;

    #[test]
    fn the_config_maps_onto_clip_and_refuses_what_it_cannot_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(CONFIG);
        std::fs::write(&p, TINY).unwrap();
        let c = Config::from_file(&p).unwrap();
        let h = c.to_clip();
        assert_eq!(h.vision_config.num_attention_heads, 4);
        assert_eq!(h.vision_config.intermediate_size, 64);
        assert_eq!(h.text_config.max_position_embeddings, 10);
        assert_eq!(h.vision_config.hidden_act, Act::QuickGelu);
        assert_eq!(h.projection_dim, 12);
        let pre = c.preprocess(&p).unwrap();
        assert_eq!(
            (pre.resize, pre.crop, pre.mean, pre.std),
            (32, 32, [0.5; 3], [0.25; 3])
        );
        // ViT-g-14's MLP ratio gives open_clip's int(1408 · 4.3637) = 6144
        let g = TINY
            .replace(
                "\"head_width\": 4,",
                "\"head_width\": 4, \"mlp_ratio\": 4.3637,",
            )
            .replace("\"width\": 16, \"head", "\"width\": 1408, \"head");
        std::fs::write(&p, g).unwrap();
        assert_eq!(
            Config::from_file(&p)
                .unwrap()
                .to_clip()
                .vision_config
                .intermediate_size,
            6144
        );
        for (edit, says) in [
            (
                "\"layers\": 2, \"width\": 16, \"head_width\": 4",
                "vision_cfg.ls_init_value",
            ),
            ("\"embed_dim\": 12,", "model_cfg.custom_text"),
            ("\"context_length\": 10,", "text_cfg.pool_type"),
            ("\"vocab_size\": 60,", "text_cfg.bogus"),
        ] {
            let extra = match says {
                "vision_cfg.ls_init_value" => format!("{edit}, \"ls_init_value\": 1e-5"),
                "model_cfg.custom_text" => format!("{edit} \"custom_text\": true,"),
                "text_cfg.pool_type" => format!("{edit} \"pool_type\": \"last\","),
                _ => format!("{edit} \"bogus\": 1,"),
            };
            std::fs::write(&p, TINY.replace(edit, &extra)).unwrap();
            let e = Config::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(CONFIG), "{e}");
        }
        std::fs::write(
            &p,
            TINY.replace("\"std\"", "\"resize_mode\": \"squash\", \"std\""),
        )
        .unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("preprocess_cfg.resize_mode"), "{e}");
    }
}
