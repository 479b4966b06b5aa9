//! Reward models, their margins, the Bradley–Terry loss and its gradients (MATH.md §1–§2).
//!
//! Both models expose the training margins `m_i(θ)` and the pull-back `Σ_i w_i ∂m_i/∂θ`
//! ([`MarginModel`]); the loss gradient (`w_i = −σ(−m_i)/N`) and the log-time flow field
//! (`w_i = t σ(−m_i)/N`) are both pull-backs, so one code path serves GD, Adam and the flow.
//! [`margin`] holds the trait and the loss, one file per model beside it.

pub mod explicit;
pub mod implicit;
pub mod margin;
pub mod seen_rows;

pub use explicit::ExplicitRm;
pub use implicit::{ImplicitRm, Position, ReferenceTerm};
pub use margin::{loss_and_gradient, mean_loss, MarginModel};
pub use seen_rows::SeenRowsImplicitRm;
