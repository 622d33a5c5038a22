//! `vlal retrieve`: ALOR's retrieval from open image–text data. Each class's name and synonyms
//! are matched as whole words (case-insensitive) in the captions of a LAION-style corpus of
//! Parquet shards; a caption that names a class is embedded by a CLIP text tower and scored by
//! cos(caption, t_c) against the class prototypes (a caption naming several classes goes to the
//! one it scores highest); the top k per class are kept. Shards are read one at a time in record
//! batches (bounded memory), captions matched in parallel; after every shard the candidates so
//! far and the finished shards are saved, so a stopped run resumes where it was. A shard that
//! cannot be read (missing column, text that is not UTF-8, corrupt file) is reported and skipped.
//! The result is `retrieved.parquet` in the cache; `extract --retrieved` embeds its images. A
//! corpus that ships image embeddings (LAION's, beside its metadata) in a column `embedding`:
//! with `--embedding-model ID@REVISION` the kept samples' vectors are written to
//! `retrieved.embeddings.parquet`, which `extract --retrieved` takes as that teacher's features.

use crate::cache::read_classes;
use crate::captions::Matcher;
use crate::models::clip::Clip;
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::models::encoder::{self, TEMPLATES};
use crate::models::hub::{self, Source};
use crate::schema::Table;
use crate::{progress, table};
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug, clap::Args)]
pub struct RetrieveArgs {
    /// The dataset cache (its classes.parquet names the classes; retrieved.parquet is written
    /// there).
    #[arg(long)]
    pub data: PathBuf,
    /// The corpus: a folder of Parquet shards (`*.parquet`, read in name order) or one shard.
    /// Columns: key, caption, url (optional), path (optional: the image, relative to the shard's
    /// folder).
    #[arg(long)]
    pub corpus: PathBuf,
    /// CLIP checkpoint whose text tower ranks the captions (folder in the HF layout or hub id).
    #[arg(long)]
    pub text_model: String,
    #[arg(long)]
    pub text_revision: Option<String>,
    /// Record a local text model under this id (default: the folder's name).
    #[arg(long)]
    pub text_name: Option<String>,
    /// Never touch the network (hub ids from the hf-hub cache only).
    #[arg(long)]
    pub offline: bool,
    /// Class names and synonyms (`name | synonym | …`, one line per class, in the cache's
    /// class order); default: the names and synonyms in the cache's classes.parquet.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Samples kept per class.
    #[arg(long, default_value_t = 500)]
    pub k: usize,
    /// Captions per text-tower forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Stop after this many new shards (the rest is done by a later run, which resumes).
    #[arg(long)]
    pub max_shards: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The corpus has image embeddings in a column `embedding` (a list of floats per row), made
    /// by this model (`ID@REVISION`, as the cache's teacher folder is named): write the kept
    /// samples' vectors to `retrieved.embeddings.parquet` for `extract --retrieved`.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Read only part I of N of the corpus shards (by a stable hash of each file name) into
    /// `retrieve.part-I-of-N.parquet`; `--merge N` then combines the N parts.
    #[arg(long, conflicts_with = "merge")]
    pub shard: Option<crate::shard::Shard>,
    /// Combine the N parts of a sharded retrieve into `retrieved.parquet` (equal to what one
    /// process reading every shard writes); reads no corpus shard.
    #[arg(long)]
    pub merge: Option<usize>,
}

/// One caption that named a class, with its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub key: String,
    pub caption: String,
    pub url: Option<String>,
    pub path: Option<String>,
    pub label: usize,
    pub score: f64,
    pub shard: String,
}

/// Best first: higher score, then smaller key.
fn better(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key))
}

/// The best `k` candidates of every class.
pub struct TopK {
    k: usize,
    classes: Vec<Vec<Candidate>>,
}

impl TopK {
    pub fn new(n_classes: usize, k: usize) -> TopK {
        TopK {
            k,
            classes: vec![Vec::new(); n_classes],
        }
    }

    pub fn push(&mut self, c: Candidate) {
        let v = &mut self.classes[c.label];
        v.push(c);
        if v.len() >= 2 * self.k.max(16) {
            Self::trim(v, self.k);
        }
    }

