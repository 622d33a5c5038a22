//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) with
//! candle-nn's exact arithmetic, fused into one pass over each parameter on the CPU.
//!
//! candle-nn's `AdamW` builds the update from about fifteen tensor ops, each allocating and
//! writing a tensor of the parameter's size: for the linear probe's 768 × 1000 weight that is
//! tens of MB of memory traffic per step, the larger part of a round's training. Here the moments
//! live in plain vectors and each element goes through the same f32 operations in the same
//! order (candle's `x * a` with an f64 scalar is the affine `x · (a as f32) + 0`), so every
//! parameter, and so every prediction, keeps its bits. On another device the candle-nn optimizer
//! runs unchanged.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rayon::prelude::*;

/// A parameter and its two moments.
struct Slot {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimizer of the trainers: fused on the CPU, candle-nn's elsewhere.
pub struct AdamW(Inner);

enum Inner {
    Fused {
        slots: Vec<Slot>,
        params: ParamsAdamW,
        step_t: usize,
    },
    Candle(candle_nn::AdamW),
}

/// One element's update: candle-nn 0.11's `AdamW::step`, op for op in f32.
#[derive(Clone, Copy)]
struct Consts {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

impl Consts {
    #[inline]
    fn update(&self, theta: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        // next_m = (m * β1) + (g * (1 − β1)); next_v = (v * β2) + (g² * (1 − β2))
        let nm = (*m * self.beta1 + 0.0) + (g * self.one_minus_beta1 + 0.0);
        let nv = (*v * self.beta2 + 0.0) + ((g * g) * self.one_minus_beta2 + 0.0);
        let m_hat = nm * self.scale_m + 0.0;
        let v_hat = nv * self.scale_v + 0.0;
        let t = *theta * self.decay + 0.0;
        let adjusted = m_hat / (v_hat.sqrt() * 1.0 + self.eps);
        *theta = t - (adjusted * self.lr + 0.0);
        *m = nm;
        *v = nv;
    }
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let fused = vars
            .iter()
            .all(|v| matches!(v.device(), Device::Cpu) && v.dtype() == candle_core::DType::F32);
        if !fused {
            return Ok(AdamW(Inner::Candle(candle_nn::AdamW::new(vars, params)?)));
        }
        let slots = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                Slot {
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Ok(AdamW(Inner::Fused {
            slots,
            params,
            step_t: 0,
        }))
    }

    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let (slots, params, step_t) = match &mut self.0 {
            Inner::Candle(o) => return Ok(o.step(grads)?),
            Inner::Fused {
                slots,
                params,
                step_t,
            } => (slots, params, step_t),
        };
        *step_t += 1;
        let p = &*params;
        let lr_lambda = p.lr * p.weight_decay;
        let c = Consts {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: (1f64 / (1f64 - p.beta1.powi(*step_t as i32))) as f32,
            scale_v: (1f64 / (1f64 - p.beta2.powi(*step_t as i32))) as f32,
            decay: (1f64 - lr_lambda) as f32,
            eps: p.eps as f32,
            lr: p.lr as f32,
        };
        for s in slots.iter_mut() {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut theta = s.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            const CHUNK: usize = 1 << 14;
            theta
                .par_chunks_mut(CHUNK)
                .zip(s.m.par_chunks_mut(CHUNK))
                .zip(s.v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((t, m), v), g)| {
                    for i in 0..t.len() {
                        c.update(&mut t[i], &mut m[i], &mut v[i], g[i]);
                    }
                });
            let shape = s.var.shape().clone();
            s.var.set(&Tensor::from_vec(theta, shape, &Device::Cpu)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_steps_equal_candle_nn_bit_for_bit() {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(0f32, 1.0, (37, 53), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (8, 37), &dev).unwrap();
        let params = ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.01,
            ..Default::default()
        };
        let run = |fused: bool| -> Vec<f32> {
            let w = Var::from_tensor(&w0.copy().unwrap()).unwrap();
            let mut ours = AdamW::new(vec![w.clone()], params.clone()).unwrap();
            let mut theirs = candle_nn::AdamW::new(vec![w.clone()], params.clone()).unwrap();
            for _ in 0..25 {
                // a loss with tiny gradients too (the exp tail)
                let l = x
                    .matmul(w.as_tensor())
                    .unwrap()
                    .exp()
                    .unwrap()
                    .mean_all()
                    .unwrap();
                if fused {
                    ours.backward_step(&l).unwrap();
                } else {
                    theirs.backward_step(&l).unwrap();
                }
            }
            w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        let (a, b) = (run(true), run(false));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a
            .iter()
            .zip(w0.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .any(|(x, y)| *x != y));
    }
}
