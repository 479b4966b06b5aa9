//! The CPU storage the kernels read and write: which tensors they serve (f32 on the CPU), a
//! contiguous slice of an input, the last dimension, an output buffer as candle storage.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

/// Whether the fused kernels serve `t`: f32 on the CPU.
pub fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The f32 elements of a contiguous `storage`.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("{what}: f32 expected, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

pub(crate) fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&w) if w > 0 => Ok(w),
        _ => candle_core::bail!("fused op: empty last dimension in {:?}", layout.dims()),
    }
}

pub(crate) fn output(dst: Vec<f32>, shape: &Shape) -> (CpuStorage, Shape) {
    (CpuStorage::F32(dst), shape.clone())
}

// ------------------------------------------------------------ RMSNorm
