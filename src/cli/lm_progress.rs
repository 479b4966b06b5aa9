//! `rmflow lm-progress`: the evaluations a long run's newest checkpoint holds, as CSV on stdout,
//! for reading the run before it ends (`lm-recipe`: `metrics.csv`'s or `alignment.csv`'s rows so
//! far, `alignment.csv`'s or `pair_rewards.csv`'s; `ham-cycle`: `metrics.csv`'s, `prompts.csv`'s,
//! `pair_rewards.csv`'s or `token_rewards.csv`'s).

use super::stdout;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::lm::cycle::output::ProgressTable;
use rmflow::lm::recipe::output::ProgressTable as RecipeTable;
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
    /// Every pair's rewards at every evaluation (pair_rewards.csv's columns) instead of the
    /// metrics. lm-recipe runs: the pairs are built again from the run's model and config (the
    /// paths in its run.json, relative to where the run was started, as --resume reads them).
    #[arg(long, conflicts_with_all = ["alignment", "prompts"])]
    pairs: bool,
    /// ham-cycle runs: the IM-RM's mean reward per response token at every evaluation
    /// (token_rewards.csv's columns) instead of the metrics.
    #[arg(long, conflicts_with_all = ["alignment", "prompts", "pairs"])]
    tokens: bool,
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
    let cycle_table = [
        (a.prompts, "--prompts", ProgressTable::Prompts),
        (a.pairs, "--pairs", ProgressTable::Pairs),
        (a.tokens, "--tokens", ProgressTable::Tokens),
    ]
    .into_iter()
    .find(|t| t.0)
    .map(|(_, flag, table)| (flag, table));
    let csv = match (recipe, a.alignment, cycle_table) {
        (true, _, Some((_, ProgressTable::Pairs))) => {
            rmflow::lm::recipe::output::progress_csv(&so_far, RecipeTable::Pairs)?
        }
        (true, _, Some((flag, _))) => return Err(only(flag, "ham-cycle")),
        (true, alignment, None) => rmflow::lm::recipe::output::progress_csv(
            &so_far,
            match alignment {
                true => RecipeTable::Alignment,
                false => RecipeTable::Metrics,
            },
        )?,
        (false, true, _) => return Err(only("--alignment", "lm-recipe")),
        (false, false, table) => rmflow::lm::cycle::output::progress_csv(
            &so_far,
            table.map_or(ProgressTable::Metrics, |(_, t)| t),
        )?,
    };
    stdout::write(format_args!("{csv}"));
    eprintln!("rmflow lm-progress: read {}", so_far.state.display());
    if let Some(p) = &so_far.current {
        let spans = rmflow::lm::train::machine::Spans(&p.machines);
        eprintln!("rmflow lm-progress: the reward model in training ran {spans}");
    }
    Ok(())
}
