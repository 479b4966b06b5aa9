//! Fused CPU kernels that record their own backward pass, for the differentiable forwards of
//! [`super::nets`]: the affine maps `x wᵀ + b` ([`affine`]), attention
//! (`softmax(q kᵀ/√hd + mask) v`, [`attention`]), RMSNorm,
//! LayerNorm, the rotary embedding, the gated MLP's `silu(g) · u` and the exact (erf) GELU.
//!
//! candle's autograd keeps every intermediate tensor of a composition alive until the backward
//! returns: attention built from candle ops keeps the scores and five more attention-sized
//! tensors per layer, `rms_norm_slow` three hidden-sized ones per norm, `rope_slow` four per
//! rotated tensor. Each op here keeps only its inputs and output (attention recomputes its
//! probabilities in the backward), and its forward and backward are one parallel pass each.
//! Every op computes the formula of the composition it replaces, in the same order of f32
//! operations where that is cheap (checked, forward and gradients, in `tests/lm_ops.rs`).
//! Rows (attention: heads) are independent and each is computed by one thread, so results do
//! not depend on the thread count; the reductions across rows (the norms' weight and bias
//! gradients, [`norm_backward`]) sum fixed blocks of rows in a fixed order.
//!
//! Only f32 tensors on the CPU: [`fused`] says when a tensor qualifies; elsewhere the forwards
//! keep candle's compositions.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use rten_simd::SimdUnaryOp;

mod attention;
mod linear;
pub use attention::{attention, attention_packed, Span};
pub use linear::affine;

/// Whether the fused kernels serve `t`: f32 on the CPU.
pub fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The f32 elements of a contiguous `storage`.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("{what}: f32 expected, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&w) if w > 0 => Ok(w),
        _ => candle_core::bail!("fused op: empty last dimension in {:?}", layout.dims()),
    }
}

fn output(dst: Vec<f32>, shape: &Shape) -> (CpuStorage, Shape) {
    (CpuStorage::F32(dst), shape.clone())
}

// ------------------------------------------------------------ RMSNorm

/// Rows of a norm's parameter gradients summed per block before the blocks are summed in order:
/// fixed, so the sums do not depend on the thread count.
const NORM_BLOCK: usize = 64;

/// A norm's backward over rows of `d`: `row(dx, x, g, sums)` writes one row's `∂L/∂x` and adds
/// its terms to the `params · d` parameter-gradient sums. Returns `[rows + params, d]`: the
/// input gradient's rows, then the parameter gradients.
fn norm_backward(
    x: &[f32],
    g: &[f32],
    d: usize,
    params: usize,
    row: impl Fn(&mut [f32], &[f32], &[f32], &mut [f32]) + Sync,
) -> (CpuStorage, Shape) {
    let mut dst = vec![0f32; x.len() + params * d];
    let (dx, sums) = dst.split_at_mut(x.len());
    let blocks: Vec<Vec<f32>> = dx
        .par_chunks_mut(NORM_BLOCK * d)
        .zip(
            x.par_chunks(NORM_BLOCK * d)
                .zip(g.par_chunks(NORM_BLOCK * d)),
        )
        .map(|(dx, (x, g))| {
            let mut part = vec![0f32; params * d];
            for (dx, (x, g)) in dx.chunks_mut(d).zip(x.chunks(d).zip(g.chunks(d))) {
                row(dx, x, g, &mut part);
            }
            part
        })
        .collect();
    for part in &blocks {
        for (a, b) in sums.iter_mut().zip(part) {
            *a += b;
        }
    }
    output(dst, &Shape::from((x.len() / d + params, d)))
}

/// Splits [`norm_backward`]'s output into the gradient of `x` and those of `params`.
fn split_norm_grads(all: &Tensor, x: &Tensor, params: &[&Tensor]) -> Result<Vec<Tensor>> {
    let rows = x.elem_count() / params[0].elem_count();
    let mut out = vec![all.narrow(0, 0, rows)?.reshape(x.shape())?];
    for (k, p) in params.iter().enumerate() {
        out.push(all.narrow(0, rows + k, 1)?.reshape(p.shape())?);
    }
    Ok(out)
}

