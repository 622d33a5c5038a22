//! `vlal corpus`: a generated LAION-style image–text corpus, to try `retrieve` without LAION.
//! Parquet shards with columns key, caption, url and path. A share of the captions name a class
//! (its name or a synonym, in varied case and phrasing) and point to an image of that class
//! from an image folder; the classes are long-tailed (the rarest is `--tail` times as frequent
//! as the most common, in a seeded order), some captions point to an image of another class
//! (`--noise`), and the other captions are distractors, many of them near misses that contain a
//! class word inside a longer word ("bags" is not "bag"). `--bad-shards` adds a shard without a
//! caption column and one whose captions are not UTF-8.

use crate::dataset::{self, Class};
use crate::{progress, rng};
use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug, clap::Args)]
pub struct CorpusArgs {
    /// Image folder of <class>/<image> (class folders matched to --classes as `extract` matches
    /// them): the images captions point to.
    #[arg(long)]
    pub images: PathBuf,
    /// Class names and synonyms (`name | synonym | …`), as for extract.
    #[arg(long)]
    pub classes: PathBuf,
    /// Output folder of the shards (part-00000.parquet, …); must not exist.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub captions: usize,
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Share of captions that name a class.
    #[arg(long, default_value_t = 0.02)]
    pub named: f64,
    /// Frequency of the rarest class relative to the most common.
    #[arg(long, default_value_t = 0.01)]
    pub tail: f64,
    /// Share of class captions whose image is of another class.
    #[arg(long, default_value_t = 0.1)]
    pub noise: f64,
    /// Also write two unreadable shards (no caption column; captions that are not UTF-8).
    #[arg(long)]
    pub bad_shards: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const TEMPLATES: [&str; 10] = [
    "a photo of a {}",
    "{} for sale",
    "my new {} :)",
    "{} on a white background",
    "close-up of a {}, studio light",
    "cheap {} - free shipping",
    "model wearing a {} in the street",
    "vintage {} from the 90s",
    "the best {} of the season",
    "product shot: {}",
];
const ADJ: [&str; 8] = [
    "black", "red", "striped", "cotton", "leather", "blue", "classic", "new",
];
const WORDS: [&str; 24] = [
    "sunset",
    "over",
    "the",
    "lake",
    "city",
    "skyline",
    "at",
    "night",
    "category",
    "catalog",
    "bootstrap",
    "topology",
    "shoestring",
    "dressing",
    "coating",
    "baggage",
    "mountain",
    "dog",
    "garden",
    "coffee",
    "table",
    "landscape",
    "portrait",
    "abstract",
];

/// The class frequencies: tail^(rank/(C−1)) over a seeded order of the classes, normalised.
pub fn class_weights(c: usize, tail: f64, seed: u64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..c).collect();
    rng::shuffle(&mut order, &mut rng::stream(seed, "corpus-classes", 0));
    let mut w = vec![0.0; c];
    for (rank, &k) in order.iter().enumerate() {
        w[k] = tail.powf(rank as f64 / (c.max(2) - 1) as f64);
    }
    let s: f64 = w.iter().sum();
    w.iter().map(|v| v / s).collect()
}

fn pick_weighted(w: &[f64], r: &mut impl Rng) -> usize {
    let mut u: f64 = r.random();
    for (i, &p) in w.iter().enumerate() {
        if u < p {
            return i;
        }
        u -= p;
    }
    w.len() - 1
}

/// A phrase of class `c` in a random case.
fn phrase(c: &Class, r: &mut impl Rng) -> String {
    let n = 1 + c.synonyms.len();
    let i = r.random_range(0..n);
    let p = if i == 0 { &c.name } else { &c.synonyms[i - 1] };
    match r.random_range(0..4) {
        0 => p.to_uppercase(),
        1 => {
            let mut ch = p.chars();
            ch.next()
                .map(|f| f.to_uppercase().chain(ch).collect())
                .unwrap_or_default()
        }
        _ => p.to_lowercase(),
    }
}

