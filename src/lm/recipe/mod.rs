//! The paper's controlled experiment in its own recipe (MATH.md §6; `rmflow lm-recipe`,
//! `experiments/persona_paper.toml`): responses are token sequences `prefix + word` with
//! label-specific prefixes, rewards are sequence-level, evaluation shifts prefixes and words.
//!
//! - IM-RM: `r(x, y) = β Σ_k [ln π(y_k | x, y_<k) − ln π_ref(y_k | x, y_<k)]` over the response
//!   tokens, `ln π = log_softmax(U h)` at the position before each token (causal families), or
//!   for a masked encoder the pseudo-log-likelihood proxy: each response token masked in turn and
//!   read at its own position through the tied word embeddings (not a language model's `π`).
//! - EX-RM: `r(x, y) = u·h` at the last response token (the official code's description; its
//!   batching drops the last token of a micro-batch's longest rows when the padded width has an
//!   empty column, `utils/rm_utils.py:84-88`, not replicated: docs/real-models.md); the
//!   token-mean EX-RM `(1/K) Σ_k u·h_k` (`use_all_response_hidden_embeddings`).
//! - IM-RM without reference: `β Σ_k ln π(y_k | ·)`, trained on its own margins (`no_ref_model`).
//! - EX-GRM (the paper's appendix A): `r = P("Yes" | verification request)`, trained by
//!   cross-entropy towards "Yes" (chosen) and "No" (rejected).
//! - Loss `mean softplus(r⁻ − r⁺)` (MATH.md §2; the EX-GRM's: its cross-entropy), Adam on every parameter (`full`), or on the
//!   head / the unembedding alone over frozen representations (`head`).
//! - Metrics per split: accuracy with exact ties (τ = 0, `1{m > 0} + ½·1{m = 0}`) beside the
//!   τ-tolerant one, the official evaluator's normalised absolute margin, mean rewards per answer.
//!
//! The data source is the persona's statements and responses, or preference datasets
//! ([`preferences`]: the paper's Section 5.2, token-level and domain shift).
//!
//! [`config`] reads the recipe file, [`template`] loads the model with the recipe's prompt format,
//! [`problem`] builds the sequences, [`run`] trains every reward model with the trainer of
//! [`crate::lm::train`], [`output`] writes the run; [`identity`] reads back what a run's
//! checkpoints say it trains.

pub mod config;
pub mod identity;
pub mod output;
pub mod preferences;
pub mod problem;
pub mod run;
pub mod template;

pub use crate::lm::train::config::TrainConfig;
pub use crate::lm::train::epochs::{Mode, TrainEvent, TrainRun, TrainStep};
pub use crate::lm::train::evaluate::{
    Evaluation, ImplicitParts, SplitEvaluation, TokenContribution,
};
pub use crate::lm::train::features::{
    last_response_hidden, response_hidden_mean, response_token_logprobs,
};
pub use crate::lm::train::reward::Reward;
pub use crate::lm::train::sequences::{PairSplit, PreferenceProblem, ScoredSequence, Side};
pub use config::{
    vocabulary_texts, RecipeData, RecipeEval, RecipeFile, ResponseSpec, Source, SplitRule,
    StatementFormat,
};
pub use identity::RunIdentity;
pub use output::{final_table, write_outputs};
pub use preferences::{PreferenceData, PreferenceSet, SetReport};
pub use problem::{build, build_input, build_problem, Built};
pub use run::{
    problem_summary, run_recipe, steps_per_run, train_recipe, RecipeEvent, RecipeOutcome,
    PSEUDO_LIKELIHOOD_NOTE,
};
pub use template::{load_recipe_model, PromptFormat};
