//! Methods: the ODE integrator, the training flows and optimizers (MATH.md §2), and the
//! max-margin separators the flows converge to (§4).

pub mod max_margin;
pub mod ode;
pub mod training;
