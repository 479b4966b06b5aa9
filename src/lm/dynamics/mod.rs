//! The paper's mechanism measured on a real LM (MATH.md §3; `rmflow lm-dynamics`): how one
//! gradient-flow update of the preference loss moves each evaluation pair's reward margin, and
//! why.
//!
//! - IM-RM, unembedding part, exact: `β² ⟨G(y), D⟩_F` with `G(y) = ∇_U ln π(y|x)` and the
//!   training direction `D = Σ_i c_i [G(y_i⁺) − G(y_i⁻)]`, `c_i = σ(−m_i)/N`
//!   ([`crate::analysis::dynamics::direction`]), split into the token-identity part (`1{y_k = ȳ_l}`
//!   of `ρ_{k,l}`) and the rest, with the tokens that carry the identity part.
//! - EX-RM, head part: `⟨h_{x,y}, Σ_i c_i z_i⟩`.
//! - The actual first step: one small gradient-descent step on the part alone (unembedding or
//!   head) and on every parameter, at `η` and `η/2`; the change of each evaluation margin
//!   against `η ×` the predicted velocity (the first-order check of §3).
//!
//! [`states`] reads the representations, [`model`] sets the model to a run's checkpoint,
//! [`measure`] computes the velocities and steps, [`run`] orchestrates, [`output`] writes.

pub mod measure;
pub mod model;
pub mod output;
pub mod run;
pub mod states;

pub use run::{run_dynamics, DynamicsOptions, DynamicsOutcome, ModelSource};
