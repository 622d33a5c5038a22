//! End-to-end tests of `vlal extract` on generated images and random-weight CLIP and DINOv2
//! checkpoints in the Hugging Face layout: the cache it writes, what a second run skips, bad
//! input, hub ids resolved from the hf-hub cache, and a pipeline run on the result.

use std::path::{Path, PathBuf};
use std::process::Output;
use vlal::schema::Table;
use vlal::table;

mod common;
use common::succeeded;

/// `root/<class>/<i>.{png,jpg}`: 3 classes × 14 images of a class-dependent colour, varied
/// sizes, some grey.
fn write_images(root: &Path) {
    let colours = [[200u8, 40, 40], [40, 200, 40], [40, 40, 200]];
    for (c, name) in ["cat", "dog", "bird"].iter().enumerate() {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..14u32 {
            let (w, h) = (30 + 3 * i, 48 - 2 * i);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let k = ((x * 7 + y * 13 + i * 31) % 50) as u8;
                let col = colours[c];
                image::Rgb([col[0] / 2 + k, col[1] / 2 + k, col[2] / 2 + k])
            });
            if i % 5 == 4 {
                image::DynamicImage::ImageRgb8(img)
                    .to_luma8()
                    .save(d.join(format!("{i:02}.png")))
                    .unwrap();
            } else if i % 2 == 0 {
                img.save(d.join(format!("{i:02}.jpg"))).unwrap();
            } else {
                img.save(d.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        write_images(&root.join("images"));
        // the random checkpoints of `vlal tiny`; the tokenizer knows the names and synonyms
        let words = ["cat", "kitty", "dog", "bird", "birdie"];
        vlal::stages::tiny::write_clip(&root.join("tiny-clip"), &words, 0).unwrap();
        vlal::stages::tiny::write_dino(&root.join("tiny-dino"), 0).unwrap();
        std::fs::write(
            root.join("classes.txt"),
            "cat | kitty\ndog\nbird | birdie\n",
        )
        .unwrap();
        Fixture { _tmp: tmp, root }
    }
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
    fn extract(&self, out: &str, extra: &[&str]) -> Output {
        self.extract_from("images", "classes.txt", out, extra)
    }
    /// `vlal extract` of the image folder `images` with the class file `classes` (paths under
    /// the fixture) into `out`, through the tiny CLIP (unless `extra` names a `--teacher`) and
    /// DINOv2.
    fn extract_from(&self, images: &str, classes: &str, out: &str, extra: &[&str]) -> Output {
        self.extract_with(images, classes, out, extra, &[])
    }
    /// [`Fixture::extract_from`] with environment variables.
    fn extract_with(
        &self,
        images: &str,
        classes: &str,
        out: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = self.args(images, classes, out);
        if extra.contains(&"--teacher") {
            args.truncate(args.len() - 2);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::vlal(Path::new("."), &args, env)
    }
    /// The arguments of [`Fixture::extract_from`] without extras (the teacher last).
    fn args(&self, images: &str, classes: &str, out: &str) -> Vec<String> {
        let mut v: Vec<String> = ["extract", "--images", &self.p(images), "--classes"]
            .map(String::from)
            .to_vec();
        v.extend([
            self.p(classes),
            "--out".into(),
            self.p(out),
            "--student".into(),
        ]);
        v.extend([self.p("tiny-dino"), "--batch-size".into(), "8".into()]);
        v.extend(["--teacher".into(), self.p("tiny-clip")]);
        v
    }
}

/// `vlal run` of a one-seed, one-round pipeline on the cache `cache` of the fixture (the tiny
/// DINOv2 student, `teacher`), with these strategies and trainers; returns how many results
/// files it wrote.
fn run_pipeline(
    f: &Fixture,
    cache: &str,
    teacher: &str,
    strategies: &str,
    trainers: &str,
) -> usize {
    let cfg = f.root.join("pipe.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"name = "extracted"
seeds = [0]
rounds = 1
initial_per_class = 1
strategies = {strategies}
trainers = {trainers}
runs_dir = "{r}/runs"
results_dir = "{r}/results"
[dataset]
name = "tiny"
root = "{r}/{cache}"
student = "tiny-dino@local"
teacher = "{teacher}"
[linear]
epochs = 5
[dho]
epochs = 5
"#,
            r = f.root.display()
        ),
    )
    .unwrap();
    succeeded(&common::vlal(
        Path::new("."),
        &["run", cfg.to_str().unwrap()],
        &[],
    ));
    mtimes(&f.root.join("results"))
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "parquet"))
        .count()
}

