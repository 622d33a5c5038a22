//! The layers and kernels the model files share: a linear layer and a patch embedding run as
//! one product each, LayerNorm with a backward pass, fused CPU attention (OpenBLAS custom ops with
//! candle's ops as their backward pass), the checkpoint loading helpers and an allocator setting.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::Path;

/// A linear layer (PyTorch layout: weight (out, in), optional bias) that runs inputs of any rank
/// as one (rows × in) · (in × out) product: candle_nn's Linear runs a batched product per
/// leading index, which on CPU is several times slower for ViT-length sequences.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: candle_core::Tensor,
    bias: Option<candle_core::Tensor>,
}

impl Linear {
    /// From a weight (out, in) and an optional bias.
    pub fn from_tensors(
        weight: candle_core::Tensor,
        bias: Option<candle_core::Tensor>,
    ) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight: weight.contiguous()?,
            bias: bias.map(|b| b.contiguous()).transpose()?,
        })
    }

    pub fn load(i: usize, o: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Linear> {
        let l = if bias {
            candle_nn::linear(i, o, vb)?
        } else {
            candle_nn::linear_no_bias(i, o, vb)?
        };
        Ok(Linear {
            weight: l.weight().clone(),
            bias: l.bias().cloned(),
        })
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims.split_last().expect("rank ≥ 1");
        let x2 = x.reshape(((), *last))?;
        let y = if cfg!(feature = "blas") && x.device().is_cpu() && x.dtype() == DType::F32 {
            let x2 = x2.contiguous()?;
            match &self.bias {
                Some(b) => x2.apply_op3(&self.weight, b, MatmulNt)?,
                None => x2.apply_op2(&self.weight, MatmulNt)?,
            }
        } else {
            let y = x2.matmul(&self.weight.t()?)?;
            match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        y.reshape(out)
    }
}

/// A patch embedding: a convolution whose stride equals its kernel (ViT), run as one linear
/// layer over the unfolded patches (same weights, HF name `weight` of shape (H, C, p, p)).
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    linear: Linear,
    patch: usize,
    channels: usize,
}

impl PatchEmbed {
    pub fn load(
        channels: usize,
        hidden: usize,
        patch: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<PatchEmbed> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let w = vb.get_with_hints((hidden, channels, patch, patch), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(hidden, "bias", candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(PatchEmbed {
            linear: Linear {
                weight: w.reshape((hidden, channels * patch * patch))?,
                bias,
            },
            patch,
            channels,
        })
    }

    /// From a linear layer over patches flattened as (row, column, channel) — SigLIP 2's
    /// `patch_embedding` (`weight` (H, p·p·C), `bias`) — reordered to this layout's (C, p, p).
    pub fn load_flat(
        channels: usize,
        hidden: usize,
        patch: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<PatchEmbed> {
        let l = Linear::load(channels * patch * patch, hidden, true, vb)?;
        let weight = l
            .weight
            .reshape((hidden, patch, patch, channels))?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .reshape((hidden, channels * patch * patch))?;
        Ok(PatchEmbed {
            linear: Linear {
                weight,
                bias: l.bias,
            },
            patch,
            channels,
        })
    }

    /// Tokens (B, g_h·g_w, H) of pixels (B, C, S_h, S_w), row-major over the patch grid, and
    /// the grid (g_h, g_w); a remainder of fewer than p pixels is dropped, as the convolution does.
    pub fn forward(
        &self,
        pixels: &candle_core::Tensor,
    ) -> candle_core::Result<(candle_core::Tensor, usize, usize)> {
        use candle_core::Module;
        let (b, c, sh, sw) = pixels.dims4()?;
        if c != self.channels {
            candle_core::bail!("patch embedding: {c} channels, expected {}", self.channels);
        }
        let p = self.patch;
        let (gh, gw) = (sh / p, sw / p);
        let x = pixels
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        Ok((self.linear.forward(&x)?, gh, gw))
    }
}

/// The f32 values of a contiguous CPU operand of a custom op (`op` names it in the error).
pub(crate) fn cpu_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: operands must be contiguous f32"),
    }
}

/// LayerNorm over the last dimension with a backward pass: candle_nn's fused CPU kernel is
/// applied without one (`apply_op3_no_bwd`), so gradients would silently stop at it — prompt
/// learning backpropagates through the text tower. Forward: one parallel pass per row.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: candle_core::Tensor,
    bias: candle_core::Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        let l = candle_nn::layer_norm(size, eps, vb)?;
        Ok(LayerNorm {
            weight: l.weight().clone(),
            bias: l
                .bias()
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?,
            eps: eps as f32,
        })
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            x.contiguous()?
                .apply_op3(&self.weight, &self.bias, LayerNormOp { eps: self.eps })
        } else {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
        }
    }
}

