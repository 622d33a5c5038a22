//! Model definitions on candle, one file per model in the candle-transformers style (`Config`,
//! `load`, forwards), reading checkpoints in the Hugging Face layout.

pub mod clip;
pub mod clip_tokenizer;
pub mod dinov2;
pub mod encoder;
pub mod hub;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::Path;

/// Parse a Hugging Face `config.json` as `C` (`what` names the model in the error).
pub(crate) fn read_config<C: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<C> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the model config", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not a {what} config ({e})", path.display()))
}

/// Build a model from `dir/model.safetensors` (memory-mapped, f32): a missing file, a missing
/// tensor or a shape that disagrees with `dir/config.json` is an error naming both files.
pub(crate) fn load_weights<T>(
    dir: &Path,
    device: &Device,
    what: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        bail!("{}: missing (the {what} weights)", weights.display());
    }
    // SAFETY: the file is memory-mapped read-only for the model's lifetime; it is a cache file
    // this process does not modify.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
        .map_err(|e| anyhow!("{}: {e}", weights.display()))?;
    build(vb).map_err(|e| {
        anyhow!(
            "{}: does not match {} ({e})",
            weights.display(),
            dir.join("config.json").display()
        )
    })
}

/// A random-weight CLIP or DINOv2 checkpoint in the HF layout (config.json + model.safetensors)
/// for the end-to-end tests and the benchmarks; the model type is read from `config_json`.
pub fn write_random_checkpoint(dir: &Path, config_json: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(config_json)?;
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    if v.get("model_type").and_then(|t| t.as_str()) == Some("dinov2") {
        dinov2::Dinov2::new(vb, serde_json::from_str(config_json)?)?;
    } else {
        clip::Clip::new(vb, serde_json::from_str(config_json)?)?;
    }
    std::fs::write(dir.join("config.json"), config_json)?;
    vm.save(dir.join("model.safetensors"))?;
    Ok(())
}

/// A random-weight checkpoint in the HF layout for tests: writes `config_json` and the weights
/// `build` creates through a `VarMap` into `dir`, and returns the built model.
#[cfg(test)]
pub(crate) fn random_checkpoint<T>(
    dir: &Path,
    config_json: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> T {
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    let vm = candle_nn::VarMap::new();
    let m = build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    vm.save(dir.join("model.safetensors")).unwrap();
    m
}