    fn trim(v: &mut Vec<Candidate>, k: usize) {
        v.sort_by(better);
        // a key seen twice (a corpus duplicate) keeps its best entry
        let mut seen = std::collections::HashSet::new();
        v.retain(|c| seen.insert(c.key.clone()));
        v.truncate(k);
    }

    /// Every class's best k, best first; a key in several classes stays in the one where it
    /// scores highest.
    pub fn finish(mut self) -> Vec<Vec<Candidate>> {
        for v in &mut self.classes {
            Self::trim(v, usize::MAX);
        }
        let mut best: HashMap<String, (f64, usize)> = HashMap::new();
        for (c, v) in self.classes.iter().enumerate() {
            for x in v {
                let e = best.entry(x.key.clone()).or_insert((x.score, c));
                if x.score > e.0 || (x.score == e.0 && c < e.1) {
                    *e = (x.score, c);
                }
            }
        }
        for (c, v) in self.classes.iter_mut().enumerate() {
            v.retain(|x| best[&x.key].1 == c);
            v.truncate(self.k);
        }
        self.classes
    }
}

/// What the saved state says was done.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
struct Done {
    /// Shard file name → (bytes, rows) when it was read.
    shards: BTreeMap<String, (u64, u64)>,
    /// Captions that named each class (before the top k).
    matched: Vec<u64>,
}

/// The text side: tower, tokenizer and class prototypes.
struct Text {
    clip: Clip,
    tok: ClipTokenizer,
    protos: crate::mat::Mat,
    batch: usize,
}

impl Text {
    /// cos(caption, t_c) for every caption and class.
    fn scores(&self, captions: &[&str]) -> Result<crate::mat::Mat> {
        let ids = captions
            .iter()
            .map(|c| self.tok.encode(c))
            .collect::<Result<Vec<_>>>()?;
        let z = encoder::text_embeddings(&self.clip, self.tok.context_length, &ids, self.batch)?;
        crate::geometry::matmul_nt(&z, &self.protos)
    }
}

/// Counts of one shard.
#[derive(Default)]
struct ShardStats {
    rows: u64,
    matched: Vec<u64>,
}

fn text_column(batch: &arrow::array::RecordBatch, name: &str) -> Result<Option<StringArray>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    // not `safe`: a value that is not UTF-8 is an error, not a null
    let opts = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let s = arrow::compute::cast_with_options(col, &DataType::Utf8, &opts)
        .map_err(|e| anyhow!("column '{name}' is not valid UTF-8 text ({e})"))?;
    Ok(Some(
        s.as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to utf8")
            .clone(),
    ))
}

