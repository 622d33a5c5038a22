//! The teacher's logits as the trainers use them: the cached zero-shot logits, or a CLAP few-shot
//! teacher re-fitted on the round's labels; optionally logit-adjusted (PCoreSet §D.4).

use crate::mat::{argmax, softmax_rows, Mat};
use crate::train::api::{affine, predict_chunked, run_epochs};
use crate::train::params::ClapCfg;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;

/// Logit adjustment l' = l − τ_LA·log π with the class prior π estimated on `logits`' rows
/// (the pool L ∪ U): `hard` = share of rows whose argmax is c, `soft` = mean probability.
/// π_c is floored at 1e-8 so a class nobody predicts gets a large finite boost.
pub fn logit_adjust(logits: &Mat, mode: &str, tau_la: f64) -> Result<Mat> {
    let c = logits.cols;
    let n = logits.rows.max(1) as f64;
    let mut prior = vec![0f64; c];
    match mode {
        "none" => return Ok(logits.clone()),
        "hard" => {
            for i in 0..logits.rows {
                prior[argmax(logits.row(i))] += 1.0 / n;
            }
        }
        "soft" => {
            let p = softmax_rows(logits, 1.0);
            for i in 0..p.rows {
                for (k, v) in p.row(i).iter().enumerate() {
                    prior[k] += *v as f64 / n;
                }
            }
        }
        other => bail!("unknown logit adjustment '{other}' (none, hard or soft)"),
    }
    let shift: Vec<f32> = prior
        .iter()
        .map(|p| (tau_la * p.max(1e-8).ln()) as f32)
        .collect();
    let mut out = logits.clone();
    for i in 0..out.rows {
        for (v, s) in out.row_mut(i).iter_mut().zip(&shift) {
            *v -= s;
        }
    }
    Ok(out)
}

/// CLAP (Silva-Rodriguez et al. 2024) on cached CLIP image features: a linear classifier
/// logits = z·w_c/τ initialised at the text prototypes W = [t_c], trained with
/// CE + Σ_c λ_c‖w_c − t_c‖², λ_c = mean zero-shot probability of class c on its labeled samples
/// (0 for a class without labels, fixed during training); full-batch SGD. Returns logits for
/// every row of `image`. With no labels the classifier stays the zero-shot one.
pub fn clap_logits(
    cfg: &ClapCfg,
    image: &Mat,
    prototypes: &Mat,
    tau: f32,
    labeled: &[usize],
    labels: &[u32],
    dev: &Device,
) -> Result<Mat> {
    let (c, d) = (prototypes.rows, prototypes.cols);
    if image.cols != d {
        bail!(
            "teacher image features are {}-d but prototypes are {d}-d",
            image.cols
        );
    }
    let t = prototypes.to_tensor(dev)?;
    let w = Var::from_tensor(&t)?;
    let zero = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, dev)?)?;
    if !labeled.is_empty() && cfg.epochs > 0 {
        // λ_c from the zero-shot probabilities of the labeled samples
        let zs = softmax_rows(&zero_shot(image, prototypes, tau, labeled), 1.0);
        let mut lam = vec![0f32; c];
        let mut cnt = vec![0f32; c];
        for (k, &y) in labels.iter().enumerate() {
            lam[y as usize] += zs.row(k)[y as usize];
            cnt[y as usize] += 1.0;
        }
        for (l, n) in lam.iter_mut().zip(&cnt) {
            *l = if *n > 0.0 { *l / n } else { 0.0 };
        }
        let lam = Tensor::from_vec(lam, (c, 1), dev)?;
        let x = image.select_rows(labeled).to_tensor(dev)?;
        let y = Tensor::from_slice(labels, labels.len(), dev)?;
        let mut opt = candle_nn::SGD::new(vec![w.clone()], cfg.lr)?;
        run_epochs(cfg.epochs, "clap", || {
            let logits = (affine(&x, &w, &zero)? / tau as f64)?;
            let ce = candle_nn::loss::cross_entropy(&logits, &y)?;
            let pen = (w.as_tensor() - &t)?
                .sqr()?
                .broadcast_mul(&lam)?
                .sum_all()?;
            let loss = (ce + pen)?;
            opt.backward_step(&loss)?;
            Ok((loss.to_scalar::<f32>()?, 1))
        })?;
    }
    let all: Vec<usize> = (0..image.rows).collect();
    predict_chunked(&image.select_rows(&all), dev, |z| {
        Ok((affine(z, &w, &zero)? / tau as f64)?)
    })
}