fn mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push((
                    p.clone(),
                    std::fs::metadata(&p).unwrap().modified().unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn extract_builds_the_cache_skips_unchanged_inputs_and_feeds_a_pipeline() {
    let f = Fixture::new();
    let err = succeeded(&f.extract("cache", &[]));
    assert!(err.contains("images/s"), "{err}");
    let out = f.root.join("cache");
    let (t, s) = ("tiny-clip@local", "tiny-dino@local");

    // manifest: every image, train/calib/test held out by hash, labels from the folders
    let m = table::read(&out.join("manifest.parquet"), Table::Manifest).unwrap();
    assert_eq!(m.rows, 42);
    let splits = m.strings("split").unwrap();
    for sp in ["train", "calib", "test"] {
        assert!(splits.iter().any(|x| x == sp), "no {sp}");
    }
    let classes = table::read(&out.join("classes.parquet"), Table::Classes).unwrap();
    assert_eq!(classes.strings("name").unwrap(), ["cat", "dog", "bird"]);

    let mut n_rows = 0;
    for sp in ["train", "calib", "test"] {
        let te = table::read(
            &out.join(t).join(format!("{sp}.parquet")),
            Table::Embeddings,
        )
        .unwrap();
        let st = table::read(
            &out.join(s).join(format!("{sp}.parquet")),
            Table::Embeddings,
        )
        .unwrap();
        assert_eq!(te.meta("dim").unwrap(), "32");
        assert_eq!(st.meta("dim").unwrap(), "32");
        assert_eq!(te.meta("model_id").unwrap(), "tiny-clip");
        assert_eq!(st.meta("revision").unwrap(), "local");
        assert_eq!(te.meta("images").unwrap(), te.rows.to_string());
        assert!(
            st.meta("preprocessing").unwrap().contains("centre crop 28"),
            "{:?}",
            st.meta
        );
        assert_eq!(
            te.strings("sample_id").unwrap(),
            st.strings("sample_id").unwrap()
        );
        n_rows += te.rows;
        for mat in [te.mat("vector").unwrap(), st.mat("vector").unwrap()] {
            for i in 0..mat.rows {
                let n: f32 = mat.row(i).iter().map(|v| v * v).sum();
                assert!((n - 1.0).abs() < 1e-4, "norm {n}");
            }
        }
        // logits = cos(image, prototype) / τ, row for row
        let l = table::read(
            &out.join(t).join(format!("{sp}.logits.parquet")),
            Table::TeacherLogits,
        )
        .unwrap();
        assert_eq!(l.meta("tau").unwrap(), "0.01");
        let p = table::read(&out.join(t).join("prototypes.parquet"), Table::Prototypes).unwrap();
        let (z, protos, logits) = (
            te.mat("vector").unwrap(),
            p.mat("vector").unwrap(),
            l.mat("logits").unwrap(),
        );
        assert_eq!((protos.rows, logits.cols), (3, 3));
        for i in 0..z.rows {
            for c in 0..3 {
                let cos: f32 = z.row(i).iter().zip(protos.row(c)).map(|(a, b)| a * b).sum();
                assert!((logits.row(i)[c] - cos / 0.01).abs() < 1e-3);
            }
        }
    }
    assert_eq!(n_rows, 42);
    let p = table::read(&out.join(t).join("prototypes.parquet"), Table::Prototypes).unwrap();
    assert_eq!(p.strings("template_set").unwrap()[0], "clip-10");
    let protos = p.mat("vector").unwrap();

    // the same inputs again: no work, no file touched
    let before = mtimes(&out);
    let bytes = std::fs::read(out.join(t).join("train.parquet")).unwrap();
    let err = succeeded(&f.extract("cache", &[]));
    assert!(err.contains("up to date, nothing extracted"), "{err}");
    assert_eq!(mtimes(&out), before);
    assert_eq!(
        std::fs::read(out.join(t).join("train.parquet")).unwrap(),
        bytes
    );

    // a changed τ rewrites the logits only; synonyms change the prototypes
    succeeded(&f.extract("cache", &["--tau", "0.02"]));
    let after = mtimes(&out);
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        changed,
        [
            "calib.logits.parquet",
            "test.logits.parquet",
            "train.logits.parquet"
        ]
    );
    // ... recomputed from the cached embeddings: cos/0.02
    let z = table::read(&out.join(t).join("train.parquet"), Table::Embeddings)
        .unwrap()
        .mat("vector")
        .unwrap();
    let l = table::read(
        &out.join(t).join("train.logits.parquet"),
        Table::TeacherLogits,
    )
    .unwrap()
    .mat("logits")
    .unwrap();
    for i in 0..z.rows {
        for c in 0..3 {
            let cos: f32 = z.row(i).iter().zip(protos.row(c)).map(|(a, b)| a * b).sum();
            assert!((l.row(i)[c] - cos / 0.02).abs() < 1e-3);
        }
    }
    succeeded(&f.extract("cache", &["--tau", "0.02", "--synonyms"]));
    let p = table::read(&out.join(t).join("prototypes.parquet"), Table::Prototypes).unwrap();
    assert_eq!(p.strings("template_set").unwrap()[0], "clip-10+synonyms");
    let p2 = p.mat("vector").unwrap();
    let diff = |c: usize| {
        p2.row(c)
            .iter()
            .zip(protos.row(c))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(0) > 1e-3 && diff(1) < 1e-6,
        "cat has a synonym, dog has none: {} {}",
        diff(0),
        diff(1)
    );

    // a changed image: only its split is re-extracted, with the same result elsewhere
    let man = table::read(&out.join("manifest.parquet"), Table::Manifest).unwrap();
    let ids = man.strings("sample_id").unwrap();
    let sp = man.strings("split").unwrap();
    let k = ids.iter().position(|id| id.ends_with(".png")).unwrap();
    let before = mtimes(&out);
    let img = image::RgbImage::from_pixel(33, 33, image::Rgb([9, 99, 199]));
    img.save(f.root.join("images").join(&ids[k])).unwrap();
    succeeded(&f.extract("cache", &["--tau", "0.02", "--synonyms"]));
    let after = mtimes(&out);
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        let name = path.file_name().unwrap().to_string_lossy();
        let same_split = name.starts_with(&format!("{}.", sp[k]));
        let touched = a != b;
        if name.ends_with(".parquet")
            && name != "prototypes.parquet"
            && !name.starts_with("manifest")
            && !name.starts_with("classes")
        {
            assert_eq!(touched, same_split, "{name}");
        }
    }

    // a pipeline runs on the extracted cache (student features, teacher logits for DHO)
    let rows = run_pipeline(
        &f,
        "cache",
        t,
        r#"["entropy", "pcoreset"]"#,
        r#"["linear", "dho"]"#,
    );
    assert_eq!(rows, 2 * 2 * 2, "2 trainers × 2 strategies × rounds 0..=1");
    let o = common::vlal(
        Path::new("."),
        &["report", "--results", &f.p("results")],
        &[],
    );
    succeeded(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("pcoreset") && table.contains("dho"),
        "{table}"
    );
}

