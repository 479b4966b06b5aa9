//! The data and layout of every figure in `figures/` (one function per figure; the examples,
//! tests and any other caller use the same code). Each returns the figure and the CSV of what it
//! draws; [`write`](fn@write) renders `NAME.png`, `NAME.svg` and writes `NAME.csv`. One file per part of
//! the paper; [`plot`] draws.

pub mod ablations;
pub mod bars;
pub mod dynamics;
pub mod figure;
pub mod generation;
pub mod hamiltonian;
pub mod mechanism;
pub mod plot;
#[cfg(feature = "lm")]
pub mod real_model;
pub mod recipe;
pub mod shift;
pub mod sweeps;
pub mod theorem2;

pub use ablations::ablations;
pub use dynamics::rho_heatmap;
pub use figure::{run_example, write, FigureData};
pub use generation::verification_without_generation;
pub use hamiltonian::verification_without_generation_hamiltonian;
pub use mechanism::mechanism;
#[cfg(feature = "lm")]
pub use real_model::real_model;
pub use recipe::{recipe_accuracy, recipe_seeds, SeedRun};
pub use shift::{preference_shift, shift_group};
pub use sweeps::{domain_vs_token_shift, overlap_sweep, semantic_sweep};
pub use theorem2::{max_margin_convergence, optimizers, theorem2_accuracy, unseen_margins};
