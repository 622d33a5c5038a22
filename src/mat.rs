//! A dense row-major `f32` matrix: the in-memory form of a vector column (embeddings, logits, probs).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            bail!(
                "matrix data has {} values, expected {rows}x{cols}",
                data.len()
            );
        }
        Ok(Self { rows, cols, data })
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self> {
        let cols = rows.first().map_or(0, |r| r.len());
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            if r.len() != cols {
                bail!("ragged rows: {} vs {cols}", r.len());
            }
            data.extend_from_slice(r);
        }
        Ok(Self {
            rows: rows.len(),
            cols,
            data,
        })
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Mat {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Mat {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Scale every row to unit L2 norm (zero rows stay zero).
    /// The transposed matrix (cols × rows).
    /// The rows of `self`, then those of `other` (same width).
    pub fn vstack(&self, other: &Mat) -> Result<Mat> {
        if self.cols != other.cols {
            anyhow::bail!(
                "cannot stack {}-wide rows on {}-wide rows",
                other.cols,
                self.cols
            );
        }
        let mut data = Vec::with_capacity(self.data.len() + other.data.len());
        data.extend_from_slice(&self.data);
        data.extend_from_slice(&other.data);
        Mat::new(self.rows + other.rows, self.cols, data)
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for (j, &v) in self.row(i).iter().enumerate() {
                t.data[j * self.rows + i] = v;
            }
        }
        t
    }

    pub fn normalize_rows(&mut self) {
        let cols = self.cols;
        for r in self.data.chunks_mut(cols.max(1)) {
            let n = dot(r, r).sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
        }
    }

    /// Index of the largest entry of each row (lowest index on ties).
    pub fn argmax_rows(&self) -> Vec<usize> {
        (0..self.rows).map(|i| argmax(self.row(i))).collect()
    }

    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.cols),
            device,
        )?)
    }

    pub fn from_tensor(t: &Tensor) -> Result<Mat> {
        let (rows, cols) = t.dims2()?;
        let data = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Mat::new(rows, cols, data)
    }
}

/// Run `f` with subnormal floats flushed to zero (x86's FTZ and DAZ bits of MXCSR) on this
/// thread and on every rayon thread, restoring the bits after.
///
/// An x86 core takes a microcode assist (~100 cycles) on each vector op that reads or makes a
/// subnormal. Softmax outputs over 1000 classes have long tails (values of 1e-20 and below;
/// 0.4% of a linear head's are subnormal already), whose squares and products underflow:
/// k-center in the simplex ran 9× slower on them than with the bits set, BADGE 5×, and the
/// linear probe's training 2×. A subnormal term is below half an ulp of any normal sum it
/// enters, so the results keep their bits: the predictions tables and the pinned picks of every
/// strategy are unchanged (`tests/pins.rs`).
pub fn flushing_subnormals<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ_DAZ: u32 = 0x8040;
        fn csr() -> u32 {
            let mut v: u32 = 0;
            // SAFETY: stores MXCSR into a local u32.
            unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
            v
        }
        fn set_csr(v: u32) {
            // SAFETY: loads MXCSR from a local u32 holding a value read from the register with
            // only the FTZ and DAZ bits changed.
            unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
        }
        let before: Vec<u32> = rayon::broadcast(|_| {
            let b = csr();
            set_csr(b | FTZ_DAZ);
            b
        });
        let mine = csr();
        set_csr(mine | FTZ_DAZ);
        let out = f();
        set_csr(mine);
        rayon::broadcast(|c| set_csr(before[c.index()]));
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}

/// Index of the largest value (lowest index on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Row-wise softmax of logits scaled by `scale` (numerically stable, f64 accumulation).
pub fn softmax_rows(logits: &Mat, scale: f32) -> Mat {
    let mut out = logits.clone();
    for i in 0..out.rows {
        softmax_in_place(out.row_mut(i), scale);
    }
    out
}

/// One row of [`softmax_rows`], in place.
pub fn softmax_in_place(r: &mut [f32], scale: f32) {
    let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b * scale));
    let mut s = 0.0f64;
    for v in r.iter_mut() {
        *v = ((*v * scale) - m).exp();
        s += *v as f64;
    }
    for v in r.iter_mut() {
        *v = (*v as f64 / s) as f32;
    }
}

/// Dot product with 8 independent accumulators (vectorises; fixed order ⇒ deterministic).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Squared Euclidean distance.
#[inline]
pub fn sqdist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            acc[k] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

#[cfg(test)]
mod tests {

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_flush_inside_and_come_back_after() {
        use rayon::prelude::*;
        let tiny = std::hint::black_box(1e-20f32);
        let sq = |v: f32| std::hint::black_box(v) * std::hint::black_box(v);
        assert!(sq(tiny) > 0.0, "1e-40 is a subnormal, not zero");
        let (here, pool): (f32, Vec<f32>) = flushing_subnormals(|| {
            (
                sq(tiny),
                (0..64).into_par_iter().map(|_| sq(tiny)).collect(),
            )
        });
        assert_eq!(here, 0.0);
        assert!(pool.iter().all(|&v| v == 0.0), "every rayon thread flushes");
        assert!(sq(tiny) > 0.0);
        let after: Vec<f32> = (0..64).into_par_iter().map(|_| sq(tiny)).collect();
        assert!(after.iter().all(|&v| v > 0.0), "the bits are restored");
        // a subnormal term below half an ulp of a normal sum changes nothing
        let sum = |v: &[f32]| v.iter().fold(0f32, |a, &b| a + b * b);
        let row = [0.3f32, 1e-20, 0.7, 1e-25];
        assert_eq!(
            sum(&row).to_bits(),
            flushing_subnormals(|| sum(&row)).to_bits()
        );
    }

    use super::*;

    #[test]
    fn argmax_prefers_lowest_index_on_ties() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[1.0]), 0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_respect_scale() {
        let m = Mat::new(2, 3, vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]).unwrap();
        let p = softmax_rows(&m, 1.0);
        for i in 0..2 {
            let s: f32 = p.row(i).iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert!((p.row(1)[0] - 1.0 / 3.0).abs() < 1e-6);
        let sharp = softmax_rows(&m, 100.0);
        assert!(sharp.row(0)[2] > 0.999);
    }

    #[test]
    fn normalize_and_select() {
        let mut m = Mat::new(2, 2, vec![3.0, 4.0, 0.0, 0.0]).unwrap();
        m.normalize_rows();
        assert_eq!(m.row(0), &[0.6, 0.8]);
        assert_eq!(m.row(1), &[0.0, 0.0]);
        assert_eq!(m.select_rows(&[1, 0]).row(1), &[0.6, 0.8]);
    }
}
