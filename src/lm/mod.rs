//! Real-model mode (MATH.md §6), behind the `lm` feature, as a pipeline:
//!
//! 1. [`checkpoint`]: a Hugging Face folder (or a GGUF file) read, checked and normalised;
//! 2. [`model`]: the [`LanguageModel`] built from it, its tokens and representations, running
//!    the forwards of [`nets`] (one file per family) on the kernels of [`ops`];
//! 3. [`data`]: the prompts the experiments read (statements files, persona JSONL);
//! 4. [`train`]: the trainer every experiment calls (AdamW on the preference loss, batches,
//!    evaluation);
//! 5. the experiments, each a data source and a config: [`single_token`] (Theorem 2 head-only on
//!    frozen representations, and full fine-tuning), [`recipe`] (the paper's prefix-and-word
//!    recipe) and [`cycle`] (the Hamiltonian-cycle experiment, MATH.md §7);
//! 6. [`dynamics`]: the paper's mechanism (MATH.md §3) measured on a recipe's pairs.

pub mod checkpoint;
pub mod data;
pub mod model;
pub mod nets;
pub mod ops;
pub mod train;

pub mod cycle;
pub mod dynamics;
pub mod recipe;
pub mod single_token;

pub use candle_core::Device;
pub use model::{open_device, Architecture, Forward, LanguageModel};
pub use single_token::{
    build_setup, extract_pairs, run_experiment, run_head_only, split_sequences, AnswerTokens,
    RealModelRun, RealProblem, SplitSequences, Timing,
};
pub use single_token::{LmFile, LmSpec};
pub use train::epochs::Mode;
