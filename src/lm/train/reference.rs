//! The IM-RM's `ln π_ref` tables (MATH.md §1, §6): the response tokens' log-probabilities of
//! every sequence under the reference model, and of the training sequences as the training
//! forward computes them. They cost a pass over every sequence before the first evaluation —
//! a long run's largest fixed cost — so a run with checkpoints keeps them in its checkpoint
//! folder once computed (`reference-<reward>-<mode>.cbor`, CBOR: exact f64) and a resumed
//! run reads them back instead of recomputing them; its outputs are the same bit for bit.

use super::epochs::{Mode, Settings, TrainEvent};
use super::evaluate::Scorer;
use super::journal::Pass;
use super::resume::{replace_file, Checkpoints};
use super::reward::Reward;
use super::sequences::{PreferenceProblem, ScoredSequence};
use super::shuffle::epoch_orders;
use crate::lm::nets::kernels::Kernels;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One reward model's `ln π_ref`, row `i` for sequence `i` (one entry per response token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTables {
    /// Every sequence as evaluation scores it, through the initial unembedding `u0`; zeros for
    /// the IM-RM without reference; empty rows for the rewards that read none.
    pub all: Vec<Vec<f64>>,
    /// Full fine-tuning of the IM-RM: as the training step computes them ([`training`]).
    pub training: Option<Vec<Vec<f64>>>,
}

