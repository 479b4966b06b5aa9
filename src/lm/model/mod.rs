//! A pretrained transformer as the reward models' backbone (MATH.md §6): [`LanguageModel`]
//! loaded from a checkpoint folder into trainable candle variables ([`language_model`]), its
//! tokens ([`tokens`]), the representations read from it ([`extract`]) and the device
//! ([`device`]).
//!
//! Families: BERT (masked: the answer fills a `[MASK]` slot), Llama, Qwen2, GPT-2 and GPT-NeoX
//! (causal: `π(y|x)` is read at the last prompt position, the EX-RM at the position of `y`).

pub mod device;
pub mod extract;
pub mod language_model;
pub mod tokens;

pub use crate::lm::checkpoint::files::architecture_of;
pub use crate::lm::checkpoint::hf_config::Architecture;
pub use device::open_device;
pub use extract::{distinct_prompts, to_array2, LAST_EXTRACTION_TOKENS};
pub use language_model::{Forward, LanguageModel};
