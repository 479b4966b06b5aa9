//! Checkpoint folders (MATH.md §6): a Hugging Face folder's files ([`files`]), its
//! `config.json` normalised and checked ([`hf_config`]), its tensors by family ([`tensors`]), the
//! tokenizer's added tokens ([`vocabulary`]) and chat template ([`chat_template`]); GGUF import
//! ([`gguf`]), half-precision conversion ([`convert`]) and tiny random checkpoints ([`tiny`]).

pub mod chat_template;
pub mod convert;
pub mod files;
pub mod gguf;
pub mod hf_config;
pub mod tensors;
pub mod tiny;
pub mod vocabulary;
