//! Random-weight checkpoints in the Hugging Face layout (CLIP, DINOv2) and a word-level
//! tokenizer, for the tests, the benchmarks and `vlal tiny`: the real loading code runs on them
//! without a model hub.

use super::{clip, dinov2};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::Path;

/// A random-weight CLIP or DINOv2 checkpoint in the HF layout (config.json + model.safetensors)
/// for the end-to-end tests and the benchmarks; the model type is read from `config_json`. The
/// same `seed` writes the same weights.
pub fn write_random_checkpoint(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(config_json)?;
    let (vb, drawn) = SeededInit::builder(seed);
    if v.get("model_type").and_then(|t| t.as_str()) == Some("dinov2") {
        dinov2::Dinov2::new(vb, serde_json::from_str(config_json)?)?;
    } else {
        clip::Clip::new(vb, serde_json::from_str(config_json)?)?;
    }
    std::fs::write(dir.join("config.json"), config_json)?;
    candle_core::safetensors::save(&drawn.take(), dir.join("model.safetensors"))?;
    Ok(())
}

type Drawn =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, candle_core::Tensor>>>;

/// A variable builder that draws each tensor from its initialisation hint with a random stream
/// named by the seed and the tensor's name (candle's own initialisers draw from an unseeded
/// generator), and keeps what it drew.
struct SeededInit {
    seed: u64,
    drawn: Drawn,
}

impl SeededInit {
    /// A CPU f32 builder, and a handle on the tensors it draws (`take()` them when the model is
    /// built).
    fn builder(seed: u64) -> (VarBuilder<'static>, DrawnTensors) {
        let drawn = Drawn::default();
        let init = SeededInit {
            seed,
            drawn: drawn.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(init), DType::F32, Device::Cpu);
        (vb, DrawnTensors(drawn))
    }
}

/// The tensors a [`SeededInit`] builder drew.
struct DrawnTensors(Drawn);

impl DrawnTensors {
    fn take(&self) -> std::collections::HashMap<String, candle_core::Tensor> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        use candle_nn::init::{Init, NormalOrUniform};
        use rand::Rng;
        let mut drawn = self.drawn.lock().expect("not poisoned");
        if let Some(t) = drawn.get(name) {
            if t.shape() != &s {
                candle_core::bail!("{name}: asked for {s:?}, drawn as {:?}", t.shape())
            }
            return Ok(t.clone());
        }
        // Kaiming is a uniform or normal draw with a spread given by the shape (as candle has it)
        let h = match h {
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => Init::Uniform {
                        lo: -(3f64.sqrt()) * std,
                        up: 3f64.sqrt() * std,
                    },
                    NormalOrUniform::Normal => Init::Randn {
                        mean: 0.0,
                        stdev: std,
                    },
                }
            }
            h => h,
        };
        let mut r = crate::rng::stream(self.seed, name, 0);
        let n = s.elem_count();
        let v: Vec<f32> = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| r.random_range(lo..up) as f32).collect(),
            Init::Randn { mean, stdev } => {
                let d = rand_distr::Normal::new(mean, stdev)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                (0..n).map(|_| r.sample(d) as f32).collect()
            }
            Init::Kaiming { .. } => unreachable!("mapped above"),
        };
        let t = candle_core::Tensor::from_vec(v, s, dev)?.to_dtype(dtype)?;
        drawn.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: DType,
        _: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("{name}: a random checkpoint needs the tensor's shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A word-level `tokenizer.json` for a random CLIP: `<unk>` = 0, then `words` (lowercased, each
/// once, in order), then CLIP's `<|startoftext|>` and `<|endoftext|>` (last, so legacy argmax
/// pooling finds the EOS). Splits on whitespace and punctuation, lowercases. Returns the vocabulary
/// size (the checkpoint's `vocab_size`; its `eos_token_id` is one less).
pub fn write_word_tokenizer<S: AsRef<str>>(dir: &Path, words: &[S]) -> Result<usize> {
    use tokenizers::models::wordlevel::WordLevel;
    let mut vocab: Vec<(String, u32)> = vec![("<unk>".into(), 0)];
    let mut seen = std::collections::HashSet::from(["<unk>".to_string()]);
    let specials = ["<|startoftext|>", "<|endoftext|>"];
    for w in words
        .iter()
        .map(|w| w.as_ref().to_lowercase())
        .chain(specials.iter().map(|s| s.to_string()))
    {
        if seen.insert(w.clone()) {
            vocab.push((w, vocab.len() as u32));
        }
    }
    let n = vocab.len();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| anyhow::anyhow!("word-level tokenizer: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok.with_normalizer(Some(tokenizers::normalizers::Lowercase))
        .map_err(|e| anyhow::anyhow!("word-level tokenizer: {e}"))?;
    let path = dir.join("tokenizer.json");
    tok.save(&path, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(n)
}

/// A random-weight checkpoint in the HF layout for tests: writes `config_json` and the weights
/// `build` draws (seeded) into `dir`, and returns the built model.
#[cfg(test)]
pub(crate) fn random_checkpoint<T>(
    dir: &Path,
    config_json: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> T {
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    let (vb, drawn) = SeededInit::builder(0);
    let m = build(vb).unwrap();
    candle_core::safetensors::save(&drawn.take(), dir.join("model.safetensors")).unwrap();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn random_checkpoints_are_reproducible_and_follow_the_init_hints() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = r#"{"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 1,
  "num_attention_heads": 2, "image_size": 14, "patch_size": 7, "layerscale_value": 1.0}"#;
        let bytes = |name: &str, seed: u64| {
            let d = tmp.path().join(name);
            write_random_checkpoint(&d, cfg, seed).unwrap();
            std::fs::read(d.join("model.safetensors")).unwrap()
        };
        let (a, b, c) = (bytes("a", 3), bytes("b", 3), bytes("c", 4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let t =
            candle_core::safetensors::load(tmp.path().join("a/model.safetensors"), &Device::Cpu)
                .unwrap();
        let v = |n: &str| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // LayerNorm weights are ones, a linear layer's weights are spread around zero
        assert!(v("encoder.layer.0.norm1.weight").iter().all(|&x| x == 1.0));
        let w = v("encoder.layer.0.attention.attention.query.weight");
        assert!(w.iter().any(|&x| x > 0.0) && w.iter().any(|&x| x < 0.0));
    }
}
