//! Numerical verification of Theorem 2 and its companion facts (MATH.md §4), claim by claim.
//!
//! Each [`Claim`] has a measured value, a bound stated before the run, and a status; `verify`
//! fails (non-zero exit) if any claim fails. The proof and the claim ↔ test map are in
//! `proofs/theorem2.md`. One file per claim family ([`theorem2a`], [`theorem2b`], [`residual`],
//! [`dynamics`]); [`setup`] trains the runs of one configuration and assembles its rows,
//! [`trials`] repeats that over random setups, [`report`] renders the result.

pub mod claim;
pub mod dynamics;
pub mod options;
pub mod report;
pub mod residual;
pub mod setup;
pub mod theorem2a;
pub mod theorem2b;
pub mod trials;

pub use claim::{Bound, Claim, Status};
pub use options::{Fault, VerifyOptions};
pub use report::{render, Report, WorstCase};
pub use setup::{verify_setup, NON_SEPARABLE_FAITHFUL_T_MAX, SETUP_JOBS};
pub use trials::{largest_config, trial_config, verify, TRIAL_DIMS, TRIAL_TRAIN_PAIRS};
