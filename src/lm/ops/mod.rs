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
//! gradients, `norm::norm_backward`) sum fixed blocks of rows in a fixed order.
//!
//! Only f32 tensors on the CPU: [`fused`] says when a tensor qualifies; elsewhere the forwards
//! keep candle's compositions.

mod activation;
mod attention;
mod linear;
mod norm;
mod rope;
mod storage;

pub use activation::{gelu_erf, silu_gate};
pub use attention::{attention, attention_packed, Span};
pub use linear::affine;
pub use norm::{layer_norm, rms_norm};
pub use rope::rope;
pub use storage::fused;
use storage::slice;
