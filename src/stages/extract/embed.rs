//! `extract`'s image side: decode each split's images on rayon one batch ahead of the forward
//! passes, embed them with every stale encoder (or reuse a cached table of the same backbone),
//! and stage the embeddings tables.

use super::keys::{model_meta, sha, stored_key, Reject, KEY_VERSION};
use super::staging::Staging;
use crate::cache::embeddings_path;
use crate::dataset::{Dataset, Sample};
use crate::mat::Mat;
use crate::models::encoder::ImageEncoder;
use crate::preprocess::load_rgb;
use crate::schema::Table;
use crate::shard::Shard;
use crate::{progress, table};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The embedding files extract writes per model: the task splits, then the retrieved samples.
pub const FILE_SPLITS: [&str; 4] = ["train", "calib", "test", "retrieved"];

/// The retrieved samples' precomputed corpus image embeddings (`retrieve --embedding-model`),
/// when they are the teacher's: they stand for its retrieved split, and the samples without an
/// image join the manifest with teacher features only.
pub struct Corpus {
    pub ids: Vec<String>,
    pub mat: Mat,
    /// Content key of the teacher's retrieved table written from them.
    pub key: String,
    /// Where they come from (the table's `preprocessing`).
    pub describe: String,
    /// The retrieved samples without an image path that have an embedding.
    pub pathless: HashSet<String>,
}

impl Corpus {
    /// The corpus embeddings beside the retrieved table `retrieved`, if there are any and they
    /// are `teacher`'s (same `id@revision`, same dimension) and of this retrieved table (same
    /// retrieve run); `pathless`: the ids of the retrieved samples without an image.
    pub fn load(
        retrieved: &Path,
        teacher: &ImageEncoder,
        pathless: &[String],
    ) -> Result<Option<Corpus>> {
        let path = crate::cache::corpus_embeddings_path(retrieved);
        if !path.exists() {
            return Ok(None);
        }
        let f = table::read(&path, Table::Embeddings)?;
        let model = format!("{}@{}", f.meta("model_id")?, f.meta("revision")?);
        if model != teacher.model.key() {
            progress::log(format!(
                "{}: embeddings of {model}, not of the teacher {}; its images are embedded instead",
                path.display(),
                teacher.model.key()
            ));
            return Ok(None);
        }
        let run = table::read_meta(retrieved)?.get("run_key").cloned();
        if f.meta.get("run_key") != run.as_ref() {
            progress::log(format!(
                "{}: from another `vlal retrieve` run than {}; ignored",
                path.display(),
                retrieved.display()
            ));
            return Ok(None);
        }
        let (ids, mat) = (f.strings("sample_id")?, f.mat("vector")?);
        if mat.cols != teacher.dim {
            bail!(
                "{}: {}-d embeddings, the teacher {} gives {}-d",
                path.display(),
                mat.cols,
                teacher.model.key(),
                teacher.dim
            );
        }
        let describe = f.meta("preprocessing")?.to_string();
        let mut h = Sha256::new();
        h.update(format!("{KEY_VERSION}|corpus|{model}|{describe}|"));
        for (i, id) in ids.iter().enumerate() {
            h.update(id.as_bytes());
            h.update([0]);
            for v in mat.row(i) {
                h.update(v.to_le_bytes());
            }
        }
        let have: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let pathless = pathless
            .iter()
            .filter(|id| have.contains(id.as_str()))
            .cloned()
            .collect();
        progress::log(format!(
            "{}: {} corpus embeddings stand for the teacher's retrieved images",
            path.display(),
            ids.len()
        ));
        Ok(Some(Corpus {
            ids,
            mat,
            key: crate::models::hub::hex(&h.finalize()),
            describe,
            pathless,
        }))
    }
}

/// What this extract does with the image towers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Embed every image and stage the cache's tables.
    Whole,
    /// Embed part I of N of every split — whole batches, batch k of a split (in the one-process
    /// order) in part k mod N — into part files; nothing else is written.
    Part(Shard),
    /// Read the N part files instead of running the image towers, then stage the cache's tables
    /// as a one-process extract does.
    Merge(usize),
}

