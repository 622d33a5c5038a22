//! What the end-to-end tests share: running the `vlal` binary and judging how it ended.
#![allow(dead_code)] // each test crate uses a part

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_vlal");

/// `vlal ARGS` in `dir`, with extra environment variables.
pub fn vlal(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.current_dir(dir).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("vlal runs")
}

/// The log (stderr) of a command that must have succeeded.
pub fn succeeded(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "vlal failed: {err}");
    err
}

/// `vlal ARGS` in `dir`, which must succeed; its log.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let o = vlal(dir, args, &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "vlal {args:?} failed: {err}");
    err
}

/// The one error line of a command that must fail; RUST_BACKTRACE is set, and no backtrace may
/// end up in the line.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let o = vlal(dir, args, &[("RUST_BACKTRACE", "1")]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "vlal {args:?} should fail; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        !lines[0].contains(" 0: ") && !lines[0].contains("backtrace"),
        "a backtrace in the error line: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// `vlal synth` into `out`: 4 classes, 16-d student and 8-d teacher features over an 8-d latent,
/// with `train`, `calib` and `test` samples.
pub fn synth(dir: &Path, out: &Path, train: &str, calib: &str, test: &str) {
    let out = out.to_str().unwrap();
    ok(
        dir,
        &[
            "-q",
            "synth",
            "--out",
            out,
            "--classes",
            "4",
            "--dim",
            "16",
            "--teacher-dim",
            "8",
            "--latent",
            "8",
            "--train",
            train,
            "--calib",
            calib,
            "--test",
            test,
        ],
    );
}

/// A stand-in for Slurm's `sbatch [--array=LO-HI] SCRIPT ARGS…` (no Slurm in CI): starts every
/// array task of SCRIPT at once with Slurm's array variables set (output in `task-<id>.log`) and
/// waits for them; without `--array`, runs SCRIPT once (output in `job.log`). `--parsable` and
/// `--dependency` are accepted and ignored (the jobs run one after the other anyway).
const FAKE_SBATCH: &str = r#"#!/usr/bin/env bash
set -euo pipefail
array=""; args=()
for a in "$@"; do
  case $a in --array=*) array=${a#--array=} ;; --parsable|--dependency=*) ;; *) args+=("$a") ;; esac
done
if [ -z "$array" ]; then bash "${args[@]}" >job.log 2>&1; exit; fi
lo=${array%-*}; hi=${array#*-}
pids=()
for i in $(seq "$lo" "$hi"); do
  SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_MIN=$lo SLURM_ARRAY_TASK_MAX=$hi \
    SLURM_ARRAY_TASK_COUNT=$((hi - lo + 1)) bash "${args[@]}" >"task-$i.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"#;

/// The project venv's Python (`make test` sets VLAL_PYTHON; it has polars and ray).
pub fn venv_python() -> String {
    std::env::var("VLAL_PYTHON")
        .expect("VLAL_PYTHON is unset: run `make test` (it names the venv's python)")
}

/// `deploy/ray/shards.py STAGE --shards N` in `dir` on a local Ray instance of 2 CPUs, running
/// this build's binary with the stage's `args`.
pub fn ray_shards(dir: &Path, stage: &str, n: usize, args: &[&str]) -> Output {
    let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ray/shards.py");
    Command::new(venv_python())
        .current_dir(dir)
        .arg(launcher)
        .args([
            stage,
            "--shards",
            &n.to_string(),
            "--num-cpus",
            "2",
            "--vlal",
            BIN,
        ])
        .args(args)
        .env("RAY_AUTH_MODE", "disabled")
        .output()
        .unwrap()
}

/// `sbatch FLAGS deploy/slurm/shards.sbatch STAGE ARGS` in `dir` under [`FAKE_SBATCH`], running
/// this build's binary; asserts that it succeeded (the tasks' logs are `dir/task-<id>.log`,
/// `dir/job.log`).
pub fn sbatch(dir: &Path, flags: &[&str], stage: &str, args: &[&str]) {
    let fake = dir.join(".sbatch");
    std::fs::write(&fake, FAKE_SBATCH).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/shards.sbatch");
    let o = Command::new("bash")
        .current_dir(dir)
        .arg(&fake)
        .args(flags)
        .arg(script)
        .arg(stage)
        .args(args)
        .env("VLAL", BIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
pub mod browser;
