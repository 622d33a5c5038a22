//! Student heads fitted on cached features with candle autograd: the linear probe, DHO
//! dual-head distillation (plus its CE-only ablation and the CLAP-teacher variant), CoOp prompt
//! learning and contrastive tuning on the teacher's own features. Each file is one trainer
//! ([`Trainer`]) with its head ([`Model`]); the [`registry!`] below lists them. Every random
//! draw is seeded (see `rng`).

pub mod adamw;
pub mod api;
pub mod params;

pub use api::{device, for_blocks, Head, Model, Saved, TeacherSignal, TrainData, Trainer};
// the features' model is recorded by the cache that holds them
pub use crate::cache::FeatureModel;

use anyhow::{bail, Result};
use candle_core::Device;
use params::TrainParams;
use std::path::Path;

/// One registered trainer: its name and its module's constructor.
pub struct Entry {
    pub name: &'static str,
    pub build: fn(&'static str, &TrainParams) -> Result<Box<dyn Trainer>>,
}

/// A head kind a saved file can hold, and its loader.
pub struct HeadKind {
    pub kind: &'static str,
    pub load: fn(&Saved) -> Result<Box<dyn Model>>,
}

/// `module ["name", …],` per line: declares the module, registers each trainer name with the
/// module's `build` and the module's head kind (`HEAD`, loaded by `load_head`).
macro_rules! registry {
    ($($module:ident [$($name:literal),+ $(,)?]),+ $(,)?) => {
        $(pub mod $module;)+
        /// Every trainer, in the order `names()` lists them.
        pub static REGISTRY: &[Entry] = &[
            $($(Entry { name: $name, build: $module::build },)+)+
        ];
        /// Every head kind.
        pub static HEADS: &[HeadKind] = &[
            $(HeadKind { kind: $module::HEAD, load: $module::load_head },)+
        ];
    };
}

registry! {
    linear ["linear"],
    dho ["dho", "dho-clap", "ce"],
    coop ["coop"],
    ct ["ct"],
}

/// The registered trainer names, in registry order.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|e| e.name)
}

/// The trainer `name` with the settings `p` (checked).
pub fn by_name(name: &str, p: &TrainParams) -> Result<Box<dyn Trainer>> {
    let Some(e) = REGISTRY.iter().find(|e| e.name == name) else {
        bail!(
            "unknown trainer '{name}' (known: {})",
            names().collect::<Vec<_>>().join(", ")
        );
    };
    (e.build)(e.name, p)
}