/// The part file of `model`'s embeddings of `split` that part `s` writes.
pub fn part_path(out: &Path, model: &str, split: &str, s: Shard) -> PathBuf {
    out.join(model).join(crate::shard::part_file(split, s))
}

/// Per split: the teacher's ids, its vectors when computed in this run, and its content key.
pub type TeacherSplits = HashMap<&'static str, (Vec<String>, Option<Mat>, String)>;

/// Embed every split with every encoder whose table is stale, staging the tables; returns the
/// ids every encoder kept per split and the teacher's (encoder 0 when `has_teacher`) splits.
/// With `corpus`, the teacher's retrieved table is the corpus embeddings, and the samples
/// without an image count as kept by the other encoders.
#[allow(clippy::too_many_arguments)]
pub fn embed_splits(
    out: &Path,
    data: &Dataset,
    hashes: &HashMap<String, String>,
    encoders: &[&ImageEncoder],
    has_teacher: bool,
    device: &Device,
    batch_size: usize,
    skip_bad: bool,
    staging: &mut Staging,
    rejects: &mut Vec<Reject>,
    corpus: Option<&Corpus>,
    work: Work,
) -> Result<(HashMap<&'static str, HashSet<String>>, TeacherSplits)> {
    let mut kept_ids: HashMap<&'static str, HashSet<String>> = HashMap::new();
    // per split: the teacher's ids, its vectors when computed in this run, and its content key
    let mut teacher_emb: TeacherSplits = HashMap::new();
    for split in FILE_SPLITS {
        let samples: Vec<Sample> = data
            .samples
            .iter()
            .filter(|s| s.split == split && hashes.contains_key(&s.id))
            .cloned()
            .collect();
        let corpus = corpus.filter(|_| split == "retrieved" && has_teacher);
        if samples.is_empty() && corpus.is_none() {
            continue;
        }
        // sha256 over what identifies the model, its preprocessing and every image
        let key_of = |identity: &[&str], e: &ImageEncoder| {
            let mut parts: Vec<&str> = vec![KEY_VERSION];
            parts.extend(identity);
            let describe = e.describe();
            parts.push(&describe);
            for s in &samples {
                parts.push(&s.id);
                parts.push(&hashes[&s.id]);
            }
            sha(&parts)
        };
        let mut keys: Vec<String> = encoders
            .iter()
            .map(|e| key_of(&[&e.model.fingerprint], e))
            .collect();
        if let Some(c) = corpus {
            keys[0] = c.key.clone();
        }
        // a classifier's features depend on its backbone only, not on its head
        let feature_keys: Vec<Option<String>> = encoders
            .iter()
            .map(|e| e.backbone().map(|b| key_of(&["features", b], e)))
            .collect();
        let mut stale: Vec<usize> = (0..encoders.len())
            .filter(|&i| {
                stored_key(&embeddings_path(out, &encoders[i].model.key(), split)).as_deref()
                    != Some(keys[i].as_str())
            })
            .collect();
        let mut fresh: HashMap<usize, (Vec<String>, Mat)> = HashMap::new();
        // the tables to write: features another checkpoint with the same backbone wrote (a head
        // fitted elsewhere: its head is applied to them instead of running the backbone again),
        // then those the stale encoders compute
        let mut computed: Vec<(usize, Vec<String>, Mat)> = Vec::new();
        if let Some(c) = corpus {
            if stale.first() == Some(&0) {
                stale.remove(0);
                computed.push((0, c.ids.clone(), c.mat.clone()));
            }
        }
        stale.retain(|&i| {
            let found = feature_keys[i].as_deref().and_then(|fk| {
                same_features(out, &encoders[i].model.key(), split, fk, samples.len())
            });
            match found {
                Some((from, ids, m)) => {
                    progress::log(format!(
                        "{split}: {} has the backbone of {from}: its {} cached features are reused",
                        encoders[i].model.key(),
                        ids.len()
                    ));
                    computed.push((i, ids, m));
                    false
                }
                None => true,
            }
        });
        if let Work::Part(part) = work {
            // a part writes its part files and nothing else; the merge does the rest
            for e in encoders {
                let folder = out.join(e.model.key());
                if let Some(p) = crate::shard::other_parts(&folder, split, part.count).first() {
                    bail!(
                        "{}: a part of an extract split another way than into {}; remove it or use its N",
                        p.display(),
                        part.count
                    );
                }
            }
            stale.retain(|&i| !part_done(out, encoders[i], split, part, &keys[i], batch_size));
            let run: Vec<&ImageEncoder> = stale.iter().map(|&i| encoders[i]).collect();
            let held: Vec<Sample> = samples
                .chunks(batch_size)
                .enumerate()
                .filter(|(b, _)| part.holds(*b))
                .flat_map(|(_, c)| c.iter().cloned())
                .collect();
            if run.is_empty() {
                continue;
            }
            // a part that holds no batch of a small split writes an empty part, for the merge
            let (kept, mats, bad) = if held.is_empty() {
                let empty = |e: &&ImageEncoder| Mat::new(0, e.dim, Vec::new());
                (
                    Vec::new(),
                    run.iter().map(empty).collect::<Result<_>>()?,
                    Vec::new(),
                )
            } else {
                timed_embed(split, &held, &run, device, batch_size, skip_bad)?
            };
            let ids: Vec<String> = kept.iter().map(|&k| held[k].id.clone()).collect();
            let bad_rows: Vec<(&str, &str)> = bad
                .iter()
                .map(|r| (r.sample.id.as_str(), r.error.as_str()))
                .collect();
            let part_meta = vec![
                ("shard", part.to_string()),
                ("batch_size", batch_size.to_string()),
                ("rejects", serde_json::to_string(&bad_rows)?),
            ];
            for (&i, m) in stale.iter().zip(mats) {
                let e = encoders[i];
                let path = part_path(out, &e.model.key(), split, part);
                let meta = (e.describe(), part_meta.clone());
                write_embeddings(staging, &path, e, &keys[i], &ids, &m, meta)?;
            }
            continue;
        }
        if !stale.is_empty() {
            let run: Vec<&ImageEncoder> = stale.iter().map(|&i| encoders[i]).collect();
            let (kept, mats, bad) = match work {
                Work::Merge(n) => {
                    let keys: Vec<&str> = stale.iter().map(|&i| keys[i].as_str()).collect();
                    merge_parts(out, split, &samples, &run, &keys, n, staging)?
                }
                _ => timed_embed(split, &samples, &run, device, batch_size, skip_bad)?,
            };
            rejects.extend(bad);
            let ids: Vec<String> = kept.iter().map(|&i| samples[i].id.clone()).collect();
            for (&i, m) in stale.iter().zip(mats) {
                computed.push((i, ids.clone(), m));
            }
        }
        for (i, ids, m) in computed {
            let e = encoders[i];
            let describe = match corpus.filter(|_| i == 0) {
                Some(c) => c.describe.clone(),
                None => e.describe(),
            };
            let extra: Vec<(&str, String)> = feature_keys[i]
                .iter()
                .map(|fk| ("features_key", fk.clone()))
                .collect();
            let path = embeddings_path(out, &e.model.key(), split);
            write_embeddings(staging, &path, e, &keys[i], &ids, &m, (describe, extra))?;
            fresh.insert(i, (ids, m));
        }
        for (i, e) in encoders.iter().enumerate() {
            // a cached table: only its ids (the vectors are read if the logits need them)
            let (ids, m) = match fresh.remove(&i) {
                Some((ids, m)) => (ids, Some(m)),
                None => (
                    table::read_utf8_column(
                        &embeddings_path(out, &e.model.key(), split),
                        "sample_id",
                    )?,
                    None,
                ),
            };
            let mut set: HashSet<String> = ids.iter().cloned().collect();
            if let Some(c) = corpus.filter(|_| i > 0) {
                set.extend(c.pathless.iter().cloned());
            }
            kept_ids
                .entry(split)
                .and_modify(|k| k.retain(|id| set.contains(id)))
                .or_insert(set);
            if has_teacher && i == 0 {
                teacher_emb.insert(split, (ids, m, keys[i].clone()));
            }
        }
    }
    Ok((kept_ids, teacher_emb))
}

