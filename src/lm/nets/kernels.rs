//! Which kernels a forward runs: kernels that record a backward through every parameter
//! ([`Kernels::Autograd`]) or candle's inference kernels, which record none
//! ([`Kernels::Inference`]).

use super::layers::*;
use crate::lm::ops;
use candle_core::{Result, Tensor};

/// Which kernels a forward uses (equal up to f32 rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Kernels that record a backward: rmflow's own ([`crate::lm::ops`], CPU f32) or candle's
    /// differentiable compositions elsewhere. Training.
    Autograd,
    /// candle's norm, rotary and softmax kernels, which record no backward. Extraction and
    /// scoring.
    Inference,
}

impl Kernels {
    pub(crate) fn norm(self, n: &Norm, x: &Tensor) -> Result<Tensor> {
        match (self, &n.bias) {
            (Kernels::Autograd, _) => n.forward(x),
            (Kernels::Inference, Some(b)) => candle_nn::ops::layer_norm(x, &n.weight, b, n.eps),
            (Kernels::Inference, None) => candle_nn::ops::rms_norm(x, &n.weight, n.eps),
        }
    }

    pub(crate) fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self {
            Kernels::Autograd if ops::fused(x) => ops::rope(x, cos, sin),
            Kernels::Autograd => candle_nn::rotary_emb::rope_slow(x, cos, sin),
            Kernels::Inference => candle_nn::rotary_emb::rope(x, cos, sin),
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
        if self == Kernels::Autograd || ops::fused(q) {
            let rows = |t: &Tensor| t.transpose(1, 2);
            return attention(&rows(q)?, &rows(k)?, &rows(v)?, mask);
        }
        composed_attention(q, k, v, mask, false)
    }
}
