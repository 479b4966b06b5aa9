//! The gated MLP's `silu(g) · u` and the exact (erf) GELU, each with its backward.

use super::storage::{output, slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use rten_simd::SimdUnaryOp;

/// `silu(g) · u` elementwise (`silu(g) = g / (1 + e^{−g})`, candle's formula).
pub(crate) struct SiluGate;

impl CustomOp2 for SiluGate {
    fn name(&self) -> &'static str {
        "silu-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, "silu gate")?;
        let u = slice(s2, l2, "silu up")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("silu gate: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let mut dst = vec![0f32; g.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                    *y = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok(output(dst, l1.shape()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SiluGateBackward)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `[2, ..]`: `∂L/∂g = dy · u · σ(g)(1 + g(1 − σ(g)))`, then `∂L/∂u = dy · silu(g)`.
pub(crate) struct SiluGateBackward;

impl CustomOp3 for SiluGateBackward {
    fn name(&self) -> &'static str {
        "silu-gate-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, "silu gate backward gate")?;
        let u = slice(s2, l2, "silu gate backward up")?;
        let dy = slice(s3, l3, "silu gate backward gradient")?;
        let n = g.len();
        let mut dst = vec![0f32; 2 * n];
        let (dg, du) = dst.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(
                g.par_chunks(CHUNK)
                    .zip(u.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))),
            )
            .for_each(|((dg, du), (g, (u, dy)))| {
                for k in 0..g.len() {
                    let s = 1.0 / (1.0 + (-g[k]).exp());
                    dg[k] = dy[k] * u[k] * s * (1.0 + g[k] * (1.0 - s));
                    du[k] = dy[k] * (g[k] / (1.0 + (-g[k]).exp()));
                }
            });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok(output(dst, &Shape::from(dims)))
    }
}

/// `silu(g) · u`, gradients to both.
pub fn silu_gate(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluGate)
}

// ------------------------------------------------------------ exact GELU

/// Elements per parallel task of the element-wise kernels.
pub(crate) const CHUNK: usize = 4096;

/// `x Φ(x) = (erf(x/√2) + 1) · x/2` elementwise, candle's `gelu_erf` formula, in parallel
/// (candle's unary ops run on one thread) and vectorised: `erf` and `exp` are rten-vecmath's
/// SIMD kernels (Abramowitz–Stegun 7.1.26 for `erf`, as PyTorch's vectorised CPU `erf`; within
/// 6.7e-7 absolute of libm's `erff`, which candle calls one element at a time).
pub(crate) struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-with-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, "gelu input")?;
        let mut dst = x.to_vec();
        dst.par_chunks_mut(CHUNK)
            .for_each(|y| rten_vecmath::Gelu {}.map_mut(y));
        Ok(output(dst, layout.shape()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&g.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// `∂L/∂x = g · (Φ(x) + x φ(x))`, `φ(x) = e^{−x²/2}/√(2π)`.
pub(crate) struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu backward input")?;
        let g = slice(s2, l2, "gelu backward gradient")?;
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (x, g))| {
                let mut e: Vec<f32> = x.iter().map(|v| -0.5 * v * v).collect();
                rten_vecmath::Exp {}.map_mut(&mut e);
                for (d, &v) in d.iter_mut().zip(x) {
                    *d = v * std::f32::consts::FRAC_1_SQRT_2;
                }
                rten_vecmath::Erf {}.map_mut(d);
                for (((d, &v), &g), e) in d.iter_mut().zip(x).zip(g).zip(e) {
                    let cdf = 0.5 * (1.0 + *d);
                    *d = g * (cdf + v * INV_SQRT_2PI * e);
                }
            });
        Ok(output(dst, l1.shape()))
    }
}

/// The exact GELU `x Φ(x)`, with its gradient.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}