/// Match, score and keep the captions of one shard. Errors leave `top` untouched.
fn read_shard(
    path: &Path,
    matcher: &Matcher,
    text: &Text,
    n_classes: usize,
    pb: &indicatif::ProgressBar,
) -> Result<(ShardStats, Vec<Candidate>)> {
    let file = std::fs::File::open(path).context("cannot open")?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("not a readable Parquet file ({e})"))?;
    let schema = builder.schema().clone();
    for need in ["key", "caption"] {
        if schema.field_with_name(need).is_err() {
            bail!("no column '{need}'");
        }
    }
    let wanted: Vec<&str> = ["key", "caption", "url", "path"]
        .into_iter()
        .filter(|c| schema.field_with_name(c).is_ok())
        .collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(65536)
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let shard = file_name(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut stats = ShardStats {
        rows: 0,
        matched: vec![0; n_classes],
    };
    let mut found: Vec<(Candidate, Vec<usize>)> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("corrupt Parquet data ({e})"))?;
        let n = batch.num_rows();
        let key = text_column(&batch, "key")?.expect("checked");
        let caption = text_column(&batch, "caption")?.expect("checked");
        let url = text_column(&batch, "url")?;
        let img = text_column(&batch, "path")?;
        let hits: Vec<(usize, Vec<usize>)> = (0..n)
            .into_par_iter()
            .filter_map(|i| {
                if caption.is_null(i) || key.is_null(i) {
                    return None;
                }
                let m = matcher.classes(caption.value(i));
                (!m.is_empty()).then_some((i, m))
            })
            .collect();
        let opt = |a: &Option<StringArray>, i: usize| {
            a.as_ref()
                .filter(|a| !a.is_null(i))
                .map(|a| a.value(i).to_string())
        };
        for (i, classes) in hits {
            let path = opt(&img, i).map(|p| {
                let p = Path::new(&p);
                if p.is_absolute() {
                    p.display().to_string()
                } else {
                    dir.join(p).display().to_string()
                }
            });
            found.push((
                Candidate {
                    key: key.value(i).to_string(),
                    caption: caption.value(i).to_string(),
                    url: opt(&url, i),
                    path,
                    label: classes[0],
                    score: 0.0,
                    shard: shard.clone(),
                },
                classes,
            ));
        }
        stats.rows += n as u64;
        pb.inc(n as u64);
    }
    // score the shard's matches in order, in fixed batches (a resumed run scores the same
    // batches as an uninterrupted one)
    let mut out = Vec::with_capacity(found.len());
    for chunk in found.chunks(text.batch.max(1)) {
        let caps: Vec<&str> = chunk.iter().map(|(c, _)| c.caption.as_str()).collect();
        let s = text.scores(&caps)?;
        for (i, (cand, classes)) in chunk.iter().enumerate() {
            let row = s.row(i);
            let best = *classes
                .iter()
                .max_by(|&&a, &&b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .expect("non-empty");
            for &c in classes {
                stats.matched[c] += 1;
            }
            let score = row[best] as f64;
            if !score.is_finite() {
                bail!(
                    "the text tower gave a non-finite score for {:?}",
                    cand.caption
                );
            }
            out.push(Candidate {
                label: best,
                score,
                ..cand.clone()
            });
        }
    }
    Ok((stats, out))
}

/// One row's vector of a list column (float32 or float64 items; fixed-size or not), or None.
fn list_row(col: &dyn Array, i: usize) -> Result<Option<Vec<f32>>> {
    use arrow::array::{FixedSizeListArray, LargeListArray, ListArray};
    if col.is_null(i) {
        return Ok(None);
    }
    let item = if let Some(l) = col.as_any().downcast_ref::<ListArray>() {
        l.value(i)
    } else if let Some(l) = col.as_any().downcast_ref::<LargeListArray>() {
        l.value(i)
    } else if let Some(l) = col.as_any().downcast_ref::<FixedSizeListArray>() {
        l.value(i)
    } else {
        bail!(
            "column 'embedding' is {}, not a list of floats",
            col.data_type()
        );
    };
    let f = arrow::compute::cast(&item, &DataType::Float32)
        .map_err(|e| anyhow!("column 'embedding' does not hold floats ({e})"))?;
    let f = f
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .expect("cast to float32");
    if f.null_count() > 0 {
        return Ok(None);
    }
    Ok(Some(f.values().to_vec()))
}

