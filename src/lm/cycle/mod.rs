//! The Hamiltonian-cycle experiment (MATH.md §7; `rmflow ham-cycle`,
//! `experiments/ham_cycle.toml`): does an IM-RM that verifies Hamiltonian cycles also generate
//! them? The reference model is a causal transformer rmflow trains itself, or a pretrained
//! checkpoint (`[model] path`), as the official code uses Pythia-1B.
//!
//! - [`checkpoint`]: the model from scratch, a small Llama with a word-level vocabulary of vertex
//!   ids, `<sep>`, `<edge_sep>` and the official default chat template's tokens, written as a
//!   Hugging Face folder.
//! - [`pretrain`](mod@pretrain): next-token training of that model on prompts of the task's format with random
//!   vertex orders as responses, so that `π_ref` spreads over orderings; written as a folder.
//! - [`run::Reference`]: the reference either way; a pretrained checkpoint gets `<sep>` and
//!   `<edge_sep>` added to its tokenizer and its vocabulary resized, as the official code does.
//! - [`tokens`]: vertex orders as token ids and generated ids as text, for either vocabulary.
//! - [`problem`]: the official pairs as the trainer's sequences (chat template, response + eos).
//! - The reward models: the trainer of [`crate::lm::train`] ([`crate::lm::train::epochs::train_reward`], full
//!   fine-tuning, Adam), observed at every evaluated epoch.
//! - [`generate`]: sampled (T = 1) and greedy decoding, scored by the official evaluator's check.
//! - [`enumerate`]: the exact `π(C|x)` and `π(orders|x)` by scoring every vertex order (`n ≤ 8`),
//!   the prompt's keys and values shared by all orders.
//! - [`run`] ties them together; [`output`] writes the run.

pub mod checkpoint;
pub mod config;
pub mod enumerate;
pub mod generate;
pub mod output;
pub mod pretrain;
pub mod problem;
mod resume;
pub mod run;
pub mod tokens;

pub use checkpoint::write_initial_checkpoint;
pub use config::{CycleEval, CycleFile, CycleModel, CyclePretrain, DEFAULT_CYCLE_TOML};
pub use enumerate::{order_masses, OrderMass};
pub use generate::{Decoder, Decoding};
pub use output::write_outputs;
pub use pretrain::pretrain;
pub use problem::cycle_problem;
pub use run::{run_cycle, CycleEpoch, CycleEvent, CycleOutcome, PromptRecord};
pub use tokens::CycleTokens;
