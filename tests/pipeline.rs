//! End-to-end tests of the `vlal` binary on a generated cache: a full `vlal run`, its results
//! summarised as Polars summarises them, a no-op rerun, a killed-then-resumed run that must end with the same
//! tables, and bad inputs that must fail with one clear line and write nothing.

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vlal::schema::Table;
use vlal::table;

mod common;
use common::{fails, ok, vlal, BIN};

/// The file names `vlal paths` prints for a run and round, by key (RUN_DIR, QUERIES, …).
fn paths(dir: &Path, args: &[&str]) -> std::collections::HashMap<String, PathBuf> {
    let out = Command::new(BIN)
        .current_dir(dir)
        .arg("paths")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "vlal paths {args:?} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect()
}

fn synth(dir: &Path, name: &str, train: &str) -> PathBuf {
    synth_with_calib(dir, name, train, "0")
}

fn synth_with_calib(dir: &Path, name: &str, train: &str, calib: &str) -> PathBuf {
    let out = dir.join("data").join(name);
    common::synth(dir, &out, train, calib, "300");
    out
}

fn pipeline(dir: &Path, file: &str, data: &Path, body: &str) -> String {
    let text = format!(
        r#"name = "e2e"
runs_dir = "{runs}"
results_dir = "{results}"
{body}
[dataset]
name = "toy"
root = "{data}"
student = "synthetic-student@v1"
teacher = "synthetic-teacher@v1"

[linear]
epochs = 60
"#,
        runs = dir.join("runs").display(),
        results = dir.join("results").display(),
        data = data.display()
    );
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const SWEEP: &str = r#"seeds = [0, 1]
rounds = 3
budget = 4
strategies = ["random", "entropy", "coreset"]
trainers = ["linear", "dho"]
"#;

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

use vlal::stages::report::parquet_files;

/// The results rows as comparable text, without the wall-clock columns.
fn results_rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for f in parquet_files(dir) {
        let t = table::read(&f, Table::Results).unwrap();
        let s = |c: &str| t.strings(c).unwrap()[0].clone();
        let acc = t.f64s("accuracy").unwrap()[0].unwrap();
        let f1 = t.f64s("macro_f1").unwrap()[0].unwrap();
        rows.push(format!(
            "{} {} {} {} acc={acc:.17} f1={f1:.17} spent={:?} hash={} models={},{}",
            s("run_id"),
            s("strategy"),
            s("trainer"),
            t.i32s("round").unwrap()[0].unwrap(),
            t.f64s("budget_spent").unwrap()[0],
            s("config_hash"),
            s("student_model"),
            s("teacher_model")
        ));
    }
    rows.sort();
    rows
}

/// Every queries file's picks, as comparable text.
fn queries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        if !f.to_string_lossy().contains("/queries/") {
            continue;
        }
        let t = table::read(&f, Table::Queries).unwrap();
        let rel = f.strip_prefix(dir).unwrap().display().to_string();
        let scores: Vec<String> = t
            .f64s("score")
            .unwrap()
            .iter()
            .map(|v| format!("{:.17}", v.unwrap()))
            .collect();
        out.push(format!(
            "{rel}: {:?} {:?}",
            t.strings("sample_id").unwrap(),
            scores
        ));
    }
    out.sort();
    out
}

/// Every results row under `dir`: strategy, round and every numeric column by name.
fn result_numbers(dir: &Path) -> Vec<(String, i32, BTreeMap<String, Option<f64>>)> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let t = table::read(&f, Table::Results).unwrap();
        assert_eq!(t.rows, 1, "{}", f.display());
        let num = t
            .columns
            .iter()
            .filter(|(_, a)| a.data_type().is_numeric())
            .map(|(n, _)| (n.clone(), t.numbers(n).unwrap()[0]))
            .collect();
        out.push((
            t.strings("strategy").unwrap()[0].clone(),
            t.i32s("round").unwrap()[0].unwrap(),
            num,
        ));
    }
    out
}

/// `vlal report`'s summary equals what a user computes with Polars from the same files (the
/// README's Python snippet, `tests/py/polars_summary.py`): mean and sample std of accuracy,
/// distinct seeds and mean labels per (pipeline, trainer, strategy, round), in key order.
fn assert_is_polars_summary(
    results: &Path,
    pipelines: &[&str],
    summary: &[vlal::stages::report::Group],
) {
    let python = common::venv_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/polars_summary.py");
    let o = Command::new(python)
        .arg(script)
        .arg(results)
        .args(pipelines)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), summary.len(), "{rows:?}");
    for (r, g) in rows.iter().zip(summary) {
        let f = |k: &str| r[k].as_f64().unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12;
        assert!(
            r["pipeline"] == g.pipeline.as_str()
                && r["trainer"] == g.trainer.as_str()
                && r["strategy"] == g.strategy.as_str()
                && f("round") == g.round as f64
                && close(f("acc_mean"), g.acc_mean)
                && close(f("acc_std"), g.acc_std)
                && f("seeds") == g.seeds as f64
                && close(f("n_labeled"), g.n_labeled),
            "vlal {g:?}, polars {r}"
        );
    }
}

