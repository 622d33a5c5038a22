//! End-to-end test of ALOR on the tiny world: a generated corpus (with unreadable shards) →
//! `vlal retrieve` (stopped after one shard, then resumed, then compared with an uninterrupted
//! run, with a run in parts merged, and with the Slurm array script) → `extract --retrieved` → a pipeline of TFS and random with and without retrieved data,
//! trained with the linear probe, contrastive tuning, prompt learning and DHO (which distils the
//! teacher's logits of the retrieved rows too).

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::buffer::{Buffer, OffsetBuffer};
use std::path::Path;
use std::sync::Arc;
use vlal::schema::Table;
use vlal::table;

mod common;
use common::ok;

/// The tiny world in `d`: `vlal tiny` (4 classes of `per_class` images, random CLIP and DINOv2)
/// and the class file `classes`.
fn world(d: &Path, per_class: &str, classes: &str) {
    ok(
        d,
        &[
            "tiny",
            "--out",
            "w",
            "--classes",
            "4",
            "--per-class",
            per_class,
        ],
    );
    std::fs::write(d.join("classes.txt"), classes).unwrap();
}

/// `vlal extract` of the tiny world into `cache`, with `extra` arguments.
fn extract(d: &Path, extra: &[&str]) -> String {
    let mut v = vec![
        "extract",
        "--images",
        "w/images",
        "--classes",
        "classes.txt",
        "--out",
        "cache",
        "--teacher",
        "w/tiny-clip",
        "--student",
        "w/tiny-dino",
    ];
    v.extend_from_slice(extra);
    ok(d, &v)
}