/// Stage `e`'s embeddings table at `path` (a split's, or a part's): the model's metadata, its
/// content `key`, `meta.0` as the preprocessing, the dimension and row count, then `meta.1`.
fn write_embeddings(
    staging: &mut Staging,
    path: &Path,
    e: &ImageEncoder,
    key: &str,
    ids: &[String],
    m: &Mat,
    meta: (String, Vec<(&str, String)>),
) -> Result<()> {
    let mut all = model_meta(&e.model, key);
    all.push(("preprocessing", meta.0));
    all.push(("dim", e.dim.to_string()));
    all.push(("images", ids.len().to_string()));
    all.extend(meta.1);
    staging.write(
        path,
        Table::Embeddings,
        vec![
            ("sample_id", table::utf8(ids)),
            ("vector", table::fixed_list(m)?),
        ],
        &all,
    )
}

/// Whether part `s` of `e`'s `split` is written already for these images (`key`) and batches.
fn part_done(out: &Path, e: &ImageEncoder, split: &str, s: Shard, key: &str, batch: usize) -> bool {
    let p = part_path(out, &e.model.key(), split, s);
    table::read_meta(&p).is_ok_and(|m| {
        m.get("content_key").map(String::as_str) == Some(key)
            && m.get("batch_size") == Some(&batch.to_string())
    })
}

