//! `vlal synth`: a generated example cache — Gaussian classes in a low-dimensional latent space,
//! embedded into a student feature space and, through a noisier view, into a teacher space with
//! class prototypes and zero-shot logits cos/τ. It has exactly the layout `extract` writes, so
//! every later stage runs on it unchanged.

use crate::cache::{classes_path, embeddings_path, logits_path, manifest_path, prototypes_path};
use crate::mat::Mat;
use crate::schema::Table;
use crate::{progress, rng, table, TOOL_VERSION};
use anyhow::{bail, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct SynthArgs {
    /// Output cache folder (e.g. data/synth).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Student feature dimension.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Teacher embedding dimension.
    #[arg(long, default_value_t = 32)]
    pub teacher_dim: usize,
    /// Latent dimension of the class structure.
    #[arg(long, default_value_t = 16)]
    pub latent: usize,
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    #[arg(long, default_value_t = 200)]
    pub calib: usize,
    #[arg(long, default_value_t = 1000)]
    pub test: usize,
    /// Distance scale between class means (latent noise has unit variance).
    #[arg(long, default_value_t = 0.8)]
    pub separation: f32,
    /// Extra latent noise of the teacher's view (higher = weaker teacher).
    #[arg(long, default_value_t = 1.0)]
    pub teacher_noise: f32,
    /// Teacher temperature τ of the cached logits.
    #[arg(long, default_value_t = 0.01)]
    pub tau: f32,
    /// Ratio of the most to the least frequent class in the train split (1 = balanced).
    #[arg(long, default_value_t = 1.0)]
    pub imbalance: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub const STUDENT: &str = "synthetic-student@v1";
pub const TEACHER: &str = "synthetic-teacher@v1";

fn normal(n: usize, r: &mut rng::VRng) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(r)).collect()
}

/// rows × k latent → rows × d through `proj` (d × k), plus isotropic noise of norm ≈ `eps`, normalised.
fn embed(lat: &Mat, proj: &Mat, eps: f32, r: &mut rng::VRng) -> Mat {
    let d = proj.rows;
    let mut out = Mat::zeros(lat.rows, d);
    let noise = normal(lat.rows * d, r);
    let s = eps / (d as f32).sqrt();
    for i in 0..lat.rows {
        let x = lat.row(i);
        let o = out.row_mut(i);
        for (j, v) in o.iter_mut().enumerate() {
            *v = crate::geometry::dot(proj.row(j), x) + s * noise[i * d + j];
        }
    }
    out.normalize_rows();
    out
}