struct LayerNormOp {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-with-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let op = "layer norm";
        let (x, w, b) = (
            cpu_f32(s1, l1, op)?,
            cpu_f32(s2, l2, op)?,
            cpu_f32(s3, l3, op)?,
        );
        let h = l1.dims().last().copied().unwrap_or(0);
        if w.len() != h || b.len() != h || h == 0 {
            candle_core::bail!(
                "layer norm: {h} features, weight {} bias {}",
                w.len(),
                b.len()
            );
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(h).for_each(|r| {
            let mean = r.iter().sum::<f32>() / h as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, &wi), &bi) in r.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * wi + bi;
            }
        });
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }

    /// Gradients of the affine normalisation, computed with candle's ops.
    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        b: &candle_core::Tensor,
        _y: &candle_core::Tensor,
        dy: &candle_core::Tensor,
    ) -> candle_core::Result<(
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
    )> {
        use candle_core::D;
        let h = x.dim(D::Minus1)?;
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let inv = ((xc.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?).recip()?;
        let xhat = xc.broadcast_mul(&inv)?;
        let rows = dy.elem_count() / h;
        let dy2 = dy.reshape((rows, h))?;
        // a frozen norm (prompt learning) needs only dx
        let dw = if w.track_op() {
            Some((&dy2 * xhat.reshape((rows, h))?)?.sum(0)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(dy2.sum(0)?)
        } else {
            None
        };
        let g = dy.broadcast_mul(w)?;
        let dx = (g.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?
            - xhat.broadcast_mul(&(&g * &xhat)?.mean_keepdim(D::Minus1)?)?)?
        .broadcast_mul(&inv)?;
        Ok((Some(dx), dw, db))
    }
}

/// x (m × k) · wᵀ (w: n × k) on the CPU through OpenBLAS (AVX-512 kernels where the CPU has
/// them; candle's gemm on stable Rust stops at AVX2), with candle's matmuls as its backward pass.
struct MatmulNt;

/// x·wᵀ (+ bias in every row) for the CPU storages of the operands.
#[cfg_attr(
    not(feature = "blas"),
    allow(unreachable_code, unused_variables, unused_mut)
)]
fn matmul_nt_cpu(
    x: (&candle_core::CpuStorage, &candle_core::Layout),
    w: (&candle_core::CpuStorage, &candle_core::Layout),
    bias: Option<(&candle_core::CpuStorage, &candle_core::Layout)>,
) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let (m, k) = x.1.shape().dims2()?;
    let (n, k2) = w.1.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("matmul-nt: {m}×{k} against {n}×{k2}");
    }
    let (a, b) = (
        cpu_f32(x.0, x.1, "matmul-nt")?,
        cpu_f32(w.0, w.1, "matmul-nt")?,
    );
    let mut out = vec![0f32; m * n];
    if let Some((s, l)) = bias {
        let bias = cpu_f32(s, l, "matmul-nt")?;
        if bias.len() != n {
            candle_core::bail!("matmul-nt: bias of {} for {n} outputs", bias.len());
        }
        for row in out.chunks_mut(n.max(1)) {
            row.copy_from_slice(bias);
        }
    }
    #[cfg(feature = "blas")]
    crate::geometry::sgemm_nt(a, b, m, n, k, bias.is_some(), &mut out);
    #[cfg(not(feature = "blas"))]
    {
        let _ = (a, b);
        candle_core::bail!("matmul-nt: built without the blas feature");
    }
    Ok((candle_core::CpuStorage::F32(out), (m, n).into()))
}