#[test]
fn bad_images_fail_cleanly_or_are_recorded_as_rejects() {
    let f = Fixture::new();
    let bad = f.root.join("images/dog/03.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = f.extract("cache", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dog/03.png: not a decodable image") && err.contains("--skip-bad"),
        "{err}"
    );
    // nothing written: not even the --out folder this run created
    assert!(!f.root.join("cache").exists());

    let err = succeeded(&f.extract("cache", &["--skip-bad"]));
    assert!(err.contains("1 unreadable images left out"), "{err}");
    let r = table::read(&f.root.join("cache/rejects.parquet"), Table::Rejects).unwrap();
    assert_eq!(r.strings("sample_id").unwrap(), ["dog/03.png"]);
    assert!(r.strings("error").unwrap()[0].contains("not a decodable image"));
    let m = table::read(&f.root.join("cache/manifest.parquet"), Table::Manifest).unwrap();
    assert_eq!(m.rows, 41);
    assert!(!m
        .strings("sample_id")
        .unwrap()
        .contains(&"dog/03.png".to_string()));
    // cached now: the rejects table stays as it is
    let err = succeeded(&f.extract("cache", &["--skip-bad"]));
    assert!(
        err.contains("up to date") && err.contains("1 unreadable"),
        "{err}"
    );
    // fixed image: back in the manifest, rejects table gone
    image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]))
        .save(&bad)
        .unwrap();
    succeeded(&f.extract("cache", &[]));
    assert!(!f.root.join("cache/rejects.parquet").exists());
    assert_eq!(
        table::read(&f.root.join("cache/manifest.parquet"), Table::Manifest)
            .unwrap()
            .rows,
        42
    );

    // an 857-byte strip of 1 × 200 000 px: resized to the short side it would need 30 GB; an
    // error (or a reject), not an abort
    image::GrayImage::new(1, 200_000).save(&bad).unwrap();
    let o = f.extract("cache", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("dog/03.png: a 1×200000 px image: resized to a ")
            && err.contains("--skip-bad"),
        "{err}"
    );
    let err = succeeded(&f.extract("cache", &["--skip-bad"]));
    assert!(err.contains("1 unreadable images left out"), "{err}");
    let r = table::read(&f.root.join("cache/rejects.parquet"), Table::Rejects).unwrap();
    assert!(r.strings("error").unwrap()[0].contains("an extreme aspect ratio"));
    assert!(!std::fs::read_dir(f.root.join("cache")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".extract-staging")));

    // a killed extract leaves its staging folder; the next one removes it and says so
    let abort = [("VLAL_FAULT_ABORT_AFTER_WRITES", "2")];
    let o = f.extract_with("images", "classes.txt", "killed", &["--skip-bad"], &abort);
    assert!(!o.status.success());
    let staging = |d: &str| -> usize {
        std::fs::read_dir(f.root.join(d))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".extract-staging-")
            })
            .count()
    };
    assert_eq!(staging("killed"), 1);
    let err = succeeded(&f.extract("killed", &["--skip-bad"]));
    assert!(
        err.contains("removed 1 leftover(s) of stopped processes (.extract-staging-"),
        "{err}"
    );
    assert_eq!(staging("killed"), 0);

    // weights that do not match the config, and missing weights: one clear line naming the file
    let cfg = f.root.join("tiny-dino/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"hidden_size\": 32", "\"hidden_size\": 48"),
    )
    .unwrap();
    let o = f.extract("cache2", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("tiny-dino/model.safetensors: does not match"),
        "{err}"
    );
    std::fs::remove_file(f.root.join("tiny-dino/model.safetensors")).unwrap();
    let err = String::from_utf8_lossy(&f.extract("cache2", &[]).stderr).to_string();
    assert!(
        err.contains("tiny-dino/model.safetensors: missing"),
        "{err}"
    );
    assert!(!f.root.join("cache2").exists() || mtimes(&f.root.join("cache2")).is_empty());
}

