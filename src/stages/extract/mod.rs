//! `vlal extract`: run the teacher (CLIP image + text towers) and the student (DINOv2 or CLIP's
//! image tower) once over a dataset and cache what every later stage reads: embeddings per
//! (model, split), the teacher's class prototypes and its zero-shot logits cos/τ, the manifest
//! and the classes.
//!
//! Every file carries a `content_key` (sha256 over the model's fingerprint, the preprocessing
//! and each image's id and bytes); a file whose key matches is not recomputed, so a second run
//! with the same inputs does no work. Decoding runs on rayon in a producer thread, one batch
//! ahead of the model's forward pass. Output is staged in a temporary folder and moved into
//! place only when everything succeeded: a bad image without `--skip-bad` leaves nothing behind.

mod embed;
mod keys;
mod staging;
mod tables;
mod teacher;

use crate::dataset::{self, Dataset, Sample};
use crate::models::encoder::ImageEncoder;
use crate::models::hub::{self, Source};
use crate::schema::Table;
use crate::{progress, table};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct ExtractArgs {
    /// Output cache folder, e.g. data/<dataset>.
    #[arg(long)]
    pub out: PathBuf,
    /// Image folder: <class>/<image> or <split>/<class>/<image> (split: train, calib|val, test).
    #[arg(
        long,
        conflicts_with = "manifest",
        required_unless_present = "manifest"
    )]
    pub images: Option<PathBuf>,
    /// Manifest (CSV or Parquet): path, label, split[, sample_id]; paths relative to its folder.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Class names, one per line: `name | synonym | ...` (default: the folder names).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Prompt the synonyms too: a prototype averages templates × (name and synonyms).
    #[arg(long)]
    pub synonyms: bool,
    /// Teacher: a CLIP hub id (openai/clip-vit-base-patch32) or a local folder in HF layout;
    /// or a pretrained classifier (EfficientNet-Lite with its head; class names in config.json's
    /// id2label), made zero-shot by --label-map.
    #[arg(long, required_unless_present = "student")]
    pub teacher: Option<String>,
    /// Hub revision (default main), or the label of a local folder (default local).
    #[arg(long)]
    pub teacher_revision: Option<String>,
    /// The id a local teacher folder is recorded under (default: the folder name).
    #[arg(long)]
    pub teacher_name: Option<String>,
    /// Student: a DINOv2 or CLIP hub id (facebook/dinov2-small) or a local folder.
    #[arg(long)]
    pub student: Option<String>,
    #[arg(long)]
    pub student_revision: Option<String>,
    #[arg(long)]
    pub student_name: Option<String>,
    /// DINOv2 student: store [CLS | mean patch token] instead of CLS alone.
    #[arg(long)]
    pub mean_patch: bool,
    /// A classifier teacher's label map: one line per task class, `task class: name | name |
    /// #index` (the classifier's class names or indices); its logit is the log-sum-exp of the
    /// mapped logits. Without it the classifier's classes must be the task's, by name.
    #[arg(long)]
    pub label_map: Option<PathBuf>,
    /// Teacher temperature: a CLIP teacher's logits are cos/τ (default 0.01); a SigLIP teacher's
    /// are exp(s)·cos + b with the checkpoint's own scale and bias (with --tau: cos/τ + b); a
    /// classifier teacher's logits are its own.
    #[arg(long)]
    pub tau: Option<f32>,
    /// Without split folders: share of images held out as test (by a hash of the path).
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Without split folders: share held out as the labeled calibration split.
    #[arg(long, default_value_t = 0.1)]
    pub calib_fraction: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Record unreadable or corrupt images in rejects.parquet and go on (default: fail).
    #[arg(long)]
    pub skip_bad: bool,
    /// cpu, or cuda (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Resolve hub ids from the local hf-hub cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Retrieved samples (`vlal retrieve`'s retrieved.parquet): their images are embedded by
    /// every model into `<model>/retrieved.parquet` and they join the manifest as
    /// split = train, source = retrieved, labeled with the class their caption named. With the
    /// corpus embeddings of the teacher beside it (`retrieve --embedding-model`), those are the
    /// teacher's features, and samples without an image join with teacher features only.
    #[arg(long)]
    pub retrieved: Option<PathBuf>,
    /// Embed only part I of N (0-based) of every split's images into
    /// `<model>/<split>.part-I-of-N.parquet`, nothing else: whole batches, batch k of a split in
    /// the one-process order going to part k mod N, so that `--merge N` writes the cache of a
    /// one-process extract, byte for byte. Every part and the merge take the same arguments.
    #[arg(long, conflicts_with = "merge")]
    pub shard: Option<crate::shard::Shard>,
    /// Write the cache from the N parts of a sharded extract (the same arguments and
    /// --batch-size), as a one-process extract writes it; runs no image tower, and removes the
    /// parts once the cache is written.
    #[arg(long)]
    pub merge: Option<usize>,
}

