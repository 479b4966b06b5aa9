//! Learning dynamics (MATH.md §3): token-overlap coefficients `ρ_{k,l}` ([`overlap`]), reward
//! velocities under gradient flow and their decomposition into per-training-example
//! contributions ([`velocity`]), the observed run of `rmflow dynamics` ([`run`](mod@run)), and the
//! §3 identities checked numerically ([`checks`]).

pub mod checks;
pub mod direction;
pub mod overlap;
pub mod run;
pub mod velocity;

pub use checks::{dynamics_checks, DynamicsChecks};
pub use overlap::{
    prefix_distributions, rho_tensor, token_overlap, token_overlap_explicit, ResponsePrefixes,
};
pub use run::{run, DynamicsRun, Snapshot};
pub use velocity::{
    exrm_velocity, flow_weights, imrm_velocity, split_dynamics, DynamicsSummary, SplitDynamics,
    Stats, TrainingSide, VelocityDecomposition,
};