/// Near misses: the last word of each class phrase glued into a longer word ("bags", "subcoat",
/// "top_7"), keeping only those that name no class as a whole word.
fn near_misses(classes: &[Class]) -> Result<Vec<String>> {
    let phrases: Vec<Vec<String>> = classes
        .iter()
        .map(|c| {
            std::iter::once(c.name.clone())
                .chain(c.synonyms.clone())
                .collect()
        })
        .collect();
    let m = crate::captions::Matcher::new(&phrases)?;
    let mut out = Vec::new();
    for p in phrases.iter().flatten() {
        let p = p.to_lowercase();
        let Some(w) = p
            .split(|c: char| !c.is_alphanumeric())
            .rfind(|w| !w.is_empty())
        else {
            continue;
        };
        for v in [
            format!("{w}s"),
            format!("{w}ing"),
            format!("sub{w}"),
            format!("{w}_7"),
        ] {
            if m.classes(&v).is_empty() && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// A distractor: generic words and near misses.
fn distractor(near: &[String], r: &mut impl Rng) -> String {
    let n = r.random_range(3..9);
    let mut out: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        if !near.is_empty() && r.random::<f64>() < 0.15 {
            out.push(&near[r.random_range(0..near.len())]);
        } else {
            out.push(WORDS[r.random_range(0..WORDS.len())]);
        }
    }
    out.join(" ")
}

fn write_shard(path: &Path, columns: Vec<(&str, ArrayRef)>) -> Result<()> {
    let batch = RecordBatch::try_from_iter(columns)?;
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

pub fn run(a: &CorpusArgs) -> Result<()> {
    if a.shards == 0 || a.captions < a.shards {
        bail!("--shards must be at least 1 and at most --captions");
    }
    if !(0.0..=1.0).contains(&a.named) || !(0.0..=1.0).contains(&a.noise) || a.tail <= 0.0 {
        bail!("--named and --noise must be in [0, 1], --tail positive");
    }
    if a.out.exists() {
        bail!(
            "{}: exists; remove it or choose another --out",
            a.out.display()
        );
    }
    // every image is used, whatever split the reader assigns it
    let data = dataset::from_folder(&a.images, Some(&a.classes), 0.5, 0.0)?;
    let c = data.classes.len();
    let mut images: Vec<Vec<String>> = vec![Vec::new(); c];
    for s in &data.samples {
        let p = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        images[s.label.unwrap_or(0) as usize].push(p.display().to_string());
    }
    if let Some(k) = (0..c).find(|&k| images[k].is_empty()) {
        bail!(
            "{}: no images of class '{}'",
            a.images.display(),
            data.classes[k].name
        );
    }
    for (k, v) in images.iter_mut().enumerate() {
        rng::shuffle(v, &mut rng::stream(a.seed, "corpus-images", k));
    }
    let w = class_weights(c, a.tail, a.seed);
    let near = near_misses(&data.classes)?;
    let staged = crate::table::StagedDir::new(&a.out, "corpus")?;
    let per = a.captions.div_ceil(a.shards);
    let pb = progress::bar(a.shards as u64, "shards");
    // a global counter per class walks through its shuffled images (distinct until they run out)
    let counts: Vec<usize> = (0..a.shards)
        .into_par_iter()
        .map(|s| -> Result<usize> {
            let mut r = rng::stream(a.seed, "corpus", s);
            let n = per.min(a.captions - s * per);
            let (mut keys, mut caps, mut urls, mut paths) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut named = 0;
            for i in 0..n {
                let key = format!("{s:05}{i:07}");
                let (cap, path) = if r.random::<f64>() < a.named {
                    named += 1;
                    let k = pick_weighted(&w, &mut r);
                    let t = TEMPLATES[r.random_range(0..TEMPLATES.len())];
                    let mut p = phrase(&data.classes[k], &mut r);
                    if r.random::<f64>() < 0.5 {
                        p = format!("{} {p}", ADJ[r.random_range(0..ADJ.len())]);
                    }
                    let img_class = if r.random::<f64>() < a.noise {
                        (k + r.random_range(1..c)) % c
                    } else {
                        k
                    };
                    let v = &images[img_class];
                    (
                        t.replace("{}", &p),
                        Some(v[r.random_range(0..v.len())].clone()),
                    )
                } else {
                    (distractor(&near, &mut r), None)
                };
                urls.push(format!("https://example.org/{key}.jpg"));
                keys.push(key);
                caps.push(cap);
                paths.push(path);
            }
            write_shard(
                &staged.path().join(format!("part-{s:05}.parquet")),
                vec![
                    ("key", Arc::new(StringArray::from(keys)) as ArrayRef),
                    ("caption", Arc::new(StringArray::from(caps))),
                    ("url", Arc::new(StringArray::from(urls))),
                    ("path", Arc::new(StringArray::from(paths))),
                ],
            )?;
            pb.inc(1);
            Ok(named)
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    if a.bad_shards {
        write_shard(
            &staged.path().join("part-bad-no-caption.parquet"),
            vec![
                ("key", Arc::new(StringArray::from(vec!["x0"])) as ArrayRef),
                (
                    "text",
                    Arc::new(StringArray::from(vec!["a photo of a cat"])),
                ),
            ],
        )?;
        let bad: Vec<&[u8]> = vec![b"a fine caption", b"caption \xff\xfe broken"];
        write_shard(
            &staged.path().join("part-bad-utf8.parquet"),
            vec![
                (
                    "key",
                    Arc::new(StringArray::from(vec!["y0", "y1"])) as ArrayRef,
                ),
                ("caption", Arc::new(BinaryArray::from(bad))),
            ],
        )?;
    }
    // every word a caption can hold, for a word-level tokenizer (`vlal tiny --words`)
    let mut words: Vec<String> = TEMPLATES
        .iter()
        .chain(ADJ.iter())
        .chain(WORDS.iter())
        .map(|s| s.to_string())
        .collect();
    for cl in &data.classes {
        for p in std::iter::once(&cl.name).chain(&cl.synonyms) {
            let w = p.to_lowercase();
            words.push(w);
        }
    }
    words.extend(near.iter().cloned());
    std::fs::write(staged.path().join("words.txt"), words.join("\n") + "\n")?;
    staged.commit()?;
    let named: usize = counts.iter().sum();
    progress::log(format!(
        "wrote {}: {} captions in {} shards, {named} naming a class{}",
        a.out.display(),
        a.captions,
        a.shards,
        if a.bad_shards {
            ", plus 2 bad shards"
        } else {
            ""
        }
    ));
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&x, &y| w[y].total_cmp(&w[x]));
    progress::log(format!(
        "class frequencies: {}",
        order
            .iter()
            .map(|&k| format!("{} {:.1}%", data.classes[k].name, 100.0 * w[k]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_name_no_class() {
        let classes = vec![
            Class {
                name: "Sandal".into(),
                synonyms: vec!["sandals".into()],
            },
            Class {
                name: "T-shirt/top".into(),
                synonyms: vec!["tee".into()],
            },
        ];
        let n = near_misses(&classes).unwrap();
        assert!(!n.contains(&"sandals".to_string()), "{n:?}");
        assert!(n.contains(&"subsandal".to_string()) && n.contains(&"tops".to_string()));
        assert!(n.contains(&"top_7".to_string()) && n.contains(&"tees".to_string()));
    }

    #[test]
    fn weights_are_long_tailed_and_seeded() {
        let w = class_weights(10, 0.01, 0);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let max = w.iter().cloned().fold(0.0, f64::max);
        let min = w.iter().cloned().fold(1.0, f64::min);
        assert!((min / max - 0.01).abs() < 1e-9);
        assert_eq!(w, class_weights(10, 0.01, 0));
        assert_ne!(w, class_weights(10, 0.01, 1));
    }
}
