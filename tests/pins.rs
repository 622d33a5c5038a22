//! Pins what a refactor must not change: the run id (config hash) of every run of every pipeline
//! in `pipelines/`, and the picks of every strategy under two trainers on a generated cache.
//! Existing `runs/` and `results/` folders stay valid only while these hold. After a deliberate
//! change, `VLAL_UPDATE_PINS=1 cargo test --test pins` rewrites `tests/pins/*.txt` (review the diff).

use sha2::{Digest, Sha256};
use std::path::Path;
use vlal::config::Pipeline;
use vlal::schema::Table;
use vlal::table;

mod common;
use common::ok;

/// Compare `got` with the pinned file, or rewrite it under VLAL_UPDATE_PINS=1. Lines are matched
/// by `key`: every pinned line must come back unchanged, and lines with a new key (a strategy
/// or pipeline added since) are allowed and listed.
fn check_pin(name: &str, got: &str, key: fn(&str) -> String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pins")
        .join(name);
    if std::env::var("VLAL_UPDATE_PINS").is_ok() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VLAL_UPDATE_PINS=1 writes it)", path.display()));
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let now: std::collections::HashMap<String, &str> = got.iter().map(|l| (key(l), *l)).collect();
    let pinned: std::collections::HashSet<String> = want.iter().map(|l| key(l)).collect();
    let changed: Vec<String> = want
        .iter()
        .filter(|w| now.get(&key(w)) != Some(*w))
        .map(|w| {
            format!(
                "pinned {w}\n   now {}",
                now.get(&key(w)).unwrap_or(&"(missing)")
            )
        })
        .collect();
    let added: Vec<&str> = got
        .iter()
        .copied()
        .filter(|l| !pinned.contains(&key(l)))
        .collect();
    if !added.is_empty() {
        eprintln!(
            "{}: {} lines not pinned yet (VLAL_UPDATE_PINS=1 adds them):\n{}",
            path.display(),
            added.len(),
            added.join("\n")
        );
    }
    assert!(
        changed.is_empty(),
        "{}: {} of {} pinned lines changed:\n{}",
        path.display(),
        changed.len(),
        want.len(),
        changed[..changed.len().min(10)].join("\n")
    );
}

#[test]
fn run_ids_of_every_shipped_pipeline_are_pinned() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in &files {
        let p = Pipeline::load(f).unwrap();
        for spec in p.runs() {
            out += &format!(
                "{} {}\n",
                f.file_name().unwrap().to_string_lossy(),
                spec.run_id()
            );
        }
    }
    assert!(out.lines().count() > 100, "{out}");
    // a run's id is its whole line: a changed hash is a pinned line gone missing
    check_pin("run-ids.txt", &out, |l| l.to_string());
}

#[test]
fn picks_of_every_strategy_are_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |args: &[&str]| ok(d, args);
    common::synth(d, &d.join("data"), "300", "60", "100");
    let mut strategies: Vec<String> = vlal::strategy::names().map(|s| s.to_string()).collect();
    strategies.extend(["cb+sq".to_string(), "entropy+sq".to_string()]);
    let list = strategies
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"pins\"\nseeds = [3]\nrounds = 2\nbudget = 6\nstrategies = [{list}]\n\
             trainers = [\"linear\", \"dho\"]\n\
             [dataset]\nname = \"toy\"\nroot = \"data\"\nstudent = \"synthetic-student@v1\"\n\
             teacher = \"synthetic-teacher@v1\"\n[linear]\nepochs = 30\n[dho]\nepochs = 20\n"
        ),
    )
    .unwrap();
    run(&["-q", "run", "p.toml"]);
    let p = Pipeline::load(&d.join("p.toml")).unwrap();
    let mut out = String::new();
    for spec in p.runs() {
        for round in 0..2 {
            let q = table::read(&d.join(spec.queries_path(round)), Table::Queries).unwrap();
            let ids = q.strings("sample_id").unwrap();
            let pseudo = q.i32s("pseudo_label").unwrap();
            let mut h = Sha256::new();
            for (id, l) in ids.iter().zip(&pseudo) {
                h.update(format!("{id} {l:?}\n"));
            }
            let digest: String = h
                .finalize()
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            out += &format!(
                "{} {} seed {} round {round}: {} picks {digest}\n",
                spec.trainer,
                spec.strategy_name(),
                spec.seed,
                ids.len()
            );
        }
    }
    // a run's picks are keyed by the run and round (the text before ':')
    check_pin("picks.txt", &out, |l| {
        l.split(':').next().unwrap_or("").to_string()
    });
}
