//! rmflow: learning dynamics of implicit (DPO-style) vs explicit reward models.
//!
//! The mathematics is in `MATH.md` (shared); each module names the sections it implements.

pub mod config;
pub mod dynamics;
pub mod error;
pub mod export;
pub mod figures;
#[cfg(feature = "lm")]
pub mod lm;
pub mod max_margin;
pub mod numerics;
pub mod observables;
pub mod ode;
pub mod output;
pub mod plotting;
pub mod resources;
pub mod reward;
pub mod simulation;
pub mod sweep;
pub mod synthetic;
pub mod training;
pub mod verify;