#[test]
fn run_rerun_kill_resume_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), "toy", "400");

    // A: a clean run.
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let pa = pipeline(&a, "p.toml", &data, SWEEP);
    ok(&a, &["-q", "run", &pa]);
    let results_a = results_rows(&a.join("results"));
    assert_eq!(
        results_a.len(),
        2 * 3 * 2 * 4,
        "trainers × strategies × seeds × rounds 0..=3"
    );

    // the summary groups, which are what Polars computes from the same files
    let rows = result_numbers(&a.join("results"));
    assert_eq!(rows.len(), 48);
    let summary = vlal::stages::report::summary(&a.join("results"), &["e2e"]).unwrap();
    assert_eq!(summary.len(), 2 * 3 * 4);
    assert_is_polars_summary(&a.join("results"), &["e2e"], &summary);
    for g in summary.iter().filter(|g| g.round == 3) {
        // 4 classes: chance is 0.25
        assert!(g.acc_mean > 0.45, "final accuracy not above chance: {g:?}");
    }
    assert!(summary.iter().all(|g| g.seeds == 2), "{summary:?}");
    // labels grow by the budget each round: seed 1/class × 4 classes + 3 × 4
    let most = rows
        .iter()
        .filter_map(|r| r.2["n_labeled"])
        .fold(0.0, f64::max);
    assert_eq!(most, 16.0);
    let report = ok(
        &a,
        &["report", "--results", a.join("results").to_str().unwrap()],
    );
    assert!(report.is_empty(), "report prints to stdout");

    // A rerun is a no-op: nothing is written or touched.
    let before = snapshot(&a);
    let log = ok(&a, &["run", &pa]);
    assert!(log.contains("nothing to do"), "{log}");
    assert_eq!(before, snapshot(&a));

    // B: the same pipeline, killed mid-way (abort at the 40th table write, between the temporary
    // file and its rename), then resumed. It must end with exactly A's results and queries.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let pb = pipeline(&b, "p.toml", &data, SWEEP);
    let o = vlal(
        &b,
        &["-q", "run", &pb],
        &[("VLAL_FAULT_ABORT_AFTER_WRITES", "40")],
    );
    assert!(!o.status.success(), "the fault must stop the run");
    let partial = results_rows(&b.join("results")).len();
    assert!(
        partial > 0 && partial < 48,
        "killed mid-way, {partial} rows"
    );
    let leftovers = snapshot(&b)
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(
        leftovers, 1,
        "the interrupted write leaves only its temporary file"
    );
    // the resumed run removes it, and says so
    let log = ok(&b, &["run", &pb]);
    assert!(
        log.contains("removed 1 leftover(s) of stopped processes (."),
        "{log}"
    );
    assert!(!snapshot(&b)
        .into_keys()
        .any(|p| p.to_string_lossy().ends_with(".tmp")));
    assert_eq!(
        results_rows(&b.join("results")),
        results_a,
        "resumed run differs from the clean one"
    );
    assert_eq!(
        queries(&b.join("runs")),
        queries(&a.join("runs")),
        "queries differ: selections are not deterministic"
    );
    assert_eq!(queries(&a.join("runs")).len(), 2 * 3 * 2 * 3);

    // C: stopped after round 1 (`--max-round`), then finished: A's tables again. The default log
    // is one line per run plus a summary; the per-file lines come with -v.
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    let pc = pipeline(&c, "p.toml", &data, SWEEP);
    let log = ok(&c, &["run", &pc, "--max-round", "1"]);
    assert_eq!(log.lines().count(), 2 * 3 * 2 + 1, "{log}");
    assert_eq!(log.matches(": round 1: accuracy ").count(), 12, "{log}");
    assert!(
        !log.contains("wrote") && log.contains("12 runs finished (24 rounds)"),
        "{log}"
    );
    assert_eq!(results_rows(&c.join("results")).len(), 2 * 3 * 2 * 2);
    let log = ok(&c, &["-v", "run", &pc]);
    assert_eq!(
        log.matches(": round 3 (done): accuracy ").count(),
        12,
        "{log}"
    );
    assert!(
        log.contains("wrote ") && log.contains("(2 rounds run now)"),
        "{log}"
    );
    assert_eq!(results_rows(&c.join("results")), results_a);
}

#[test]
fn stages_one_by_one_and_labels_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth(d, "toy", "400");
    let p = pipeline(
        d,
        "p.toml",
        &data,
        "seeds = [5]\nrounds = 2\nstrategies = [\"margin\"]\n",
    );
    let run = ["--pipeline", p.as_str()];
    ok(d, &[&["-q", "label", "--init"][..], &run].concat());
    ok(d, &[&["-q", "train", "--round", "0"][..], &run].concat());
    ok(
        d,
        &[&["-q", "select", "--round", "0", "--budget", "3"][..], &run].concat(),
    );
    ok(d, &[&["-q", "eval", "--round", "0"][..], &run].concat());
    let log = ok(d, &[&["paths", "--round", "0"][..], &run].concat());
    assert!(log.is_empty(), "paths prints to stdout only");
    let get_map = paths(d, &[&["--round", "0"][..], &run].concat());
    let get = |k: &str| get_map[k].clone();
    let q = table::read(&get("QUERIES"), Table::Queries).unwrap();
    let asked = q.strings("sample_id").unwrap();
    assert_eq!(asked.len(), 3);

    // a person's answers: class names and ids, with one bad row each time
    let csv = d.join("answers.csv");
    let csv_arg = csv.to_str().unwrap().to_string();
    let import = |ok_expected: bool| {
        let args = [
            &[
                "-q",
                "label",
                "--round",
                "0",
                "--from-file",
                csv_arg.as_str(),
            ][..],
            &run,
        ]
        .concat();
        if ok_expected {
            ok(d, &args);
            String::new()
        } else {
            fails(d, &args)
        }
    };
    std::fs::write(
        &csv,
        format!("sample_id,label\n{},class_001\nnot-a-sample,0\n", asked[0]),
    )
    .unwrap();
    let e = import(false);
    assert!(
        e.contains("answers.csv: row 2: unknown sample_id 'not-a-sample'"),
        "{e}"
    );
    std::fs::write(&csv, format!("sample_id,label\n{},class_999\n", asked[0])).unwrap();
    let e = import(false);
    assert!(e.contains("row 1: unknown class 'class_999'"), "{e}");
    std::fs::write(&csv, format!("sample_id,label\n{},9\n", asked[0])).unwrap();
    let e = import(false);
    assert!(e.contains("row 1: label 9 is outside 0..4"), "{e}");
    assert!(
        !get("NEXT_LABELS").exists(),
        "a rejected file writes nothing"
    );
    std::fs::write(
        &csv,
        format!(
            "sample_id,label\n{},class_001\n{},2\n{},0\n",
            asked[0], asked[1], asked[2]
        ),
    )
    .unwrap();
    import(true);
    let rows = vlal::rounds::read_labels(&get("NEXT_LABELS")).unwrap();
    assert_eq!(rows.len(), 4 + 3);
    assert_eq!(
        rows.iter()
            .filter(|r| r.kind == "oracle")
            .map(|r| r.label)
            .collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    assert!(rows
        .iter()
        .filter(|r| r.kind == "oracle")
        .all(|r| r.round == 1));

    // answers for a round that was never queried (a wrong round number) are refused, even
    // for a sample nobody labeled yet
    let unlabeled = (0..400)
        .map(|i| format!("train-{i:06}"))
        .find(|id| rows.iter().all(|r| &r.sample_id != id))
        .unwrap();
    std::fs::write(&csv, format!("sample_id,label\n{unlabeled},0\n")).unwrap();
    let e = fails(
        d,
        &[
            &["label", "--round", "1", "--from-file", csv_arg.as_str()][..],
            &run,
        ]
        .concat(),
    );
    let q1 = paths(d, &[&["--round", "1"][..], &run].concat())["QUERIES"].clone();
    assert!(
        e.contains(&format!(
            "{}: missing (run `vlal select` first)",
            q1.display()
        )),
        "{e}"
    );
    assert!(!paths(d, &[&["--round", "1"][..], &run].concat())["NEXT_LABELS"].exists());

    // round 1, answered with a Parquet file whose labels are int64 (as pandas writes them);
    // the stage sweeps its run's folders first: a dead process's temporary file goes
    let stale = get("RUN_DIR").join("predictions/.round-001.parquet.4194400.AbC123.tmp");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"x").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let log = ok(d, &[&["train", "--round", "1"][..], &run].concat());
    assert!(
        log.contains("removed 1 leftover(s) of stopped processes"),
        "{log}"
    );
    assert!(!stale.exists());
    ok(
        d,
        &[&["-q", "select", "--round", "1", "--budget", "2"][..], &run].concat(),
    );
    let get1_map = paths(d, &[&["--round", "1"][..], &run].concat());
    let get1 = |k: &str| get1_map[k].clone();
    let asked1 = table::read(&get1("QUERIES"), Table::Queries)
        .unwrap()
        .strings("sample_id")
        .unwrap();
    let pq = d.join("answers.parquet");
    write_raw(
        &pq,
        vec![
            (
                "sample_id",
                Arc::new(StringArray::from(asked1.clone())) as ArrayRef,
            ),
            (
                "label",
                Arc::new(Int64Array::from(vec![3i64, 3])) as ArrayRef,
            ),
        ],
    );
    ok(
        d,
        &[
            &[
                "-q",
                "label",
                "--round",
                "1",
                "--from-file",
                pq.to_str().unwrap(),
            ][..],
            &run,
        ]
        .concat(),
    );
    let rows = vlal::rounds::read_labels(&get1("NEXT_LABELS")).unwrap();
    assert_eq!(rows.len(), 4 + 3 + 2);
    assert!(rows[7..]
        .iter()
        .all(|r| r.label == 3 && r.round == 2 && asked1.contains(&r.sample_id)));
}

