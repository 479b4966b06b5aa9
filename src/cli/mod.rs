//! The command line (binary only): one file per command, each with its arguments and a `run`
//! that calls the library; shared flags, progress reporting, the printed tables and stdout
//! handling beside them.

#[macro_use]
pub mod stdout;

pub mod allocator;
pub mod args;
pub mod check;
pub mod dynamics;
#[cfg(feature = "lm")]
pub mod ham_cycle;
#[cfg(feature = "lm")]
pub mod lm;
#[cfg(feature = "lm")]
pub mod lm_data;
#[cfg(feature = "lm")]
pub mod lm_dynamics;
#[cfg(feature = "lm")]
pub mod lm_files;
#[cfg(feature = "lm")]
pub mod lm_progress;
#[cfg(feature = "lm")]
pub mod lm_recipe;
pub mod progress;
#[cfg(feature = "lm")]
pub mod resume;
pub mod simulate;
pub mod sweep;
pub mod tables;
pub mod threads;
pub mod verify;