/// [`embed_split`], logged with its speed.
fn timed_embed(
    split: &str,
    samples: &[Sample],
    run: &[&ImageEncoder],
    device: &Device,
    batch_size: usize,
    skip_bad: bool,
) -> Result<(Vec<usize>, Vec<Mat>, Vec<Reject>)> {
    let t0 = std::time::Instant::now();
    let (kept, mats, bad) = embed_split(split, samples, run, device, batch_size, skip_bad)?;
    let secs = t0.elapsed().as_secs_f64();
    progress::log(format!(
        "{split}: {} images through {} in {secs:.1} s ({:.1} images/s){}",
        samples.len(),
        run.iter()
            .map(|e| e.model.key())
            .collect::<Vec<_>>()
            .join(" + "),
        samples.len() as f64 / secs.max(1e-9),
        if bad.is_empty() {
            String::new()
        } else {
            format!(", {} rejected", bad.len())
        }
    ));
    Ok((kept, mats, bad))
}

/// The N part files of each encoder's `split`, put back in the one-process order: what
/// [`embed_split`] returns for `samples` (kept indices, one matrix per encoder, rejects). Every
/// part must exist, hold these images (`keys`, one per encoder) and agree on the batch size; the
/// consumed files are removed once the cache is committed.
fn merge_parts(
    out: &Path,
    split: &str,
    samples: &[Sample],
    encoders: &[&ImageEncoder],
    keys: &[&str],
    n: usize,
    staging: &mut Staging,
) -> Result<(Vec<usize>, Vec<Mat>, Vec<Reject>)> {
    let mut result: Option<(Vec<usize>, Vec<Reject>)> = None;
    let mut mats = Vec::new();
    for (e, key) in encoders.iter().zip(keys) {
        let folder = out.join(e.model.key());
        if let Some(p) = crate::shard::other_parts(&folder, split, n).first() {
            bail!(
                "{}: a part of an extract split another way than into {n}; remove it or merge with its N",
                p.display()
            );
        }
        let mut parts = Vec::new();
        for index in 0..n {
            let s = Shard { index, count: n };
            let p = part_path(out, &e.model.key(), split, s);
            if !p.exists() {
                bail!(
                    "{}: missing; run `vlal extract … --shard {s}` first",
                    p.display()
                );
            }
            let f = table::read(&p, Table::Embeddings)?;
            if f.meta("content_key")? != *key {
                bail!(
                    "{}: a part of an extract of other images or another model; run `vlal extract … --shard {s}` again",
                    p.display()
                );
            }
            let batch: usize = f
                .meta("batch_size")?
                .parse()
                .map_err(|_| anyhow!("{}: batch_size is not a number", p.display()))?;
            let bad: Vec<(String, String)> = serde_json::from_str(f.meta("rejects")?)
                .map_err(|err| anyhow!("{}: unreadable rejects ({err})", p.display()))?;
            parts.push((p, f.strings("sample_id")?, f.mat("vector")?, batch, bad));
        }
        let batch = parts[0].3;
        if let Some(p) = parts.iter().find(|p| p.3 != batch) {
            bail!(
                "{}: batch size {}, part 0's is {batch}; extract every part with one --batch-size",
                p.0.display(),
                p.3
            );
        }
        // walk the batches in order, each from its part, its rows in their order
        let mut next = vec![0usize; n];
        let errors: Vec<HashMap<&str, &str>> = parts
            .iter()
            .map(|p| p.4.iter().map(|(i, e)| (i.as_str(), e.as_str())).collect())
            .collect();
        let (mut kept, mut bad, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for (b, chunk) in samples.chunks(batch).enumerate() {
            let k = b % n;
            let (p, ids, m, _, _) = &parts[k];
            for (j, s) in chunk.iter().enumerate() {
                if ids.get(next[k]) == Some(&s.id) {
                    data.extend_from_slice(m.row(next[k]));
                    next[k] += 1;
                    kept.push(b * batch + j);
                } else if let Some(err) = errors[k].get(s.id.as_str()) {
                    bad.push(Reject {
                        sample: s.clone(),
                        error: err.to_string(),
                    });
                } else {
                    bail!("{}: sample '{}' is missing", p.display(), s.id);
                }
            }
        }
        for ((p, ids, ..), &used) in parts.iter().zip(&next) {
            if ids.len() != used {
                bail!(
                    "{}: rows of no sample of this split, or out of order",
                    p.display()
                );
            }
        }
        mats.push(Mat::new(kept.len(), e.dim, data)?);
        match &result {
            Some((k, _)) if *k != kept => bail!(
                "{split}: the parts of {} kept other images than those of {}",
                e.model.key(),
                encoders[0].model.key()
            ),
            Some(_) => {}
            None => result = Some((kept, bad)),
        }
        for p in parts {
            staging.consumed(p.0);
        }
    }
    let (kept, bad) = result.expect("at least one encoder");
    progress::log(format!("{split}: {} embeddings from {n} parts", kept.len()));
    Ok((kept, mats, bad))
}

/// A decoded and preprocessed batch: for each encoder the pixels of the kept samples.
pub struct Batch {
    kept: Vec<usize>,
    rejects: Vec<Reject>,
    pixels: Vec<Vec<f32>>,
}

/// Decode `samples` in batches on rayon (one batch ahead) and embed them with each encoder.
/// Returns the indices of the kept samples, one matrix per encoder, and the rejects.
pub fn embed_split(
    split: &str,
    samples: &[Sample],
    encoders: &[&ImageEncoder],
    device: &Device,
    batch_size: usize,
    skip_bad: bool,
) -> Result<(Vec<usize>, Vec<Mat>, Vec<Reject>)> {
    let pb = progress::bar(samples.len() as u64, split);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(1);
    let mut kept = Vec::new();
    let mut rejects = Vec::new();
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); encoders.len()];
    let result = std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for (b, chunk) in samples.chunks(batch_size).enumerate() {
                let decoded: Vec<Result<image::RgbImage>> = chunk
                    .par_iter()
                    .map(|s| {
                        let img = load_rgb(&s.path)?;
                        let (w, h) = img.dimensions();
                        for e in encoders {
                            e.pre
                                .check(w, h)
                                .with_context(|| s.path.display().to_string())?;
                        }
                        Ok(img)
                    })
                    .collect();
                let mut batch = Batch {
                    kept: Vec::new(),
                    rejects: Vec::new(),
                    pixels: Vec::new(),
                };
                let mut images = Vec::new();
                for (i, d) in decoded.into_iter().enumerate() {
                    match d {
                        Ok(img) => {
                            batch.kept.push(b * batch_size + i);
                            images.push(img);
                        }
                        Err(e) if skip_bad => batch.rejects.push(Reject {
                            sample: chunk[i].clone(),
                            error: format!("{e:#}"),
                        }),
                        Err(e) => {
                            let _ = tx.send(Err(
                                e.context("use --skip-bad to record bad images and go on")
                            ));
                            return;
                        }
                    }
                }
                batch.pixels = encoders
                    .iter()
                    .map(|e| {
                        let per: Vec<Vec<f32>> =
                            images.par_iter().map(|img| e.pre.apply(img)).collect();
                        per.concat()
                    })
                    .collect();
                if tx.send(Ok(batch)).is_err() {
                    return; // the consumer stopped
                }
            }
        });
        for batch in rx {
            let batch = batch?;
            let n = batch.kept.len();
            if n > 0 {
                for ((e, px), o) in encoders.iter().zip(batch.pixels).zip(out.iter_mut()) {
                    let s = e.pre.crop as usize;
                    let t = Tensor::from_vec(px, (n, 3, s, s), device)?;
                    let z = e
                        .embed(&t)
                        .map_err(|err| anyhow!("{}: forward pass failed ({err})", e.model.key()))?;
                    o.extend(z.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            pb.inc((n + batch.rejects.len()) as u64);
            kept.extend(batch.kept);
            rejects.extend(batch.rejects);
        }
        Ok(())
    });
    pb.finish_and_clear();
    result?;
    let mats = out
        .into_iter()
        .zip(encoders)
        .map(|(v, e)| Mat::new(kept.len(), e.dim, v))
        .collect::<Result<Vec<_>>>()?;
    if let Some(bad) = mats.iter().find(|m| m.data.iter().any(|v| !v.is_finite())) {
        bail!(
            "{split}: the model gave non-finite embeddings ({} rows)",
            bad.rows
        );
    }
    Ok((kept, mats, rejects))
}

