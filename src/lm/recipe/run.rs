//! Training: Adam on every parameter (`full`) or on the head / unembedding (`head`), with the
//! official code's mini-batches and gradient accumulation, evaluated along the way.

use super::config::RecipeFile;
use super::preferences::SetReport;
use super::problem::{build_input, Built};
use super::template::load_recipe_model;
use crate::lm::train::epochs::Mode;
use crate::lm::train::epochs::TrainEvent;
use crate::lm::train::epochs::TrainRun;
use crate::lm::train::epochs::{train_reward, verdict_tokens};
use crate::lm::train::resume::{CheckpointDir, Checkpoints, NoCheckpoints};
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::PreferenceProblem;
use crate::lm::Forward;
use anyhow::Result;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Trains one reward model (`reward`) under the recipe in `mode` on a fresh copy of the model in
/// `model_dir` ([`train_reward`]); `on_event` sees every stage and optimizer step (progress).
pub fn train_recipe(
    reward: Reward,
    mode: Mode,
    (model_dir, device): (&Path, &Device),
    file: &RecipeFile,
    problem: &PreferenceProblem,
    checkpoints: &mut dyn Checkpoints,
    on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
) -> Result<TrainRun> {
    let start = std::time::Instant::now();
    let (lm, _) = load_recipe_model(model_dir, device, Forward::Nets, file)?;
    let loading = start.elapsed().as_secs_f64();
    let mut run = train_reward(
        reward,
        mode,
        &lm,
        file.settings(),
        problem,
        checkpoints,
        on_event,
    )?;
    // The trainer's time spans every process of a resumed run; this one's loading is added.
    run.seconds += loading;
    Ok(run)
}

/// The reward models a recipe run trains, in order: every reward model in each mode.
pub fn training_order(modes: &[Mode], rewards: &[Reward]) -> Vec<(Mode, Reward)> {
    modes
        .iter()
        .flat_map(|&m| rewards.iter().map(move |&r| (m, r)))
        .collect()
}

/// Optimizer steps of one run: `epochs × ⌈train pairs / pairs_per_step⌉`.
pub fn steps_per_run(file: &RecipeFile, problem: &PreferenceProblem) -> usize {
    let pairs = problem.splits.first().map_or(0, |s| s.chosen.len());
    file.train.epochs * pairs.div_ceil(file.train.pairs_per_step)
}

/// A whole recipe experiment: the problem and one run per (mode, reward model).
pub struct RecipeOutcome {
    pub model: PathBuf,
    pub arch: crate::lm::Architecture,
    pub device: String,
    pub file: RecipeFile,
    pub problem: PreferenceProblem,
    /// What was read of each preference set (empty for the persona).
    pub sets: Vec<SetReport>,
    pub runs: Vec<TrainRun>,
}

/// What a recipe run reports as it goes.
pub enum RecipeEvent<'a> {
    /// The pairs are built: the problem, and the optimizer steps of each run.
    Built {
        problem: &'a PreferenceProblem,
        steps_per_run: usize,
    },
    /// A stage or step of the run training `Reward` in `Mode`.
    Train(Mode, Reward, TrainEvent<'a>),
}

/// Runs the recipe of `file` on the model in `model_dir` in each of `modes`, both reward models;
/// `on_event` sees the problem once built, then every stage and step (progress bars).
pub fn run_recipe(
    model_dir: &Path,
    file: &RecipeFile,
    device: &Device,
    (modes, rewards): (&[Mode], &[Reward]),
    mut checkpoints: Option<&mut CheckpointDir>,
    on_event: &mut dyn FnMut(RecipeEvent),
) -> Result<RecipeOutcome> {
    file.validate()?;
    let (lm, _) = load_recipe_model(model_dir, device, Forward::Nets, file)?;
    let Built { problem, sets } = build_input(file, &lm)?;
    on_event(RecipeEvent::Built {
        problem: &problem,
        steps_per_run: steps_per_run(file, &problem),
    });
    let arch = lm.arch;
    if arch.is_causal() && rewards.contains(&Reward::Exgrm) {
        // Before any run: a missing verdict token is an input error, not a late failure.
        verdict_tokens(Reward::Exgrm, &lm)?;
    }
    drop(lm);
    if rewards.contains(&Reward::Exgrm) && !arch.is_causal() {
        return Err(crate::error::InputError(format!(
            "{}: the EX-GRM reads P(\"Yes\" | ·) from a causal language model; a masked encoder has none",
            model_dir.display()
        ))
        .into());
    }
    let mut runs = checkpoints.as_ref().map_or(Vec::new(), |c| c.finished());
    for &(mode, reward) in training_order(modes, rewards).iter().skip(runs.len()) {
        let mut none = NoCheckpoints;
        let c: &mut dyn Checkpoints = match checkpoints.as_deref_mut() {
            Some(c) => c,
            None => &mut none,
        };
        let run = train_recipe(
            reward,
            mode,
            (model_dir, device),
            file,
            &problem,
            c,
            &mut |e| {
                on_event(RecipeEvent::Train(mode, reward, e));
                Ok(())
            },
        )?;
        if let Some(c) = checkpoints.as_deref_mut() {
            c.finish(&run)?;
        }
        runs.push(run);
    }
    Ok(RecipeOutcome {
        model: model_dir.to_path_buf(),
        arch,
        device: format!("{device:?}"),
        file: file.clone(),
        problem,
        sets,
        runs,
    })
}

/// What a masked encoder's rewards are (said in every output of such a run).
pub const PSEUDO_LIKELIHOOD_NOTE: &str = "masked encoder: the IM-RM's ln π is a masked-LM pseudo-log-likelihood proxy (each response token masked in turn, read through the tied word embeddings; the checkpoint has no MLM head), not a causal language model's distribution";

/// The problem in one line: its splits and sequences.
pub fn problem_summary(p: &PreferenceProblem) -> String {
    let splits: Vec<String> = p
        .splits
        .iter()
        .map(|s| format!("{} {}", s.name, s.chosen.len()))
        .collect();
    let tokens: usize = p.sequences.iter().map(|s| s.ids.len()).sum();
    format!(
        "{} sequences ({tokens} tokens); pairs: {}",
        p.sequences.len(),
        splits.join(", ")
    )
}