/// The retrieved samples, as samples of the `retrieved` file split: those with an image path,
/// and those without (their path empty).
fn retrieved_samples(path: &Path, data: &Dataset) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let f = table::read(path, Table::Retrieved)?;
    let (ids, paths, labels, classes) = (
        f.strings("sample_id")?,
        f.opt_strings("path")?,
        f.i32s("label")?,
        f.strings("class")?,
    );
    let (mut out, mut no_path) = (Vec::new(), Vec::new());
    for i in 0..f.rows {
        let l = labels[i].unwrap_or(-1);
        let named = usize::try_from(l).ok().and_then(|l| data.classes.get(l));
        if named.is_none_or(|c| c.name != classes[i]) {
            bail!(
                "{}: sample '{}' is class {l} '{}', which is not this dataset's class {l}; \
                 retrieve for this cache's classes",
                path.display(),
                ids[i],
                classes[i]
            );
        }
        let s = Sample {
            id: ids[i].clone(),
            path: paths[i].as_deref().map(PathBuf::from).unwrap_or_default(),
            split: "retrieved".into(),
            label: Some(l),
        };
        match &paths[i] {
            Some(_) => out.push(s),
            None => no_path.push(s),
        }
    }
    Ok((out, no_path))
}

pub fn run(a: &ExtractArgs) -> Result<()> {
    crate::models::keep_freed_memory();
    if a.tau.is_some_and(|t| t <= 0.0 || !t.is_finite()) {
        bail!("--tau must be positive");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let work = match (a.shard, a.merge) {
        (_, Some(0)) => bail!("--merge N: N must be at least 1"),
        (_, Some(n)) => embed::Work::Merge(n),
        (Some(s), None) => embed::Work::Part(s),
        (None, None) => embed::Work::Whole,
    };
    let mut data: Dataset = match (&a.images, &a.manifest) {
        (Some(dir), _) => {
            dataset::from_folder(dir, a.classes.as_deref(), a.test_fraction, a.calib_fraction)?
        }
        (None, Some(m)) => dataset::from_manifest(m, a.classes.as_deref())?,
        (None, None) => bail!("pass --images or --manifest"),
    };
    let mut pathless = Vec::new();
    if let Some(r) = &a.retrieved {
        let (extra, no_path) = retrieved_samples(r, &data)?;
        progress::log(format!(
            "{}: {} retrieved samples with an image, {} without",
            r.display(),
            extra.len(),
            no_path.len()
        ));
        data.samples.extend(extra);
        pathless = no_path;
    }
    let device = crate::train::device(&a.device)?;
    let resolve = |spec: &str, revision: &Option<String>, name: &Option<String>| {
        hub::resolve(
            spec,
            &Source {
                revision: revision.clone(),
                name: name.clone(),
                offline: a.offline,
            },
        )
    };
    let (teacher, head) = match &a.teacher {
        Some(t) => {
            let m = resolve(t, &a.teacher_revision, &a.teacher_name)?;
            let (e, h) = teacher::load(m, a.label_map.as_deref(), &data, &device)?;
            (Some(e), h)
        }
        None => (None, None),
    };
    let student = match &a.student {
        Some(s) => Some(ImageEncoder::load(
            resolve(s, &a.student_revision, &a.student_name)?,
            &device,
            a.mean_patch,
        )?),
        None => None,
    };
    let encoders: Vec<&ImageEncoder> = [teacher.as_ref(), student.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    if encoders.len() == 2 && encoders[0].model.key() == encoders[1].model.key() {
        bail!(
            "teacher and student are both recorded as {}; give one a --*-name or --*-revision",
            encoders[0].model.key()
        );
    }
    for e in &encoders {
        progress::log(format!(
            "{} from {} ({}-d; {})",
            e.model.key(),
            e.model.dir.display(),
            e.dim,
            e.describe()
        ));
    }

    // precomputed corpus embeddings of the teacher: its retrieved features, and the retrieved
    // samples without an image join with teacher features only
    let corpus = match (&a.retrieved, &teacher) {
        (Some(r), Some(t)) => {
            let ids: Vec<String> = pathless.iter().map(|s| s.id.clone()).collect();
            embed::Corpus::load(r, t, &ids)?
        }
        _ => None,
    };
    let n_pathless = pathless.len();
    let joined: Vec<Sample> = pathless
        .into_iter()
        .filter(|s| corpus.as_ref().is_some_and(|c| c.pathless.contains(&s.id)))
        .collect();
    if let Some(r) = &a.retrieved {
        if !joined.is_empty() {
            progress::log(format!(
                "{}: {} retrieved sample(s) without an image join with the teacher's corpus \
                 embeddings only",
                r.display(),
                joined.len()
            ));
        }
        if n_pathless > joined.len() {
            progress::log(format!(
                "{}: {} retrieved sample(s) have no image path (and no corpus embedding of the \
                 teacher); left out",
                r.display(),
                n_pathless - joined.len()
            ));
        }
    }
    let out = &a.out;
    let (hashes, mut rejects) = keys::hash_images(&data.samples);
    if let (Some(r), false) = (rejects.first(), a.skip_bad) {
        bail!("{}; use --skip-bad to record bad images and go on", r.error);
    }
    let mut staging = staging::Staging::new(out)?;
    let (kept_ids, teacher_emb) = embed::embed_splits(
        out,
        &data,
        &hashes,
        &encoders,
        teacher.is_some(),
        &device,
        a.batch_size,
        a.skip_bad,
        &mut staging,
        &mut rejects,
        corpus.as_ref(),
        work,
    )?;
    if let embed::Work::Part(s) = work {
        let n = staging.commit()?;
        progress::log(format!(
            "{}: part {s}: {}; when every part is done: vlal extract … --merge {}",
            out.display(),
            if n == 0 {
                "up to date, nothing extracted".to_string()
            } else {
                format!("{n} part files written")
            },
            s.count
        ));
        return Ok(());
    }
    data.samples.extend(joined);
    if let Some(t) = &teacher {
        teacher::write_tables(
            out,
            t,
            &head,
            &teacher_emb,
            &data,
            a.tau,
            a.synonyms,
            &mut staging,
        )?;
    }
    let (rpath, n_rejects) = tables::write(out, &data, &kept_ids, rejects, &mut staging)?;
    if n_rejects > 0 {
        progress::log(format!(
            "{} unreadable images left out (listed in {})",
            n_rejects,
            rpath.display()
        ));
    }
    let n = staging.commit()?;
    if n_rejects == 0 && rpath.exists() {
        std::fs::remove_file(&rpath).with_context(|| {
            format!("{}: cannot remove the stale rejects table", rpath.display())
        })?;
    }
    if n == 0 {
        progress::log(format!("{}: up to date, nothing extracted", out.display()));
    } else {
        progress::log(format!("{}: {n} files written", out.display()));
    }
    let key = |e: Option<&ImageEncoder>| e.map(|e| e.model.key());
    progress::log(format!(
        "pipeline [dataset]: root = \"{}\", student = \"{}\", teacher = \"{}\"",
        out.display(),
        key(student.as_ref())
            .or(key(teacher.as_ref()))
            .unwrap_or_default(),
        key(teacher.as_ref()).unwrap_or_default()
    ));
    Ok(())
}