/// Zero-shot logits cos(z, t_c)/τ of the given rows.
pub fn zero_shot(image: &Mat, prototypes: &Mat, tau: f32, rows: &[usize]) -> Mat {
    let mut out = Mat::zeros(rows.len(), prototypes.rows);
    for (k, &i) in rows.iter().enumerate() {
        for c in 0..prototypes.rows {
            out.row_mut(k)[c] = crate::geometry::dot(image.row(i), prototypes.row(c)) / tau;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn hard_and_soft_logit_adjustment_on_a_tiny_case() {
        // 4 rows, 2 classes; argmax: class 0 three times, class 1 once → hard π = [.75, .25]
        let l = Mat::from_rows(&[
            vec![2.0, 0.0],
            vec![1.0, 0.0],
            vec![3.0, 1.0],
            vec![0.0, 1.0],
        ])
        .unwrap();
        let h = logit_adjust(&l, "hard", 1.0).unwrap();
        for i in 0..4 {
            assert!((h.row(i)[0] - (l.row(i)[0] - 0.75f32.ln())).abs() < 1e-6);
            assert!((h.row(i)[1] - (l.row(i)[1] - 0.25f32.ln())).abs() < 1e-6);
        }
        // the minority class gains relative to the majority by ln 3
        let gap = |m: &Mat| m.row(1)[1] - m.row(1)[0];
        assert!((gap(&h) - gap(&l) - 3f32.ln()).abs() < 1e-5);
        // soft: π = mean softmax; τ_LA scales the shift; τ_LA = 0 is the identity
        let p = softmax_rows(&l, 1.0);
        let pi0: f32 = (0..4).map(|i| p.row(i)[0]).sum::<f32>() / 4.0;
        let s = logit_adjust(&l, "soft", 0.5).unwrap();
        assert!((s.row(0)[0] - (2.0 - 0.5 * pi0.ln())).abs() < 1e-5);
        assert_eq!(logit_adjust(&l, "soft", 0.0).unwrap(), l);
        assert_eq!(logit_adjust(&l, "none", 1.0).unwrap(), l);
        assert!(logit_adjust(&l, "bogus", 1.0).is_err());
    }

    fn toy() -> (Mat, Mat, Vec<usize>) {
        let mut r = rng::stream(3, "clap", 0);
        let protos = Mat::from_rows(&[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]).unwrap();
        let mut img = Mat::zeros(40, 3);
        let mut truth = Vec::new();
        for i in 0..40 {
            let c = i % 2;
            truth.push(c);
            let nz = rng::uniform(3, 0.9, &mut r);
            // class 1 images lean towards prototype 0: the zero-shot teacher errs on many of them
            let base = if c == 0 {
                [1.0, 0.0, 0.5]
            } else {
                [0.7, 0.6, -0.5]
            };
            for k in 0..3 {
                img.row_mut(i)[k] = base[k] + 0.3 * nz[k];
            }
        }
        img.normalize_rows();
        (img, protos, truth)
    }

    #[test]
    fn clap_without_labels_is_the_zero_shot_classifier() {
        let (img, protos, _) = toy();
        let cfg = ClapCfg::default();
        let got = clap_logits(&cfg, &img, &protos, 0.01, &[], &[], &Device::Cpu).unwrap();
        let all: Vec<usize> = (0..img.rows).collect();
        let want = zero_shot(&img, &protos, 0.01, &all);
        for (a, b) in got.data.iter().zip(&want.data) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn clap_with_labels_improves_on_the_zero_shot_teacher() {
        let (img, protos, truth) = toy();
        let all: Vec<usize> = (0..img.rows).collect();
        let acc = |m: &Mat| {
            m.argmax_rows()
                .iter()
                .zip(&truth)
                .filter(|(a, b)| a == b)
                .count()
        };
        let zs = acc(&zero_shot(&img, &protos, 0.01, &all));
        let labeled: Vec<usize> = (0..8).collect();
        let labels: Vec<u32> = labeled.iter().map(|&i| truth[i] as u32).collect();
        let fitted = clap_logits(
            &ClapCfg::default(),
            &img,
            &protos,
            0.01,
            &labeled,
            &labels,
            &Device::Cpu,
        )
        .unwrap();
        assert!(
            acc(&fitted) > zs,
            "CLAP {} vs zero-shot {zs} of 40",
            acc(&fitted)
        );
    }
}
