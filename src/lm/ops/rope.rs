//! The rotary position embedding (half-split, as Llama's `rotate_half`) with its backward.

use super::storage::{output, slice};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The rotary embedding of `x` [B, H, L, hd] (halves rotated, as `rope_slow`) by `cos`, `sin`
/// [L, hd/2]; its own transpose with `sin` negated, which is its backward.
pub(crate) struct Rope;

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
