//! The data the experiments read: statements files ([`statements`]) and Anthropic's persona
//! JSONL ([`persona`]) for the persona recipe, preference datasets in the formats researchers
//! have them ([`preference`]); torch's generator for the official code's draws ([`torch_rng`]).

pub mod persona;
pub mod preference;
pub mod statements;
pub mod torch_rng;

pub use persona::read_persona_jsonl;
pub use statements::read_statements;
