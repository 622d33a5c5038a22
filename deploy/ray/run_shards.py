#!/usr/bin/env python3
"""`vlal run` on a Ray cluster: one Ray task per shard of a pipeline's runs, each
`vlal run PIPELINE --shard I/N` in the current folder (runs/ and results/ on storage every node
sees). A run has no merge step: every (run, round) is its own results file. A failed shard is
reported by its index and its last log lines; rerunning resumes it (and a run another process
holds is skipped, each run having a lock on its folder).

  .venv/bin/python deploy/ray/run_shards.py pipelines/ccma.toml --shards 8 [--address auto]
      [--cpus-per-shard 4] [--vlal target/debug/vlal] [-- more `vlal run` flags]

Without --address a local Ray instance is started (--num-cpus, default: all cores)."""
import argparse
import os
import subprocess
import sys

import ray


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--shards", type=int, required=True, help="N: one Ray task per shard")
    ap.add_argument("--vlal", default="target/debug/vlal", help="the vlal binary")
    ap.add_argument("--address", default=None, help="a Ray cluster (default: start one here)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    ap.add_argument("--cpus-per-shard", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more `vlal run` flags (after --)")
    a = ap.parse_args()
    if a.shards < 1:
        sys.exit("run_shards: --shards must be at least 1")
    vlal = os.path.abspath(a.vlal)
    if not os.access(vlal, os.X_OK):
        sys.exit(f"run_shards: {vlal}: not an executable vlal binary (build it, or pass --vlal)")
    cwd = os.getcwd()
    ray.init(address=a.address, num_cpus=a.num_cpus, include_dashboard=False,
             log_to_driver=False)
    env = {"RAYON_NUM_THREADS": str(a.cpus_per_shard)}

    @ray.remote(num_cpus=a.cpus_per_shard)
    def shard(i):
        cmd = [vlal, "run", a.pipeline, *a.extra, "--shard", f"{i}/{a.shards}"]
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                           env={**os.environ, **env})
        return i, p.returncode, p.stderr

    failed = []
    for i, rc, log in ray.get([shard.remote(i) for i in range(a.shards)]):
        sys.stderr.write(log)
        if rc != 0:
            failed.append((i, log.strip().splitlines()[-1:] or ["(no output)"]))
    ray.shutdown()
    for i, last in failed:
        print(f"run_shards: shard {i}/{a.shards} failed: {last[0]}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
