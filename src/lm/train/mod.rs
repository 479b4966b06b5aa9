//! The trainer of the real-model reward models (MATH.md §2, §6): AdamW on the preference loss
//! `mean softplus(r⁻ − r⁺)` over tokenized preference pairs, evaluated along the way. The
//! experiments ([`crate::lm::recipe`], [`crate::lm::cycle`], [`crate::lm::single_token`]'s full
//! fine-tuning) are data sources and configs that call it.
//!
//! - [`config`]: the `[train]` table every experiment shares (AdamW, batching, evaluation).
//! - [`sequences`]: tokenized sequences and the pairs of every split over them.
//! - [`reward`]: the reward models (IM-RM, EX-RM, their variants) and what each reads.
//! - [`features`]: what a reward reads from the transformer, live or frozen; [`flush`]: the
//!   official code's last-token drop, off unless asked for.
//! - [`reference`]: the IM-RM's `ln π_ref` tables, kept beside a run's checkpoints;
//!   [`journal`]: a scoring pass's chunks kept as they are scored, so that a kill does not
//!   restart it.
//! - [`loss`], [`adamw`], [`optimizers`], [`shuffle`]: the loss, the optimizer, the pairs' order.
//! - [`epochs`]: the epoch loop; [`evaluate`]: every split scored at an evaluation; [`alignment`]:
//!   how far the EX-RM's representations carry the preference (footnote 3); [`resume`]: the
//!   checkpoints a run continues from; [`machine`]: the machines a run's steps ran on.

pub mod adamw;
pub mod alignment;
pub mod config;
pub mod epochs;
pub mod evaluate;
pub mod features;
pub mod flush;
pub(crate) mod journal;
pub mod loss;
pub mod machine;
pub mod optimizers;
pub mod reference;
pub mod resume;
pub mod reward;
pub mod sequences;
pub mod shuffle;