#[test]
fn hub_ids_resolve_from_the_hf_hub_cache_offline() {
    let f = Fixture::new();
    let hub = f.root.join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.join("models--tiny-org--tiny-clip");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(f.root.join("tiny-clip")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    let (images, out) = (f.p("images"), f.p("cache"));
    let env = [("HF_HUB_CACHE", hub.to_str().unwrap())];
    let args = [
        "extract",
        "--images",
        &images,
        "--out",
        &out,
        "--teacher",
        "tiny-org/tiny-clip",
        "--offline",
    ];
    let err = succeeded(&common::vlal(Path::new("."), &args, &env));
    assert!(
        err.contains("student = \"tiny-org/tiny-clip@main\""),
        "{err}"
    );
    let e = table::read(
        &f.root.join("cache/tiny-org/tiny-clip@main/train.parquet"),
        Table::Embeddings,
    )
    .unwrap();
    assert_eq!(e.meta("model_id").unwrap(), "tiny-org/tiny-clip");
    assert_eq!(e.meta("commit").unwrap(), commit);
    // classes from the folder names when no class file is given
    let c = table::read(&f.root.join("cache/classes.parquet"), Table::Classes).unwrap();
    assert_eq!(c.strings("name").unwrap(), ["bird", "cat", "dog"]);
    // a revision the cache does not hold
    let o = common::vlal(
        Path::new("."),
        &[&args[..], &["--teacher-revision", "v2"]].concat(),
        &env,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("tiny-org/tiny-clip@v2: config.json: not in the hf-hub cache"),
        "{err}"
    );
}

/// A pipeline of the prompt-learning trainer (CoOp) on a cache extracted from the tiny random
/// CLIP, next to the linear probe: the coop runs work on the teacher's image embeddings, their
/// heads predict softmax(z·Tᵀ/τ), a repeat selects the same samples, and a coop.model that is not
/// the cached teacher is refused.
#[test]
fn prompt_learning_trainer_runs_on_the_teachers_features() {
    let f = Fixture::new();
    succeeded(&f.extract("cache", &[]));
    let pipe = |name: &str, model: &str| {
        let cfg = f.root.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"name = "{name}"
seeds = [0]
rounds = 2
strategies = ["cb", "cb+sq", "random"]
trainers = ["coop", "linear"]
runs_dir = "{r}/{name}/runs"
results_dir = "{r}/{name}/results"
[dataset]
name = "tiny"
root = "{r}/cache"
student = "tiny-dino@local"
teacher = "tiny-clip@local"
[linear]
epochs = 5
[coop]
model = "{m}"
n_ctx = 4
epochs = 8
lr = 0.05
batch_size = 4
mode = "both"
"#,
                r = f.root.display(),
                m = f.p(model)
            ),
        )
        .unwrap();
        cfg
    };
    let a = pipe("a", "tiny-clip");
    succeeded(&common::vlal(
        Path::new("."),
        &["run", a.to_str().unwrap()],
        &[],
    ));
    let results = |name: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = mtimes(&f.root.join(name).join("results"))
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        results("a").len(),
        2 * 3 * 3,
        "2 trainers × 3 strategies × rounds 0..=2"
    );

    // a coop head classifies the teacher's image embeddings by its prompts' text features
    let runs = f.root.join("a/runs/a");
    let coop_cb: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("coop-cb-seed0")
        })
        .collect();
    assert_eq!(coop_cb.len(), 1, "{coop_cb:?}");
    let run = &coop_cb[0];
    let head = vlal::train::Head::load(
        &run.join("heads/round-002.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let emb_path = f.root.join("cache/tiny-clip@local/test.parquet");
    let emb = table::read(&emb_path, Table::Embeddings).unwrap();
    let z = emb.mat("vector").unwrap();
    let ids = emb.strings("sample_id").unwrap();
    let probs = head.predict(&z).unwrap();
    let pred = table::read(
        &run.join("predictions/round-002.parquet"),
        Table::Predictions,
    )
    .unwrap();
    let (pid, psplit, pp) = (
        pred.strings("sample_id").unwrap(),
        pred.strings("split").unwrap(),
        pred.mat("probs").unwrap(),
    );
    let mut checked = 0;
    for (i, id) in ids.iter().enumerate() {
        let j = (0..pid.len())
            .find(|&j| &pid[j] == id && psplit[j] == "test")
            .expect("test row predicted");
        for c in 0..3 {
            assert!((probs.row(i)[c] - pp.row(j)[c]).abs() < 1e-5);
        }
        checked += 1;
    }
    assert!(checked > 0);
    // the head learned something other than uniform prompts: its rows are proper distributions
    assert!(probs.data.iter().all(|p| p.is_finite() && *p >= 0.0));

    // same config and seed ⇒ the same selections, run from scratch elsewhere
    let b = pipe("b", "tiny-clip");
    succeeded(&common::vlal(
        Path::new("."),
        &["run", b.to_str().unwrap(), "--trainer", "coop"],
        &[],
    ));
    let queries = |name: &str| -> Vec<Vec<String>> {
        let mut files: Vec<PathBuf> = mtimes(&f.root.join(name).join("runs"))
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                p.to_string_lossy().contains("/coop-") && p.to_string_lossy().contains("/queries/")
            })
            .collect();
        files.sort_by_key(|p| {
            p.strip_prefix(f.root.join(name))
                .unwrap()
                .components()
                .skip(2)
                .map(|c| c.as_os_str().to_owned())
                .collect::<Vec<_>>()
        });
        files
            .iter()
            .map(|p| table::read_utf8_column(p, "sample_id").unwrap())
            .collect()
    };
    let (qa, qb) = (queries("a"), queries("b"));
    assert_eq!(qa.len(), 3 * 2, "3 coop runs × 2 rounds of queries");
    assert_eq!(qa, qb);

    // a coop.model other than the cached teacher is refused, naming both
    let c = pipe("c", "tiny-dino");
    let o = common::vlal(
        Path::new("."),
        &["run", c.to_str().unwrap(), "--trainer", "coop"],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is not the model whose image embeddings are cached")
            && err.contains("tiny-clip@local"),
        "{err}"
    );
}

