//! Which kernels a forward runs: candle-transformers' inference kernels (no backward) or the
//! autograd forwards of this module (a backward through every parameter).

use super::layers::*;
use crate::lm::ops;
use candle_core::{Result, Tensor};

/// Which kernels a forward uses: the differentiable compositions (training), or candle's fused
/// norm, rotary and softmax kernels (no backward; equal up to f32 rounding), for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Differentiable,
    Fused,
}

impl Kernels {
    pub(crate) fn norm(self, n: &Norm, x: &Tensor) -> Result<Tensor> {
        match (self, &n.bias) {
            (Kernels::Differentiable, _) => n.forward(x),
            (Kernels::Fused, Some(b)) => candle_nn::ops::layer_norm(x, &n.weight, b, n.eps),
            (Kernels::Fused, None) => candle_nn::ops::rms_norm(x, &n.weight, n.eps),
        }
    }

    pub(crate) fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self {
            Kernels::Differentiable if ops::fused(x) => ops::rope(x, cos, sin),
            Kernels::Differentiable => candle_nn::rotary_emb::rope_slow(x, cos, sin),
            Kernels::Fused => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }

    /// `softmax(q kᵀ/√hd + mask) v` of heads-major `q` [B, H, L, hd], `k`, `v` [B, Hkv, L, hd],
    /// heads merged back to `[B, L, H·hd]`.
    pub(crate) fn attention(
        self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        if self == Kernels::Differentiable || ops::fused(q) {
            let rows = |t: &Tensor| t.transpose(1, 2);
            return attention(&rows(q)?, &rows(k)?, &rows(v)?, mask);
        }
        composed_attention(q, k, v, mask, false)
    }
}
