//! The learning problem: the synthetic language model that produces the representations
//! (MATH.md §5), the two reward models trained on them (§1–§2), and the Hamiltonian-cycle task
//! of the verification-versus-generation experiment (§7).

pub mod hamiltonian;
pub mod reward;
pub mod rows;
pub mod synthetic;
