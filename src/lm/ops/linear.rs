//! The fused affine map `x wᵀ + b` with its own backward (CPU, f32): one node of candle's graph
//! where `candle_nn::Linear` records a transpose, a matrix product, two reshapes and a
//! broadcast addition, each of which the backward pass visits, allocates and sums into. The
//! bias is the GEMM's starting value (as `torch.addmm`); the products are the `gemm` crate's,
//! the kernels candle's CPU matmul calls, on rayon's threads.
//!
//! Backward: `∂x = g w`, `∂w = gᵀ x`, `∂b = Σ_rows g`, the last summed over fixed blocks of
//! rows in order, so it does not depend on the thread count.

use super::slice;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows per block of the bias gradient's fixed-order sum.
const BIAS_BLOCK: usize = 64;

/// `rows × inputs` times `outputs × inputs` transposed.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    rows: usize,
    inputs: usize,
    outputs: usize,
}

struct Affine {
    sizes: Sizes,
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst (m × n, row stride n) = dst·[accumulate] + lhs · rhs`, the operands given by their
/// (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n, "affine product: destination too small");
    assert!(
        m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "affine product: left operand too small"
    );
    assert!(
        n == 0 || k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "affine product: right operand too small"
    );
    // SAFETY: the three assertions keep every element gemm reads or writes inside its slice;
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

impl Affine {
    /// `x wᵀ (+ b)`, `[rows, outputs]`.
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let Sizes {
            rows,
            inputs,
            outputs,
        } = self.sizes;
        let mut dst = match b {
            Some(b) => b.repeat(rows),
            None => vec![0f32; rows * outputs],
        };
        // wᵀ[i, o] = w[o · inputs + i]: row stride 1, column stride `inputs`.
        product(
            &mut dst,
            b.is_some(),
            (rows, outputs, inputs),
            x,
            (inputs, 1),
            w,
            (1, inputs),
        );
        dst
    }

    fn output_shape(&self, x: &Layout) -> Shape {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("affine input has a last dimension") = self.sizes.outputs;
        Shape::from(dims)
    }
}

impl CustomOp2 for Affine {
    fn name(&self) -> &'static str {
        "fused-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            slice(s1, l1, "affine input")?,
            slice(s2, l2, "affine weight")?,
        );
        Ok((
            CpuStorage::F32(self.forward(x, w, None)),
            self.output_shape(l1),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.gradients(x, w, g, false)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "fused-affine-with-bias"
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
        let (x, w) = (
            slice(s1, l1, "affine input")?,
            slice(s2, l2, "affine weight")?,
        );
        let b = slice(s3, l3, "affine bias")?;
        Ok((
            CpuStorage::F32(self.forward(x, w, Some(b))),
            self.output_shape(l1),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.gradients(x, w, g, true)?;
        Ok((dx, dw, db))
    }
}

impl Affine {
    /// `[∂x, ∂w, ∂b]` (`∂b` only `with_bias`), from one backward op's flattened output.
    fn gradients(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
        with_bias: bool,
    ) -> Result<[Option<Tensor>; 3]> {
        let Sizes {
            rows,
            inputs,
            outputs,
        } = self.sizes;
        let all = x.apply_op3_no_bwd(
            w,
            &g.contiguous()?,
            &AffineBackward {
                sizes: self.sizes,
                with_bias,
            },
        )?;
        let (nx, nw) = (rows * inputs, outputs * inputs);
        Ok([
            Some(all.narrow(0, 0, nx)?.reshape(x.shape())?),
            Some(all.narrow(0, nx, nw)?.reshape(w.shape())?),
            if with_bias {
                Some(all.narrow(0, nx + nw, outputs)?)
            } else {
                None
            },
        ])
    }
}

/// The backward of [`Affine`] from `x`, `w` and the output's gradient: `[∂x, ∂w, ∂b]`
/// flattened into one vector (`∂b` only `with_bias`).
struct AffineBackward {
    sizes: Sizes,
    with_bias: bool,
}

impl CustomOp3 for AffineBackward {
    fn name(&self) -> &'static str {
        "fused-affine-backward"
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
        let (x, w) = (
            slice(s1, l1, "affine input")?,
            slice(s2, l2, "affine weight")?,
        );
        let g = slice(s3, l3, "affine output gradient")?;
        let Sizes {
            rows,
            inputs,
            outputs,
        } = self.sizes;
        let (nx, nw) = (rows * inputs, outputs * inputs);
        let nb = if self.with_bias { outputs } else { 0 };
        let mut dst = vec![0f32; nx + nw + nb];
        let (dx, rest) = dst.split_at_mut(nx);
        let (dw, db) = rest.split_at_mut(nw);
        // ∂x = g w: g [rows, outputs], w [outputs, inputs].
        let shape = (rows, inputs, outputs);
        product(dx, false, shape, g, (outputs, 1), w, (inputs, 1));
        // ∂w = gᵀ x: gᵀ[o, r] = g[r · outputs + o].
        let shape = (outputs, inputs, rows);
        product(dw, false, shape, g, (1, outputs), x, (inputs, 1));
        if self.with_bias {
            bias_gradient(db, g, outputs);
        }
        Ok((CpuStorage::F32(dst), Shape::from(nx + nw + nb)))
    }
}

/// `db = Σ_rows g`, over blocks of [`BIAS_BLOCK`] rows summed in order.
fn bias_gradient(db: &mut [f32], g: &[f32], outputs: usize) {
    let blocks: Vec<Vec<f32>> = g
        .par_chunks(BIAS_BLOCK * outputs)
        .map(|block| {
            let mut part = vec![0f32; outputs];
            for row in block.chunks(outputs) {
                for (p, v) in part.iter_mut().zip(row) {
                    *p += v;
                }
            }
            part
        })
        .collect();
    for part in blocks {
        for (d, p) in db.iter_mut().zip(part) {
            *d += p;
        }
    }
}

/// `x wᵀ + b` over the last dimension of `x` [.., inputs], `w` [outputs, inputs], `b`
/// [outputs]; gradients to all three.
pub fn affine(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (outputs, inputs) = w.dims2()?;
    let width = x.dims().last().copied().unwrap_or(0);
    let bias_fits = b.map_or(true, |b| b.dims() == [outputs]);
    if width != inputs || !bias_fits {
        candle_core::bail!(
            "affine: input {:?}, weight {:?}, bias {:?} do not fit",
            x.dims(),
            w.dims(),
            b.map(|b| b.dims().to_vec())
        );
    }
    let op = Affine {
        sizes: Sizes {
            rows: x.elem_count() / inputs.max(1),
            inputs,
            outputs,
        },
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}
