//! Analyses built on runs: learning dynamics (MATH.md §3), the numerical verification of
//! Theorem 2 (§4), and parameter sweeps over seeds.

pub mod dynamics;
pub mod sweep;
pub mod verify;