#[test]
fn activekd_frameworks_badge_and_logit_adjustment() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth(d, "toy", "400");
    let body = r#"seeds = [0, 1]
rounds = 2
strategies = ["badge", "pcoreset", "pcoreset-r"]
trainers = ["dho-clap", "ce"]
[teacher]
la = "soft"
la_tau = 0.5
[clap]
epochs = 50
[dho]
epochs = 40
"#;
    // [linear] is appended by `pipeline`; the body's tables must come after the top-level keys
    let p = pipeline(d, "p.toml", &data, body);
    ok(d, &["-q", "run", &p]);
    let rows = result_numbers(&d.join("results"));
    assert_eq!(rows.len(), 2 * 3 * 2 * 3);
    // batch analysis metrics exist for the rounds that selected, not for the last
    let sel: Vec<_> = rows.iter().filter(|r| r.1 < 2).collect();
    for c in [
        "batch_prob_coverage",
        "batch_class_entropy",
        "batch_uncertainty",
        "batch_feature_diversity",
        "select_s",
    ] {
        assert!(sel.iter().all(|r| r.2[c].is_some()), "{c}");
        assert_eq!(
            rows.iter().filter(|r| r.2[c].is_none()).count(),
            2 * 3 * 2,
            "{c} in the last round"
        );
    }
    // PCoreSet covers more of the simplex than its counterfactual, in every run
    let cov = |s: &str| -> f64 {
        let v: Vec<f64> = sel
            .iter()
            .filter(|r| r.0 == s)
            .map(|r| r.2["batch_prob_coverage"].unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        cov("pcoreset") > cov("pcoreset-r"),
        "{} vs {}",
        cov("pcoreset"),
        cov("pcoreset-r")
    );
    let out = Command::new(BIN)
        .current_dir(d)
        .args([
            "report",
            "--stat",
            "ci95",
            "--results",
            d.join("results").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("trainer dho-clap · test accuracy, mean ± 95% CI over seeds"),
        "{text}"
    );
    assert!(text.contains("pcoreset-r"), "{text}");

    // a results file from an older version (fewer columns) does not break the summary
    let old = d.join("results/pipeline=old/strategy=random/seed=0");
    std::fs::create_dir_all(&old).unwrap();
    write_raw(
        &old.join("old-round-000.parquet"),
        vec![
            (
                "pipeline",
                Arc::new(arrow::array::StringArray::from(vec!["old"])) as arrow::array::ArrayRef,
            ),
            (
                "trainer",
                Arc::new(arrow::array::StringArray::from(vec!["linear"])) as arrow::array::ArrayRef,
            ),
            (
                "strategy",
                Arc::new(arrow::array::StringArray::from(vec!["random"])) as arrow::array::ArrayRef,
            ),
            (
                "round",
                Arc::new(arrow::array::Int32Array::from(vec![0])) as arrow::array::ArrayRef,
            ),
            (
                "seed",
                Arc::new(arrow::array::Int64Array::from(vec![0i64])) as arrow::array::ArrayRef,
            ),
            (
                "accuracy",
                Arc::new(arrow::array::Float64Array::from(vec![0.5])) as arrow::array::ArrayRef,
            ),
            (
                "n_labeled",
                Arc::new(arrow::array::Int64Array::from(vec![4i64])) as arrow::array::ArrayRef,
            ),
        ],
    );
    let all = vlal::stages::report::summary(&d.join("results"), &[]).unwrap();
    assert_eq!(all.len(), 2 * 3 * 3 + 1);
}

/// Replace the student's test vectors of a cache with `f` of them.
fn rewrite_test_vectors(root: &Path, f: impl Fn(vlal::mat::Mat) -> vlal::mat::Mat) {
    let path = root.join("synthetic-student@v1/test.parquet");
    let t = table::read(&path, Table::Embeddings).unwrap();
    let m = f(t.mat("vector").unwrap());
    let ids = t.strings("sample_id").unwrap();
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    let v = arrow::array::FixedSizeListArray::try_new(
        field,
        m.cols as i32,
        Arc::new(Float32Array::from(m.data)),
        None,
    )
    .unwrap();
    let mut meta = t.meta.clone();
    meta.insert("dim".into(), m.cols.to_string());
    write_raw_meta(
        &path,
        vec![
            ("sample_id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("vector", Arc::new(v) as ArrayRef),
        ],
        &meta,
    );
}

fn write_raw(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    write_raw_meta(path, cols, &BTreeMap::new())
}

/// A Parquet file of `cols` and file metadata `meta`, unchecked (to make bad inputs).
fn write_raw_meta(path: &Path, cols: Vec<(&str, ArrayRef)>, meta: &BTreeMap<String, String>) {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let kv = meta
        .iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn bad_inputs_fail_with_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = synth(d, "good", "400");
    let body = "seeds = [0]\nrounds = 2\nstrategies = [\"entropy\"]\n";

    // a synth that dies after its third table (a full disk, a kill) leaves no partial cache;
    // a second synth into an existing cache replaces it whole
    let half = d.join("data/half");
    let args = [
        "-q",
        "synth",
        "--out",
        half.to_str().unwrap(),
        "--classes",
        "4",
    ];
    let o = vlal(d, &args, &[("VLAL_FAULT_ABORT_AFTER_WRITES", "3")]);
    assert!(!o.status.success());
    assert!(!half.exists());
    ok(d, &args);
    ok(d, &args);
    assert_eq!(
        std::fs::read_dir(d.join("data"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0,
        "the killed synth's staging folder and the replaced cache are gone"
    );
    assert!(half.join("manifest.parquet").exists());

    // missing file
    let p = pipeline(d, "missing.toml", &d.join("data/nowhere"), body);
    let e = fails(d, &["run", &p]);
    assert!(
        e.contains("data/nowhere/classes.parquet: cannot open"),
        "{e}"
    );

    // corrupt copies of the good cache, one problem each
    let copy = |name: &str| -> PathBuf {
        let dst = d.join("data").join(name);
        for f in parquet_files(&good) {
            let rel = f.strip_prefix(&good).unwrap();
            std::fs::create_dir_all(dst.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(&f, dst.join(rel)).unwrap();
        }
        dst
    };
    let manifest = |ids: Vec<String>, labels: ArrayRef| -> Vec<(&'static str, ArrayRef)> {
        let n = ids.len();
        vec![
            ("sample_id", Arc::new(StringArray::from(ids)) as ArrayRef),
            (
                "path",
                Arc::new(StringArray::from(vec![None::<&str>; n])) as ArrayRef,
            ),
            (
                "split",
                Arc::new(StringArray::from(
                    vec!["train"; n - 1]
                        .into_iter()
                        .chain(["test"])
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            ("label", labels),
            (
                "source",
                Arc::new(StringArray::from(vec!["task"; n])) as ArrayRef,
            ),
        ]
    };
    let ids = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, String)> = vec![
        (
            "wrongtype",
            Box::new(move |root: &Path| {
                write_raw(&root.join("manifest.parquet"), manifest(ids(3), Arc::new(Int64Array::from(vec![0i64, 1, 2]))))
            }),
            "manifest.parquet: column 'label' has type Int64, expected int32".into(),
        ),
        (
            "dupids",
            Box::new(|root: &Path| {
                let ids = vec!["a".to_string(), "b".into(), "a".into()];
                write_raw(&root.join("manifest.parquet"), manifest(ids, Arc::new(Int32Array::from(vec![0, 1, 2]))))
            }),
            "manifest.parquet: duplicate sample_id 'a'".into(),
        ),
        (
            "badlabel",
            Box::new(move |root: &Path| {
                write_raw(&root.join("manifest.parquet"), manifest(ids(3), Arc::new(Int32Array::from(vec![0, 7, 2]))))
            }),
            "manifest.parquet: sample 's1' has label 7, outside 0..4".into(),
        ),
        (
            "nan",
            Box::new(|root: &Path| {
                rewrite_test_vectors(root, |mut m| {
                    m.row_mut(2)[0] = f32::INFINITY;
                    m
                })
            }),
            "synthetic-student@v1/test.parquet: column 'vector' has a non-finite value (inf) in row 2 (sample_id 'test-000002')".into(),
        ),
        (
            "dim",
            Box::new(|root: &Path| {
                rewrite_test_vectors(root, |m| {
                    let rows = (0..m.rows).flat_map(|i| m.row(i)[1..].to_vec()).collect();
                    vlal::mat::Mat::new(m.rows, m.cols - 1, rows).unwrap()
                })
            }),
            "synthetic-student@v1/test.parquet: vectors are 15-d, the train split's (".into(),
        ),
    ];
    for (name, corrupt, want) in cases {
        let root = copy(name);
        corrupt(&root);
        let p = pipeline(d, &format!("{name}.toml"), &root, body);
        let e = fails(d, &["run", &p]);
        assert!(e.contains(&want), "{name}: {e}");
        assert!(
            !d.join("results").exists() && !d.join("runs").exists(),
            "{name}: something was written"
        );
    }

    // budget larger than the pool, for one select and for a whole run
    let p = pipeline(d, "ok.toml", &good, body);
    ok(d, &["-q", "label", "--init", "--pipeline", &p]);
    ok(d, &["-q", "train", "--round", "0", "--pipeline", &p]);

    // a predictions table that lacks a test sample: eval names the file and the sample
    let get_map = paths(d, &["--round", "0", "--pipeline", &p]);
    let get = |k: &str| get_map[k].clone();
    let preds = get("PREDICTIONS");
    let saved = std::fs::read(&preds).unwrap();
    let t = table::read(&preds, Table::Predictions).unwrap();
    let keep: Vec<usize> = (0..t.rows - 1).collect(); // drop the last row (a test sample)
    let ids = t.strings("sample_id").unwrap();
    let split = t.strings("split").unwrap();
    let probs = t.mat("probs").unwrap().select_rows(&keep);
    let meta: Vec<(&str, String)> = t
        .meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    table::write(
        &preds,
        Table::Predictions,
        vec![
            ("round", table::i32s(&vec![0; keep.len()])),
            ("sample_id", table::utf8(&ids[..keep.len()])),
            ("split", table::utf8(&split[..keep.len()])),
            ("probs", table::fixed_list(&probs).unwrap()),
        ],
        &meta,
        table::Mode::Replace,
    )
    .unwrap();
    let e = fails(d, &["eval", "--round", "0", "--pipeline", &p]);
    let want = format!(
        "{}: no row for sample '{}'",
        preds.display(),
        ids[ids.len() - 1]
    );
    assert!(e.contains(&want), "{e}");
    assert!(
        !get("RESULTS").exists(),
        "a failed eval writes no results row"
    );
    std::fs::write(&preds, saved).unwrap();

    let e = fails(
        d,
        &[
            "select",
            "--round",
            "0",
            "--budget",
            "100000",
            "--pipeline",
            &p,
        ],
    );
    assert!(
        e.contains("budget 100000 is larger than the pool (396 unlabeled samples left)"),
        "{e}"
    );
    assert!(parquet_files(&d.join("runs"))
        .iter()
        .all(|f| !f.to_string_lossy().contains("queries")));
    let p2 = pipeline(
        d,
        "big.toml",
        &good,
        "seeds = [0]\nrounds = 100\nbudget = 50\nstrategies = [\"entropy\"]\n",
    );
    let e = fails(d, &["run", &p2]);
    assert!(e.contains("more than the pool's 400 samples"), "{e}");

    // a class smaller than initial_per_class: an error, unless the pipeline allows fewer
    let tiny = synth(d, "tiny", "8");
    let body3 = "seeds = [0]\nrounds = 1\ninitial_per_class = 10\nstrategies = [\"entropy\"]\n";
    let p3 = pipeline(d, "short.toml", &tiny, body3);
    for args in [&["label", "--init", "--pipeline", &p3][..], &["run", &p3]] {
        let e = fails(d, args);
        assert!(
            e.contains("manifest.parquet: class 0 ('class_000') has 1 train samples, fewer than initial_per_class = 10 (set allow_fewer = true"),
            "{e}"
        );
    }
    // pool exhausted: every train sample is a seed label
    let p3 = pipeline(
        d,
        "tiny.toml",
        &tiny,
        &format!("allow_fewer = true\n{body3}"),
    );
    ok(d, &["-q", "label", "--init", "--pipeline", &p3]);
    ok(d, &["-q", "train", "--round", "0", "--pipeline", &p3]);
    let e = fails(
        d,
        &["select", "--round", "0", "--budget", "1", "--pipeline", &p3],
    );
    assert!(e.contains("pool exhausted"), "{e}");

    // unknown strategy / bad config
    let p4 = pipeline(
        d,
        "bad.toml",
        &good,
        "seeds = [0]\nrounds = 1\nstrategies = [\"nope\"]\n",
    );
    let e = fails(d, &["run", &p4]);
    assert!(e.contains("bad.toml: unknown strategy 'nope'"), "{e}");

    // a pipeline name that would leave runs_dir, and a 10 MB one: short errors
    for name in ["..".to_string(), "a/b".into(), "x".repeat(10_000_000)] {
        let p5 = pipeline(d, "escape.toml", &good, body);
        let text = std::fs::read_to_string(&p5).unwrap();
        std::fs::write(
            &p5,
            text.replacen("name = \"e2e\"", &format!("name = \"{name}\""), 1),
        )
        .unwrap();
        let e = fails(d, &["run", &p5]);
        assert!(
            e.contains("escape.toml: pipeline name '") && e.len() < 400,
            "{}",
            &e[..e.len().min(400)]
        );
    }
}

#[test]
fn ccma_baselines_diagnostics_and_aulc() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth_with_calib(d, "cal", "400", "80");
    let strategies = [
        "ccma-v1",
        "ccma-v2",
        "ccma-v3",
        "ccma-v4",
        "ccma-v5",
        "ccma-uherding",
        "bald",
        "power-bald",
        "alfa-mix",
        "typiclust",
        "probcover",
        "dropquery",
        "uherding",
    ];
    let body = format!(
        "seeds = [3]\nrounds = 2\nbudget = 4\nstrategies = {strategies:?}\ntrainers = [\"linear\"]\n\
         [teacher]\ntau = 0.03\n[select]\ndiagnostics = true\n[select.ccma]\nsubpool_size = 60\nrho = 5\n\
         [select.mc]\npasses = 5\n"
    );
    let p = pipeline(d, "ccma.toml", &data, &body);
    ok(d, &["-q", "run", &p]);
    let n = strategies.len() * 3;
    assert_eq!(results_rows(&d.join("results")).len(), n);
    // one diagnostics row per (run, round), calibrated on the calib split
    let diag = parquet_files(&d.join("diagnostics"));
    assert_eq!(diag.len(), n);
    for f in &diag {
        let t = table::read(f, Table::Diagnostics).unwrap();
        assert_eq!(t.strings("calibration").unwrap()[0], "size@calib");
        let overlap = t.f64s("set_overlap").unwrap()[0].unwrap();
        let student = t.f64s("mean_set_student").unwrap()[0].unwrap();
        let teacher = t.f64s("mean_set_teacher").unwrap()[0].unwrap();
        assert!(
            overlap >= 1.0 && overlap <= student.min(teacher),
            "{}",
            f.display()
        );
        let dis = t.f64s("top1_disagreement").unwrap()[0].unwrap();
        assert!((0.0..=1.0).contains(&dis));
        assert!(t.f64s("calib_coverage_student").unwrap()[0].is_some());
    }
    // CCMA's queries say how it calibrated; the pool-size fallback is never needed here
    let q = paths(
        d,
        &[
            "--pipeline",
            &p,
            "--strategy",
            "ccma-v1",
            "--seed",
            "3",
            "--round",
            "1",
        ],
    );
    let qt = table::read(&q["QUERIES"], Table::Queries).unwrap();
    assert_eq!(qt.meta("calibration").unwrap(), "size@calib");
    // AULC for every strategy in the report
    let out = vlal(
        d,
        &["report", "--results", d.join("results").to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let aulc: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("AULC"))
        .collect();
    for s in strategies {
        let line = aulc
            .iter()
            .find(|l| l.split_whitespace().nth(2) == Some(s))
            .unwrap_or_else(|| panic!("no AULC row for {s}: {text}"));
        let v: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(v > 0.25 && v <= 1.0, "{line}");
    }
    // every results row carries its run's AULC so far; the last round's is the run's AULC
    let mut runs: BTreeMap<String, Vec<(i32, f64, f64, Option<f64>)>> = BTreeMap::new();
    for f in parquet_files(&d.join("results")) {
        let t = table::read(&f, Table::Results).unwrap();
        runs.entry(t.strings("run_id").unwrap()[0].clone())
            .or_default()
            .push((
                t.i32s("round").unwrap()[0].unwrap(),
                t.i64s("n_labeled").unwrap()[0].unwrap() as f64,
                t.f64s("accuracy").unwrap()[0].unwrap(),
                t.f64s("aulc").unwrap()[0],
            ));
    }
    assert_eq!(runs.len(), strategies.len());
    for (run, mut rows) in runs {
        rows.sort_by_key(|r| r.0);
        let mut pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.1, r.2)).collect();
        let whole = vlal::metrics::aulc(&mut pts);
        let last = rows.last().unwrap().3.unwrap();
        assert!((whole - last).abs() < 1e-12, "{run}: {whole} vs {last}");
        assert_eq!(
            rows[0].3,
            Some(rows[0].2),
            "{run}: one point's AULC is its accuracy"
        );
    }
    // same config + seed ⇒ the same selections, MC dropout and k-means included
    let first = queries(&d.join("runs"));
    std::fs::remove_dir_all(d.join("runs")).unwrap();
    std::fs::remove_dir_all(d.join("results")).unwrap();
    std::fs::remove_dir_all(d.join("diagnostics")).unwrap();
    ok(d, &["-q", "run", &p]);
    assert_eq!(first, queries(&d.join("runs")));

    // coverage-targeted calibration on the calib split: in-sample coverage ≥ 1 − α
    let body = "seeds = [3]\nrounds = 1\nbudget = 4\nstrategies = [\"ccma-v2\"]\n\
         [select]\ndiagnostics = true\n[select.ccma]\ncalibration = \"coverage\"\nalpha = 0.2\n";
    let p2 = pipeline(d, "cov.toml", &data, body);
    let p2_text = std::fs::read_to_string(&p2)
        .unwrap()
        .replace("name = \"e2e\"", "name = \"cov\"");
    std::fs::write(&p2, p2_text).unwrap();
    ok(d, &["-q", "run", &p2]);
    let cov: Vec<PathBuf> = parquet_files(&d.join("diagnostics/pipeline=cov"));
    assert_eq!(cov.len(), 2);
    for f in cov {
        let t = table::read(&f, Table::Diagnostics).unwrap();
        assert_eq!(t.strings("calibration").unwrap()[0], "coverage@calib");
        for c in ["calib_coverage_student", "calib_coverage_teacher"] {
            let v = t.f64s(c).unwrap()[0].unwrap();
            assert!(v >= 0.8, "{c} = {v}");
        }
    }

    // MC dropout and Alfa-mix's gradients through the dual head
    let body = "seeds = [0]\nrounds = 1\nbudget = 4\nstrategies = [\"bald\", \"alfa-mix\", \"dropquery\"]\n\
         trainers = [\"dho\"]\n[dho]\nepochs = 20\n";
    let p3 = pipeline(d, "dual.toml", &data, body);
    let t3 = std::fs::read_to_string(&p3)
        .unwrap()
        .replace("name = \"e2e\"", "name = \"dual\"");
    std::fs::write(&p3, t3).unwrap();
    ok(d, &["-q", "run", &p3]);
}

#[test]
fn cluster_balanced_and_pcb_strategies_run_and_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth_with_calib(d, "cb", "300", "0");
    let strategies = [
        "cb",
        "cb-released",
        "pcb-entropy",
        "pcb-badge",
        "pcb-coreset",
    ];
    let body =
        format!("seeds = [1]\nrounds = 2\nstrategies = {strategies:?}\ntrainers = [\"linear\"]\n");
    let p = pipeline(d, "cb.toml", &data, &body);
    let err = ok(d, &["-v", "run", &p]);
    assert!(
        err.contains("cb: K = 8 clusters"),
        "paper K = B·2 after the seed round (C = B = 4): {err}"
    );
    assert!(
        err.contains("cb: K = 20 clusters on class-guided features (4 labeled)"),
        "released K = 4C + |L|: {err}"
    );
    assert_eq!(results_rows(&d.join("results")).len(), strategies.len() * 3);
    // the same config and seed select the same batches
    let queries = |root: &Path| -> Vec<Vec<String>> {
        let mut files: Vec<PathBuf> = parquet_files(root)
            .into_iter()
            .filter(|f| f.to_string_lossy().contains("/queries/"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                table::read(f, Table::Queries)
                    .unwrap()
                    .strings("sample_id")
                    .unwrap()
            })
            .collect()
    };
    let first = queries(&d.join("runs"));
    assert_eq!(first.len(), strategies.len() * 2);
    std::fs::remove_dir_all(d.join("runs")).unwrap();
    std::fs::remove_dir_all(d.join("results")).unwrap();
    ok(d, &["-q", "run", &p]);
    assert_eq!(queries(&d.join("runs")), first);
}

#[test]
fn selective_querying_gives_free_pseudo_labels_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth_with_calib(d, "sq", "300", "0");
    let strategies = ["cb+sq", "entropy+sq", "cb"];
    let body =
        format!("seeds = [2]\nrounds = 3\nstrategies = {strategies:?}\ntrainers = [\"linear\"]\n");
    let p = pipeline(d, "sq.toml", &data, &body);
    let err = ok(d, &["-v", "run", &p]);
    assert!(err.contains("selective querying:"), "{err}");
    let mut saw_pseudo = false;
    for f in parquet_files(&d.join("results")) {
        let t = table::read(&f, Table::Results).unwrap();
        let strategy = t.strings("strategy").unwrap()[0].clone();
        let n = t.i64s("n_labeled").unwrap()[0].unwrap() as f64;
        let spent = t.f64s("budget_spent").unwrap()[0].unwrap();
        let pseudo = t.i64s("n_pseudo").unwrap()[0].unwrap() as f64;
        // budget spent = labels bought; pseudo-labels are free
        assert_eq!(spent, n - pseudo, "{}", f.display());
        let acc = t.f64s("pseudo_accuracy").unwrap()[0];
        if strategy.ends_with("+sq") && pseudo > 0.0 {
            saw_pseudo = true;
            let a = acc.unwrap();
            assert!((0.0..=1.0).contains(&a));
        } else {
            assert_eq!(pseudo, 0.0, "{strategy}");
            assert_eq!(acc, None);
        }
    }
    assert!(saw_pseudo, "some +sq round pseudo-labels at least one pick");
    // the labels table marks them: kind pseudo, cost 0
    let mut checked = 0;
    for f in parquet_files(&d.join("runs")) {
        let s = f.to_string_lossy();
        if s.contains("/labels/") && s.contains("+sq") {
            checked += 1;
            let t = table::read(&f, Table::Labels).unwrap();
            for (k, c) in t
                .strings("kind")
                .unwrap()
                .iter()
                .zip(t.f64s("cost").unwrap())
            {
                assert_eq!(c.unwrap() == 0.0, k == "pseudo");
            }
        }
    }
    assert_eq!(checked, 2 * 4, "2 +sq runs × labels of rounds 0..=3");
    // --selective names the same runs: cb → cb+sq, already complete
    let err = ok(d, &["run", &p, "--selective", "--strategy", "cb"]);
    assert!(
        err.contains("nothing to do: all 1 runs of 'e2e' are complete"),
        "{err}"
    );
}

#[test]
fn a_run_from_zero_labels_starts_from_the_zero_shot_teacher() {
    // the CB+SQ code's first round: no seed labels; ct (the teacher as the task model) starts
    // from the teacher's zero-shot classifier, cb-released clusters with K = 4C, SQ has no
    // threshold yet (every pick is bought)
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth(d, "zero", "300");
    let body = "seeds = [0]\nrounds = 2\ninitial_per_class = 0\nbudget = 4\n\
                strategies = [\"cb-released+sq\"]\ntrainers = [\"ct\"]\n[ct]\nepochs = 5\n";
    let p = pipeline(d, "zero.toml", &data, body);
    let err = ok(d, &["-v", "run", &p]);
    assert!(
        err.contains("no labels yet; the ct head is the teacher's zero-shot classifier"),
        "{err}"
    );
    let mut by_round = BTreeMap::new();
    for f in parquet_files(&d.join("results")) {
        let t = table::read(&f, Table::Results).unwrap();
        by_round.insert(
            t.i32s("round").unwrap()[0].unwrap(),
            (
                t.i64s("n_labeled").unwrap()[0].unwrap(),
                t.f64s("accuracy").unwrap()[0].unwrap(),
                t.f64s("budget_spent").unwrap()[0].unwrap(),
            ),
        );
    }
    assert_eq!(by_round.len(), 3);
    assert_eq!(by_round[&0].0, 0);
    assert_eq!(
        (by_round[&1].0, by_round[&1].2),
        (4, 4.0),
        "every first pick is bought"
    );
    // round 0's accuracy is the zero-shot teacher's on the test split
    let logits = table::read(
        &data.join("synthetic-teacher@v1/test.logits.parquet"),
        Table::TeacherLogits,
    )
    .unwrap();
    let ids = logits.strings("sample_id").unwrap();
    let pred = logits.mat("logits").unwrap().argmax_rows();
    let manifest = table::read(&data.join("manifest.parquet"), Table::Manifest).unwrap();
    let truth: std::collections::HashMap<String, i32> = manifest
        .strings("sample_id")
        .unwrap()
        .into_iter()
        .zip(manifest.i32s("label").unwrap())
        .filter_map(|(id, l)| Some((id, l?)))
        .collect();
    let right = ids
        .iter()
        .zip(&pred)
        .filter(|(id, &p)| truth[id.as_str()] == p as i32)
        .count();
    let zero_shot = right as f64 / ids.len() as f64;
    assert!(
        (by_round[&0].1 - zero_shot).abs() < 1e-12,
        "{} vs {zero_shot}",
        by_round[&0].1
    );
    // each cold-start strategy picks a round without labels; later rounds use the run's own
    for cs in ["cb", "class-balanced", "typiclust", "probcover"] {
        let body = format!(
            "name = \"cold-{cs}\"\nseeds = [0]\nrounds = 2\ninitial_per_class = 0\nbudget = 4\n\
             cold_start = \"{cs}\"\nstrategies = [\"margin\"]\ntrainers = [\"ct\"]\n[ct]\nepochs = 5\n"
        );
        let p = pipeline(d, &format!("cold-{cs}.toml"), &data, &body);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("name = \"e2e\"\n", "", 1);
        std::fs::write(&p, text).unwrap();
        ok(d, &["-q", "run", &p]);
        let q = |r: usize| {
            let dir = d.join(format!("runs/cold-{cs}"));
            let run = std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let t = table::read(
                &run.join(format!("queries/round-{r:03}.parquet")),
                Table::Queries,
            );
            t.unwrap().strings("strategy").unwrap()
        };
        assert_eq!(
            (q(0), q(1)),
            (vec![cs.to_string(); 4], vec!["margin".to_string(); 4])
        );
    }
    // a trainer without a zero-shot head says what it needs
    let body = "seeds = [0]\nrounds = 1\ninitial_per_class = 0\nbudget = 4\n\
                strategies = [\"random\"]\ntrainers = [\"linear\"]\n";
    let p = pipeline(d, "zero-linear.toml", &data, body);
    let e = fails(d, &["run", &p]);
    assert!(
        e.contains("no labeled samples to train on (the linear trainer needs labels"),
        "{e}"
    );
}

#[test]
fn a_stopping_rule_ends_a_run_and_report_stopping_says_where_each_rule_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth(d, "stop", "300");
    // every round has stopping rows; the change rule (any share of changed predictions is
    // enough at change = 1) first fires at round 1, the first round with a previous one
    let body = "seeds = [0, 1]\nrounds = 4\nbudget = 4\nstrategies = [\"entropy\"]\n\
                [stopping]\nstop_when = \"classification_change\"\nchange = 1.0\n";
    let p = pipeline(d, "stop.toml", &data, body);
    let log = ok(d, &["run", &p]);
    assert!(
        log.contains("e2e/linear/entropy/seed 0: stopped after round 1: the stopping rule classification_change fired"),
        "{log}"
    );
    let results = parquet_files(&d.join("results"));
    assert_eq!(
        results.len(),
        2 * 2,
        "rounds 0 and 1 of two seeds: {results:?}"
    );
    let stops = parquet_files(&d.join("stopping"));
    assert_eq!(stops.len(), 2 * 2);
    for f in &stops {
        let t = table::read(f, Table::Stopping).unwrap();
        let round = t.i32s("round").unwrap()[0].unwrap();
        let fired = t.bools("stop_classification_change").unwrap()[0].unwrap();
        assert_eq!(fired, round == 1, "{f:?}");
        assert_eq!(t.f64s("kappa").unwrap()[0].is_some(), round == 1);
        assert!(
            t.meta["thresholds"].contains("\"change\":1.0"),
            "{:?}",
            t.meta
        );
    }
    let run_dir = std::fs::read_dir(d.join("runs/e2e"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(!run_dir.join("labels/round-002.parquet").exists());
    // a rerun does no work and says so again
    let before = snapshot(&d.join("results"));
    let log = ok(d, &["run", &p]);
    assert!(log.contains("stopped after round 1"), "{log}");
    assert_eq!(snapshot(&d.join("results")), before);
    // the report: one line per configuration and rule, over its two runs
    let o = common::vlal(
        d,
        &[
            "report",
            "--stopping",
            "--results",
            d.join("results").to_str().unwrap(),
        ],
        &[],
    );
    common::succeeded(&o);
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("e2e")).collect();
    assert_eq!(lines.len(), 6, "{out}");
    let change = lines
        .iter()
        .find(|l| l.contains("classification_change"))
        .unwrap();
    let cols: Vec<&str> = change.split_whitespace().collect();
    // pipeline trainer strategy rule fired round labels accuracy given_up saved at_end ≤ threshold
    assert_eq!(
        (cols[4], cols[5], cols[6], cols[8], cols[9], cols[12]),
        ("2/2", "1.0", "8.0", "0.0000", "0.0", "1"),
        "stopping at the last round gives nothing up: {change}"
    );
    let dis = lines.iter().find(|l| l.contains("disagreement")).unwrap();
    assert_eq!(dis.split_whitespace().nth(4), Some("n/a"), "{dis}");
    assert!(
        out.contains("[stopping] teacher = true measures it"),
        "{out}"
    );
}

/// The "(N rounds)" of `vlal run`'s summary line.
fn rounds_worked(log: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains("runs finished ("))
        .unwrap_or_else(|| panic!("no summary line: {log}"));
    let after = &line[line.find("runs finished (").unwrap() + "runs finished (".len()..];
    after[..after.find(" rounds)").unwrap()].parse().unwrap()
}

/// Several processes on one pipeline: `run --shard i/N` splits its runs into N disjoint parts
/// whose results and picks equal one process's; two `vlal run`s started together on the same
/// pipeline never work on a run twice (each run under an OS lock on its folder: the second
/// skips it), and end with the same tables; `deploy/slurm/shards.sbatch run` as a job array (under a
/// stand-in `sbatch`) and `deploy/ray/shards.py run` on a local Ray instance do the same; a bad
/// `--shard` is refused.
#[test]
fn sharded_and_concurrent_runs_equal_one_process_and_do_no_work_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), "toy", "400");
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let p = pipeline(&d, "p.toml", &data, SWEEP);
        (d, p)
    };
    // 2 trainers × 3 strategies × 2 seeds = 12 runs of rounds 0..=3
    let (a, pa) = dir("a");
    assert_eq!(rounds_worked(&ok(&a, &["run", &pa])), 48);
    let (s, ps) = dir("s");
    let mut worked = 0;
    for i in 0..3 {
        let log = ok(&s, &["run", &ps, "--shard", &format!("{i}/3")]);
        assert!(
            log.contains(&format!("shard {i}/3: 4 of the 12 selected runs")),
            "{log}"
        );
        worked += rounds_worked(&log);
    }
    assert_eq!(worked, 48, "disjoint shards");
    assert_eq!(
        results_rows(&s.join("results")),
        results_rows(&a.join("results"))
    );
    assert_eq!(queries(&s.join("runs")), queries(&a.join("runs")));
    // a filter narrows the runs first, then the shard splits them
    let log = ok(&s, &["run", &ps, "--trainer", "dho", "--shard", "1/4"]);
    assert!(
        log.contains("shard 1/4: 2 of the 6 selected runs") && log.contains("nothing to do"),
        "{log}"
    );

    let (c, pc) = dir("c");
    let spawn = || {
        Command::new(BIN)
            .current_dir(&c)
            .args(["run", &pc])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let logs: Vec<String> = [p1, p2]
        .into_iter()
        .map(|p| {
            let o = p.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(o.status.success(), "{log}");
            log
        })
        .collect();
    let total: usize = logs.iter().map(|l| rounds_worked(l)).sum();
    assert_eq!(total, 48, "no round worked twice: {logs:?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("another process works on it; skipped")),
        "the two met: {logs:?}"
    );
    assert_eq!(
        results_rows(&c.join("results")),
        results_rows(&a.join("results"))
    );
    assert_eq!(queries(&c.join("runs")), queries(&a.join("runs")));

    // deploy/slurm/shards.sbatch run as a job array, under a stand-in sbatch that starts the array's
    // tasks at once on this machine (no Slurm in CI); the range starts at 1 on purpose
    let (sl, psl) = dir("slurm");
    common::sbatch(&sl, &["--array=1-3"], "run", &[&psl]);
    let mut worked = 0;
    for t in 1..=3 {
        let log = std::fs::read_to_string(sl.join(format!("task-{t}.log"))).unwrap();
        assert!(
            log.contains(&format!("shard {}/3: 4 of the 12", t - 1)),
            "{log}"
        );
        worked += rounds_worked(&log);
    }
    assert_eq!(worked, 48);
    assert_eq!(
        results_rows(&sl.join("results")),
        results_rows(&a.join("results"))
    );

    // deploy/ray/shards.py: the shards as Ray tasks on a local Ray instance of 2 CPUs
    let (ry, pry) = dir("ray");
    let o = common::ray_shards(&ry, "run", 3, &[&pry]);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{log}");
    let worked: usize = log
        .lines()
        .filter(|l| l.contains("runs finished ("))
        .map(rounds_worked)
        .sum();
    assert_eq!(worked, 48, "{log}");
    assert_eq!(
        results_rows(&ry.join("results")),
        results_rows(&a.join("results"))
    );
    assert_eq!(queries(&ry.join("runs")), queries(&a.join("runs")));

    for (bad, says) in [
        ("3/2", "I must be below N = 2"),
        ("0/0", "N must be at least 1"),
        ("1", "expected I/N"),
    ] {
        let e = fails(&s, &["run", &ps, "--shard", bad]);
        assert!(e.contains(says), "{bad}: {e}");
    }
}