/// A cached embeddings table of `split`, by another model folder under `out` than `own`, whose
/// `features_key` is `fk` and which holds all `n` images: (its model folder, ids, vectors).
pub fn same_features(
    out: &Path,
    own: &str,
    split: &str,
    fk: &str,
    n: usize,
) -> Option<(String, Vec<String>, Mat)> {
    let mut dirs: Vec<String> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|k| k != own && !k.starts_with('.'))
        .collect();
    dirs.sort();
    dirs.into_iter().find_map(|key| {
        let path = embeddings_path(out, &key, split);
        let meta = table::read_meta(&path).ok()?;
        if meta.get("features_key").map(String::as_str) != Some(fk) {
            return None;
        }
        let f = table::read(&path, Table::Embeddings).ok()?;
        let (ids, m) = (f.strings("sample_id").ok()?, f.mat("vector").ok()?);
        (ids.len() == n).then_some((key, ids, m))
    })
}

/// The teacher's embeddings of a split: computed in this run, else read from the cache.
pub fn teacher_embeddings<'a>(
    out: &Path,
    key: &str,
    split: &str,
    fresh: &'a Option<Mat>,
) -> Result<std::borrow::Cow<'a, Mat>> {
    Ok(match fresh {
        Some(m) => std::borrow::Cow::Borrowed(m),
        None => std::borrow::Cow::Owned(
            table::read(&embeddings_path(out, key, split), Table::Embeddings)?.mat("vector")?,
        ),
    })
}