impl candle_core::CustomOp2 for MatmulNt {
    fn name(&self) -> &'static str {
        "matmul-nt-blas"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        matmul_nt_cpu((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _y: &candle_core::Tensor,
        dy: &candle_core::Tensor,
    ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
        Ok((linear_dx(x, w, dy)?, linear_dw(x, w, dy)?))
    }
}

impl candle_core::CustomOp3 for MatmulNt {
    fn name(&self) -> &'static str {
        "matmul-nt-bias-blas"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        matmul_nt_cpu((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        b: &candle_core::Tensor,
        _y: &candle_core::Tensor,
        dy: &candle_core::Tensor,
    ) -> candle_core::Result<(
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
    )> {
        let db = if b.track_op() { Some(dy.sum(0)?) } else { None };
        Ok((linear_dx(x, w, dy)?, linear_dw(x, w, dy)?, db))
    }
}

/// ∂/∂x of x·wᵀ: dy·w, through OpenBLAS on the CPU (as dy·(wᵀ)ᵀ), and only when x needs it.
/// Frozen towers (prompt learning) need only this one product per layer.
fn linear_dx(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    dy: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    if !x.track_op() {
        return Ok(None);
    }
    if cfg!(feature = "blas") && dy.device().is_cpu() && dy.dtype() == DType::F32 {
        return Ok(Some(
            dy.contiguous()?
                .apply_op2(&w.t()?.contiguous()?, MatmulNt)?,
        ));
    }
    Ok(Some(dy.matmul(w)?))
}

/// ∂/∂w of x·wᵀ: dyᵀ·x, only when w is trained.
fn linear_dw(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    dy: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    if !w.track_op() {
        return Ok(None);
    }
    Ok(Some(dy.t()?.matmul(x)?))
}

/// Multi-head attention softmax(scale · q kᵀ + mask) v of (B, H, N, D) tensors (q may have fewer
/// positions than k and v). Self-attention without a mask on the CPU (the image towers) runs
/// fused through OpenBLAS, one (batch, head) per rayon
/// task; otherwise through candle's batched matmuls.
pub fn attention(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    scale: f64,
    mask: Option<&candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    if mask.is_none()
        && cfg!(feature = "blas")
        && q.device().is_cpu()
        && q.dtype() == DType::F32
        && q.dims() == k.dims()
    {
        return q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            FusedAttention {
                scale: scale as f32,
            },
        );
    }
    attention_reference(q, k, v, scale, mask)
}

fn attention_reference(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
    scale: f64,
    mask: Option<&candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    let mut s = (q.matmul(&k.t()?)? * scale)?;
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    // the composed softmax: softmax_last_dim has no backward pass (prompt learning needs one)
    candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.matmul(v)
}

struct FusedAttention {
    scale: f32,
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention-blas"
    }

    #[cfg_attr(
        not(feature = "blas"),
        allow(unreachable_code, unused_variables, unused_mut)
    )]
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (b, h, n, d) = l1.shape().dims4()?;
        if l2.shape().dims4()? != (b, h, n, d) || l3.shape().dims4()? != (b, h, n, d) {
            candle_core::bail!("fused attention: q, k, v shapes differ");
        }
        let op = "fused attention";
        let (q, k, v) = (
            cpu_f32(s1, l1, op)?,
            cpu_f32(s2, l2, op)?,
            cpu_f32(s3, l3, op)?,
        );
        let mut out = vec![0f32; b * h * n * d];
        #[cfg(feature = "blas")]
        {
            use rayon::prelude::*;
            let nd = n * d;
            out.par_chunks_mut(nd).enumerate().for_each(|(i, o)| {
                let r = i * nd..(i + 1) * nd;
                let (q, k, v) = (&q[r.clone()], &k[r.clone()], &v[r]);
                let mut s = vec![0f32; n * n];
                crate::geometry::sgemm_1(q, k, n, n, d, true, 0.0, &mut s);
                for row in s.chunks_mut(n) {
                    let mx = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * self.scale;
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        *x = (*x * self.scale - mx).exp();
                        sum += *x;
                    }
                    row.iter_mut().for_each(|x| *x /= sum);
                }
                crate::geometry::sgemm_1(&s, v, n, d, n, false, 0.0, o);
            });
        }
        #[cfg(not(feature = "blas"))]
        {
            let _ = (q, k, v);
            candle_core::bail!("fused attention: built without the blas feature");
        }
        Ok((candle_core::CpuStorage::F32(out), (b, h, n, d).into()))
    }

    /// Gradients by recomputing the attention with candle's ops.
    fn bwd(
        &self,
        q: &candle_core::Tensor,
        k: &candle_core::Tensor,
        v: &candle_core::Tensor,
        _o: &candle_core::Tensor,
        d_o: &candle_core::Tensor,
    ) -> candle_core::Result<(
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
    )> {
        let p = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * self.scale as f64)?)?;
        let dv = p.t()?.matmul(d_o)?;
        let dp = d_o.matmul(&v.t()?)?;
        let ds = ((&dp
            - (&dp * &p)?
                .sum_keepdim(candle_core::D::Minus1)?
                .broadcast_as(dp.shape())?)?
            * &p)?;
        let ds = (ds * self.scale as f64)?;
        Ok((Some(ds.matmul(k)?), Some(ds.t()?.matmul(q)?), Some(dv)))
    }
}