impl ReferenceTables {
    /// The tables of `reward` trained in `mode`: read back from the folder `checkpoints`
    /// keeps, where an earlier process of the run computed them, or computed (and kept there).
    pub(crate) fn of_run(
        scorer: &Scorer,
        mode: Mode,
        settings: Settings,
        problem: &PreferenceProblem,
        u0: &Tensor,
        checkpoints: &dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<ReferenceTables> {
        let seqs = problem.scored_sequences(scorer.reward)?;
        let file = format!("reference-{}-{}.cbor", scorer.reward.name(), mode.name());
        let kept = match scorer.reward {
            Reward::Imrm => checkpoints.kept_path(&file),
            _ => None,
        };
        if let Some(path) = kept.as_deref().filter(|p| p.is_file()) {
            on_event(TrainEvent::Stage(format!(
                "reference log-probabilities read from {}",
                path.display()
            )))?;
            return ReferenceTables::read(path, seqs, mode);
        }
        // Both passes journaled until the tables are kept (a kill during the second resumes
        // with the first's values read back).
        let name = |what: &str| format!("{}-{}-{what}", scorer.reward.name(), mode.name());
        let all_stage = (name("reference"), ALL_STAGE);
        let mut all_pass = Pass::kept(all_stage, checkpoints, &mut *on_event);
        let all = all_sequences(scorer, seqs, u0, &mut all_pass)?;
        let all_journal = all_pass.journal();
        let training_stage = (name("reference-training"), TRAINING_STAGE);
        let mut training_pass = Pass::kept(training_stage, checkpoints, on_event);
        let training = match (scorer.reward, mode) {
            (Reward::Imrm, Mode::Full) => Some(training(
                scorer,
                settings,
                problem,
                (seqs, u0, &all),
                &mut training_pass,
            )?),
            _ => None,
        };
        let tables = ReferenceTables { all, training };
        if let Some(path) = kept {
            let mut bytes = Vec::new();
            ciborium::into_writer(&tables, &mut bytes)
                .map_err(|e| anyhow::anyhow!("cannot encode the reference tables: {e}"))?;
            replace_file(&path, &bytes)?;
        }
        all_journal.remove();
        training_pass.finish();
        Ok(tables)
    }

    /// The tables kept in `path`, checked against the run's sequences: an input error naming
    /// the file where they do not fit (another run's, or an edited file).
    fn read(path: &Path, seqs: &[ScoredSequence], mode: Mode) -> Result<ReferenceTables> {
        let refuse = |why: String| -> anyhow::Error {
            crate::error::InputError(format!(
                "{}: {why}; remove the file to recompute the reference log-probabilities",
                path.display()
            ))
            .into()
        };
        let bytes = std::fs::read(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        let tables: ReferenceTables = ciborium::from_reader(bytes.as_slice())
            .map_err(|e| refuse(format!("not reference tables: {e}")))?;
        tables.check(seqs).map_err(&refuse)?;
        if tables.training.is_some() != (mode == Mode::Full) {
            return Err(refuse(format!("not the tables of {} mode", mode.name())));
        }
        Ok(tables)
    }

    /// Whether the tables have one row per sequence and one entry per response token in each.
    pub fn check(&self, seqs: &[ScoredSequence]) -> std::result::Result<(), String> {
        let tables = std::iter::once(("all", &self.all))
            .chain(self.training.as_ref().map(|t| ("training", t)));
        for (name, table) in tables {
            if table.len() != seqs.len() {
                return Err(format!(
                    "table `{name}` has {} rows, the run {} sequences",
                    table.len(),
                    seqs.len()
                ));
            }
            for (i, (row, s)) in table.iter().zip(seqs).enumerate() {
                let tokens = s.response_end - s.response_start;
                if row.len() != tokens {
                    return Err(format!(
                        "table `{name}` row {i} has {} entries, sequence {i} {tokens} response tokens",
                        row.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The reference passes' progress stages.
const ALL_STAGE: &str = "reference log-probabilities of every sequence";
const TRAINING_STAGE: &str =
    "reference log-probabilities of the training pairs as training scores them";

/// `ln π_ref` of every response token of every sequence (the IM-RM), as evaluation scores them
/// through `u0`; zeros for the IM-RM without reference (the same sums with `ln π_ref = 0`);
/// empty rows for the rewards that read none.
fn all_sequences(
    scorer: &Scorer,
    seqs: &[ScoredSequence],
    u0: &Tensor,
    pass: &mut Pass,
) -> Result<Vec<Vec<f64>>> {
    Ok(match scorer.reward {
        Reward::Imrm => {
            pass.begin()?;
            scorer.token_logprob_table(seqs, u0, pass)?
        }
        Reward::ImrmNoRef => seqs
            .iter()
            .map(|s| vec![0.0; s.response_end - s.response_start])
            .collect(),
        _ => vec![vec![]; seqs.len()],
    })
}

/// The IM-RM's `ln π_ref` of the training sequences as the training step computes them: the
/// first epoch's micro-batches replayed through the training forward before any update, so that
/// every margin of the first step is exactly 0 (as the official code's in-batch reference
/// forward makes it); other sequences keep `reference`. Later micro-batches group the sequences
/// differently and agree with it up to f32 rounding.
fn training(
    scorer: &Scorer,
    settings: Settings,
    problem: &PreferenceProblem,
    (seqs, u0, reference): (&[ScoredSequence], &Tensor, &[Vec<f64>]),
    pass: &mut Pass,
) -> Result<Vec<Vec<f64>>> {
    let t = settings.train;
    let order = epoch_orders(settings.seed, problem.splits[0].chosen.len())
        .next()
        .expect("an endless iterator");
    let chunks: Vec<Vec<usize>> = order
        .chunks(t.pairs_per_step)
        .flat_map(|step| step.chunks(t.micro_batch))
        .map(|micro| micro_batch_sequences(problem, micro))
        .collect();
    let mut table = reference.to_vec();
    let mut done = vec![false; seqs.len()];
    // A sequence in several pairs keeps the values of its first micro-batch (step 1's first).
    for (i, lp) in scorer.logprob_table(seqs, &chunks, u0, Kernels::Autograd, pass)? {
        if !std::mem::replace(&mut done[i], true) {
            table[i] = lp;
        }
    }
    Ok(table)
}

/// The sequences a micro-batch of training pairs scores: the chosen responses, then the
/// rejected ones.
pub(crate) fn micro_batch_sequences(problem: &PreferenceProblem, micro: &[usize]) -> Vec<usize> {
    let train = &problem.splits[0];
    let mut idx: Vec<usize> = micro.iter().map(|&p| train.chosen[p]).collect();
    idx.extend(micro.iter().map(|&p| train.rejected[p]));
    idx
}