/// `vlal import-idx`: IDX images and labels become `split/<label>/` PNG folders (with seeded
/// calib and excluded parts, and a seeded subset kept) that `extract` reads with the class file's names; mismatched label
/// counts are refused.
#[test]
fn idx_files_import_as_an_image_folder_that_extract_reads() {
    use vlal::idx::{to_bytes, Idx};
    let f = Fixture::new();
    let n = 30;
    let images = Idx {
        dims: vec![n, 8, 8],
        data: (0..n * 64)
            .map(|i| ((i / 64) % 3 * 80 + i % 7) as u8)
            .collect(),
    };
    let labels = Idx {
        dims: vec![n],
        data: (0..n).map(|i| (i % 3) as u8).collect(),
    };
    std::fs::write(f.root.join("img-idx3-ubyte"), to_bytes(&images)).unwrap();
    std::fs::write(f.root.join("lab-idx1-ubyte"), to_bytes(&labels)).unwrap();
    let import = |split: &str, extra: &[&str]| {
        let (i, l, o) = (
            f.p("img-idx3-ubyte"),
            f.p("lab-idx1-ubyte"),
            f.p("idx-images"),
        );
        let mut args = vec![
            "import-idx",
            "--images",
            &i,
            "--labels",
            &l,
            "--out",
            &o,
            "--split",
            split,
        ];
        args.extend_from_slice(extra);
        common::vlal(Path::new("."), &args, &[])
    };
    let excl = f.p("excluded");
    succeeded(&import(
        "train",
        &["--calib", "6", "--exclude", "4", "--exclude-to", &excl],
    ));
    succeeded(&import("test", &["--keep", "12"]));
    let count = |d: &str| {
        mtimes(&f.root.join(d))
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "png"))
            .count()
    };
    assert_eq!(count("idx-images/train"), 20);
    assert_eq!(count("idx-images/calib"), 6);
    assert_eq!(count("idx-images/test"), 12);
    assert_eq!(count("excluded"), 4);
    // folder 01 holds label 1's images; a second import leaves existing folders alone
    let before = mtimes(&f.root.join("idx-images"));
    let err = succeeded(&import("test", &[]));
    assert!(err.contains("exists, left as it is"), "{err}");
    assert_eq!(mtimes(&f.root.join("idx-images")), before);
    // extract reads it, names from the class file in label order
    std::fs::write(f.root.join("idx-classes.txt"), "zero\none\ntwo\n").unwrap();
    succeeded(&f.extract_from("idx-images", "idx-classes.txt", "idx-cache", &[]));
    let m = table::read(&f.root.join("idx-cache/manifest.parquet"), Table::Manifest).unwrap();
    assert_eq!(m.rows, 38);
    let (ids, labs) = (m.strings("sample_id").unwrap(), m.i32s("label").unwrap());
    for (id, l) in ids.iter().zip(labs) {
        let i: usize = id
            .rsplit('-')
            .next()
            .unwrap()
            .trim_end_matches(".png")
            .parse()
            .unwrap();
        assert_eq!(l.unwrap() as usize, i % 3, "{id}");
    }
    let c = table::read(&f.root.join("idx-cache/classes.parquet"), Table::Classes).unwrap();
    assert_eq!(c.strings("name").unwrap(), ["zero", "one", "two"]);
    // labels that do not match the images: one line naming the file
    let short = Idx {
        dims: vec![n - 1],
        data: vec![0; n - 1],
    };
    std::fs::write(f.root.join("lab-idx1-ubyte"), to_bytes(&short)).unwrap();
    let o = import("train", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("lab-idx1-ubyte"),
        "{err}"
    );
}

/// The classifier (`_fc` weight rows and bias) of an EfficientNet-Lite checkpoint folder.
fn classifier_head(dir: &Path) -> (Vec<Vec<f32>>, Vec<f32>) {
    let t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    (
        t["_fc.weight"].to_vec2::<f32>().unwrap(),
        t["_fc.bias"].to_vec1::<f32>().unwrap(),
    )
}

/// Logit k of that classifier for the features z: b_k + w_k · z.
fn head_logit(z: &[f32], w: &[Vec<f32>], b: &[f32], k: usize) -> f32 {
    b[k] + z.iter().zip(&w[k]).map(|(x, y)| x * y).sum::<f32>()
}

/// A pretrained classifier as the teacher: a label map (names and #indices) turns its logits
/// into task logits by log-sum-exp, its prototypes are the mean mapped classifier rows, and its
/// embeddings are the classifier's raw input; a classifier trained on the task's classes needs
/// no map; mistakes are one-line errors that leave no cache behind.
#[test]
fn a_classifier_teacher_with_a_label_map() {
    let f = Fixture::new();
    let labels = ["tabby", "beagle", "robin", "tiger cat", "car"];
    vlal::stages::tiny::write_lite_classifier(&f.root.join("lite-cls"), &labels).unwrap();
    vlal::stages::tiny::write_lite_classifier(&f.root.join("lite-task"), &["Bird", "cat", "dog"])
        .unwrap();
    std::fs::write(
        f.root.join("map.txt"),
        "# task: classifier classes\ncat: tabby | Tiger Cat\ndog: beagle\nbird: robin | #4\n",
    )
    .unwrap();
    let (map, cls) = (f.p("map.txt"), f.p("lite-cls"));
    let err = f.extract("c1", &["--teacher", &cls, "--label-map", &map]);
    let log = succeeded(&err);
    assert!(
        log.contains("label map: cat: tabby (#0) | tiger cat (#3)"),
        "{log}"
    );
    assert!(log.contains("teacher zero-shot accuracy"), "{log}");
    let out = f.root.join("c1");
    let key = "lite-cls@local";
    let (w, b) = classifier_head(&f.root.join("lite-cls"));
    let targets = [vec![0, 3], vec![1], vec![2, 4]];
    let p = table::read(&out.join(key).join("prototypes.parquet"), Table::Prototypes).unwrap();
    assert_eq!(p.strings("template_set").unwrap()[0], "label-map");
    let protos = p.mat("vector").unwrap();
    for (c, t) in targets.iter().enumerate() {
        for d in 0..16 {
            let want = t.iter().map(|&i| w[i][d]).sum::<f32>() / t.len() as f32;
            assert!((protos.row(c)[d] - want).abs() < 1e-6);
        }
    }
    let mut rows = 0;
    for sp in ["train", "calib", "test"] {
        let emb = table::read(
            &out.join(key).join(format!("{sp}.parquet")),
            Table::Embeddings,
        )
        .unwrap();
        assert!(emb.meta("preprocessing").unwrap().ends_with("; raw"));
        let l = table::read(
            &out.join(key).join(format!("{sp}.logits.parquet")),
            Table::TeacherLogits,
        )
        .unwrap();
        assert_eq!(l.meta("tau").unwrap(), "1");
        let (z, logits) = (emb.mat("vector").unwrap(), l.mat("logits").unwrap());
        assert_eq!(logits.cols, 3);
        let mut norms = Vec::new();
        for r in 0..z.rows {
            let full: Vec<f32> = (0..5).map(|k| head_logit(z.row(r), &w, &b, k)).collect();
            for (c, t) in targets.iter().enumerate() {
                let lse = t.iter().map(|&i| full[i].exp()).sum::<f32>().ln();
                assert!(
                    (logits.row(r)[c] - lse).abs() < 1e-4,
                    "{sp} row {r} class {c}"
                );
            }
            norms.push(z.row(r).iter().map(|v| v * v).sum::<f32>().sqrt());
        }
        // raw features, not unit vectors
        assert!(norms.iter().any(|n| (n - 1.0).abs() > 1e-2), "{norms:?}");
        rows += z.rows;
    }
    assert_eq!(rows, 42);

    // a classifier of the task's classes (any order, any case) needs no map
    let task = f.p("lite-task");
    succeeded(&f.extract("c2", &["--teacher", &task]));
    let l = table::read(
        &f.root.join("c2/lite-task@local/test.logits.parquet"),
        Table::TeacherLogits,
    )
    .unwrap();
    let emb = table::read(
        &f.root.join("c2/lite-task@local/test.parquet"),
        Table::Embeddings,
    )
    .unwrap();
    let (w, b) = classifier_head(&f.root.join("lite-task"));
    let (z, logits) = (emb.mat("vector").unwrap(), l.mat("logits").unwrap());
    // classes.txt orders cat, dog, bird; the classifier bird, cat, dog
    for r in 0..z.rows {
        for (c, k) in [1, 2, 0].into_iter().enumerate() {
            let want = head_logit(z.row(r), &w, &b, k);
            assert!((logits.row(r)[c] - want).abs() < 1e-4);
        }
    }

    // mistakes
    for (out, extra, want) in [
        (
            "e1",
            vec!["--teacher", cls.as_str()],
            "'cat' is not one of the classifier's 5 classes",
        ),
        (
            "e2",
            vec!["--teacher", &f.p("tiny-clip"), "--label-map", &map],
            "--label-map is for a classifier teacher",
        ),
    ] {
        let o = f.extract(out, &extra);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!f.root.join(out).exists());
    }
    std::fs::write(
        f.root.join("bad-map.txt"),
        "cat: tabby\ndog: poodle\nbird: robin\n",
    )
    .unwrap();
    let o = f.extract(
        "e3",
        &["--teacher", &cls, "--label-map", &f.p("bad-map.txt")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad-map.txt:2: 'poodle' is not one"),
        "{err}"
    );
}