/// `x / √(Σx²/d + eps) · w` over the last dimension, as `candle_nn::ops::rms_norm_slow`.
struct RmsNorm {
    eps: f32,
}

/// `1 / √(Σx²/d + eps)`, the order of operations of `rms_norm_slow`'s.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f32 = x.iter().map(|v| v * v).sum();
    let ms = sum * (1.0 / x.len() as f64) as f32;
    (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-with-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms norm input")?;
        let w = slice(s2, l2, "rms norm weight")?;
        let d = last_dim(l1)?;
        if w.len() != d {
            candle_core::bail!("rms norm: weight of {} for rows of {d}", w.len());
        }
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(y, x)| {
                let rms = rms_scale(x, self.eps);
                for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                    *y = x / rms * w;
                }
            });
        Ok(output(dst, l1.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(w, &g.contiguous()?, &RmsBackward { eps: self.eps })?;
        let mut grads = split_norm_grads(&all, x, &[w])?.into_iter().map(Some);
        Ok((grads.next().flatten(), grads.next().flatten()))
    }
}

/// RMSNorm's gradients `[rows + 1, d]`: the rows of `∂L/∂x = (g∘w)/r − x (Σ_j g_j w_j x_j)/(d r³)`
/// (`r` the row's rms), then `∂L/∂w = Σ_rows g ∘ x / r`.
struct RmsBackward {
    eps: f32,
}

impl CustomOp3 for RmsBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
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
        let x = slice(s1, l1, "rms norm backward input")?;
        let w = slice(s2, l2, "rms norm backward weight")?;
        let g = slice(s3, l3, "rms norm backward gradient")?;
        let d = w.len();
        Ok(norm_backward(x, g, d, 1, |dx, x, g, dw| {
            let rms = rms_scale(x, self.eps);
            let dot: f32 = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x).sum();
            let c = dot / (d as f32 * rms * rms * rms);
            for (k, dx) in dx.iter_mut().enumerate() {
                *dx = g[k] * w[k] / rms - x[k] * c;
                dw[k] += g[k] * x[k] / rms;
            }
        }))
    }
}

/// RMSNorm over the last dimension of `x` with weight `w` [d], gradients to both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ------------------------------------------------------------ LayerNorm

/// A row's mean and `√(Σ(x − μ)²/d + eps)`, in `layer_norm_slow`'s order of operations.
fn layer_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let inv = (1.0 / x.len() as f64) as f32;
    let mean = x.iter().sum::<f32>() * inv;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() * inv;
    (mean, (var + eps).sqrt())
}

/// `(x − μ) / σ · w + b` over the last dimension, as `candle_nn::ops::layer_norm_slow`.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-with-backward"
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
        let x = slice(s1, l1, "layer norm input")?;
        let w = slice(s2, l2, "layer norm weight")?;
        let b = slice(s3, l3, "layer norm bias")?;
        let d = last_dim(l1)?;
        if w.len() != d || b.len() != d {
            candle_core::bail!(
                "layer norm: weight of {} and bias of {} for rows of {d}",
                w.len(),
                b.len()
            );
        }
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(y, x)| {
                let (mean, sd) = layer_stats(x, self.eps);
                for (k, y) in y.iter_mut().enumerate() {
                    *y = (x[k] - mean) / sd * w[k] + b[k];
                }
            });
        Ok(output(dst, l1.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerBackward { eps: self.eps })?;
        let mut grads = split_norm_grads(&all, x, &[w, b])?.into_iter().map(Some);
        Ok((
            grads.next().flatten(),
            grads.next().flatten(),
            grads.next().flatten(),
        ))
    }
}

