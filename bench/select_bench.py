#!/usr/bin/env python3
"""PCoreSet and BADGE selection time: vlal (Rust) next to numpy, same algorithm, same run.

Usage: python3 bench/select_bench.py [--pool 100000 --classes 1000 --dim 2048 --budget 1000]
Each implementation runs in its own process; the table gives the selection time alone (data
generation excluded), the ratio numpy/vlal, and each process's peak resident memory.
The numpy BADGE uses the same implicit distances as vlal (a ⊗ h is never built); the
explicit embeddings would need pool × 2·C × H × 4 bytes (1.6 TB at the default sizes).
"""
import argparse, json, os, resource, subprocess, sys, time

def numpy_run(strategy, pool, classes, dim, budget, labeled, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    n = pool + labeled
    logits = (rng.standard_normal((n, classes), dtype=np.float32) * 3.0)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits); p /= p.sum(1, keepdims=True)
    del logits
    if strategy == "pcoreset":
        lab, P = p[:labeled], p[labeled:]
        t = time.perf_counter()
        # min distance to the labeled set, blockwise via ‖x‖² + ‖c‖² − 2x·c
        pn = (P * P).sum(1)
        d = np.full(pool, np.inf, dtype=np.float32)
        ln = (lab * lab).sum(1)
        for s in range(0, pool, 8192):
            blk = pn[s:s+8192, None] + ln[None, :] - 2.0 * (P[s:s+8192] @ lab.T)
            d[s:s+8192] = np.maximum(blk.min(1), 0)
        picks = []
        for _ in range(budget):
            i = int(np.argmax(d)); picks.append(i)
            nd = ((P - P[i]) ** 2).sum(1)
            np.minimum(d, nd, out=d)
        secs = time.perf_counter() - t
    else:
        P = p[labeled:]
        y = P.argmax(1)
        A = np.concatenate([P, P], 1)
        A[np.arange(pool), y] -= 1.0
        A[np.arange(pool), classes + y] -= 1.0
        del p, P
        H = rng.standard_normal((pool, dim), dtype=np.float32)
        t = time.perf_counter()
        na = (A * A).sum(1); nh = (H * H).sum(1)
        g = na * nh
        c = int(np.argmax(g)); picks = [c]
        d2 = np.full(pool, np.inf, dtype=np.float32)
        taken = np.zeros(pool, bool); taken[c] = True
        prng = np.random.default_rng(seed + 1)
        for _ in range(budget - 1):
            nd = g + g[c] - 2.0 * (A @ A[c]) * (H @ H[c])
            np.maximum(nd, 0, out=nd); nd[taken] = 0
            np.minimum(d2, nd, out=d2)
            w = d2.astype(np.float64); tot = w.sum()
            c = int(prng.choice(pool, p=w / tot)) if tot > 0 else int(np.flatnonzero(~taken)[0])
            taken[c] = True; picks.append(c)
        secs = time.perf_counter() - t
    assert len(picks) == budget
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"impl": "numpy", "strategy": strategy, "seconds": round(secs, 3), "peak_rss_mib": round(peak)}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--strategies", default="pcoreset,badge")
    ap.add_argument("--bin", default="target/debug/vlal-bench")
    ap.add_argument("--numpy-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.numpy_worker:
        print(json.dumps(numpy_run(a.numpy_worker, a.pool, a.classes, a.dim, a.budget, a.labeled, 0)))
        return
    sizes = ["--pool", str(a.pool), "--classes", str(a.classes), "--dim", str(a.dim),
             "--budget", str(a.budget), "--labeled", str(a.labeled)]
    rows = []
    for s in a.strategies.split(","):
        rust = json.loads(subprocess.check_output([a.bin, "--strategy", s] + sizes).decode().strip().splitlines()[-1])
        npy = json.loads(subprocess.check_output([sys.executable, __file__, "--numpy-worker", s] + sizes).decode().strip().splitlines()[-1])
        rows.append((s, rust, npy))
    print(f"pool {a.pool}, C {a.classes}, H {a.dim}, Q {a.budget}, labeled {a.labeled}, {os.cpu_count()} cores")
    print(f"{'strategy':<10} {'vlal s':>9} {'numpy s':>9} {'numpy/vlal':>11} {'vlal MiB':>9} {'numpy MiB':>10}")
    for s, r, n in rows:
        print(f"{s:<10} {r['seconds']:>9.2f} {n['seconds']:>9.2f} {n['seconds'] / r['seconds']:>11.2f} {r['peak_rss_mib']:>9.0f} {n['peak_rss_mib']:>10.0f}")

if __name__ == "__main__":
    main()
