//! Distances and k-center greedy on matrices of row vectors, shared by the coverage strategies.

use crate::mat::Mat;
use crate::progress;
use rayon::prelude::*;

// the row kernels live with the matrix type (the core layer); re-exported for the algorithms
pub use crate::mat::{dot, sqdist};

#[cfg(feature = "blas")]
#[link(name = "openblas")]
extern "C" {}

/// a·bᵀ for row-major `a` (m × d) and `b` (n × d): an m × n matrix. Through OpenBLAS's sgemm
/// with the `blas` feature, else candle's gemm.
pub fn matmul_nt(a: &Mat, b: &Mat) -> anyhow::Result<Mat> {
    anyhow::ensure!(
        a.cols == b.cols,
        "matmul: {}-d rows against {}-d rows",
        a.cols,
        b.cols
    );
    #[cfg(feature = "blas")]
    {
        let (m, n, k) = (a.rows, b.rows, a.cols);
        // small products: OpenBLAS's thread start-up costs more than it saves
        if m * n * k < 1 << 22 {
            return matmul_nt_candle(a, b);
        }
        let mut out = vec![0f32; m * n];
        sgemm_nt(&a.data, &b.data, m, n, k, false, &mut out);
        Mat::new(m, n, out)
    }
    #[cfg(not(feature = "blas"))]
    {
        matmul_nt_candle(a, b)
    }
}

#[cfg(feature = "blas")]
extern "C" {
    fn openblas_set_num_threads(n: std::os::raw::c_int);
}

/// out (m × n) = a (m × k, row-major) · bᵀ (b: n × k, row-major), by OpenBLAS's sgemm.
///
/// The rows are split into fixed blocks over rayon's threads, each calling a single-threaded
/// sgemm: OpenBLAS's own threads busy-wait between calls and starve rayon's (decoding, candle's
/// element-wise ops) on a small machine. The bits do not depend on the thread count.
#[cfg(feature = "blas")]
pub fn sgemm_nt(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    if m == 0 || n == 0 || k == 0 {
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    // Blocks of a fixed number of rows (at least 256, and at least ~2^20 multiply-adds), never
    // derived from the thread count: OpenBLAS computes a row with a kernel that depends on where
    // the row sits in its call, so blocks cut per thread gave other bits with other thread
    // counts (and other caches: extract must be byte-identical for any thread count).
    let rows = ((1usize << 20) / (n * k).max(1)).max(256);
    out[..m * n]
        .par_chunks_mut(rows * n)
        .zip(a[..m * k].par_chunks(rows * k))
        .for_each(|(o, a)| sgemm_1(a, b, a.len() / k, n, k, true, accumulate as u8 as f32, o));
}

/// out (m × n) = a (m × k) · B + beta · out on the calling thread, where B is bᵀ (b: n × k)
/// with `trans_b` and b (k × n) without; all row-major.
#[cfg(feature = "blas")]
#[allow(clippy::too_many_arguments)]
pub fn sgemm_1(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    trans_b: bool,
    beta: f32,
    out: &mut [f32],
) {
    static SINGLE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter of OpenBLAS's thread count, called once before any sgemm.
    // OpenBLAS's own threads busy-wait between calls and starve rayon's.
    SINGLE.call_once(|| unsafe { openblas_set_num_threads(1) });
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    let i = |v: usize| i32::try_from(v).expect("matrix side fits in i32");
    // SAFETY: the slices hold at least m·k, n·k and m·n floats (asserted above), matching the
    // dimensions and leading dimensions given for row-major A, transposed B and C.
    unsafe {
        cblas_sys::cblas_sgemm(
            cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
            cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
            if trans_b {
                cblas_sys::CBLAS_TRANSPOSE::CblasTrans
            } else {
                cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans
            },
            i(m),
            i(n),
            i(k),
            1.0,
            a.as_ptr(),
            i(k),
            b.as_ptr(),
            i(if trans_b { k } else { n }),
            beta,
            out.as_mut_ptr(),
            i(n),
        );
    }
}

/// a·bᵀ by candle's gemm (the fallback without BLAS, and the cross-check of the BLAS path).
pub fn matmul_nt_candle(a: &Mat, b: &Mat) -> anyhow::Result<Mat> {
    let dev = candle_core::Device::Cpu;
    let bt = b.to_tensor(&dev)?.t()?;
    Mat::from_tensor(&a.to_tensor(&dev)?.matmul(&bt)?)
}

/// For each row index in `points`, the squared distance to the nearest row in `centers`
/// (+inf when there is no center). Large cases go through a blocked matrix product
/// (‖x‖² + ‖c‖² − 2x·c, clamped at 0); small ones are computed directly.
pub fn min_sqdist(f: &Mat, points: &[usize], centers: &[usize]) -> Vec<f32> {
    if centers.is_empty() {
        return vec![f32::INFINITY; points.len()];
    }
    if points.len() * centers.len() * f.cols >= 1 << 24 {
        if let Ok(d) = min_sqdist_gemm(f, points, centers) {
            return d;
        }
    }
    points
        .par_iter()
        .map(|&p| {
            let x = f.row(p);
            centers
                .iter()
                .fold(f32::INFINITY, |m, &c| m.min(sqdist(x, f.row(c))))
        })
        .collect()
}

fn min_sqdist_gemm(f: &Mat, points: &[usize], centers: &[usize]) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(points.len());
    sqdist_blocks(f, points, &f.select_rows(centers), |_, d| {
        out.par_extend(
            d.data
                .par_chunks(d.cols)
                .map(|r| r.iter().fold(f32::INFINITY, |m, &v| m.min(v))),
        );
        Ok(())
    })?;
    Ok(out)
}