impl Head {
    /// Load a head written by [`Head::save`]: the kind in its metadata picks the loader (files
    /// from before the kind was recorded: the kind their tensor names show).
    pub fn load(path: &Path, dev: &Device) -> Result<Head> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", path.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a readable head ({e:?})", path.display()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, dev)
            .map_err(|e| anyhow::anyhow!("{}: not a readable head ({e})", path.display()))?;
        let saved = Saved { path, tensors };
        let recorded = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(api::KIND_KEY).cloned());
        let kind = match recorded {
            Some(k) => k,
            None if saved.has("ct.text") => "contrastive".into(),
            None if saved.has("prompt.text") => "prompt".into(),
            None if saved.has("linear.weight") => "linear".into(),
            None => "dual".into(),
        };
        let Some(h) = HEADS.iter().find(|h| h.kind == kind) else {
            bail!(
                "{}: unknown head kind '{kind}' (known: {})",
                path.display(),
                HEADS.iter().map(|h| h.kind).collect::<Vec<_>>().join(", ")
            );
        };
        Ok(Head((h.load)(&saved)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::Mat;
    use crate::rng;

    fn toy() -> (Mat, Vec<usize>, Vec<u32>, Mat) {
        let mut r = rng::stream(4, "head", 0);
        let f = Mat::new(30, 5, rng::uniform(150, 1.0, &mut r)).unwrap();
        let t = Mat::new(30, 3, rng::uniform(90, 10.0, &mut r)).unwrap();
        let labeled: Vec<usize> = (0..9).collect();
        let labels: Vec<u32> = labeled.iter().map(|&i| (i % 3) as u32).collect();
        (f, labeled, labels, t)
    }

    /// ∇_h(−log p_y) against central finite differences.
    fn check_input_grad(head: &Head, e: &Mat, trainer: &str) {
        let y: Vec<u32> = (0..e.rows as u32).map(|i| i % 3).collect();
        let g = head.input_grad(e, &y).unwrap();
        let nll = |m: &Mat, i: usize| -> f64 {
            let p = head.predict_embedded(m).unwrap();
            -(p.row(i)[y[i] as usize] as f64).ln()
        };
        for (i, j) in [(0usize, 0usize), (4, 3), (17, 2)] {
            let h = 1e-2f32;
            let mut a = e.clone();
            a.row_mut(i)[j] += h;
            let mut b = e.clone();
            b.row_mut(i)[j] -= h;
            let fd = (nll(&a, i) - nll(&b, i)) / (2.0 * h as f64);
            let an = g.row(i)[j] as f64;
            assert!(
                (fd - an).abs() < 2e-3 + 2e-2 * an.abs(),
                "{trainer}: fd {fd} vs {an}"
            );
        }
    }

    #[test]
    fn heads_round_trip_through_safetensors() {
        let (f, l, y, t) = toy();
        let mut p = params::TrainParams::default();
        p.linear.epochs = 5;
        p.dho.epochs = 5;
        p.dho.alpha = 0.3;
        let dir = tempfile::tempdir().unwrap();
        for trainer in ["linear", "dho", "ce"] {
            let data = TrainData {
                features: &f,
                labeled: &l,
                labels: &y,
                n_classes: 3,
                teacher: Some((&t, 0.01)),
                class_names: &[],
                feature_model: &FeatureModel::default(),
                prototypes: None,
                validation: None,
            };
            let (head, _) = by_name(trainer, &p)
                .unwrap()
                .fit(&data, &mut rng::stream(0, "t", 0), &Device::Cpu)
                .unwrap();
            let path = dir.path().join(format!("{trainer}.safetensors"));
            head.save(&path).unwrap();
            let back = Head::load(&path, &Device::Cpu).unwrap();
            assert_eq!(back.kind(), head.kind());
            // a file from before the kind was recorded loads by its tensor names
            let old = dir.path().join(format!("{trainer}-old.safetensors"));
            candle_core::safetensors::save(&head.0.tensors().unwrap(), &old).unwrap();
            assert_eq!(Head::load(&old, &Device::Cpu).unwrap().kind(), head.kind());
            assert_eq!(
                head.predict(&f).unwrap(),
                back.predict(&f).unwrap(),
                "{trainer}"
            );
            // embed → predict_embedded is predict
            let e = back.embed(&f).unwrap();
            let pe = back.predict_embedded(&e).unwrap();
            let pd = back.predict(&f).unwrap();
            assert!(pe
                .data
                .iter()
                .zip(&pd.data)
                .all(|(a, b)| (a - b).abs() < 1e-6));
            check_input_grad(&back, &e, trainer);
            let (h, a) = back.grad_factors(&f).unwrap();
            assert_eq!(h.rows, 30);
            // one block of C for a single head, two for the dual head
            assert_eq!(a.cols, if trainer == "dho" { 6 } else { 3 }, "{trainer}");
            // a = p − e_ŷ sums to 0 per head block
            for i in 0..a.rows {
                let s: f32 = a.row(i)[..3].iter().sum();
                assert!(s.abs() < 1e-5);
            }
            // in blocks over rows (more than one block, out of order): the same values as one
            // call on the copied rows
            let big = Mat::new(
                80_000,
                5,
                (0..400_000u64)
                    .map(|v| ((v * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect(),
            )
            .unwrap();
            let rows: Vec<usize> = (0..big.rows).rev().filter(|i| i % 7 != 0).collect();
            let x = big.select_rows(&rows);
            assert_eq!(
                back.grad_factors_of(&big, &rows).unwrap(),
                back.grad_factors(&x).unwrap()
            );
            assert_eq!(back.embed_of(&big, &rows).unwrap(), back.embed(&x).unwrap());
            assert_eq!(back.embed_of(&big, &[]).unwrap().rows, 0);
            let mut blocks = Vec::new();
            for_blocks(&big, &rows, |_, b| {
                blocks.extend(back.predict(b)?.data);
                Ok(())
            })
            .unwrap();
            assert_eq!(blocks, back.predict(&x).unwrap().data);
        }
    }
}