pub fn run(a: &SynthArgs) -> Result<()> {
    if a.classes < 2
        || a.dim == 0
        || a.teacher_dim == 0
        || a.latent == 0
        || a.train == 0
        || a.test == 0
    {
        bail!("synth: need ≥ 2 classes and non-zero dimensions and split sizes");
    }
    let (c, k) = (a.classes, a.latent);
    let mut r = rng::stream(a.seed, "synth", 0);
    let means = Mat::new(
        c,
        k,
        normal(c * k, &mut r)
            .iter()
            .map(|v| v * a.separation)
            .collect(),
    )?;
    let proj_s = Mat::new(a.dim, k, normal(a.dim * k, &mut r))?;
    let proj_t = Mat::new(a.teacher_dim, k, normal(a.teacher_dim * k, &mut r))?;
    // class frequencies of the train split: geometric from 1 down to 1/imbalance
    let w: Vec<f64> = (0..c)
        .map(|i| (a.imbalance as f64).powf(-(i as f64) / (c - 1) as f64))
        .collect();
    let wsum: f64 = w.iter().sum();

    let mut ids = Vec::new();
    let mut splits = Vec::new();
    let mut labels = Vec::new();
    let mut per_split = Vec::new();
    for (split, n) in [("train", a.train), ("calib", a.calib), ("test", a.test)] {
        if n == 0 {
            continue;
        }
        let mut lat = Mat::zeros(n, k);
        let mut lat_t = Mat::zeros(n, k);
        let mut ys = Vec::with_capacity(n);
        for i in 0..n {
            let y = if split == "train" {
                let mut u = r.random::<f64>() * wsum;
                let mut y = 0;
                while y + 1 < c && u >= w[y] {
                    u -= w[y];
                    y += 1;
                }
                y
            } else {
                i % c
            };
            let z = normal(2 * k, &mut r);
            for j in 0..k {
                lat.row_mut(i)[j] = means.row(y)[j] + z[j];
                lat_t.row_mut(i)[j] = lat.row(i)[j] + a.teacher_noise * z[k + j];
            }
            ys.push(y as i32);
            ids.push(format!("{split}-{i:06}"));
            splits.push(split);
            labels.push(Some(y as i32));
        }
        let student = embed(&lat, &proj_s, 0.5, &mut r);
        let teacher = embed(&lat_t, &proj_t, 0.5, &mut r);
        per_split.push((split, ids[ids.len() - n..].to_vec(), student, teacher));
    }
    // the whole cache is staged and moved into place at the end: a failure (a full disk) leaves
    // no cache without embeddings
    let out = &a.out;
    let staged = crate::table::StagedDir::new(out, "synth")?;
    let stage = staged.path().to_path_buf();
    let write = |path: &dyn Fn(&Path) -> PathBuf,
                 t: Table,
                 cols: Vec<(&str, arrow::array::ArrayRef)>,
                 meta: &[(&str, String)]| {
        table::write_staged(&path(&stage), &path(out), t, cols, meta)
    };
    let sources = vec!["task"; ids.len()];
    write(
        &manifest_path,
        Table::Manifest,
        vec![
            ("sample_id", table::utf8(&ids)),
            ("path", table::opt_utf8(&vec![None; ids.len()])),
            ("split", table::utf8(&splits)),
            ("label", table::opt_i32s(&labels)),
            ("source", table::utf8(&sources)),
        ],
        &[],
    )?;
    let names: Vec<String> = (0..c).map(|i| format!("class_{i:03}")).collect();
    write(
        &classes_path,
        Table::Classes,
        vec![
            ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
            ("name", table::utf8(&names)),
            ("synonyms", table::list_utf8(&vec![Vec::new(); c])),
        ],
        &[],
    )?;
    // teacher prototypes: the class means seen through the teacher's projection
    let protos = embed(&means, &proj_t, 0.0, &mut r);
    let meta = |model: &str, dim: usize| -> Vec<(&'static str, String)> {
        let (id, rev) = model.split_once('@').expect("model@revision");
        vec![
            ("model_id", id.to_string()),
            ("revision", rev.to_string()),
            ("preprocessing", "synthetic".to_string()),
            ("dim", dim.to_string()),
            ("created_by", TOOL_VERSION.to_string()),
            ("generator_seed", a.seed.to_string()),
        ]
    };
    write(
        &|o: &Path| prototypes_path(o, TEACHER),
        Table::Prototypes,
        vec![
            ("class_id", table::i32s(&(0..c as i32).collect::<Vec<_>>())),
            ("template_set", table::utf8(&vec!["synthetic"; c])),
            ("vector", table::fixed_list(&protos)?),
        ],
        &meta(TEACHER, a.teacher_dim),
    )?;
    let mut correct = 0usize;
    let mut total = 0usize;
    for (split, sids, student, teacher) in &per_split {
        for (model, m) in [(STUDENT, student), (TEACHER, teacher)] {
            write(
                &|o: &Path| embeddings_path(o, model, split),
                Table::Embeddings,
                vec![
                    ("sample_id", table::utf8(sids)),
                    ("vector", table::fixed_list(m)?),
                ],
                &meta(model, m.cols),
            )?;
        }
        let mut logits = Mat::zeros(teacher.rows, c);
        {
            use rayon::prelude::*;
            logits
                .data
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(i, row)| {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = crate::geometry::dot(teacher.row(i), protos.row(j)) / a.tau;
                    }
                });
        }
        if *split == "test" {
            let off = ids.iter().position(|s| s == &sids[0]).expect("present");
            for (i, p) in logits.argmax_rows().iter().enumerate() {
                total += 1;
                correct += (labels[off + i] == Some(*p as i32)) as usize;
            }
        }
        let mut lm = meta(TEACHER, a.teacher_dim);
        lm.push(("tau", a.tau.to_string()));
        lm.push(("classes", c.to_string()));
        write(
            &|o: &Path| logits_path(o, TEACHER, split),
            Table::TeacherLogits,
            vec![
                ("sample_id", table::utf8(sids)),
                ("logits", table::fixed_list_owned(logits)?),
            ],
            &lm,
        )?;
    }
    staged.commit_replacing()?;
    progress::log(format!(
        "wrote the synthetic cache {}: {} classes, {} samples; zero-shot teacher test accuracy {:.3}",
        out.display(),
        c,
        ids.len(),
        correct as f64 / total.max(1) as f64
    ));
    Ok(())
}