/// Squared distances ‖x − c‖² (clamped at 0) of the rows `rows` of `x` against every row of `c`,
/// by blocks of rows through [`matmul_nt`] (a block × |c| matrix stays ≤ 64 MiB):
/// `each(position of the block's first row in rows, block × |c| distances)`.
pub fn sqdist_blocks(
    x: &Mat,
    rows: &[usize],
    c: &Mat,
    mut each: impl FnMut(usize, &Mat) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cn: Vec<f32> = (0..c.rows).map(|i| dot(c.row(i), c.row(i))).collect();
    let blk = ((16usize << 20) / c.rows.max(1)).clamp(16, 8192);
    for (k, b) in rows.chunks(blk).enumerate() {
        let p = x.select_rows(b);
        let mut d = matmul_nt(&p, c)?;
        let cols = d.cols;
        d.data
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(i, r)| {
                let pn = dot(p.row(i), p.row(i));
                for (v, &cn) in r.iter_mut().zip(&cn) {
                    *v = (pn + cn - 2.0 * *v).max(0.0);
                }
            });
        each(k * blk, &d)?;
    }
    Ok(())
}

/// k-center greedy (Sener & Savarese): starting from `centers`, repeatedly add the pool point
/// farthest from its nearest center. Returns (pool position, distance at pick time) in pick
/// order; ties go to the lowest pool position. With no centers the first pick is pool[0].
/// `farthest = false` picks the nearest point instead (the "+R" counterfactual of PCoreSet).
pub fn kcenter_greedy(
    f: &Mat,
    pool: &[usize],
    centers: &[usize],
    budget: usize,
    farthest: bool,
) -> Vec<(usize, f64)> {
    let mut d = min_sqdist(f, pool, centers);
    let mut taken = vec![false; pool.len()];
    let mut picks = Vec::with_capacity(budget);
    let pb = progress::bar(budget as u64, "k-center");
    for _ in 0..budget.min(pool.len()) {
        let mut best: Option<usize> = None;
        for (i, &v) in d.iter().enumerate() {
            if taken[i] {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) if (farthest && v > d[b]) || (!farthest && v < d[b]) => Some(i),
                keep => keep,
            };
        }
        let Some(b) = best else { break };
        taken[b] = true;
        let dist = if d[b].is_finite() {
            d[b].max(0.0).sqrt() as f64
        } else {
            f64::INFINITY
        };
        picks.push((b, dist));
        let c = f.row(pool[b]);
        d.par_iter_mut().zip(pool.par_iter()).for_each(|(di, &p)| {
            let nd = sqdist(f.row(p), c);
            if nd < *di {
                *di = nd;
            }
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(xs: &[f32]) -> Mat {
        Mat::new(xs.len(), 1, xs.to_vec()).unwrap()
    }

    #[test]
    fn dot_and_sqdist_match_naive() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 3.0 - i as f32).collect();
        let nd: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let ns: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - nd).abs() < 1e-3);
        assert!((sqdist(&a, &b) - ns).abs() < 1e-3);
    }

    #[test]
    fn kcenter_on_a_line_hand_checked() {
        // Points 0..=10 on a line, labeled center at 0. Farthest is 10 (d 10), then 5 (d 5);
        // then 2, 3, 7, 8 all sit at distance 2 and the lowest pool position wins: 2; after it
        // 3 drops to 1, so 7 and 8 tie at 2 and 7 wins.
        let f = line(&[0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]);
        let pool: Vec<usize> = (1..=10).collect();
        let picks = kcenter_greedy(&f, &pool, &[0], 4, true);
        let pts: Vec<usize> = picks.iter().map(|(p, _)| pool[*p]).collect();
        assert_eq!(pts, vec![10, 5, 2, 7]);
        let dists: Vec<f64> = picks.iter().map(|(_, d)| *d).collect();
        assert_eq!(dists, vec![10.0, 5.0, 2.0, 2.0]);
        // the counterfactual picks the nearest points first
        let near = kcenter_greedy(&f, &pool, &[0], 2, false);
        assert_eq!(
            near.iter().map(|(p, _)| pool[*p]).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn kcenter_without_centers_starts_at_first_pool_point() {
        let f = line(&[4., 0., 9.]);
        let picks = kcenter_greedy(&f, &[0, 1, 2], &[], 2, true);
        assert_eq!(picks[0].0, 0);
        assert_eq!(picks[1].0, 2);
    }
}

#[cfg(test)]
mod gemm_tests {
    use super::*;

    #[test]
    fn blocked_product_matches_direct_distances() {
        let mut r = crate::rng::stream(5, "g", 0);
        let f = Mat::new(5000, 64, crate::rng::uniform(5000 * 64, 1.0, &mut r)).unwrap();
        let points: Vec<usize> = (100..5000).collect();
        let centers: Vec<usize> = (0..100).collect();
        let fast = min_sqdist(&f, &points, &centers);
        let slow: Vec<f32> = points
            .iter()
            .map(|&p| {
                centers
                    .iter()
                    .fold(f32::INFINITY, |m, &c| m.min(sqdist(f.row(p), f.row(c))))
            })
            .collect();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b), "{a} vs {b}");
        }
    }
}

#[cfg(all(test, feature = "blas"))]
mod thread_tests {
    use super::*;

    /// sgemm_nt's bits do not depend on rayon's thread count (the row blocks each sgemm call
    /// gets are fixed, so every row is computed by the same kernel path).
    #[test]
    fn products_are_bit_identical_for_any_thread_count() {
        let mut r = crate::rng::stream(9, "t", 0);
        for (m, n, k) in [
            (4928, 512, 512),
            (400, 96, 33),
            (77, 2048, 512),
            (1000, 10, 1280),
        ] {
            let a = crate::rng::uniform(m * k, 1.0, &mut r);
            let b = crate::rng::uniform(n * k, 1.0, &mut r);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0f32; m * n];
                pool.install(|| sgemm_nt(&a, &b, m, n, k, false, &mut out));
                out
            };
            let one = run(1);
            for t in [2, 3, 5] {
                let other = run(t);
                let differ = one
                    .iter()
                    .zip(&other)
                    .filter(|(x, y)| x.to_bits() != y.to_bits());
                assert_eq!(differ.count(), 0, "{m}×{n}×{k}, {t} threads");
            }
        }
    }
}
