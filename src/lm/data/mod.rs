//! The prompts the experiments read: statements files ([`statements`]) and Anthropic's persona
//! JSONL ([`persona`]); torch's generator for the official code's draws ([`torch_rng`]).

pub mod persona;
pub mod statements;
pub mod torch_rng;

pub use persona::read_persona_jsonl;
pub use statements::read_statements;