/// Parse a Hugging Face `config.json` as `C` (`what` names the model in the error).
pub(crate) fn read_config<C: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<C> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the model config", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not a {what} config ({e})", path.display()))
}

/// Build a model from `dir/model.safetensors` (memory-mapped, f32): a missing file, a missing
/// tensor or a shape that disagrees with `dir/config.json` is an error naming both files.
pub(crate) fn load_weights<T>(
    dir: &Path,
    device: &Device,
    what: &str,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        bail!("{}: missing (the {what} weights)", weights.display());
    }
    // SAFETY: the file is memory-mapped read-only for the model's lifetime; it is a cache file
    // this process does not modify.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
        .map_err(|e| anyhow!("{}: {e}", weights.display()))?;
    build(vb).map_err(|e| {
        anyhow!(
            "{}: does not match {} ({e})",
            weights.display(),
            dir.join("config.json").display()
        )
    })
}

/// Keep activation buffers in the heap: by default glibc maps each large buffer afresh and
/// returns it to the OS when freed, and the page faults of re-mapping cost a tenth of the
/// forward pass on CPU.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the models allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Module, Tensor, Var};

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn blas_linear_and_fused_attention_match_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // linear on a rank-3 input, against candle's matmul
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 7), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 3, &dev).unwrap()).unwrap();
        for bias in [None, Some(b.as_tensor().clone())] {
            let lin = Linear {
                weight: w.as_tensor().clone(),
                bias: bias.clone(),
            };
            let y = lin.forward(x.as_tensor()).unwrap();
            let mut r = x
                .as_tensor()
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap();
            if let Some(b) = &bias {
                r = r.broadcast_add(b).unwrap();
            }
            assert_eq!(y.dims(), &[2, 5, 3]);
            assert!(max_diff(&y, &r) < 1e-5);
            let gy = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gr = r.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for t in [x.as_tensor(), w.as_tensor()]
                .into_iter()
                .chain(bias.as_ref())
            {
                assert!(max_diff(gy.get(t).unwrap(), gr.get(t).unwrap()) < 1e-4);
            }
        }
        // frozen weights (prompt learning): the same input gradient, none for the weights
        let (fw, fb) = (w.as_tensor().detach(), b.as_tensor().detach());
        let lin = Linear {
            weight: fw.clone(),
            bias: Some(fb.clone()),
        };
        let gy = lin
            .forward(x.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let r = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let gr = r.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            max_diff(
                gy.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap()
            ) < 1e-4
        );
        assert!(gy.get(&fw).is_none() && gy.get(&fb).is_none());

        // layer norm, against candle's composed reference
        let xs = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, 6), &dev).unwrap()).unwrap();
        let lw = Var::from_tensor(&Tensor::randn(1f32, 0.3, 6, &dev).unwrap()).unwrap();
        let lb = Var::from_tensor(&Tensor::randn(0f32, 0.3, 6, &dev).unwrap()).unwrap();
        let ln = LayerNorm {
            weight: lw.as_tensor().clone(),
            bias: lb.as_tensor().clone(),
            eps: 1e-5,
        };
        let y = ln.forward(xs.as_tensor()).unwrap();
        let r =
            candle_nn::ops::layer_norm_slow(xs.as_tensor(), lw.as_tensor(), lb.as_tensor(), 1e-5)
                .unwrap();
        assert!(max_diff(&y, &r) < 1e-5);
        let wts = Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap();
        let gy = (&y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&r * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [xs.as_tensor(), lw.as_tensor(), lb.as_tensor()] {
            let d = max_diff(gy.get(t).unwrap(), gr.get(t).unwrap());
            assert!(d < 1e-4, "layer norm gradient {d}");
        }

        // attention
        let mk =
            || Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap()).unwrap();
        let (q, k, v) = (mk(), mk(), mk());
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let f = attention(qt, kt, vt, 0.5, None).unwrap();
        let r = attention_reference(qt, kt, vt, 0.5, None).unwrap();
        assert!(max_diff(&f, &r) < 1e-5, "{}", max_diff(&f, &r));
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap();
        let gf = (&f * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (&r * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [qt, kt, vt] {
            let d = max_diff(gf.get(t).unwrap(), gr.get(t).unwrap());
            assert!(d < 1e-4, "{d}");
        }
    }
}