/// `bench/scale_round.py` (`make bench-scale-round`) on two small pools: one process per
/// strategy, a row per (pool, strategy) with its times and peak RSS, then the growth table. A
/// check that the benchmark still runs, not a measurement.
#[test]
fn the_scale_round_benchmark_runs_on_small_pools() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scale_round.py");
    let o = Command::new(common::venv_python())
        .arg(script)
        .args([
            "--bin",
            BIN,
            "--pools",
            "300,600",
            "--classes",
            "5",
            "--budget",
            "5",
        ])
        .args([
            "--calib",
            "50",
            "--test",
            "100",
            "--strategies",
            "entropy,badge",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("scale_round.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        assert_eq!(r["rc"], 0, "{r}");
        for k in ["process_s", "train_s", "select_s", "other_s", "peak_gib"] {
            assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
        }
    }
    assert!(stdout.contains("| 600 | badge | 5 |"), "{stdout}");
    assert!(
        stdout.contains("# growth from 300 to 600") && stdout.contains("| entropy | 5 | "),
        "{stdout}"
    );
    // each run's folder (its predictions) is removed once measured; its results stay
    assert!(!out.join("runs/scale-600-badge-b5").exists());
    assert!(out.join("results/pipeline=scale-600-badge-b5").exists());
}
