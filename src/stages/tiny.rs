//! `vlal tiny`: a small offline world to try `extract` and the prompt trainer without downloads:
//! random-weight CLIP and DINOv2 checkpoints in the Hugging Face layout (the CLIP with a
//! word-level tokenizer over the class names and the prompt templates), a folder of generated
//! images with one colour and stripe pattern per class, and the class-name file. The weights are
//! random, so the features carry only what the pixels carry: this checks the machinery, it says
//! nothing about real CLIP.

use crate::models::{encoder::TEMPLATES, write_random_checkpoint, write_word_tokenizer};
use crate::{progress, rng};
use anyhow::{bail, Context, Result};
use rand::Rng;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct TinyArgs {
    /// Output folder: images/<class>/, tiny-clip/, tiny-dino/ and classes.txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes (at most 12).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[arg(long, default_value_t = 40)]
    pub per_class: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// More words for the tiny CLIP's tokenizer (a text file, split on whitespace and
    /// punctuation), e.g. the `words.txt` of a `vlal corpus` folder, so its text tower tells
    /// the corpus's captions apart.
    #[arg(long)]
    pub words: Option<PathBuf>,
}

/// Class names of the tiny world, each one token of its tokenizer.
pub const NAMES: [&str; 12] = [
    "apple", "boat", "cloud", "daisy", "eagle", "fox", "grape", "horse", "igloo", "jelly", "kite",
    "lemon",
];

pub fn run(a: &TinyArgs) -> Result<()> {
    if a.classes < 2 || a.classes > NAMES.len() || a.per_class == 0 {
        bail!(
            "--classes must be 2..={} and --per-class positive",
            NAMES.len()
        );
    }
    let names = &NAMES[..a.classes];
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let mut vocab: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    if let Some(w) = &a.words {
        let text =
            std::fs::read_to_string(w).with_context(|| format!("{}: cannot read", w.display()))?;
        vocab.extend(words_of(&text));
    }
    write_clip(&a.out.join("tiny-clip"), &vocab, a.seed)?;
    write_dino(&a.out.join("tiny-dino"), a.seed)?;
    let classes = a.out.join("classes.txt");
    std::fs::write(&classes, names.join("\n") + "\n")
        .with_context(|| format!("{}: cannot write", classes.display()))?;
    write_images(&a.out.join("images"), names, a.per_class, a.seed)?;
    progress::log(format!(
        "wrote {}: tiny-clip/, tiny-dino/, classes.txt and {} images in images/",
        a.out.display(),
        names.len() * a.per_class
    ));
    Ok(())
}

/// A random-weight CLIP (32-d projection, 2 + 2 layers of width 32, 32 px images) whose
/// tokenizer knows `names` and the words of the prompt templates.
pub fn write_clip<S: AsRef<str>>(dir: &Path, names: &[S], seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut words: Vec<String> = names.iter().map(|s| s.as_ref().to_string()).collect();
    for t in TEMPLATES {
        words.extend(words_of(t));
    }
    words.push(".".into());
    let vocab = write_word_tokenizer(dir, &words)?;
    let cfg = format!(
        r#"{{"model_type": "clip", "projection_dim": 32,
  "text_config": {{"vocab_size": {vocab}, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
    "eos_token_id": {}}},
  "vision_config": {{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}}}"#,
        vocab - 1
    );
    write_random_checkpoint(dir, &cfg, seed)?;
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}"#,
    )?;
    Ok(())
}

/// The words of `text`, split on whitespace and punctuation (as the word tokenizer splits).
pub fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A random-weight DINOv2 (width 32, 2 layers, 28 px crops of 32 px images).
pub fn write_dino(dir: &Path, seed: u64) -> Result<()> {
    let cfg = r#"{"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2,
  "num_attention_heads": 4, "image_size": 28, "patch_size": 7, "layerscale_value": 1.0}"#;
    write_random_checkpoint(dir, cfg, seed)?;
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}}"#,
    )?;
    Ok(())
}

/// A random-weight EfficientNet-Lite classifier (32 px images) whose classes are `labels`
/// (config.json's id2label): a classifier teacher.
pub fn write_lite_classifier(dir: &Path, labels: &[&str]) -> Result<()> {
    use crate::models::efficientnet_lite::random_tensors;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let t = random_tensors(labels.len(), &candle_core::Device::Cpu)?;
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), serde_json::Value::from(*l)))
        .collect();
    let cfg = serde_json::json!({"model_type": "efficientnet-lite", "image_size": 32,
        "id2label": id2label});
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

/// `root/<class>/<i>.png`: a class colour (hue spread over the classes) and stripe period,
/// with per-image brightness, phase, size and pixel noise.
fn write_images(root: &Path, names: &[&str], per_class: usize, seed: u64) -> Result<()> {
    let mut r = rng::stream(seed, "tiny-images", 0);
    for (c, name) in names.iter().enumerate() {
        let d = root.join(name);
        std::fs::create_dir_all(&d)?;
        let hue = c as f32 / names.len() as f32;
        let base = hsv(hue);
        let period = 3 + (c % 4) as u32 * 2;
        for i in 0..per_class {
            let (w, h) = (r.random_range(32..48u32), r.random_range(32..48u32));
            let bright: f32 = r.random_range(0.6..1.0);
            let phase = r.random_range(0..period);
            let noise: Vec<f32> = (0..w * h).map(|_| r.random_range(-40.0..40.0)).collect();
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let stripe = if ((x + y + phase) / period).is_multiple_of(2) {
                    1.0
                } else {
                    0.55
                };
                let n = noise[(y * w + x) as usize];
                image::Rgb(base.map(|v| (v * bright * stripe * 255.0 + n).clamp(0.0, 255.0) as u8))
            });
            let path = d.join(format!("{i:03}.png"));
            img.save(&path)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
    }
    Ok(())
}

/// A saturated RGB colour of hue h ∈ [0, 1).
fn hsv(h: f32) -> [f32; 3] {
    let k = |n: f32| {
        let k = (n + h * 6.0) % 6.0;
        1.0 - k.min(4.0 - k).clamp(0.0, 1.0)
    };
    [k(5.0), k(3.0), k(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hues_are_distinct_colours() {
        for (h, want) in [
            (0.0, [1.0, 0.0, 0.0]),
            (1.0 / 3.0, [0.0, 1.0, 0.0]),
            (2.0 / 3.0, [0.0, 0.0, 1.0]),
            (0.5, [0.0, 1.0, 1.0]),
        ] {
            let got = hsv(h);
            assert!(
                got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
                "{h}: {got:?}"
            );
        }
    }
}
