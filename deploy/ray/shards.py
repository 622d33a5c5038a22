#!/usr/bin/env python3
"""vlal's sharded stages on a Ray cluster: one Ray task per shard, each a `vlal … --shard I/N`
in the current folder (the cache, runs/ and results/ on storage every node sees), then the
stage's merge, if it has one, once they all succeeded.

  # the runs of a pipeline (no merge: every (run, round) is its own results file)
  .venv/bin/python deploy/ray/shards.py run --shards 8 pipelines/ccma.toml
  # an extract in parts (whole batches), then `vlal extract --merge 8` writes the cache
  .venv/bin/python deploy/ray/shards.py extract --shards 8 --images data/in1k-images \\
      --out data/in1k --teacher openai/clip-vit-base-patch32 --student facebook/dinov2-small
  # a retrieve in parts, then `vlal retrieve --merge 8`
  .venv/bin/python deploy/ray/shards.py retrieve --shards 8 --data data/pets \\
      --corpus /data/laion --text-model openai/clip-vit-base-patch32

Options before the stage's own arguments: --address (a Ray cluster; default: start a local
instance of --num-cpus CPUs), --cpus-per-shard (also each shard's RAYON_NUM_THREADS), --vlal (the
binary). A failed shard is named with its last log line, no merge runs, and the exit status is 1;
rerunning resumes (a shard's finished work is kept, and a run another process holds is skipped)."""
import argparse
import os
import subprocess
import sys

import ray

MERGES = {"run": False, "extract": True, "retrieve": True}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("stage", choices=sorted(MERGES))
    ap.add_argument("--shards", type=int, required=True, help="N: one Ray task per shard")
    ap.add_argument("--vlal", default="target/debug/vlal", help="the vlal binary")
    ap.add_argument("--address", default=None, help="a Ray cluster (default: start one here)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    ap.add_argument("--cpus-per-shard", type=int, default=1)
    a, args = ap.parse_known_args()
    if a.shards < 1:
        sys.exit("shards: --shards must be at least 1")
    vlal = os.path.abspath(a.vlal)
    if not os.access(vlal, os.X_OK):
        sys.exit(f"shards: {vlal}: not an executable vlal binary (build it, or pass --vlal)")
    cwd = os.getcwd()
    env = {**os.environ, "RAYON_NUM_THREADS": str(a.cpus_per_shard)}

    def vlal_run(extra):
        p = subprocess.run([vlal, a.stage, *args, *extra], cwd=cwd, capture_output=True,
                           text=True, env=env)
        return p.returncode, p.stderr

    ray.init(address=a.address, num_cpus=a.num_cpus, include_dashboard=False,
             log_to_driver=False)

    @ray.remote(num_cpus=a.cpus_per_shard)
    def shard(i):
        return (i, *vlal_run(["--shard", f"{i}/{a.shards}"]))

    failed = []
    for i, rc, log in ray.get([shard.remote(i) for i in range(a.shards)]):
        sys.stderr.write(log)
        if rc != 0:
            failed.append((i, (log.strip().splitlines() or ["(no output)"])[-1]))
    ray.shutdown()
    for i, last in failed:
        print(f"shards: {a.stage} shard {i}/{a.shards} failed: {last}", file=sys.stderr)
    if failed:
        sys.exit(1)
    if MERGES[a.stage]:
        rc, log = vlal_run(["--merge", str(a.shards)])
        sys.stderr.write(log)
        if rc != 0:
            sys.exit(f"shards: {a.stage} --merge {a.shards} failed")


if __name__ == "__main__":
    main()
