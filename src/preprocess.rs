//! Image decoding and model preprocessing: decode with the `image` crate (JPEG, PNG), grey or
//! alpha images to 3 channels, bicubic resize of the shortest side, centre crop, scale to [0, 1]
//! and normalise per channel — OpenAI CLIP's transform (224, CLIP mean/std) and DINOv2's
//! (256 → 224, ImageNet mean/std) — or SigLIP's bilinear resize of both sides. Output: one CHW f32 vector per image.

use anyhow::{anyhow, bail, Result};
use image::imageops::FilterType;
use image::RgbImage;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The shortest side is resized to this many pixels (the long side keeps the aspect ratio).
    pub resize: u32,
    /// Centre crop (square).
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Resize both sides to `resize` (no crop), ignoring the aspect ratio: SigLIP's processor
    /// (`size = {height, width}`).
    pub squash: bool,
    /// Bilinear resampling (`resample = 2`, SigLIP 2's) instead of bicubic (`3`, CLIP's).
    pub bilinear: bool,
}

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Preprocess {
    /// CLIP at `size` px (224 for ViT-B/32, B/16, L/14).
    pub fn clip(size: u32) -> Self {
        Self {
            resize: size,
            crop: size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            squash: false,
            bilinear: false,
        }
    }

    /// DINOv2's evaluation transform: shortest side 256, centre crop 224, ImageNet statistics.
    pub fn dinov2() -> Self {
        Self {
            resize: 256,
            crop: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            squash: false,
            bilinear: false,
        }
    }

    /// SigLIP's transform: bilinear resize to `size` × `size`, mean and std 0.5.
    pub fn siglip(size: u32) -> Self {
        Self {
            resize: size,
            crop: size,
            mean: [0.5; 3],
            std: [0.5; 3],
            squash: true,
            bilinear: true,
        }
    }

    /// The transform a Hugging Face `preprocessor_config.json` describes (`size` as an int,
    /// `{"shortest_edge": n}` or `{"height", "width"}`; `crop_size` likewise; `image_mean`,
    /// `image_std`), on top of `default` for what it leaves out; `default` when there is no file.
    pub fn from_hf(path: &Path, default: Preprocess) -> Result<Preprocess> {
        if !path.exists() {
            return Ok(default);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read ({e})", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not JSON ({e})", path.display()))?;
        let side = |key: &str| -> Result<Option<u32>> {
            let Some(s) = v.get(key).filter(|s| !s.is_null()) else {
                return Ok(None);
            };
            let n = s
                .as_u64()
                .or_else(|| s.get("shortest_edge").and_then(|x| x.as_u64()))
                .or_else(|| {
                    let (h, w) = (s.get("height")?.as_u64()?, s.get("width")?.as_u64()?);
                    (h == w).then_some(h)
                });
            match n {
                Some(n) if n > 0 => Ok(Some(n as u32)),
                _ => bail!(
                    "{}: {key} {s} is not a square size or a shortest edge",
                    path.display()
                ),
            }
        };
        let stats = |key: &str| -> Result<Option<[f32; 3]>> {
            let Some(s) = v.get(key).filter(|s| !s.is_null()) else {
                return Ok(None);
            };
            match s
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>())
            {
                Some(a) if a.len() == 3 => Ok(Some([a[0] as f32, a[1] as f32, a[2] as f32])),
                _ => bail!("{}: {key} must be three numbers", path.display()),
            }
        };
        let mut p = default;
        if let Some(n) = side("size")? {
            p.resize = n;
        }
        match (
            v.get("do_center_crop").and_then(|b| b.as_bool()),
            side("crop_size")?,
        ) {
            (Some(false), _) => p.crop = p.resize,
            (_, Some(n)) => p.crop = n,
            _ => {}
        }
        if p.squash {
            p.crop = p.resize;
        }
        match v
            .get("resample")
            .filter(|r| !r.is_null())
            .map(|r| r.as_u64())
        {
            None => {}
            Some(Some(2)) => p.bilinear = true,
            Some(Some(3)) => p.bilinear = false,
            Some(_) => bail!(
                "{}: resample {} is not supported (2 bilinear, 3 bicubic)",
                path.display(),
                v["resample"]
            ),
        }
        if p.crop > p.resize {
            bail!(
                "{}: crop {} is larger than the resized side {}",
                path.display(),
                p.crop,
                p.resize
            );
        }
        if let Some(m) = stats("image_mean")? {
            p.mean = m;
        }
        if let Some(s) = stats("image_std")? {
            if s.iter().any(|&x| x <= 0.0) {
                bail!("{}: image_std must be positive", path.display());
            }
            p.std = s;
        }
        Ok(p)
    }

    /// A short description for cache metadata.
    pub fn describe(&self) -> String {
        let filter = if self.bilinear { "bilinear" } else { "bicubic" };
        if self.squash {
            return format!(
                "{filter} resize to {0}×{0} → /255 → mean {1:?} std {2:?}",
                self.resize, self.mean, self.std
            );
        }
        format!(
            "{filter} shortest side {} → centre crop {} → /255 → mean {:?} std {:?}",
            self.resize, self.crop, self.mean, self.std
        )
    }

    /// The size after resizing the shortest side (torchvision's Resize(int): short side →
    /// resize, long side → int(resize · long / short)).
    fn resized(&self, w: u32, h: u32) -> (u64, u64) {
        if self.squash {
            return (self.resize as u64, self.resize as u64);
        }
        let short = w.min(h).max(1) as u64;
        let scale = |v: u32| {
            if v as u64 == short {
                self.resize as u64
            } else {
                self.resize as u64 * v as u64 / short
            }
        };
        if w <= h {
            (self.resize as u64, scale(h))
        } else {
            (scale(w), self.resize as u64)
        }
    }

    /// Whether an image of `w × h` px can be preprocessed within bounded memory: resizing must
    /// not make more than [`MAX_RESIZED_PIXELS`] (a 1 × 200 000 px strip resized to a 224-px
    /// short side would need 30 GB). The error says why, for a reject or an error line.
    pub fn check(&self, w: u32, h: u32) -> Result<()> {
        let (nw, nh) = self.resized(w, h);
        if w == 0 || h == 0 {
            bail!("an empty image ({w}×{h} px)");
        }
        if nw * nh > MAX_RESIZED_PIXELS {
            bail!(
                "a {w}×{h} px image: resized to a {}-px short side it would be {nw}×{nh} px, \
                 above the limit of {} Mpx (an extreme aspect ratio)",
                self.resize,
                MAX_RESIZED_PIXELS >> 20
            );
        }
        Ok(())
    }

    /// CHW floats (3 × crop × crop) of a decoded image (one that passes [`Preprocess::check`]).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let (nw, nh) = self.resized(w, h);
        let (nw, nh) = (nw as u32, nh as u32);
        let filter = if self.bilinear {
            FilterType::Triangle
        } else {
            FilterType::CatmullRom
        };
        let r = image::imageops::resize(img, nw, nh, filter);
        // torchvision's CenterCrop: offsets round((size − crop) / 2), ties to even
        let off = |n: u32| {
            ((n as f64 - self.crop as f64) / 2.0)
                .round_ties_even()
                .max(0.0) as u32
        };
        let (x0, y0) = (off(nw), off(nh));
        let c = self.crop as usize;
        let mut out = vec![0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let px = r.get_pixel((x0 + x as u32).min(nw - 1), (y0 + y as u32).min(nh - 1));
                for ch in 0..3 {
                    out[ch * c * c + y * c + x] =
                        (px[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }
}

/// Decode an image file to RGB (grey, grey+alpha and RGBA become 3 channels); an unreadable or
/// corrupt file is an error naming it.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| anyhow!("{}: cannot open ({e})", path.display()))?
        .with_guessed_format()
        .map_err(|e| anyhow!("{}: cannot read ({e})", path.display()))?
        .decode()
        .map_err(|e| anyhow!("{}: not a decodable image ({e})", path.display()))?;
    Ok(img.to_rgb8())
}

/// The most pixels an image may have after resizing (32 Mi px, 96 MiB as RGB).
pub const MAX_RESIZED_PIXELS: u64 = 1 << 25;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_crop_offsets_and_grey_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        // a grey 40×20 image whose left half is black and right half white
        let g =
            image::GrayImage::from_fn(40, 20, |x, _| image::Luma([if x < 20 { 0 } else { 255 }]));
        let p = dir.path().join("g.png");
        g.save(&p).unwrap();
        let rgb = load_rgb(&p).unwrap();
        assert_eq!(rgb.dimensions(), (40, 20));
        let pre = Preprocess {
            resize: 10,
            crop: 10,
            mean: [0.0; 3],
            std: [1.0; 3],
            squash: false,
            bilinear: false,
        };
        // 40×20 → 20×10, crop the middle 10×10: left half 0, right half 1, all channels equal
        let v = pre.apply(&rgb);
        assert_eq!(v.len(), 300);
        for ch in 0..3 {
            assert!(v[ch * 100] < 0.05 && v[ch * 100 + 9] > 0.95);
        }
        assert_eq!(&v[..100], &v[100..200]);
        let e = load_rgb(&dir.path().join("nope.jpg"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope.jpg: cannot open"), "{e}");
        std::fs::write(dir.path().join("bad.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
        let e = load_rgb(&dir.path().join("bad.png"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad.png: not a decodable image"), "{e}");
    }

    #[test]
    fn siglip_squashes_both_sides_without_a_crop() {
        // 40×20: left half black, right half white; squashed to 10×10 both halves stay
        let g =
            image::RgbImage::from_fn(40, 20, |x, _| image::Rgb([if x < 20 { 0 } else { 255 }; 3]));
        let mut pre = Preprocess::siglip(10);
        pre.mean = [0.0; 3];
        pre.std = [1.0; 3];
        assert!(pre.check(40, 20).is_ok());
        let v = pre.apply(&g);
        assert_eq!(v.len(), 300);
        assert!(
            v[0] < 0.05 && v[4] < 0.2 && v[5] > 0.8 && v[9] > 0.95,
            "{:?}",
            &v[..10]
        );
        assert!(pre.describe().starts_with("bilinear resize to 10×10"));
        // SigLIP's hub file: size {height, width}, no crop keys
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preprocessor_config.json");
        std::fs::write(
            &p,
            r#"{"do_resize": true, "size": {"height": 16, "width": 16},
          "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
        )
        .unwrap();
        assert_eq!(
            Preprocess::from_hf(&p, Preprocess::siglip(224)).unwrap(),
            Preprocess::siglip(16)
        );
        // SigLIP (v1) asks for bicubic; other filters are refused
        std::fs::write(
            &p,
            r#"{"size": {"height": 16, "width": 16}, "resample": 3}"#,
        )
        .unwrap();
        let bicubic = Preprocess::from_hf(&p, Preprocess::siglip(224)).unwrap();
        assert!(!bicubic.bilinear && bicubic.describe().starts_with("bicubic resize to 16×16"));
        std::fs::write(&p, r#"{"resample": 0}"#).unwrap();
        let e = Preprocess::from_hf(&p, Preprocess::siglip(224))
            .unwrap_err()
            .to_string();
        assert!(e.contains("resample 0 is not supported"), "{e}");
    }

    #[test]
    fn reads_hf_preprocessor_configs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preprocessor_config.json");
        // absent: the default
        assert_eq!(
            Preprocess::from_hf(&p, Preprocess::dinov2()).unwrap(),
            Preprocess::dinov2()
        );
        // DINOv2's hub file
        std::fs::write(&p, r#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
          "do_center_crop": true, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#).unwrap();
        assert_eq!(
            Preprocess::from_hf(&p, Preprocess::clip(224)).unwrap(),
            Preprocess::dinov2()
        );
        // CLIP's older ints
        std::fs::write(
            &p,
            r#"{"size": 32, "crop_size": 32, "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.2613026, 0.2757771]}"#,
        )
        .unwrap();
        assert_eq!(
            Preprocess::from_hf(&p, Preprocess::dinov2()).unwrap(),
            Preprocess::clip(32)
        );
        for bad in [
            r#"{"size": {"height": 3, "width": 4}}"#,
            r#"{"image_std": [1, 0, 1]}"#,
            r#"{"size": 10, "crop_size": 20}"#,
            "nope",
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = Preprocess::from_hf(&p, Preprocess::dinov2())
                .unwrap_err()
                .to_string();
            assert!(e.contains("preprocessor_config.json:"), "{e}");
        }
    }
}