/// The kept samples' corpus image embeddings, L2-normalised, as an embeddings table (sample ids
/// as in the retrieved table) at `path`; a sample whose row has no embedding is left out.
fn write_embeddings(
    path: &Path,
    rows: &[&Candidate],
    corpus: &Path,
    shards: &[PathBuf],
    model: &str,
    run_key: &str,
) -> Result<()> {
    let Some((id, revision)) = model
        .split_once('@')
        .filter(|(i, r)| !i.is_empty() && !r.is_empty())
    else {
        bail!(
            "--embedding-model '{model}': give it as ID@REVISION, the cache's teacher folder name"
        );
    };
    let mut by_shard: BTreeMap<&str, HashMap<&str, usize>> = BTreeMap::new();
    for (r, c) in rows.iter().enumerate() {
        by_shard.entry(&c.shard).or_default().insert(&c.key, r);
    }
    let shard_path: HashMap<String, &PathBuf> = shards.iter().map(|p| (file_name(p), p)).collect();
    let mut vecs: Vec<Option<Vec<f32>>> = vec![None; rows.len()];
    for (shard, keys) in &by_shard {
        let p = shard_path
            .get(*shard)
            .ok_or_else(|| anyhow!("{}: no shard {shard} any more", corpus.display()))?;
        let file =
            std::fs::File::open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", p.display()))?;
        if builder.schema().field_with_name("embedding").is_err() {
            bail!(
                "{}: no column 'embedding' (--embedding-model: the corpus's image embeddings)",
                p.display()
            );
        }
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["key", "embedding"]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| anyhow!("{}: {e}", p.display()))?;
        for batch in reader {
            let batch =
                batch.map_err(|e| anyhow!("{}: corrupt Parquet data ({e})", p.display()))?;
            let key = text_column(&batch, "key")?.expect("checked when read");
            let emb = batch.column_by_name("embedding").expect("projected");
            for i in 0..batch.num_rows() {
                if key.is_null(i) {
                    continue;
                }
                let Some(&r) = keys.get(key.value(i)) else {
                    continue;
                };
                if vecs[r].is_none() {
                    vecs[r] = list_row(emb.as_ref(), i).with_context(|| p.display().to_string())?;
                }
            }
        }
    }
    let dim = vecs.iter().flatten().map(Vec::len).next().unwrap_or(0);
    let mut ids = Vec::new();
    let mut data = Vec::new();
    for (c, v) in rows.iter().zip(&vecs) {
        let Some(v) = v else { continue };
        if v.len() != dim || dim == 0 {
            bail!(
                "{}: key '{}': a {}-d embedding, the others are {dim}-d",
                shard_path[&c.shard].display(),
                c.key,
                v.len()
            );
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !n.is_finite() || n == 0.0 {
            bail!(
                "{}: key '{}': the embedding is zero or not finite",
                shard_path[&c.shard].display(),
                c.key
            );
        }
        ids.push(format!("retrieved/{}", c.key));
        data.extend(v.iter().map(|x| x / n));
    }
    if ids.is_empty() {
        bail!(
            "{}: none of the {} kept samples has an embedding",
            corpus.display(),
            rows.len()
        );
    }
    let missing = rows.len() - ids.len();
    let m = crate::mat::Mat::new(ids.len(), dim, data)?;
    let meta = [
        ("model_id", id.to_string()),
        ("revision", revision.to_string()),
        (
            "preprocessing",
            format!(
                "precomputed corpus image embeddings (column 'embedding' of {})",
                corpus.display()
            ),
        ),
        ("dim", dim.to_string()),
        ("created_by", crate::TOOL_VERSION.to_string()),
        ("images", ids.len().to_string()),
        ("run_key", run_key.to_string()),
    ];
    table::write(
        path,
        Table::Embeddings,
        vec![
            ("sample_id", table::utf8(&ids)),
            ("vector", table::fixed_list(&m)?),
        ],
        &meta,
        table::Mode::Replace,
    )?;
    progress::log(format!(
        "wrote {}: {} corpus embeddings of {model} ({dim}-d){}",
        path.display(),
        ids.len(),
        if missing > 0 {
            format!("; {missing} kept sample(s) have none")
        } else {
            String::new()
        }
    ));
    Ok(())
}

