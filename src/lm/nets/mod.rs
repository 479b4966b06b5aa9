//! rmflow's forwards of the model families for full fine-tuning (MATH.md §6): BERT,
//! Llama, Qwen2 (Llama with q/k/v biases), GPT-2 and GPT-NeoX (Pythia).
//!
//! candle-nn 0.11's inference kernels `layer_norm`, `rms_norm`, `softmax_last_dim` and `rope` record no
//! backward op (candle issues #2168, #3011): the models of candle-transformers run forward
//! correctly but a loss's gradient stops at their first norm, so a "full" fine-tuning of them
//! would silently train only what sits after the last one. These re-implementations use only
//! differentiable ops (`layer_norm_slow`, `rms_norm_slow`, `softmax`, `rope_slow`) or, on the
//! CPU in f32, the fused kernels of [`super::ops`] that record their own backward (attention's
//! masked softmax, RMSNorm, LayerNorm, rotary, `silu(g)·u`, exact GELU: the same formulas, one
//! pass each, far fewer tensors kept for the backward). They read the same Hugging Face weight
//! names, and are checked against candle-transformers' forward in
//! `tests/lm.rs` and `tests/lm_tiny.rs`, and against `transformers`' logits on the fixtures of
//! `tests/fixtures/reference` (`tests/lm_reference.rs`). GPT-2, GPT-NeoX and Qwen2 are served by
//! these forwards in both modes.

//!
//! One file per family ([`bert`], [`llama`], [`gpt2`], [`gpt_neox`]) with its config beside it;
//! [`layers`] holds what they share, [`kernels`] the choice between candle's inference
//! kernels and these autograd forwards, and [`decode`] the Llama's incremental decoding.

pub mod bert;
pub mod decode;
pub mod gpt2;
pub mod gpt_neox;
pub mod kernels;
pub mod layers;
pub mod llama;

pub use bert::{Bert, BertShape};
pub use decode::KvCache;
pub use gpt2::{Gpt2, Gpt2Config};
pub use gpt_neox::{GptNeox, GptNeoxConfig};
pub use kernels::Kernels;
pub use llama::Llama;
