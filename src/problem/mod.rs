//! The learning problem: the synthetic language model that produces the representations
//! (MATH.md §5) and the two reward models trained on them (§1–§2).

pub mod reward;
pub mod rows;
pub mod synthetic;