fn shards(corpus: &Path) -> Result<Vec<PathBuf>> {
    if corpus.is_file() {
        return Ok(vec![corpus.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus)
        .with_context(|| format!("{}: cannot read the corpus folder", corpus.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{}: no *.parquet shards", corpus.display());
    }
    Ok(v)
}

/// The class phrases: the cache's classes, with synonyms from `file` when given.
fn phrases(data: &Path, file: Option<&Path>) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let names = read_classes(data)?;
    let phrases: Vec<Vec<String>> = match file {
        Some(f) => {
            let cls = crate::dataset::read_class_file(f)?;
            if cls.len() != names.len()
                || cls
                    .iter()
                    .zip(&names)
                    .any(|(c, n)| c.name.to_lowercase() != n.to_lowercase())
            {
                bail!(
                    "{}: must list the cache's {} classes in order ({})",
                    f.display(),
                    names.len(),
                    names.join(", ")
                );
            }
            cls.into_iter()
                .map(|c| std::iter::once(c.name).chain(c.synonyms).collect())
                .collect()
        }
        None => {
            let path = crate::cache::classes_path(data);
            let f = table::read(&path, Table::Classes)?;
            let syn = f.list_strings("synonyms")?;
            names
                .iter()
                .zip(syn)
                .map(|(n, s)| std::iter::once(n.clone()).chain(s).collect())
                .collect()
        }
    };
    Ok((names, phrases))
}

pub fn state_path(data: &Path) -> PathBuf {
    data.join("retrieve.state.parquet")
}

pub fn out_path(data: &Path) -> PathBuf {
    data.join("retrieved.parquet")
}

/// A path's file name (a corpus shard's name, as the state and the candidates record it).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The saved state of part I of N of a sharded retrieve.
pub fn part_path(data: &Path, s: crate::shard::Shard) -> PathBuf {
    data.join(crate::shard::part_file("retrieve", s))
}

/// How the rows of a table are identified.
#[derive(Clone, Copy, PartialEq)]
enum Ids {
    /// `retrieved/KEY`: the result, where every key is in one class.
    Key,
    /// `retrieved/LABEL/KEY`: the saved state, where a key may still run in several classes.
    ClassKey,
}

fn write_table(
    path: &Path,
    rows: &[&Candidate],
    names: &[String],
    meta: &[(&str, String)],
    ids: Ids,
) -> Result<()> {
    let ids: Vec<String> = rows
        .iter()
        .map(|c| match ids {
            Ids::Key => format!("retrieved/{}", c.key),
            Ids::ClassKey => format!("retrieved/{}/{}", c.label, c.key),
        })
        .collect();
    table::write(
        path,
        Table::Retrieved,
        vec![
            ("sample_id", table::utf8(&ids)),
            (
                "key",
                table::utf8(&rows.iter().map(|c| c.key.as_str()).collect::<Vec<_>>()),
            ),
            (
                "caption",
                table::utf8(&rows.iter().map(|c| c.caption.as_str()).collect::<Vec<_>>()),
            ),
            (
                "url",
                table::opt_utf8(&rows.iter().map(|c| c.url.clone()).collect::<Vec<_>>()),
            ),
            (
                "path",
                table::opt_utf8(&rows.iter().map(|c| c.path.clone()).collect::<Vec<_>>()),
            ),
            (
                "label",
                table::i32s(&rows.iter().map(|c| c.label as i32).collect::<Vec<_>>()),
            ),
            (
                "class",
                table::utf8(
                    &rows
                        .iter()
                        .map(|c| names[c.label].as_str())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "score",
                table::f64s(&rows.iter().map(|c| c.score).collect::<Vec<_>>()),
            ),
            (
                "shard",
                table::utf8(&rows.iter().map(|c| c.shard.as_str()).collect::<Vec<_>>()),
            ),
        ],
        meta,
        table::Mode::Replace,
    )?;
    Ok(())
}

fn read_candidates(f: &table::Frame) -> Result<Vec<Candidate>> {
    let (key, cap, url, path, label, score, shard) = (
        f.strings("key")?,
        f.strings("caption")?,
        f.opt_strings("url")?,
        f.opt_strings("path")?,
        f.i32s("label")?,
        f.f64s("score")?,
        f.strings("shard")?,
    );
    Ok((0..f.rows)
        .map(|i| Candidate {
            key: key[i].clone(),
            caption: cap[i].clone(),
            url: url[i].clone(),
            path: path[i].clone(),
            label: label[i].unwrap_or(0) as usize,
            score: score[i].unwrap_or(0.0),
            shard: shard[i].clone(),
        })
        .collect())
}

/// The per-class report lines: matched captions and kept samples.
pub fn count_lines(names: &[String], matched: &[u64], kept: &[usize]) -> Vec<String> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&c| (kept[c], c));
    order
        .iter()
        .map(|&c| {
            format!(
                "{:>16}: {:>8} captions matched, {:>5} kept",
                names[c], matched[c], kept[c]
            )
        })
        .collect()
}

pub fn run(a: &RetrieveArgs) -> Result<()> {
    if a.k == 0 || a.batch_size == 0 {
        bail!("--k and --batch-size must be at least 1");
    }
    let (names, phrases) = phrases(&a.data, a.classes.as_deref())?;
    let matcher = Matcher::new(&phrases)?;
    let device = crate::train::device(&a.device)?;
    let model = hub::resolve(
        &a.text_model,
        &Source {
            revision: a.text_revision.clone(),
            name: a.text_name.clone(),
            offline: a.offline,
        },
    )?;
    let clip = encoder::load_clip(&model.dir, &device)
        .with_context(|| format!("{}: the text model must be a CLIP", model.dir.display()))?;
    let text = encoder::ClipText {
        tok: encoder::tokenizer_for(&model.dir, &clip)?,
        clip: &clip,
    };
    let protos = encoder::prototypes(&text, &phrases, &TEMPLATES)?;
    let tok = text.tok;
    let text = Text {
        clip,
        tok,
        protos,
        batch: a.batch_size,
    };
    let c = names.len();
    // what the candidates depend on: the model, the phrases and k (not the shard list)
    let mut h = Sha256::new();
    h.update(format!("retrieve-v1|{}|{}|", model.fingerprint, a.k));
    for p in &phrases {
        h.update(p.join("|"));
        h.update("\n");
    }
    let run_key = hub::hex(&h.finalize());

    // the metadata of the state and of the result
    let meta = |done: &Done| -> Result<Vec<(&'static str, String)>> {
        Ok(vec![
            ("text_model", model.key()),
            ("k", a.k.to_string()),
            ("created_by", crate::TOOL_VERSION.to_string()),
            ("run_key", run_key.clone()),
            ("done_shards", serde_json::to_string(done)?),
        ])
    };
    if let Some(n) = a.shard.map(|s| s.count).or(a.merge) {
        if n == 0 {
            bail!("--merge N: N must be at least 1");
        }
        if let Some(p) = crate::shard::other_parts(&a.data, "retrieve", n).first() {
            bail!(
                "{}: a part of a retrieve split another way than into {n}; remove it or use its N",
                p.display()
            );
        }
    }
    let spath = match a.shard {
        Some(sh) => part_path(&a.data, sh),
        None => state_path(&a.data),
    };
    table::sweep_stale(&a.data, false);
    let mut top = TopK::new(c, a.k);
    let mut done = Done {
        matched: vec![0; c],
        ..Done::default()
    };
    let mut merged_skips: Vec<String> = Vec::new();
    if let Some(n) = a.merge {
        // every part, complete, of this text model, phrase list and k
        for i in 0..n {
            let sh = crate::shard::Shard { index: i, count: n };
            let p = part_path(&a.data, sh);
            if !p.exists() {
                bail!(
                    "{}: missing (run `vlal retrieve --shard {sh}` first)",
                    p.display()
                );
            }
            let f = table::read(&p, Table::Retrieved)?;
            if f.meta.get("run_key") != Some(&run_key) {
                bail!(
                    "{}: from another text model, class list or k than this merge",
                    p.display()
                );
            }
            if f.meta.get("complete").map(String::as_str) != Some("true") {
                bail!(
                    "{}: not complete (rerun `vlal retrieve --shard {sh}`)",
                    p.display()
                );
            }
            let d: Done = serde_json::from_str(f.meta("done_shards")?)
                .map_err(|e| anyhow!("{}: bad done_shards ({e})", p.display()))?;
            done.shards.extend(d.shards);
            for (m, x) in done.matched.iter_mut().zip(&d.matched) {
                *m += x;
            }
            for x in read_candidates(&f)? {
                top.push(x);
            }
            merged_skips.extend(
                f.meta
                    .get("skipped_shards")
                    .into_iter()
                    .flat_map(|s| s.lines())
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        progress::log(format!("merging {n} parts of {}", a.data.display()));
    } else if spath.exists() {
        let f = table::read(&spath, Table::Retrieved)?;
        if f.meta.get("run_key") == Some(&run_key) {
            done = serde_json::from_str(f.meta("done_shards")?)
                .map_err(|e| anyhow!("{}: bad done_shards ({e})", spath.display()))?;
            for x in read_candidates(&f)? {
                top.push(x);
            }
            progress::log(format!(
                "resuming: {} shard(s) already done ({})",
                done.shards.len(),
                spath.display()
            ));
        } else {
            progress::log(format!(
                "{}: from another model, class list or k; starting over",
                spath.display()
            ));
        }
    }
    let all: Vec<PathBuf> = match (a.merge, a.shard) {
        (Some(_), _) | (None, None) => shards(&a.corpus)?,
        (None, Some(sh)) => shards(&a.corpus)?
            .into_iter()
            .filter(|p| sh.holds_name(&file_name(p)))
            .collect(),
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // a finished shard that changed or went away since: its candidates and counts are stale
    let now: BTreeMap<String, u64> = all
        .iter()
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), size(p))))
        .collect();
    if let Some(name) = done
        .shards
        .iter()
        .find(|(n, d)| now.get(*n) != Some(&d.0))
        .map(|(n, _)| n.clone())
    {
        if a.merge.is_some() {
            bail!(
                "{}: shard {name} changed or went away since its part read it; rerun the parts",
                a.corpus.display()
            );
        }
        progress::log(format!(
            "{}: shard {name} changed or went away since it was read; starting over",
            spath.display()
        ));
        top = TopK::new(c, a.k);
        done = Done {
            matched: vec![0; c],
            ..Done::default()
        };
    }
    if a.merge.is_some() {
        merged_skips.sort();
        let skipped_names: std::collections::HashSet<&str> = merged_skips
            .iter()
            .filter_map(|l| l.split_once(": ").map(|(n, _)| n))
            .collect();
        if let Some(p) = all.iter().find(|p| {
            let name = file_name(p);
            !done.shards.contains_key(&name) && !skipped_names.contains(name.as_str())
        }) {
            bail!(
                "{}: in no part (the corpus changed since the parts were read); rerun the parts",
                p.display()
            );
        }
    }
    let todo: Vec<(PathBuf, u64)> = all
        .iter()
        .filter(|_| a.merge.is_none())
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            (!done.shards.contains_key(&name)).then(|| (p.clone(), size(p)))
        })
        .take(a.max_shards.unwrap_or(usize::MAX))
        .collect();
    let rows_of = |p: &Path| -> u64 {
        std::fs::File::open(p)
            .ok()
            .and_then(|f| parquet::file::reader::SerializedFileReader::new(f).ok())
            .map(|r| {
                use parquet::file::reader::FileReader;
                r.metadata().file_metadata().num_rows().max(0) as u64
            })
            .unwrap_or(0)
    };
    let total: u64 = todo.iter().map(|(p, _)| rows_of(p)).sum();
    progress::log(format!(
        "{} shard(s) in {}, {} to read ({} captions); matching {} phrases of {c} classes; \
         ranking with {}",
        all.len(),
        a.corpus.display(),
        todo.len(),
        total,
        phrases.iter().map(Vec::len).sum::<usize>(),
        model.key()
    ));
    let pb = progress::bar(total, "retrieve");
    let t0 = Instant::now();
    let mut rows_read = 0u64;
    let mut skipped: Vec<String> = merged_skips;
    for (p, bytes) in &todo {
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        match read_shard(p, &matcher, &text, c, &pb) {
            Ok((stats, cands)) => {
                rows_read += stats.rows;
                for (m, s) in done.matched.iter_mut().zip(&stats.matched) {
                    *m += s;
                }
                for x in cands {
                    top.push(x);
                }
                done.shards.insert(name, (*bytes, stats.rows));
                // save the state: every candidate still in the running, and the done shards
                let snapshot = TopK {
                    k: top.k,
                    classes: top.classes.clone(),
                }
                .finish_keep_all();
                let rows: Vec<&Candidate> = snapshot.iter().flatten().collect();
                write_table(&spath, &rows, &names, &meta(&done)?, Ids::ClassKey)?;
            }
            Err(e) => {
                progress::log(format!("{}: skipped: {e:#}", p.display()));
                skipped.push(format!("{name}: {e:#}"));
            }
        }
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if !todo.is_empty() {
        progress::log(format!(
            "read {rows_read} captions in {secs:.1} s ({:.0} captions/s), {} shard(s) skipped",
            rows_read as f64 / secs.max(1e-9),
            skipped.len()
        ));
    }
    let remaining = all.len().saturating_sub(done.shards.len() + skipped.len());
    if let Some(sh) = a.shard {
        if remaining == 0 {
            // the part's result: its candidates still in the running, its counts and skips
            let snapshot = top.finish_keep_all();
            let rows: Vec<&Candidate> = snapshot.iter().flatten().collect();
            let mut m = meta(&done)?;
            m.push(("skipped_shards", skipped.join("\n")));
            m.push(("complete", "true".into()));
            write_table(&spath, &rows, &names, &m, Ids::ClassKey)?;
            progress::log(format!(
                "part {sh} complete ({} shard(s) read, {} skipped): {}; combine the parts with \
                 `vlal retrieve --merge {}`",
                done.shards.len(),
                skipped.len(),
                spath.display(),
                sh.count
            ));
        } else {
            progress::log(format!(
                "part {sh}: {remaining} shard(s) beyond --max-shards not read yet (rerun to resume)"
            ));
        }
        return Ok(());
    }
    let classes = top.finish();
    let kept: Vec<usize> = classes.iter().map(Vec::len).collect();
    for line in count_lines(&names, &done.matched, &kept) {
        progress::log(line);
    }
    if remaining > 0 {
        progress::log(format!(
            "{remaining} shard(s) beyond --max-shards not read yet; {} is written once every \
             shard was tried (rerun to resume)",
            out_path(&a.data).display()
        ));
        return Ok(());
    }
    if done.shards.is_empty() {
        bail!(
            "{}: none of the {} shard(s) could be read (first: {})",
            a.corpus.display(),
            skipped.len(),
            skipped.first().map(String::as_str).unwrap_or("?")
        );
    }
    let rows: Vec<&Candidate> = classes.iter().flatten().collect();
    let out = out_path(&a.data);
    // the corpus embeddings first: a retrieved table is never newer than its embeddings
    let epath = crate::cache::corpus_embeddings_path(&out);
    match &a.embedding_model {
        Some(em) => write_embeddings(&epath, &rows, &a.corpus, &all, em, &run_key)?,
        None if epath.exists() => {
            std::fs::remove_file(&epath)
                .with_context(|| format!("{}: cannot remove", epath.display()))?;
            progress::log(format!(
                "{}: removed (no --embedding-model)",
                epath.display()
            ));
        }
        None => {}
    }
    let mut m = meta(&done)?;
    m.push(("matched", serde_json::to_string(&done.matched)?));
    m.push(("skipped_shards", skipped.join("\n")));
    write_table(&out, &rows, &names, &m, Ids::Key)?;
    progress::log(format!(
        "wrote {}: {} samples of {c} classes (k = {}){}",
        out.display(),
        rows.len(),
        a.k,
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; {} unreadable shard(s) skipped (a rerun tries them again)",
                skipped.len()
            )
        }
    ));
    Ok(())
}

