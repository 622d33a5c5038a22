//! A person in the loop, end to end on a tiny offline world: labeling whole rounds of a pool
//! without ground truth in a real headless browser (`vlal annotate`), `vlal run` with
//! `oracle = "person"` stopping and resuming around it, the stopping table and
//! `report --stopping`, and the Label Studio export → import round trip.

mod common;

use common::browser::Browser;
use common::{fails, ok};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use vlal::schema::Table;
use vlal::table;

const CLASSES: [&str; 3] = ["apple", "boat", "cloud"];

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    /// `vlal tiny` (3 classes × 12 images) extracted through a manifest: train and test
    /// samples, their labels only when `labeled` (else a pool without ground truth).
    fn new(labeled: bool) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let r = root.to_str().unwrap();
        ok(
            Path::new("."),
            &[
                "-q",
                "tiny",
                "--out",
                r,
                "--classes",
                "3",
                "--per-class",
                "12",
            ],
        );
        let mut csv = String::from("path,label,split\n");
        for c in CLASSES {
            let mut files: Vec<String> = std::fs::read_dir(root.join("images").join(c))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            files.sort();
            for (i, f) in files.iter().enumerate() {
                let split = if i % 6 == 5 { "test" } else { "train" };
                let label = if labeled { c } else { "" };
                csv += &format!("images/{c}/{f},{label},{split}\n");
            }
        }
        std::fs::write(root.join("manifest.csv"), csv).unwrap();
        let p = |s: &str| root.join(s).display().to_string();
        ok(
            Path::new("."),
            &[
                "-q",
                "extract",
                "--manifest",
                &p("manifest.csv"),
                "--classes",
                &p("classes.txt"),
                "--out",
                &p("cache"),
                "--student",
                &p("tiny-dino"),
                "--teacher",
                &p("tiny-clip"),
            ],
        );
        World { _tmp: tmp, root }
    }

    fn pipeline(&self, name: &str, extra: &str) -> String {
        let path = self.root.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"name = "{name}"
seeds = [0]
strategies = ["entropy"]
runs_dir = "{r}/runs"
results_dir = "{r}/results"
stopping_dir = "{r}/stopping"
budget = 4
{extra}
[dataset]
name = "tiny"
root = "{r}/cache"
student = "tiny-dino@local"
teacher = "tiny-clip@local"
"#,
                r = self.root.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    }

    /// The one run folder of a pipeline.
    fn run_dir(&self, name: &str) -> PathBuf {
        let d = self.root.join("runs").join(name);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(v.len(), 1, "{v:?}");
        v.pop().unwrap()
    }
}

/// The class a tiny-world sample shows (its folder).
fn truth(id: &str) -> &'static str {
    CLASSES
        .into_iter()
        .find(|c| id.contains(&format!("/{c}/")))
        .unwrap()
}

/// (sample_id, label) rows of a labels table.
fn labels(path: &Path) -> Vec<(String, i32, String)> {
    let t = table::read(path, Table::Labels).unwrap();
    let (ids, l, k) = (
        t.strings("sample_id").unwrap(),
        t.i32s("label").unwrap(),
        t.strings("kind").unwrap(),
    );
    (0..t.rows)
        .map(|i| (ids[i].clone(), l[i].unwrap(), k[i].clone()))
        .collect()
}

/// `vlal label --round 0 --from-file FILE` of a pipeline.
fn import_answers<'a>(pipe: &'a str, file: &'a str) -> [&'a str; 7] {
    [
        "label",
        "--pipeline",
        pipe,
        "--round",
        "0",
        "--from-file",
        file,
    ]
}

