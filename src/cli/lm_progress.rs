//! `rmflow lm-progress`: the evaluations a long run's newest checkpoint holds, as CSV on stdout,
//! for reading the run before it ends (`lm-recipe`: `metrics.csv`'s or `alignment.csv`'s rows so
//! far; `ham-cycle`: `metrics.csv`'s or `prompts.csv`'s).

use super::stdout;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::lm::train::resume::RunSoFar;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LmProgressArgs {
    /// The run's --out folder (an `lm-recipe` or `ham-cycle` run with checkpoints, finished or
    /// not: its newest checkpoint in RUN.checkpoint/ is read; the run may be going on).
    run: PathBuf,
    /// lm-recipe runs: the EX-RM's footnote-3 statistics (alignment.csv's columns) instead of
    /// the split metrics.
    #[arg(long, conflicts_with = "prompts")]
    alignment: bool,
    /// ham-cycle runs: the IM-RM's per-prompt generations and masses (prompts.csv's columns)
    /// instead of the metrics.
    #[arg(long)]
    prompts: bool,
}

pub fn run(a: LmProgressArgs) -> Result<()> {
    let so_far = RunSoFar::read(&a.run)?;
    let recipe = so_far.identity.get("modes").is_some();
    let only = |flag: &str, kind: &str| -> anyhow::Error {
        InputError(format!(
            "{}: {flag} reads {kind} runs; this is not one",
            a.run.display()
        ))
        .into()
    };
    let csv = match (recipe, a.alignment, a.prompts) {
        (true, _, true) => return Err(only("--prompts", "ham-cycle")),
        (true, alignment, false) => rmflow::lm::recipe::output::progress_csv(&so_far, alignment)?,
        (false, true, _) => return Err(only("--alignment", "lm-recipe")),
        (false, false, prompts) => {
            rmflow::lm::cycle::output::progress_csv(so_far.observed.as_deref(), prompts)?
        }
    };
    stdout::write(format_args!("{csv}"));
    eprintln!("rmflow lm-progress: read {}", so_far.state.display());
    Ok(())
}
