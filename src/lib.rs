//! rmflow: learning dynamics of implicit (DPO-style) vs explicit reward models
//! (Razin, Lin, Yao, Arora, arXiv 2507.07981).
//!
//! The mathematics is in `MATH.md` (shared, §1–§7); each module names the sections it
//! implements. The folders follow the pipeline, and dependencies run down this list:
//!
//! | stage | module | MATH.md |
//! |---|---|---|
//! | settings | [`config`]: the TOML config, its defaults, validation and CLI overrides | — |
//! | problem | [`problem::synthetic`]: the synthetic LM (tokens, prompts, hidden states, splits) | §5 |
//! | | [`problem::reward`]: EX-RM and IM-RM margins, the loss and its pull-back ([`problem::reward::MarginModel`]) | §1–§2 |
//! | | [`problem::rows`]: blocks of rows of `U` (the seen-row IM-RM's state, `ΔU*`, exports) | §4 |
//! | | [`problem::hamiltonian`]: the Hamiltonian-cycle task (graphs, prompts, the cycle check, every vertex order) | §7 |
//! | solvers | [`solve::ode`]: Dormand–Prince integration | §2 |
//! | | [`solve::training`]: gradient flow in log-time, GD, Adam, AdamW, residual flow | §2 |
//! | | [`solve::max_margin`]: max-margin separators with certificates | §4 |
//! | experiment | [`experiment::simulation`]: one run end to end; ablations | §1, §4, §6 |
//! | | [`experiment::observables`]: accuracy, ties, convergence to the max margin | §1, §4 |
//! | analysis | [`analysis::dynamics`]: `ρ_{k,l}` and reward velocities | §3 |
//! | | [`analysis::verify`]: Theorem 2, claim by claim (one file per claim family) | §3–§4 |
//! | | [`analysis::sweep`]: parameter sweeps over seeds, shards | §4–§5 |
//! | output | [`io`]: atomic writes, what they may replace and their temporaries, bounded input reads, the run layout, memory estimates | — |
//! | figures | [`figures`]: one function per figure, rendered by [`figures::plot`] | — |
//! | real models | `lm` (feature `lm`): transformers, Theorem 2 and the paper's recipe on them; the Hamiltonian-cycle experiment (`lm::cycle`) | §6, §7 |
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin caller: one file per command.
//!
//! [`numerics`] (stable log-sigmoid, log-softmax, row kernels) and [`error`] (exit codes) are
//! shared by every stage.

pub mod analysis;
pub mod config;
pub mod error;
pub mod experiment;
pub mod figures;
pub mod io;
#[cfg(feature = "lm")]
pub mod lm;
pub mod numerics;
pub mod problem;
pub mod solve;
