#!/usr/bin/env python3
"""CCMA select time per round: vlal (Rust) next to numpy + faiss, same steps, same run.

Usage: python3 bench/ccma_bench.py [--pool 50000 --classes 100 --dim 1024 --teacher-dim 768]
Needs numpy; uses faiss (pip install faiss-cpu) for k-means and nearest-centroid search when it
is importable, else a blocked numpy Lloyd. Each implementation runs in its own process on data
generated the same way (CLIP-like class clusters, teacher softmax(cos/0.03)); the table gives
the selection time alone (data generation excluded) and the ratio numpy/vlal.
Steps (CCMA paper, §3; README "CCMA"): subpool (V1: k-means K = min(10k, |U|/3) on the teacher embeddings,
20 iterations, point nearest each centroid; V3: random subpool of the same size), size-targeted
thresholds by 30-step bisection on the calib split (k_S = 5, k_T = 3), sets with top-1 fallback,
union-renormalised JS, gate, score, top ρ·B (ρ = 20), k-means K = B, point nearest each centroid.
"""
import argparse, json, os, resource, subprocess, sys, time

def gen(pool, labeled, calib, c, d, dt, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    n = pool + labeled + calib
    means = rng.standard_normal((c, dt), dtype=np.float32)
    y = rng.integers(0, c, n)
    z = means[y] + 1.5 * rng.standard_normal((n, dt), dtype=np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    t = means + 0.5 * rng.standard_normal((c, dt), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    def softmax(l):
        l = l - l.max(1, keepdims=True); e = np.exp(l); return e / e.sum(1, keepdims=True)
    pt = softmax((z @ t.T) / 0.03).astype(np.float32)
    sl = 3.0 * rng.standard_normal((n, c), dtype=np.float32); sl[np.arange(n), y] += 4.0
    ps = softmax(sl).astype(np.float32)
    student = rng.standard_normal((n, d), dtype=np.float32)  # unused by CCMA, kept for memory parity
    return z, pt, ps, y, student

def kmeans_nearest(x, k, niter, seed):
    """Indices of the points nearest each of k centroids (deduplicated, cluster order)."""
    import numpy as np
    try:
        import faiss
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
        km.train(x)
        _, a = km.index.search(x, 1)
        a = a[:, 0]
        cent = km.centroids
    except ImportError:
        rng = np.random.default_rng(seed)
        cent = x[rng.choice(len(x), k, replace=False)].copy()
        xn = (x * x).sum(1)
        for _ in range(niter + 1):
            a = np.empty(len(x), np.int64)
            cn = (cent * cent).sum(1)
            for s in range(0, len(x), 4096):
                a[s:s+4096] = (cn[None, :] - 2.0 * x[s:s+4096] @ cent.T).argmin(1)
            for j in range(k):
                m = a == j
                if m.any(): cent[j] = x[m].mean(0)
    d = ((x - cent[a]) ** 2).sum(1)
    best = {}
    for i in range(len(x)):
        j = a[i]
        if j not in best or d[i] < d[best[j]]: best[j] = i
    return np.array([best[j] for j in sorted(best)])

def size_threshold(p, k):
    import numpy as np
    a = -np.log(np.maximum(p, 1e-30))
    lo, hi = 0.0, float(a.max())
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if (a <= mid).sum(1).mean() < k: lo = mid
        else: hi = mid
    return hi

def numpy_run(variant, pool, labeled, calib, c, d, dt, budget, seed):
    import numpy as np
    z, pt, ps, y, _ = gen(pool, labeled, calib, c, d, dt, seed)
    P = np.arange(pool)
    t0 = time.perf_counter()
    k = max(min(10000, pool // 3), budget)
    if variant in ("ccma-v1", "ccma-v4"):
        sub = np.sort(kmeans_nearest(np.ascontiguousarray(z[P]), k, 20, seed))
    elif variant == "ccma-v3":
        sub = np.sort(np.random.default_rng(seed).choice(pool, k, replace=False))
    else:
        sub = P
    cal = np.arange(pool + labeled, pool + labeled + calib)
    qs, qt = size_threshold(ps[cal], 5.0), size_threshold(pt[cal], 3.0)
    S, T = ps[sub].astype(np.float64), pt[sub].astype(np.float64)
    gs = -np.log(np.maximum(S, 1e-30)) <= qs
    gt = -np.log(np.maximum(T, 1e-30)) <= qt
    r = np.arange(len(sub))
    e = ~gs.any(1); gs[r[e], S[e].argmax(1)] = True
    e = ~gt.any(1); gt[r[e], T[e].argmax(1)] = True
    u = gs | gt
    eps = 1e-9
    a = np.where(u, S, 0); a /= a.sum(1, keepdims=True) + eps
    b = np.where(u, T, 0); b /= b.sum(1, keepdims=True) + eps
    m = 0.5 * (a + b)
    kl = lambda p, q: np.where(u, p * np.log((p + eps) / (q + eps)), 0).sum(1)
    js = 0.5 * kl(a, m) + 0.5 * kl(b, m)
    ms, mt = S.max(1), T.max(1)
    w = mt / (mt + ms + eps)
    H = -(np.where(S > 0, S * np.log(np.maximum(S, 1e-300)), 0)).sum(1)
    score = w * js + (1 - w) * H
    top = np.argsort(-score, kind="stable")[: 20 * budget]
    if variant in ("ccma-v1", "ccma-v2", "ccma-v3"):
        pick = kmeans_nearest(np.ascontiguousarray(z[sub[top]]), budget, 20, seed)
        chosen = sub[top[pick]]
    else:
        chosen = sub[top[:budget]]
    secs = time.perf_counter() - t0
    assert len(chosen) == budget, len(chosen)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        import faiss; kind = "numpy+faiss " + faiss.__version__
    except ImportError:
        kind = "numpy"
    return {"impl": kind, "strategy": variant, "seconds": round(secs, 3), "peak_rss_mib": round(peak)}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--teacher-dim", type=int, default=768)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--variants", default="ccma-v1,ccma-v3")
    ap.add_argument("--bin", default="target/debug/vlal-bench")
    ap.add_argument("--numpy-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.numpy_worker:
        print(json.dumps(numpy_run(a.numpy_worker, a.pool, a.labeled, a.calib, a.classes, a.dim,
                                   a.teacher_dim, a.budget, 0)))
        return
    sizes = ["--pool", str(a.pool), "--classes", str(a.classes), "--dim", str(a.dim),
             "--teacher-dim", str(a.teacher_dim), "--budget", str(a.budget),
             "--labeled", str(a.labeled), "--calib", str(a.calib)]
    paper = {"ccma-v1": 3.015, "ccma-v2": 0.780, "ccma-v3": 0.512, "ccma-v4": 2.929, "ccma-v5": 0.583}
    rows = []
    for v in a.variants.split(","):
        rust = json.loads(subprocess.check_output([a.bin, "--strategy", v] + sizes).decode().strip().splitlines()[-1])
        npy = json.loads(subprocess.check_output([sys.executable, __file__, "--numpy-worker", v] + sizes).decode().strip().splitlines()[-1])
        rows.append((v, rust, npy))
    print(f"pool {a.pool}, C {a.classes}, student {a.dim}-d, teacher {a.teacher_dim}-d, B {a.budget}, "
          f"calib {a.calib}, {os.cpu_count()} cores; reference: {rows[0][2]['impl']}")
    print(f"{'variant':<9} {'vlal s':>9} {'ref s':>9} {'ref/vlal':>9} {'paper s':>8} {'vlal MiB':>9} {'ref MiB':>8}")
    for v, r, n in rows:
        print(f"{v:<9} {r['seconds']:>9.3f} {n['seconds']:>9.3f} {n['seconds'] / r['seconds']:>9.2f} "
              f"{paper.get(v, float('nan')):>8.3f} {r['peak_rss_mib']:>9.0f} {n['peak_rss_mib']:>8.0f}")

if __name__ == "__main__":
    main()