impl TopK {
    /// The candidates still in the running (each class trimmed to k), for the saved state.
    fn finish_keep_all(mut self) -> Vec<Vec<Candidate>> {
        for v in &mut self.classes {
            Self::trim(v, self.k);
        }
        self.classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str, label: usize, score: f64) -> Candidate {
        Candidate {
            key: key.into(),
            caption: key.into(),
            url: None,
            path: None,
            label,
            score,
            shard: "s".into(),
        }
    }

    #[test]
    fn top_k_per_class_best_first_with_duplicates_resolved() {
        let mut t = TopK::new(2, 3);
        for (i, s) in [0.1, 0.9, 0.5, 0.7, 0.3].iter().enumerate() {
            t.push(cand(&format!("a{i}"), 0, *s));
        }
        t.push(cand("b0", 1, 0.2));
        // a corpus duplicate of a1 in class 0 with a lower score, and b0 again in class 0 with a
        // higher score than in class 1
        t.push(cand("a1", 0, 0.05));
        t.push(cand("b0", 0, 0.95));
        // ties on score: the smaller key first
        t.push(cand("b2", 1, 0.4));
        t.push(cand("b1", 1, 0.4));
        let out = t.finish();
        let keys = |v: &Vec<Candidate>| v.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&out[0]), vec!["b0", "a1", "a3"]);
        assert_eq!(keys(&out[1]), vec!["b1", "b2"]);
    }
}
