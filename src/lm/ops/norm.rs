//! RMSNorm and LayerNorm with their backward; the weight and bias gradients summed over fixed
//! blocks of rows in a fixed order ([`norm_backward`]).

use super::storage::{last_dim, output, slice};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of a norm's parameter gradients summed per block before the blocks are summed in order:
/// fixed, so the sums do not depend on the thread count.
pub(crate) const NORM_BLOCK: usize = 64;

/// A norm's backward over rows of `d`: `row(dx, x, g, sums)` writes one row's `∂L/∂x` and adds
/// its terms to the `params · d` parameter-gradient sums. Returns `[rows + params, d]`: the
/// input gradient's rows, then the parameter gradients.
pub(crate) fn norm_backward(
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
pub(crate) fn split_norm_grads(
    all: &Tensor,
    x: &Tensor,
    params: &[&Tensor],
) -> Result<Vec<Tensor>> {
    let rows = x.elem_count() / params[0].elem_count();
    let mut out = vec![all.narrow(0, 0, rows)?.reshape(x.shape())?];
    for (k, p) in params.iter().enumerate() {
        out.push(all.narrow(0, rows + k, 1)?.reshape(p.shape())?);
    }
    Ok(out)
}

/// `x / √(Σx²/d + eps) · w` over the last dimension, as `candle_nn::ops::rms_norm_slow`.
pub(crate) struct RmsNorm {
    eps: f32,
}

/// `1 / √(Σx²/d + eps)`, the order of operations of `rms_norm_slow`'s.
pub(crate) fn rms_scale(x: &[f32], eps: f32) -> f32 {
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
pub(crate) struct RmsBackward {
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
pub(crate) fn layer_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let inv = (1.0 / x.len() as f64) as f32;
    let mean = x.iter().sum::<f32>() * inv;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() * inv;
    (mean, (var + eps).sqrt())
}

/// `(x − μ) / σ · w + b` over the last dimension, as `candle_nn::ops::layer_norm_slow`.
pub(crate) struct LayerNorm {
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
pub(crate) struct LayerBackward {
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