/// `vlal annotate` in the background; its URL once it listens. Its log keeps draining.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// `round`: None lets the server find the round that waits for answers.
    fn start(pipeline: &str, round: Option<usize>) -> Server {
        let mut args = vec!["annotate", "--pipeline", pipeline, "--port", "0"];
        let r = round.map(|r| r.to_string());
        if let Some(r) = &r {
            args.extend(["--round", r.as_str()]);
        }
        let mut child = Command::new(common::BIN)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("annotate prints its URL").unwrap();
            if let Some(at) = line.find("http://") {
                let url = line[at..].split_whitespace().next().unwrap();
                break url.trim_end_matches('/').to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's current query.
fn current(b: &Browser) -> String {
    b.eval("return S.items[cur].sample_id")
        .as_str()
        .unwrap()
        .to_string()
}

/// The shortcut key of a class (its position in the class file: 1, 2, 3).
fn key(class: &str) -> String {
    (CLASSES.iter().position(|c| *c == class).unwrap() + 1).to_string()
}

#[test]
fn a_person_labels_a_pool_without_ground_truth_in_the_browser() {
    let w = World::new(false);
    let pipe = w.pipeline(
        "person",
        "rounds = 2\ninitial_per_class = 0\ncold_start = \"typiclust\"\noracle = \"person\"\ntrainers = [\"ct\"]\n[stopping]\nteacher = true",
    );
    // round 0 starts from no label: the cold-start strategy picks, then the run waits
    let log = ok(Path::new("."), &["run", &pipe]);
    assert!(
        log.contains("round 0: waiting for a person (0 of 4 queries answered)"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "vlal annotate --pipeline {pipe} --trainer ct --strategy entropy --seed 0 --round 0"
        )),
        "{log}"
    );
    let run = w.run_dir("person");
    let q0 = table::read(&run.join("queries/round-000.parquet"), Table::Queries).unwrap();
    assert_eq!(
        q0.strings("strategy").unwrap(),
        vec!["typiclust"; 4],
        "the cold start picked round 0"
    );
    assert!(labels(&run.join("labels/round-000.parquet")).is_empty());

    // a browser labels round 0: keys, an undo, a button, a skip, and a second tab
    let server = Server::start(&pipe, Some(0));
    let b = Browser::start(1200, 860);
    b.goto(&format!("{}/", server.url));
    b.wait_for("return document.querySelectorAll('#buttons button').length === 3");
    assert_eq!(b.text("#count"), "0 of 4");
    let first = current(&b);
    let wrong = CLASSES.iter().find(|c| **c != truth(&first)).unwrap();
    b.key(&key(wrong));
    b.wait_for("return S.answered === 1");
    b.key("\u{E003}"); // Backspace: undo
    b.wait_for("return S.answered === 0");
    assert_eq!(
        current(&b),
        first,
        "undo goes back to the answer taken back"
    );
    b.key(&key(truth(&first)));
    b.wait_for("return S.answered === 1");
    let second = current(&b);
    assert_ne!(second, first);
    // the page of README's screenshot: an image, both models' suggestions, progress
    b.wait_for("return document.getElementById('img').complete && document.getElementById('img').naturalWidth > 0");
    let png = b.screenshot();
    assert!(
        image::load_from_memory(&png).is_ok(),
        "the screenshot is a PNG"
    );
    if let Ok(to) = std::env::var("VLAL_SCREENSHOT") {
        std::fs::write(to, &png).unwrap();
    }
    assert_eq!(b.all("#teacher button").len(), 3);
    assert_eq!(b.all("#student button").len(), 3);
    b.click(&format!("#buttons button[data-class='{}']", truth(&second)));
    b.wait_for("return S.answered === 2");
    let skipped = current(&b);
    b.click("#skip");
    b.wait_for("return S.answered === 3");
    // a second tab answers the last query; the first one sees it
    let last = current(&b);
    let (tab1, _) = b.new_tab();
    b.goto(&format!("{}/", server.url));
    b.wait_for("return typeof S === 'object' && S !== null && S.answered === 3");
    assert_eq!(current(&b), last, "the new tab opens on the open query");
    b.key(&key(truth(&last)));
    b.wait_for("return S.complete === true");
    b.switch(&tab1);
    b.wait_for(
        "return S.complete === true && document.getElementById('done').style.display === 'block'",
    );
    assert_eq!(b.text("#next"), format!("vlal run {pipe}"));
    assert_eq!(b.text("#count"), "4 of 4");
    drop(server);

    let answers = std::fs::read_to_string(run.join("answers/round-000.csv")).unwrap();
    assert_eq!(answers.lines().count(), 5, "{answers}");
    assert!(answers.contains(&format!("{skipped},,true")), "{answers}");

    // the run takes the answers and stops at round 1's queries
    let log = ok(Path::new("."), &["run", &pipe]);
    assert!(
        log.contains("round 1: waiting for a person (0 of 4 queries answered)"),
        "{log}"
    );
    let l1 = labels(&run.join("labels/round-001.parquet"));
    assert_eq!(l1.len(), 3, "the skipped sample stays in the pool: {l1:?}");
    for (id, l, kind) in &l1 {
        assert_eq!(CLASSES[*l as usize], truth(id));
        assert_eq!(kind, "oracle");
    }
    let q1 = table::read(&run.join("queries/round-001.parquet"), Table::Queries).unwrap();
    assert_eq!(
        q1.strings("strategy").unwrap(),
        vec!["entropy"; 4],
        "labels exist: the run's own strategy"
    );

    // round 1 (the round that waits, found by the server), all by keys, in a fresh browser;
    // then the run finishes
    let server = Server::start(&pipe, None);
    let b = Browser::start(1000, 700);
    b.goto(&format!("{}/", server.url));
    b.wait_for("return document.querySelectorAll('#buttons button').length === 3");
    for n in 1..=4 {
        let id = current(&b);
        b.key(&key(truth(&id)));
        b.wait_for(&format!("return S.answered === {n}"));
    }
    drop(server);
    let log = ok(Path::new("."), &["run", &pipe]);
    assert!(
        log.contains("round 2 (done): no test labels with 7 labels"),
        "{log}"
    );
    let l2 = labels(&run.join("labels/round-002.parquet"));
    assert_eq!(l2.len(), 7);
    assert!(l2
        .iter()
        .all(|(id, l, _)| CLASSES[*l as usize] == truth(id)));

    // no ground truth: no accuracy, and the report says so; the stopping rules were measured
    let results = w.root.join("results");
    let report = |extra: &[&str]| {
        let mut args = vec!["report", "--results", results.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = common::vlal(Path::new("."), &args, &[]);
        common::succeeded(&o);
        String::from_utf8(o.stdout).unwrap()
    };
    let res = report(&[]);
    assert!(res.contains("no test labels (n=1)"), "{res}");
    let png = w.root.join("curves.png");
    let e = fails(
        Path::new("."),
        &[
            "report",
            "--results",
            results.to_str().unwrap(),
            "--plot",
            png.to_str().unwrap(),
        ],
    );
    assert!(e.contains("no round has a test accuracy"), "{e}");
    assert!(!png.exists());
    let stop = report(&["--stopping"]);
    assert_eq!(
        stop.lines().filter(|l| l.starts_with("person")).count(),
        6,
        "{stop}"
    );
    for rule in vlal::stopping::RULES {
        assert!(stop.contains(rule), "{stop}");
    }
    let s1 = table::read(
        &std::fs::read_dir(
            w.root
                .join("stopping/pipeline=person/strategy=entropy/seed=0"),
        )
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("round-001.parquet"))
        .unwrap(),
        Table::Stopping,
    )
    .unwrap();
    let kappa = s1.f64s("kappa").unwrap()[0].unwrap();
    assert!((-1.0..=1.0).contains(&kappa));
    assert!(
        s1.f64s("top1_disagreement").unwrap()[0].is_some(),
        "the cache has the teacher's logits"
    );
}

#[test]
fn the_server_refuses_other_machines_and_bad_answers() {
    let w = World::new(true);
    let pipe = w.pipeline(
        "bad",
        "rounds = 1\ntrainers = [\"linear\"]\n[linear]\nepochs = 3",
    );
    let e = fails(
        Path::new("."),
        &[
            "annotate",
            "--pipeline",
            &pipe,
            "--round",
            "0",
            "--host",
            "0.0.0.0",
        ],
    );
    assert!(
        e.contains("0.0.0.0 is not a loopback address") && e.contains("--allow-remote"),
        "{e}"
    );
    // before select: one line naming the missing queries
    let annotate_fails = || {
        let args = [
            "annotate",
            "--pipeline",
            &pipe,
            "--round",
            "0",
            "--port",
            "0",
        ];
        fails(Path::new("."), &args)
    };
    ok(
        Path::new("."),
        &["-q", "label", "--pipeline", &pipe, "--init"],
    );
    ok(
        Path::new("."),
        &["-q", "train", "--pipeline", &pipe, "--round", "0"],
    );
    let e = annotate_fails();
    assert!(
        e.contains("queries/round-000.parquet: missing (run `vlal select` first)"),
        "{e}"
    );
    ok(
        Path::new("."),
        &["-q", "select", "--pipeline", &pipe, "--round", "0"],
    );
    // an answers file naming a sample that was not queried keeps the server from starting
    let run = w.run_dir("bad");
    std::fs::create_dir_all(run.join("answers")).unwrap();
    std::fs::write(
        run.join("answers/round-000.csv"),
        "sample_id,label,skipped\nimages/apple/999.png,apple,false\n",
    )
    .unwrap();
    let e = annotate_fails();
    assert!(e.contains("answers/round-000.csv: row 1: sample 'images/apple/999.png' was not queried in round 0"), "{e}");
    std::fs::remove_file(run.join("answers/round-000.csv")).unwrap();

    // two clients answering at once: every answer lands, the file stays whole
    let server = Server::start(&pipe, Some(0));
    let state: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("{}/api/state", server.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = state["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sample_id"].as_str().unwrap().to_string())
        .collect();
    std::thread::scope(|s| {
        for id in &ids {
            let url = server.url.clone();
            s.spawn(move || {
                let body = serde_json::json!({"sample_id": id, "label": truth(id)}).to_string();
                ureq::post(&format!("{url}/api/answer"))
                    .send_string(&body)
                    .unwrap();
            });
        }
    });
    let post = |body: serde_json::Value| -> (u16, String) {
        match ureq::post(&format!("{}/api/answer", server.url)).send_string(&body.to_string()) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let (code, body) =
        post(serde_json::json!({"sample_id": "images/apple/999.png", "label": "apple"}));
    assert_eq!(code, 400);
    assert!(body.contains("was not queried in round 0"), "{body}");
    let (code, body) = post(serde_json::json!({"sample_id": ids[0], "label": "pear"}));
    assert_eq!(
        (code, body.contains("unknown class 'pear'")),
        (400, true),
        "{body}"
    );
    for bad in [
        "/image/99",
        "/image/../../etc/passwd",
        "/image/-1",
        "/etc/passwd",
    ] {
        let code = match ureq::get(&format!("{}{bad}", server.url)).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(code, 404, "{bad}");
    }
    drop(server);
    let answers = std::fs::read_to_string(run.join("answers/round-000.csv")).unwrap();
    assert_eq!(answers.lines().count(), 1 + ids.len(), "{answers}");
    // the labels import them
    let file = run.join("answers/round-000.csv");
    ok(
        Path::new("."),
        &import_answers(&pipe, file.to_str().unwrap()),
    );
    let l1 = labels(&run.join("labels/round-001.parquet"));
    assert_eq!(l1.len(), 3 + ids.len());
}

#[test]
fn label_studio_export_and_import_round_trip() {
    let w = World::new(true);
    let pipe = w.pipeline(
        "ls",
        "rounds = 1\ntrainers = [\"linear\"]\n[linear]\nepochs = 3",
    );
    for stage in [
        &["label", "--init"][..],
        &["train", "--round", "0"],
        &["select", "--round", "0"],
    ] {
        let mut args = vec!["-q"];
        args.extend_from_slice(&stage[..1]);
        args.extend(["--pipeline", &pipe]);
        args.extend_from_slice(&stage[1..]);
        ok(Path::new("."), &args);
    }
    let out = w.root.join("ls/tasks.label-studio.json");
    let log = ok(
        Path::new("."),
        &[
            "export",
            "--pipeline",
            &pipe,
            "--round",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(log.contains("(4 tasks)"), "{log}");
    let config = std::fs::read_to_string(w.root.join("ls/tasks.label-config.xml")).unwrap();
    for c in CLASSES {
        assert!(
            config.contains(&format!("<Choice value=\"{c}\"/>")),
            "{config}"
        );
    }
    let tasks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tasks = tasks.as_array().unwrap();
    let run = w.run_dir("ls");
    let q = table::read(&run.join("queries/round-000.parquet"), Table::Queries).unwrap();
    let (qids, scores) = (q.strings("sample_id").unwrap(), q.f64s("score").unwrap());
    assert_eq!(tasks.len(), qids.len());
    for (k, t) in tasks.iter().enumerate() {
        assert_eq!(t["data"]["sample_id"], qids[k].as_str());
        assert_eq!(t["data"]["rank"], k);
        let score = t["data"]["acquisition_score"].as_f64().unwrap();
        assert!((score - scores[k].unwrap()).abs() < 1e-12, "{score}");
        let img = t["data"]["image"].as_str().unwrap();
        assert!(
            img.starts_with("/data/local-files/?d=")
                && img.ends_with(&qids[k][qids[k].rfind('/').unwrap()..]),
            "{img}"
        );
        let pred = &t["predictions"][0];
        assert!(pred["score"].as_f64().unwrap() > 0.0);
        let choice = pred["result"][0]["value"]["choices"][0].as_str().unwrap();
        assert!(CLASSES.contains(&choice));
    }
    // what Label Studio's JSON export of those tasks looks like once labeled (its documented
    // format: the task with its data, annotations with choices results, predictions)
    let export = |f: &dyn Fn(&str) -> serde_json::Value| -> serde_json::Value {
        serde_json::Value::Array(
            tasks
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let id = t["data"]["sample_id"].as_str().unwrap();
                    serde_json::json!({
                        "id": 100 + k,
                        "data": t["data"],
                        "annotations": [{
                            "id": 7 + k, "completed_by": 1, "was_cancelled": false, "ground_truth": false,
                            "created_at": "2026-12-06T06:00:00.000000Z", "lead_time": 2.5,
                            "result": [{"id": "r1", "type": "choices", "from_name": "label", "to_name": "image",
                                        "origin": "manual", "value": {"choices": [f(id)]}}]
                        }],
                        "predictions": t["predictions"],
                        "meta": {}, "project": 3
                    })
                })
                .collect(),
        )
    };
    let write = |name: &str, v: &serde_json::Value| -> String {
        let p = w.root.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    };
    let labels1 = run.join("labels/round-001.parquet");
    // bad exports: one line naming the file, nothing written
    let mut other = export(&|id| truth(id).into());
    for t in other.as_array_mut().unwrap() {
        let id = t["data"]["sample_id"]
            .as_str()
            .unwrap()
            .replace("images/", "elsewhere/");
        t["data"]["sample_id"] = id.into();
    }
    let f = write("other.json", &other);
    let e = fails(Path::new("."), &import_answers(&pipe, &f));
    assert!(
        e.contains(&f) && e.contains("none of its 4 sample ids is in the train pool"),
        "{e}"
    );
    let f = write("pear.json", &export(&|_| "pear".into()));
    let e = fails(Path::new("."), &import_answers(&pipe, &f));
    assert!(e.contains(&f) && e.contains("unknown class 'pear'"), "{e}");
    assert!(!labels1.exists());

    let f = write("export.json", &export(&|id| truth(id).into()));
    ok(Path::new("."), &import_answers(&pipe, &f));
    let got = labels(&labels1);
    // the seed labels, then the queries with the classes the person chose
    assert_eq!(got.len(), 3 + 4);
    let new: Vec<_> = got.iter().filter(|r| r.2 == "oracle").collect();
    assert_eq!(new.len(), 4);
    for (id, l, _) in new {
        assert_eq!(CLASSES[*l as usize], truth(id));
    }
    // the simulated oracle gives the same labels for this labeled pool
    std::fs::rename(&labels1, w.root.join("from-ls.parquet")).unwrap();
    ok(
        Path::new("."),
        &["-q", "label", "--pipeline", &pipe, "--round", "0"],
    );
    assert_eq!(labels(&labels1), labels(&w.root.join("from-ls.parquet")));
}
