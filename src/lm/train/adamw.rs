//! Adam with decoupled weight decay (AdamW, the optimizer of full fine-tuning and of the
//! paper's recipe, MATH.md §6) in one pass over each f32 parameter on the CPU that updates
//! `θ`, `m` and `v` in place, with no temporary tensors. The arithmetic is candle-nn's `AdamW`
//! step operation for operation in f32 (its scalars rounded from f64 as its `affine` rounds
//! them), so the two agree bit for bit (tested in `tests/lm_recipe.rs`, which CI runs); other
//! devices and dtypes use candle-nn's.
//!
//! Per entry, step `t`: `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
//! `θ ← (1 − η λ) θ − η m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`.

use candle_core::backprop::GradStore;
use candle_core::{bail, CpuStorage, DType, Device, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use std::cell::RefCell;

/// AdamW over a set of variables (see the module doc).
pub struct Adam {
    params: ParamsAdamW,
    step: i32,
    state: State,
}

enum State {
    /// f32 variables on the CPU: the one-pass in-place update.
    OnePass(Vec<Moments>),
    /// Anything else: candle-nn's `AdamW`.
    Candle(candle_nn::AdamW),
}

/// One variable and its first and second moments.
struct Moments {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Adam> {
        let one_pass = vars
            .iter()
            .all(|v| v.dtype() == DType::F32 && matches!(v.device(), Device::Cpu));
        let state = if one_pass {
            State::OnePass(
                vars.into_iter()
                    .map(|var| {
                        let n = var.elem_count();
                        Moments {
                            var,
                            m: vec![0.0; n],
                            v: vec![0.0; n],
                        }
                    })
                    .collect(),
            )
        } else {
            State::Candle(candle_nn::AdamW::new(vars, params.clone())?)
        };
        Ok(Adam {
            params,
            step: 0,
            state,
        })
    }

    /// One step on the gradients of `grads` (variables without a gradient stay as they are).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let moments = match &mut self.state {
            State::Candle(a) => return a.step(grads),
            State::OnePass(m) => m,
        };
        self.step += 1;
        let p = &self.params;
        // As candle's `affine` and scalar ops round their f64 arguments.
        let scalars = Scalars {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(self.step))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(self.step))) as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            lr: p.lr as f32,
            eps: p.eps as f32,
        };
        for Moments { var, m, v } in moments.iter_mut() {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.contiguous()?;
                let update = Update {
                    moments: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
                    scalars,
                };
                var.as_tensor().inplace_op2(&g, &update)?;
            }
        }
        Ok(())
    }
}

/// An optimizer's state, to resume it exactly: its step count and, per variable (in its order),
/// the first and second moments.
pub struct AdamState {
    pub step: i32,
    pub moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    /// The state ([`AdamState`]); an error for candle-nn's optimizer (other devices), whose
    /// moments are private.
    pub fn state(&self) -> anyhow::Result<AdamState> {
        match &self.state {
            State::OnePass(ms) => Ok(AdamState {
                step: self.step,
                moments: ms.iter().map(|m| (m.m.clone(), m.v.clone())).collect(),
            }),
            State::Candle(_) => anyhow::bail!(
                "checkpoints need the CPU optimizer (f32 variables on the CPU); candle-nn's AdamW on other devices keeps its moments private (use --checkpoint-every 0)"
            ),
        }
    }

    /// Restores `state` (taken from an optimizer over variables of the same sizes).
    pub fn restore(&mut self, state: AdamState) -> anyhow::Result<()> {
        let State::OnePass(ms) = &mut self.state else {
            anyhow::bail!("resuming needs the CPU optimizer (f32 variables on the CPU)");
        };
        if state.moments.len() != ms.len() {
            anyhow::bail!(
                "the checkpoint's optimizer has {} variables, this run's {}",
                state.moments.len(),
                ms.len()
            );
        }
        for (k, (m, (m1, v1))) in ms.iter_mut().zip(state.moments).enumerate() {
            if m1.len() != m.m.len() || v1.len() != m.v.len() {
                anyhow::bail!(
                    "the checkpoint's optimizer variable {k} has {} entries, this run's {}",
                    m1.len(),
                    m.m.len()
                );
            }
            (m.m, m.v) = (m1, v1);
        }
        self.step = state.step;
        Ok(())
    }
}

/// A step's scalars, rounded to f32.
#[derive(Clone, Copy)]
struct Scalars {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    lr: f32,
    eps: f32,
}

/// The one-pass update of one variable (the destination) from its gradient.
struct Update<'a> {
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    scalars: Scalars,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            bail!("fused-adamw: f32 parameters and gradients only");
        };
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("fused-adamw: contiguous parameters and gradients only");
        };
        let (theta, grad) = (&mut theta[a..b], &grad[c..d]);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if theta.len() != grad.len() || theta.len() != m.len() {
            bail!("fused-adamw: parameter, gradient and moments differ in size");
        }
        let s = self.scalars;
        // Each `+ 0.0` is candle's `affine(mul, 0)`: the same f32 results, signed zeros included.
        for (((t, &g), m), v) in theta
            .iter_mut()
            .zip(grad)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
        {
            let next_m = (*m * s.beta1 + 0.0) + (g * s.one_minus_beta1 + 0.0);
            let next_v = (*v * s.beta2 + 0.0) + ((g * g) * s.one_minus_beta2 + 0.0);
            let m_hat = next_m * s.scale_m + 0.0;
            let v_hat = next_v * s.scale_v + 0.0;
            let decayed = *t * s.decay + 0.0;
            let adjusted = m_hat / (v_hat.sqrt() * 1.0 + s.eps);
            *t = decayed - (adjusted * s.lr + 0.0);
            *m = next_m;
            *v = next_v;
        }
        Ok(())
    }
}