/// `vlal fit-teacher`: a linear probe on a classifier backbone's raw features of held-out
/// images becomes a classifier checkpoint of the task's classes that `extract --teacher`
/// takes without a label map.
#[test]
fn fit_teacher_writes_a_classifier_that_extract_takes() {
    let f = Fixture::new();
    vlal::stages::tiny::write_lite_classifier(&f.root.join("lite"), &["a", "b", "c", "d"]).unwrap();
    std::fs::write(f.root.join("map.txt"), "cat: a\ndog: b\nbird: c | d\n").unwrap();
    let (lite, map) = (f.p("lite"), f.p("map.txt"));
    succeeded(&f.extract("held", &["--teacher", &lite, "--label-map", &map]));
    let fit = |out: &str, backbone: &str| {
        common::vlal(
            Path::new("."),
            &[
                "fit-teacher",
                "--cache",
                &f.p("held"),
                "--backbone",
                backbone,
                "--out",
                &f.p(out),
                "--epochs",
                "200",
            ],
            &[],
        )
    };
    let log = succeeded(&fit("probe", &lite));
    let acc = |log: &str, what: &str| -> f64 {
        let at = log.find(what).unwrap_or_else(|| panic!("{what} in {log}")) + what.len();
        log[at..]
            .trim_start()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let train_acc = acc(&log, "train accuracy");
    assert!(train_acc > 60.0, "{log}"); // 3 classes: chance is 33%
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.root.join("probe/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["id2label"]["2"], "bird");
    assert_eq!(cfg["model_type"], "efficientnet-lite");

    // the new checkpoint as the teacher: same features, the probe's logits
    let log = succeeded(&f.extract("c", &["--teacher", &f.p("probe")]));
    let held = table::read(
        &f.root.join("held/lite@local/train.parquet"),
        Table::Embeddings,
    )
    .unwrap()
    .mat("vector")
    .unwrap();
    let emb = table::read(
        &f.root.join("c/probe@local/train.parquet"),
        Table::Embeddings,
    )
    .unwrap()
    .mat("vector")
    .unwrap();
    assert_eq!(held.data, emb.data);
    assert!(
        acc(&log, "train: teacher zero-shot accuracy") > 60.0,
        "{log}"
    );

    // into a cache that holds the backbone's features of the same images, the head is applied
    // to them (no second pass), with the logits of a fresh extraction; another backbone runs
    succeeded(&f.extract("d", &["--teacher", &lite, "--label-map", &map]));
    let log = succeeded(&f.extract("d", &["--teacher", &f.p("probe")]));
    let reused = "probe@local has the backbone of lite@local: its";
    assert_eq!(log.matches(reused).count(), 3, "train, calib, test: {log}");
    let logits = |cache: &str, model: &str| {
        let t = table::read(
            &vlal::cache::logits_path(&f.root.join(cache), model, "train"),
            Table::TeacherLogits,
        )
        .unwrap();
        (t.strings("sample_id").unwrap(), t.mat("logits").unwrap())
    };
    let (fresh, again) = (logits("c", "probe@local"), logits("d", "probe@local"));
    assert_eq!(fresh.0, again.0);
    assert_eq!(fresh.1.data, again.1.data);
    vlal::stages::tiny::write_lite_classifier(&f.root.join("lite3"), &["bird", "cat", "dog"])
        .unwrap();
    let log = succeeded(&f.extract("d", &["--teacher", &f.p("lite3")]));
    assert!(!log.contains("cached features are reused"), "{log}");
    assert!(log.contains("images through lite3@local"), "{log}");

    // mistakes: an existing output, a backbone without cached features, normalised features
    for (out, backbone, want) in [
        ("probe", lite.clone(), "exists; remove it"),
        ("p2", f.p("tiny-clip"), "no features of this backbone"),
    ] {
        let o = fit(out, &backbone);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
    }
    assert!(!f.root.join("p2").exists());
    let o = common::vlal(
        Path::new("."),
        &[
            "extract",
            "--images",
            &f.p("images"),
            "--classes",
            &f.p("classes.txt"),
            "--out",
            &f.p("norm"),
            "--student",
            &lite,
        ],
        &[],
    );
    succeeded(&o);
    let o = common::vlal(
        Path::new("."),
        &[
            "fit-teacher",
            "--cache",
            &f.p("norm"),
            "--backbone",
            &lite,
            "--out",
            &f.p("p3"),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("L2-normalised"),
        "{err}"
    );
}

/// Every table of a cache, by path under it.
fn tables(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    mtimes(dir)
        .into_iter()
        .map(|(p, _)| {
            let bytes = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), bytes)
        })
        .collect()
}

#[test]
fn the_cache_is_byte_identical_for_any_thread_count() {
    let f = Fixture::new();
    let threads = |n: &'static str| [("RAYON_NUM_THREADS", n)];
    for (out, n) in [("one", "1"), ("three", "3")] {
        succeeded(&f.extract_with("images", "classes.txt", out, &[], &threads(n)));
    }
    let (one, three) = (tables(&f.root.join("one")), tables(&f.root.join("three")));
    assert!(one.len() >= 10, "{:?}", one.keys());
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        three.keys().collect::<Vec<_>>()
    );
    for (p, bytes) in &one {
        assert!(
            bytes == &three[p],
            "{} differs between 1 and 3 threads",
            p.display()
        );
    }
}