/// LayerNorm's gradients `[rows + 2, d]`: the rows of
/// `∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ ∘ x̂)) / σ` (`ĝ = g ∘ w`, `x̂ = (x − μ)/σ`), then
/// `∂L/∂w = Σ_rows g ∘ x̂` and `∂L/∂b = Σ_rows g`, summed in fixed blocks of rows.
struct LayerBackward {
    eps: f32,
}

impl CustomOp3 for LayerBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
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
        let x = slice(s1, l1, "layer norm backward input")?;
        let w = slice(s2, l2, "layer norm backward weight")?;
        let g = slice(s3, l3, "layer norm backward gradient")?;
        let d = w.len();
        Ok(norm_backward(x, g, d, 2, |dx, x, g, sums| {
            let (mean, sd) = layer_stats(x, self.eps);
            let (mut m1, mut m2) = (0f32, 0f32);
            for k in 0..d {
                let xh = (x[k] - mean) / sd;
                let gh = g[k] * w[k];
                m1 += gh;
                m2 += gh * xh;
                sums[k] += g[k] * xh;
                sums[d + k] += g[k];
            }
            let (m1, m2) = (m1 / d as f32, m2 / d as f32);
            for (k, dx) in dx.iter_mut().enumerate() {
                *dx = (g[k] * w[k] - m1 - (x[k] - mean) / sd * m2) / sd;
            }
        }))
    }
}

/// LayerNorm over the last dimension of `x` with weight `w` and bias `b` [d], gradients to all.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

// ------------------------------------------------------------ rotary embedding

/// The rotary embedding of `x` [B, H, L, hd] (halves rotated, as `rope_slow`) by `cos`, `sin`
/// [L, hd/2]; its own transpose with `sin` negated, which is its backward.
struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-with-backward"
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
        let x = slice(s1, l1, "rope input")?;
        let cos = slice(s2, l2, "rope cos")?;
        let sin = slice(s3, l3, "rope sin")?;
        let dims = l1.dims();
        let (l, hd) = match dims {
            [_, _, l, hd] if hd % 2 == 0 => (*l, *hd),
            _ => candle_core::bail!("rope: input [B, H, L, even hd] expected, got {dims:?}"),
        };
        let half = hd / 2;
        if cos.len() != l * half || sin.len() != l * half {
            candle_core::bail!(
                "rope: tables of {} and {} for L = {l}, hd = {hd}",
                cos.len(),
                sin.len()
            );
        }
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(l * hd)
            .zip(x.par_chunks(l * hd))
            .for_each(|(y, x)| {
                for t in 0..l {
                    let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                    let (x, y) = (&x[t * hd..][..hd], &mut y[t * hd..][..hd]);
                    for i in 0..half {
                        let (x1, x2) = (x[i], x[i + half]);
                        y[i] = x1 * c[i] + -x2 * s[i];
                        y[i + half] = x2 * c[i] + x1 * s[i];
                    }
                }
            });
        Ok(output(dst, l1.shape()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}

/// The rotary embedding of `x` [B, H, L, hd] by tables `cos`, `sin` [L, hd/2]; gradient to `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

// ------------------------------------------------------------ gated MLP

/// `silu(g) · u` elementwise (`silu(g) = g / (1 + e^{−g})`, candle's formula).
struct SiluGate;

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
struct SiluGateBackward;

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
const CHUNK: usize = 4096;

/// `x Φ(x) = (erf(x/√2) + 1) · x/2` elementwise, candle's `gelu_erf` formula, in parallel
/// (candle's unary ops run on one thread) and vectorised: `erf` and `exp` are rten-vecmath's
/// SIMD kernels (Abramowitz–Stegun 7.1.26 for `erf`, as PyTorch's vectorised CPU `erf`; within
/// 6.7e-7 absolute of libm's `erff`, which candle calls one element at a time).
struct GeluErf;

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
struct GeluErfBackward;

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
