//! Gradient flow and its discretisations (MATH.md §2).
//!
//! Flow: `dθ/dt = −∇L(θ)` on `t ∈ [0, 1]`, then in log-time `s = ln t`,
//! `dθ/ds = t·(−∇L) = (1/N) Σ_i exp(s − softplus(m_i)) ∂m_i/∂θ`, so `t σ(−m)` never over- or
//! underflows and `t = 1e100` costs a few hundred steps. GD, Adam and AdamW use `t = k·η`.
//! [`train`](mod@train) is the entry point; [`flow`], [`discrete`] and [`residual`] are the methods,
//! [`screening`] skips negligible pairs of the flow field, [`time`] holds the observation grid.

pub mod discrete;
pub mod flow;
pub mod residual;
pub mod screening;
pub mod time;
pub mod train;

pub use residual::residual_flow;
pub use screening::{Screening, ScreeningStats};
pub use time::{format_time, observation_log10_times, observation_times, ObsTime};
pub use train::{train, train_screened, Observe, TrainOutcome};
