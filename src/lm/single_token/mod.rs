//! Theorem 2's setting on a real transformer (`rmflow lm`, MATH.md §6): single-token answers in
//! a `[MASK]` slot or after the prompt; the config ([`config`], `experiments/persona.toml`), the
//! sequences and the head-only run on frozen representations ([`setup`]), full fine-tuning
//! beside it ([`finetune`]) and the run's files ([`output`]); how far the representations carry
//! the preference is [`crate::lm::train::alignment`].

pub mod config;
pub mod finetune;
pub mod output;
pub mod setup;

pub use config::{LmFile, LmSpec};
pub use setup::{
    build_setup, extract_pairs, run_experiment, run_head_only, split_sequences, AnswerTokens,
    RealModelRun, RealProblem, SplitSequences, Timing,
};
