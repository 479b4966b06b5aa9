//! Real-model mode (MATH.md §6), behind the `lm` feature: pretrained transformers (BERT, Llama,
//! Qwen2, GPT-2, GPT-NeoX via candle) loaded from Hugging Face folders ([`model`], [`nets`],
//! [`gguf`] for llama.cpp files), Theorem 2's setting on their frozen representations
//! ([`single_token`]), full fine-tuning of the whole model ([`finetune`]), the paper's
//! prefix-and-word recipe ([`recipe`]), and the Hamiltonian-cycle experiment on a model rmflow
//! trains itself ([`cycle`], MATH.md §7).

pub mod adam;
pub mod alignment;
pub mod chat;
pub mod convert;
pub mod cycle;
pub mod export;
pub mod finetune;
pub mod gguf;
pub mod model;
pub mod nets;
pub mod ops;
pub mod recipe;
pub mod single_token;
pub mod spec;
pub mod tiny;
pub mod vocabulary;

pub use candle_core::Device;
pub use model::{open_device, Architecture, Forward, LanguageModel};
pub use single_token::{
    build_setup, extract_pairs, run_experiment, run_head_only, split_sequences, AnswerTokens, Mode,
    RealModelRun, RealProblem, SplitSequences, Timing,
};
pub use spec::{LmFile, LmSpec};
