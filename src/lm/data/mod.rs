//! The prompts the experiments read: statements files ([`statements`]) and Anthropic's persona
//! JSONL ([`persona`]).

pub mod persona;
pub mod statements;

pub use persona::read_persona_jsonl;
pub use statements::read_statements;