fn write_batch(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A shard whose caption column is utf8-typed but holds bytes that are not UTF-8.
fn write_bad_utf8_shard(path: &Path) {
    let bytes: &[u8] = b"a cat\xc3\x28 photo";
    let offsets = OffsetBuffer::new(vec![0i32, bytes.len() as i32].into());
    // SAFETY: deliberately invalid UTF-8, to test that the reader refuses the shard; the array
    // is only handed to the Parquet writer, which copies bytes.
    let caption = unsafe { StringArray::new_unchecked(offsets, Buffer::from(bytes), None) };
    let batch = RecordBatch::try_from_iter(vec![
        ("key", Arc::new(StringArray::from(vec!["z0"])) as ArrayRef),
        ("caption", Arc::new(caption) as ArrayRef),
    ])
    .unwrap();
    write_batch(path, &batch);
}

fn whole_word(caption: &str, word: &str) -> bool {
    let c = caption.to_lowercase();
    c.match_indices(word).any(|(i, _)| {
        let before = c[..i].chars().next_back();
        let after = c[i + word.len()..].chars().next();
        !before.is_some_and(|x| x.is_alphanumeric() || x == '_')
            && !after.is_some_and(|x| x.is_alphanumeric() || x == '_')
    })
}

/// (trainer, strategy, round, accuracy) of every results file under `dir`.
fn results(dir: &Path) -> Vec<(String, String, i32, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let t = table::read(&p, Table::Results).unwrap();
                let s = |c: &str| t.strings(c).unwrap()[0].clone();
                out.push((
                    s("trainer"),
                    s("strategy"),
                    t.i32s("round").unwrap()[0].unwrap(),
                    t.f64s("accuracy").unwrap()[0].unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn retrieve_extract_and_a_pipeline_with_and_without_retrieved_data() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // a class file with a synonym, so synonyms are matched too
    world(d, "24", "apple | pomme\nboat\ncloud\ndaisy\n");
    ok(
        d,
        &[
            "corpus",
            "--images",
            "w/images",
            "--classes",
            "classes.txt",
            "--out",
            "corpus",
            "--captions",
            "30000",
            "--shards",
            "3",
            "--named",
            "0.03",
            "--tail",
            "0.05",
            "--bad-shards",
        ],
    );
    write_bad_utf8_shard(&d.join("corpus/part-bad-utf8-typed.parquet"));
    extract(d, &[]);
    let retrieve = [
        "retrieve",
        "--data",
        "cache",
        "--corpus",
        "corpus",
        "--text-model",
        "w/tiny-clip",
        "--classes",
        "classes.txt",
        "--k",
        "60",
        "--batch-size",
        "100",
    ];
    let with = |extra: &[&'static str]| {
        let mut v = retrieve.to_vec();
        v.extend_from_slice(extra);
        v
    };
    // stopped after one shard: state saved, no result yet
    let log = ok(d, &with(&["--max-shards", "1"]));
    assert!(log.contains("beyond --max-shards"), "{log}");
    assert!(d.join("cache/retrieve.state.parquet").exists());
    assert!(!d.join("cache/retrieved.parquet").exists());
    // resumed: the three bad shards are reported and skipped, the result is written
    let log = ok(d, &retrieve);
    assert!(log.contains("resuming: 1 shard(s) already done"), "{log}");
    assert!(
        log.contains("part-bad-no-caption.parquet: skipped: no column 'caption'"),
        "{log}"
    );
    assert!(
        log.contains("part-bad-utf8.parquet: skipped: column 'caption' is not valid UTF-8"),
        "{log}"
    );
    assert!(
        log.contains("part-bad-utf8-typed.parquet: skipped:"),
        "{log}"
    );
    let out = d.join("cache/retrieved.parquet");
    let f = table::read(&out, Table::Retrieved).unwrap();
    assert_eq!(f.meta["skipped_shards"].lines().count(), 3);
    let (caps, labels, classes, scores, paths) = (
        f.strings("caption").unwrap(),
        f.i32s("label").unwrap(),
        f.strings("class").unwrap(),
        f.f64s("score").unwrap(),
        f.opt_strings("path").unwrap(),
    );
    let names = ["apple", "boat", "cloud", "daisy"];
    let mut per_class = [0usize; 4];
    let mut synonym_used = false;
    for i in 0..f.rows {
        let l = labels[i].unwrap() as usize;
        per_class[l] += 1;
        assert_eq!(classes[i], names[l]);
        // the caption names its class (or the synonym) as a whole word
        let named = whole_word(&caps[i], names[l]) || (l == 0 && whole_word(&caps[i], "pomme"));
        assert!(named, "{:?} retrieved for {}", caps[i], names[l]);
        synonym_used |= l == 0 && whole_word(&caps[i], "pomme") && !whole_word(&caps[i], "apple");
        assert!(Path::new(paths[i].as_ref().unwrap()).is_file());
    }
    assert!(synonym_used, "no caption was retrieved through the synonym");
    assert!(per_class.iter().all(|&n| n > 0 && n <= 60), "{per_class:?}");
    assert!(
        per_class.iter().any(|&n| n == 60),
        "{per_class:?}: no class reached k"
    );
    assert!(
        per_class.iter().any(|&n| n < 60),
        "{per_class:?}: no tail class"
    );
    // best first within a class
    for l in 0..4 {
        let s: Vec<f64> = (0..f.rows)
            .filter(|&i| labels[i] == Some(l as i32))
            .map(|i| scores[i].unwrap())
            .collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "class {l}: {s:?}");
    }
    // an uninterrupted run gives the same table
    let ids_scores = || {
        let t = table::read(&out, Table::Retrieved).unwrap();
        (t.strings("sample_id").unwrap(), t.f64s("score").unwrap())
    };
    let first = std::fs::read(&out).unwrap();
    let first_rows = (f.strings("sample_id").unwrap(), scores.clone());
    std::fs::remove_file(d.join("cache/retrieve.state.parquet")).unwrap();
    std::fs::remove_file(&out).unwrap();
    ok(d, &retrieve);
    assert_eq!(ids_scores(), first_rows);
    assert!(!first.is_empty());
    // sharded: two parts read apart (the corpus shards split by a hash of their names), then
    // merged: the same table, counts and skipped shards as one process
    let matched = table::read(&out, Table::Retrieved).unwrap().meta["matched"].clone();
    let mut read = 0;
    for part in ["0/2", "1/2"] {
        let log = ok(d, &with(&["--shard", part]));
        assert!(log.contains(&format!("part {part} complete")), "{log}");
        read += log.matches(" to read (").count();
    }
    assert_eq!(read, 2);
    std::fs::remove_file(&out).unwrap();
    // bad: a split of another N, a merge with a missing part; nothing written
    let e = common::fails(d, &with(&["--shard", "0/3"]));
    assert!(
        e.contains("retrieve.part-0-of-2.parquet: a part of a retrieve split another way"),
        "{e}"
    );
    let e = common::fails(d, &with(&["--merge", "3"]));
    assert!(e.contains("split another way than into 3"), "{e}");
    let p1 = d.join("cache/retrieve.part-1-of-2.parquet");
    std::fs::rename(&p1, d.join("p1")).unwrap();
    let e = common::fails(d, &with(&["--merge", "2"]));
    assert!(
        e.contains("retrieve.part-1-of-2.parquet: missing (run `vlal retrieve --shard 1/2`"),
        "{e}"
    );
    assert!(!out.exists());
    std::fs::rename(d.join("p1"), &p1).unwrap();
    let log = ok(d, &with(&["--merge", "2"]));
    assert!(log.contains("merging 2 parts"), "{log}");
    assert_eq!(ids_scores(), first_rows);
    let merged = table::read(&out, Table::Retrieved).unwrap();
    assert_eq!(merged.meta["matched"], matched);
    assert_eq!(merged.meta["skipped_shards"], f.meta["skipped_shards"]);
    for i in 0..2 {
        std::fs::remove_file(d.join(format!("cache/retrieve.part-{i}-of-2.parquet"))).unwrap();
    }
    // deploy/slurm/shards.sbatch retrieve: the parts as an array, then the merge (a stand-in sbatch)
    std::fs::remove_file(&out).unwrap();
    let sbatch = |flags: &[&str], extra: &[&str]| {
        let args: Vec<&str> = extra.iter().chain(&retrieve[1..]).copied().collect();
        common::sbatch(d, flags, "retrieve", &args);
    };
    sbatch(&["--parsable", "--array=0-2"], &[]);
    for t in 0..3 {
        let log = std::fs::read_to_string(d.join(format!("task-{t}.log"))).unwrap();
        assert!(log.contains(&format!("part {t}/3 complete")), "{log}");
    }
    sbatch(&["--dependency=afterok:1"], &["--merge", "3"]);
    assert_eq!(ids_scores(), first_rows);
    for i in 0..3 {
        std::fs::remove_file(d.join(format!("cache/retrieve.part-{i}-of-3.parquet"))).unwrap();
    }
    // deploy/ray/shards.py retrieve: the parts as Ray tasks (a local 2-CPU instance), the merge
    std::fs::remove_file(&out).unwrap();
    let o = common::ray_shards(d, "retrieve", 2, &retrieve[1..]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && log.contains("merging 2 parts"),
        "{log}"
    );
    assert_eq!(ids_scores(), first_rows);
    for i in 0..2 {
        std::fs::remove_file(d.join(format!("cache/retrieve.part-{i}-of-2.parquet"))).unwrap();
    }
    // a shard that changes after it was read makes the next run start over
    let extra = d.join("corpus/part-zz-extra.parquet");
    std::fs::copy(d.join("corpus/part-00000.parquet"), &extra).unwrap();
    let log = ok(d, &retrieve);
    assert!(log.contains("4 to read"), "{log}"); // the new shard and the three bad ones
    std::fs::write(&extra, b"not parquet any more").unwrap();
    let log = ok(d, &retrieve);
    assert!(
        log.contains("shard part-zz-extra.parquet changed or went away"),
        "{log}"
    );
    std::fs::remove_file(&extra).unwrap();
    ok(d, &retrieve);
    assert_eq!(ids_scores(), first_rows);

    // the retrieved images join the cache
    extract(d, &["--retrieved", "cache/retrieved.parquet"]);
    let m = table::read(&d.join("cache/manifest.parquet"), Table::Manifest).unwrap();
    let (src, split) = (m.strings("source").unwrap(), m.strings("split").unwrap());
    let n_ret = src.iter().filter(|s| *s == "retrieved").count();
    assert_eq!(n_ret, f.rows);
    assert!((0..m.rows).all(|i| src[i] != "retrieved" || split[i] == "train"));
    for model in ["tiny-clip@local", "tiny-dino@local"] {
        let e = table::read(
            &d.join(format!("cache/{model}/retrieved.parquet")),
            Table::Embeddings,
        )
        .unwrap();
        assert_eq!(e.rows, f.rows, "{model}");
    }

    // a pipeline with and without the retrieved data
    std::fs::write(
        d.join("alor.toml"),
        r#"name = "alor-tiny"
seeds = [0]
rounds = 2
initial_per_class = 1
strategies = ["tfs", "tfs+rda", "random+rda"]
trainers = ["linear", "ct", "coop", "dho"]
[dataset]
name = "tiny"
root = "cache"
student = "tiny-dino@local"
teacher = "tiny-clip@local"
[linear]
epochs = 20
[ct]
epochs = 10
[coop]
model = "w/tiny-clip"
epochs = 5
n_ctx = 2
[dho]
epochs = 10
"#,
    )
    .unwrap();
    // --rda on names the +rda run
    let o = common::vlal(
        d,
        &[
            "paths",
            "--pipeline",
            "alor.toml",
            "--strategy",
            "tfs",
            "--rda",
            "on",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("-tfs+rda-seed0-"));
    let log = ok(d, &["-v", "run", "alor.toml"]);
    assert!(
        log.contains(&format!(
            "training on 4 labeled + {} retrieved samples",
            f.rows
        )),
        "{log}"
    );
    let res = results(&d.join("results"));
    // 4 trainers × 3 strategies × 3 rounds
    assert_eq!(res.len(), 36, "{res:?}");
    let acc = |trainer: &str, strategy: &str, round: i32| -> f64 {
        res.iter()
            .find(|r| r.0 == trainer && r.1 == strategy && r.2 == round)
            .unwrap_or_else(|| panic!("{trainer} {strategy} {round}"))
            .3
    };
    // round 0 has the same labels; the retrieved data change the model (its predictions: the
    // accuracy on the tiny test split is too coarse to tell)
    let probs = |trainer: &str, rda: &str| {
        let o = common::vlal(
            d,
            &[
                "paths",
                "--pipeline",
                "alor.toml",
                "--trainer",
                trainer,
                "--strategy",
                "tfs",
                "--rda",
                rda,
            ],
            &[],
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let p = out
            .lines()
            .find_map(|l| l.strip_prefix("PREDICTIONS="))
            .expect("PREDICTIONS line")
            .to_string();
        table::read(&d.join(p), Table::Predictions)
            .unwrap()
            .mat("probs")
            .unwrap()
    };
    assert!(res.iter().all(|r| (0.0..=1.0).contains(&r.3)), "{res:?}");
    // the retrieved images show the classes: the probe does not get worse with them
    assert!(
        acc("linear", "tfs+rda", 0) >= acc("linear", "tfs", 0),
        "{res:?}"
    );
    for t in ["linear", "ct", "coop", "dho"] {
        assert_ne!(probs(t, "off"), probs(t, "on"), "{t}");
    }
}

/// One shard of (key, caption) rows.
fn write_shard(path: &Path, rows: &[(&str, &str)]) {
    let rows: Vec<_> = rows.iter().map(|&(k, c)| (k, c, None, None)).collect();
    write_embedding_shard(path, &rows);
}

#[test]
fn a_key_under_two_classes_keeps_one_entry_and_an_unreadable_corpus_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    world(d, "4", "apple\nboat\ncloud\ndaisy\n");
    extract(d, &["-q"]);
    let retrieve = |corpus: &str| {
        common::vlal(
            d,
            &[
                "retrieve",
                "--data",
                "cache",
                "--corpus",
                corpus,
                "--text-model",
                "w/tiny-clip",
                "--classes",
                "classes.txt",
                "--k",
                "5",
            ],
            &[],
        )
    };
    // k1 is captioned twice, under two classes, in two shards (so the saved state between them
    // holds it in both classes)
    write_shard(
        &d.join("dup/part-0.parquet"),
        &[("k1", "an apple"), ("k2", "a cloud")],
    );
    write_shard(
        &d.join("dup/part-1.parquet"),
        &[("k1", "a boat"), ("k3", "a daisy")],
    );
    let o = retrieve("dup");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = table::read(&d.join("cache/retrieved.parquet"), Table::Retrieved).unwrap();
    let mut keys = f.strings("key").unwrap();
    keys.sort();
    assert_eq!(keys, ["k1", "k2", "k3"]);
    let at = f.strings("key").unwrap().iter().position(|k| k == "k1");
    let k1 = &f.strings("class").unwrap()[at.unwrap()];
    assert!(k1 == "apple" || k1 == "boat", "{k1}");

    // every shard unreadable: an error, and no result
    std::fs::remove_file(d.join("cache/retrieved.parquet")).unwrap();
    std::fs::remove_file(d.join("cache/retrieve.state.parquet")).ok();
    std::fs::create_dir_all(d.join("bad")).unwrap();
    std::fs::write(d.join("bad/part-0.parquet"), b"not parquet").unwrap();
    let o = retrieve("bad");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        line.starts_with(
            "error: bad: none of the 1 shard(s) could be read (first: part-0.parquet: "
        ),
        "{line}"
    );
    assert!(!d.join("cache/retrieved.parquet").exists());
}

/// A corpus shard with image embeddings: `(key, caption, image path, embedding)` rows, the
/// embeddings as a list<float32> column (null where a row has none).
fn write_embedding_shard(path: &Path, rows: &[(&str, &str, Option<&str>, Option<Vec<f32>>)]) {
    use arrow::array::{Float32Builder, ListBuilder};
    let mut emb = ListBuilder::new(Float32Builder::new());
    for r in rows {
        match &r.3 {
            Some(v) => {
                emb.values().append_slice(v);
                emb.append(true);
            }
            None => emb.append(false),
        }
    }
    let batch = RecordBatch::try_from_iter(vec![
        (
            "key",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "caption",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "path",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("embedding", Arc::new(emb.finish()) as ArrayRef),
    ])
    .unwrap();
    write_batch(path, &batch);
}

/// LAION-style: the corpus ships the teacher's image embeddings. `retrieve --embedding-model`
/// keeps the kept samples' vectors (normalised); `extract --retrieved` takes them as the
/// teacher's retrieved features, embeds only the images that exist with the student, and lets
/// the samples without an image join with teacher features only; a +rda run trains on them,
/// the student-feature trainers saying which rows they skip. Embeddings of another model than
/// the teacher are ignored (and the samples without an image left out).
#[test]
fn a_corpus_with_image_embeddings_retrieves_and_trains_without_images() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    world(d, "6", "apple\nboat\ncloud\ndaisy\n");
    extract(d, &[]);
    let dim: usize = table::read_meta(&d.join("cache/tiny-clip@local/train.parquet")).unwrap()
        ["dim"]
        .parse()
        .unwrap();
    // deterministic vectors of norm ≠ 1
    let v = |k: usize| -> Vec<f32> {
        (0..dim)
            .map(|j| ((k * 7 + j * 3) % 11) as f32 - 4.5)
            .collect()
    };
    let names = ["apple", "boat", "cloud", "daisy"];
    let mut rows: Vec<(String, String, Option<String>, Option<Vec<f32>>)> = Vec::new();
    for (c, n) in names.iter().enumerate() {
        for i in 0..3 {
            let k = c * 3 + i;
            // one sample per class has an image, one has no embedding
            let path = (i == 0).then(|| format!("../w/images/{n}/00{i}.png"));
            let emb = (i != 2 || c != 0).then(|| v(k));
            rows.push((
                format!("k{k:02}"),
                format!("a photo of a {n} number {i}"),
                path,
                emb,
            ));
        }
    }
    let r: Vec<(&str, &str, Option<&str>, Option<Vec<f32>>)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2.as_deref(), r.3.clone()))
        .collect();
    write_embedding_shard(&d.join("corpus/part-0.parquet"), &r);
    let retrieve = |model: &str| {
        ok(
            d,
            &[
                "retrieve",
                "--data",
                "cache",
                "--corpus",
                "corpus",
                "--text-model",
                "w/tiny-clip",
                "--k",
                "3",
                "--embedding-model",
                model,
            ],
        )
    };
    let log = retrieve("tiny-clip@local");
    assert!(
        log.contains("11 corpus embeddings of tiny-clip@local")
            && log.contains("1 kept sample(s) have none"),
        "{log}"
    );
    let e = table::read(
        &d.join("cache/retrieved.embeddings.parquet"),
        Table::Embeddings,
    )
    .unwrap();
    let (ids, m) = (e.strings("sample_id").unwrap(), e.mat("vector").unwrap());
    assert_eq!(m.cols, dim);
    for (i, id) in ids.iter().enumerate() {
        let k: usize = id.trim_start_matches("retrieved/k").parse().unwrap();
        let raw = v(k);
        let n = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (a, b) in m.row(i).iter().zip(&raw) {
            assert!((a - b / n).abs() < 1e-6);
        }
    }

    let log = extract(d, &["--retrieved", "cache/retrieved.parquet"]);
    assert!(
        log.contains("7 retrieved sample(s) without an image join"),
        "{log}"
    );
    assert!(
        log.contains("1 retrieved sample(s) have no image path"),
        "{log}"
    );
    let man = table::read(&d.join("cache/manifest.parquet"), Table::Manifest).unwrap();
    let (src, paths) = (
        man.strings("source").unwrap(),
        man.opt_strings("path").unwrap(),
    );
    let ret: Vec<usize> = (0..man.rows).filter(|&i| src[i] == "retrieved").collect();
    assert_eq!(ret.len(), 11);
    assert_eq!(ret.iter().filter(|&&i| paths[i].is_none()).count(), 7);
    let teacher = table::read(
        &d.join("cache/tiny-clip@local/retrieved.parquet"),
        Table::Embeddings,
    )
    .unwrap();
    assert_eq!(teacher.rows, 11);
    assert!(teacher
        .meta("preprocessing")
        .unwrap()
        .contains("precomputed corpus image embeddings"));
    assert_eq!(
        teacher.mat("vector").unwrap().data,
        m.data,
        "the corpus vectors, as retrieve wrote them"
    );
    let student = table::read(
        &d.join("cache/tiny-dino@local/retrieved.parquet"),
        Table::Embeddings,
    )
    .unwrap();
    assert_eq!(student.rows, 4, "the images that exist");
    let logits = table::read(
        &d.join("cache/tiny-clip@local/retrieved.logits.parquet"),
        Table::TeacherLogits,
    )
    .unwrap();
    assert_eq!(logits.rows, 11);
    // unchanged inputs: nothing to do
    let log = extract(d, &["--retrieved", "cache/retrieved.parquet"]);
    assert!(log.contains("up to date"), "{log}");

    std::fs::write(
        d.join("p.toml"),
        r#"name = "corpus"
seeds = [0]
rounds = 1
initial_per_class = 1
strategies = ["random+rda"]
trainers = ["linear", "dho"]
[dataset]
name = "tiny"
root = "cache"
student = "tiny-dino@local"
teacher = "tiny-clip@local"
[linear]
epochs = 5
[dho]
epochs = 5
"#,
    )
    .unwrap();
    let log = ok(d, &["-v", "run", "p.toml"]);
    assert!(
        log.contains("the linear trainer trains on tiny-dino@local's features: 7 retrieved sample(s) without an image have none and are skipped")
            && log.contains("training on 4 labeled + 4 retrieved samples"),
        "{log}"
    );

    // embeddings of another model: ignored, the images embedded, the rows without one left out
    retrieve("other-model@v1");
    let log = extract(d, &["--retrieved", "cache/retrieved.parquet"]);
    assert!(
        log.contains("embeddings of other-model@v1, not of the teacher tiny-clip@local"),
        "{log}"
    );
    let man = table::read(&d.join("cache/manifest.parquet"), Table::Manifest).unwrap();
    assert_eq!(
        man.strings("source")
            .unwrap()
            .iter()
            .filter(|s| *s == "retrieved")
            .count(),
        4
    );
}