/// Copy a parity reference checkpoint (tests/parity: open_clip's and transformers' own tiny
/// random models, written in their layouts; `make test` sets VLAL_PARITY_DIR) into `to`.
fn parity_checkpoint(name: &str, to: &Path) {
    let dir = std::env::var("VLAL_PARITY_DIR")
        .map(PathBuf::from)
        .expect("VLAL_PARITY_DIR is unset: run `make test` (it writes the reference checkpoints)");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(dir.join(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// The teachers as users download them: an OpenCLIP folder (open_clip_config.json +
/// open_clip_model.safetensors, no config.json) and a SigLIP folder serve `extract`; SigLIP's
/// logits are exp(s)·cos + b at the checkpoint's own scale and bias (τ recorded as 1/exp(s)), or
/// cos/τ + b with --tau; a pipeline trains on the SigLIP cache.
#[test]
fn open_clip_and_siglip_folders_are_teachers() {
    let f = Fixture::new();
    let oc = f.root.join("laion-tiny");
    parity_checkpoint("open_clip", &oc);
    assert!(!oc.join("config.json").exists());
    // the tiny model's vocabulary is 99 ids: a word-level tokenizer.json stands in for the BPE
    let words = [
        "cat", "kitty", "dog", "bird", "birdie", "a", "photo", "of", "the",
    ];
    vlal::models::testing::write_word_tokenizer(&oc, &words).unwrap();
    let err = succeeded(&f.extract("c-oc", &["--teacher", &f.p("laion-tiny")]));
    assert!(err.contains("teacher zero-shot accuracy"), "{err}");
    let out = f.root.join("c-oc/laion-tiny@local");
    let te = table::read(&out.join("train.parquet"), Table::Embeddings).unwrap();
    assert_eq!(te.meta("dim").unwrap(), "24");
    let pre = te.meta("preprocessing").unwrap();
    assert!(
        pre.contains("centre crop 30") && pre.contains("0.5, 0.4, 0.3"),
        "{pre}"
    );
    // the same folder as a hub repo (hf-hub cache, offline): found by its open_clip_config.json
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = f.root.join("hub/models--laion-org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    parity_checkpoint("open_clip", &snap);
    vlal::models::testing::write_word_tokenizer(&snap, &words).unwrap();
    // as in timm's repos: a timm config of the image tower beside the open_clip files
    let timm = r#"{"architecture": "vit_base_patch32_clip_224", "num_classes": 0}"#;
    std::fs::write(snap.join("config.json"), timm).unwrap();
    let hub = f.p("hub");
    let env = [("HF_HUB_CACHE", hub.as_str())];
    let extra = ["--teacher", "laion-org/tiny", "--offline"];
    succeeded(&f.extract_with("images", "classes.txt", "c-hub", &extra, &env));
    let te = table::read(
        &f.root.join("c-hub/laion-org/tiny@main/train.parquet"),
        Table::Embeddings,
    );
    assert_eq!(te.unwrap().meta("commit").unwrap(), commit);
    // open_clip's PyTorch pickle (open_clip_pytorch_model.bin) reads too
    let bin = f.root.join("laion-bin");
    parity_checkpoint("open_clip_bin", &bin);
    vlal::models::testing::write_word_tokenizer(&bin, &words).unwrap();
    succeeded(&f.extract("c-bin", &["--teacher", &f.p("laion-bin")]));
    let te = table::read(
        &f.root.join("c-bin/laion-bin@local/train.parquet"),
        Table::Embeddings,
    );
    assert_eq!(te.unwrap().meta("dim").unwrap(), "24");

    let sg = f.root.join("siglip-tiny");
    parity_checkpoint("siglip", &sg);
    let run = |out: &str, extra: &[&str]| {
        let mut a = vec!["--teacher", sg.to_str().unwrap()];
        a.extend_from_slice(extra);
        succeeded(&f.extract(out, &a));
        f.root.join(out).join("siglip-tiny@local")
    };
    let model = vlal::models::siglip::Siglip::load(&sg, &candle_core::Device::Cpu).unwrap();
    let (s, b) = (model.scale, model.bias);
    assert!(
        s != 1.0 && b != 0.0,
        "the reference has a scale and a bias: {s} {b}"
    );
    for (out, tau) in [("c-sg", None), ("c-sg-tau", Some(0.05f32))] {
        let extra: Vec<String> = tau
            .iter()
            .flat_map(|t| ["--tau".into(), t.to_string()])
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let dir = run(out, &extra);
        let te = table::read(&dir.join("train.parquet"), Table::Embeddings).unwrap();
        assert!(te
            .meta("preprocessing")
            .unwrap()
            .starts_with("bilinear resize to 30×30"));
        let l = table::read(&dir.join("train.logits.parquet"), Table::TeacherLogits).unwrap();
        let p = table::read(&dir.join("prototypes.parquet"), Table::Prototypes).unwrap();
        let (z, protos, logits) = (
            te.mat("vector").unwrap(),
            p.mat("vector").unwrap(),
            l.mat("logits").unwrap(),
        );
        let want_tau = tau.unwrap_or(1.0 / s);
        assert_eq!(l.meta("tau").unwrap(), want_tau.to_string());
        for i in 0..z.rows {
            for c in 0..3 {
                let cos: f32 = z.row(i).iter().zip(protos.row(c)).map(|(a, b)| a * b).sum();
                let want = match tau {
                    None => cos * s + b,
                    Some(t) => cos / t + b,
                };
                assert!(
                    (logits.row(i)[c] - want).abs() < 1e-4,
                    "{} vs {want}",
                    logits.row(i)[c]
                );
            }
        }
    }
    // a DHO run trains on the SigLIP teacher's logits
    let rows = run_pipeline(
        &f,
        "c-sg",
        "siglip-tiny@local",
        r#"["entropy"]"#,
        r#"["dho"]"#,
    );
    assert_eq!(rows, 2, "rounds 0..=1");
}

/// The files of a cache that are part files of a sharded extract.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    tables(dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".part-"))
        .collect()
}

#[test]
fn a_sharded_extract_merges_into_the_one_process_cache() {
    let f = Fixture::new();
    // one unreadable image (rejected under --skip-bad) so that parts carry rejects too
    let copy = f.root.join("imgs");
    for (e, _) in mtimes(&f.root.join("images")) {
        let to = copy.join(e.strip_prefix(f.root.join("images")).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&e, &to).unwrap();
    }
    std::fs::write(copy.join("dog/zz-broken.png"), b"not an image").unwrap();
    let skip = ["--skip-bad"];
    succeeded(&f.extract_from("imgs", "classes.txt", "one", &skip));
    let one = tables(&f.root.join("one"));
    assert!(
        one.keys().any(|p| p.ends_with("rejects.parquet")),
        "{:?}",
        one.keys()
    );

    // three parts, each writing its part files only; a part run again does nothing
    let part = |out: &str, s: &str| {
        f.extract_from("imgs", "classes.txt", out, &["--skip-bad", "--shard", s])
    };
    for s in ["0/3", "1/3", "2/3"] {
        let err = succeeded(&part("sharded", s));
        assert!(
            err.contains(&format!("part {s}: ")) && err.contains("--merge 3"),
            "{err}"
        );
    }
    let parts = part_files(&f.root.join("sharded"));
    assert_eq!(
        tables(&f.root.join("sharded")).len(),
        parts.len(),
        "{parts:?}"
    );
    // train, calib and test of both models, as far as each split has a batch for the part
    assert!(parts.len() >= 12, "{parts:?}");
    let err = succeeded(&part("sharded", "1/3"));
    assert!(err.contains("up to date"), "{err}");

    // bad input: one clear line, nothing written
    for (bad, says) in [("3/2", "below N = 2"), ("0/0", "at least 1")] {
        let o = part("sharded", bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{bad}: {err}");
    }
    let o = part("sharded", "0/2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(".part-")
            && err.contains("split another way than into 2"),
        "{err}"
    );
    let merge = |out: &str, n: &str| {
        f.extract_from("imgs", "classes.txt", out, &["--skip-bad", "--merge", n])
    };
    let missing = f.root.join("sharded").join(&parts[0]);
    let kept = std::fs::read(&missing).unwrap();
    std::fs::remove_file(&missing).unwrap();
    let o = merge("sharded", "3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&missing.display().to_string())
            && err.contains("missing"),
        "{err}"
    );
    assert_eq!(part_files(&f.root.join("sharded")).len(), parts.len() - 1);
    assert!(!f.root.join("sharded/manifest.parquet").exists());
    std::fs::write(&missing, kept).unwrap();

    // the merge: the one-process cache, byte for byte, and the parts gone
    let err = succeeded(&merge("sharded", "3"));
    assert!(err.contains("from 3 parts"), "{err}");
    assert_eq!(tables(&f.root.join("sharded")), one);

    // the same through the Ray launcher (a local 2-CPU instance) and a Slurm array (a stand-in
    // sbatch), each with its merge
    let args = f.args("imgs", "classes.txt", "ray");
    let mut args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    args.push("--skip-bad");
    let o = common::ray_shards(&f.root, "extract", 2, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tables(&f.root.join("ray")), one);
    let out = f.p("slurm");
    let ray_out = f.p("ray");
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == ray_out { out.as_str() } else { a })
        .collect();
    common::sbatch(&f.root, &["--parsable", "--array=0-1"], "extract", &args);
    let halves = part_files(&f.root.join("slurm"));
    assert!(
        !halves.is_empty()
            && halves
                .iter()
                .all(|p| p.to_string_lossy().contains("-of-2.")),
        "{halves:?}"
    );
    let mut merge_args = vec!["--merge", "2"];
    merge_args.extend(&args);
    common::sbatch(&f.root, &["--dependency=afterok:1"], "extract", &merge_args);
    assert_eq!(tables(&f.root.join("slurm")), one);
}
