//! The trainer (MATH.md §2, §6): one reward model trained by AdamW on `mean softplus(r⁻ − r⁺)`
//! over the training pairs, the official code's mini-batches and gradient accumulation, every
//! split evaluated before the first epoch, every `eval_every_epochs` epochs and after the last.
//! The recipe (`lm-recipe`) and the Hamiltonian-cycle experiment are its data sources.

use super::journal::{Journal, Pass};
use super::machine::{took_over, Machine};
use super::resume::{
    adam_states, state_tensors, tensors_digest, test_hook, Checkpoints, Drift, Progress, Replay,
    ReplayMismatch, Saved, Weights,
};
use crate::lm::model::language_model::LanguageModel;
use crate::lm::train::alignment;
use crate::lm::train::config::TrainConfig;
use crate::lm::train::evaluate::Evaluation;
use crate::lm::train::evaluate::{evaluate_splits, Scorer};
use crate::lm::train::features::{FrozenFeatures, Need};
use crate::lm::train::flush;
use crate::lm::train::loss::softplus_neg;
use crate::lm::train::optimizers::accumulate;
use crate::lm::train::optimizers::Optimizers;
use crate::lm::train::reference::{micro_batch_sequences, ReferenceTables};
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::PreferenceProblem;
use crate::lm::train::sequences::ScoredSequence;
use crate::lm::train::shuffle::epoch_orders;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What is trained: the whole model (`Full`) or the head / unembedding over frozen features
/// (`Head`). `rmflow lm --mode full` runs both (Theorem 2's head-only run always runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Head,
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Head => "head",
            Mode::Full => "full",
        }
    }
}

/// What a run reports as it goes.
pub enum TrainEvent<'a> {
    /// A stage without steps (feature extraction, reference scoring, evaluation).
    Stage(String),
    /// A resumed run continues after `steps` optimizer steps (`in_epoch` of them in epoch
    /// `epoch`), read from its checkpoint.
    Resumed {
        steps: usize,
        epoch: usize,
        in_epoch: usize,
    },
    /// An optimizer step done.
    Step(&'a TrainStep),
    /// A scoring pass (an evaluation, the reference log-probabilities) has `sequences` of its
    /// `of` sequences scored.
    Scored { sequences: usize, of: usize },
    /// An evaluation done (before training and after each evaluated epoch): every sequence's
    /// reward (index as in the problem's sequences) and the model as it stands, for what an
    /// observer measures beyond the splits' accuracies (generation, exact probabilities).
    Evaluated {
        epoch: usize,
        step: usize,
        rewards: &'a [f64],
        model: &'a LanguageModel,
        /// The unembedding the rewards read (the head-only IM-RM's trained copy of `U`).
        unembedding: &'a Tensor,
    },
}

impl TrainEvent<'_> {
    /// The line a progress display shows for [`TrainEvent::Resumed`] (empty for other events).
    pub fn resumed_message(&self) -> String {
        match self {
            TrainEvent::Resumed {
                steps,
                epoch,
                in_epoch,
            } => {
                format!("resumed after step {steps} (epoch {epoch}, {in_epoch} of its steps done)")
            }
            _ => String::new(),
        }
    }
}

/// One optimizer step.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainStep {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub batch_accuracy: f64,
    /// The training pairs of the step (indices into the `train` split), in micro-batch order.
    pub pairs: Vec<usize>,
    /// Rows the official flush cut short (`train.drop_last_token_of_longest`; 0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_tokens_dropped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A trained reward model: its steps, evaluations and final rewards.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainRun {
    pub mode: Mode,
    pub reward: Reward,
    pub parameters: usize,
    pub history: Vec<TrainStep>,
    #[serde(rename = "checkpoints")]
    pub evaluations: Vec<Evaluation>,
    /// Final reward of every sequence (index as in `sequences.jsonl`).
    #[serde(skip)]
    pub rewards: Vec<f64>,
    /// Wall time of the training, summed over the processes that ran it (a resumed run's
    /// earlier ones up to the checkpoint it resumed from).
    pub seconds: f64,
    /// Wall time of the optimizer steps alone (no evaluation), for the per-step cost.
    pub step_seconds: f64,
    /// Head mode: the frozen features' extraction, its wall time and the tokens of the
    /// sequences it read (their `ids`), for tokens per second.
    pub extraction: Option<Extraction>,
    /// The replayed steps that departed from their record (`--replay --allow-drift`): none
    /// in a run that was not replayed, or was replayed bit for bit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay_drift: Vec<Drift>,
}

impl TrainRun {
    /// A finished training from its progress `p`, its wall time over every process, and what
    /// it trained.
    fn of(
        p: Progress,
        (mode, reward): (Mode, Reward),
        parameters: usize,
        seconds: f64,
        extraction: Option<Extraction>,
    ) -> TrainRun {
        TrainRun {
            mode,
            reward,
            parameters,
            history: p.history,
            evaluations: p.evaluations,
            rewards: p.rewards,
            seconds,
            step_seconds: p.step_seconds,
            extraction,
            replay_drift: p.replay_drift,
        }
    }
}

/// The cost of head mode's feature extraction.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Extraction {
    pub seconds: f64,
    pub tokens: usize,
}

/// What the trainer reads from an experiment's config.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// Seeds the training pairs' order ([`epoch_orders`]) and the EX-RM head.
    pub seed: u64,
    pub train: &'a TrainConfig,
    /// τ of the tie-tolerant accuracy (reward units).
    pub tie_tolerance: f64,
}

/// Trains one reward model (`reward`) in `mode` on `lm` (changed in place) over `problem`'s
/// training pairs, evaluating every split before training, every `eval_every_epochs` epochs and
/// after the last; `on_event` sees every stage, optimizer step and evaluation (progress, and an
/// observer's measurements), and an error it returns stops the training.
pub fn train_reward(
    reward: Reward,
    mode: Mode,
    lm: &LanguageModel,
    settings: Settings,
    problem: &PreferenceProblem,
    checkpoints: &mut dyn Checkpoints,
    on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
) -> Result<TrainRun> {
    let start = std::time::Instant::now();
    let t = settings.train;
    let device = &lm.device;
    let seqs = problem.scored_sequences(reward)?;
    let (frozen, extraction) = match mode {
        Mode::Head => extract_frozen(reward, lm, seqs, t.eval_batch, on_event)?,
        Mode::Full => (None, None),
    };
    let scorer = Scorer {
        reward,
        lm,
        frozen: frozen.as_ref(),
        beta: t.beta,
        batch: t.eval_batch,
        yes_no: verdict_tokens(reward, lm)?,
    };
    let u0 = lm.unembedding().detach().copy()?;
    let frozen_u = match mode {
        Mode::Head if reward.reads_unembedding() => Some(Var::from_tensor(&u0)?),
        _ => None,
    };
    let std = t.head_init_std.or(lm.initializer_range).unwrap_or(0.02);
    let head = initial_head(settings.seed, std, lm.dim, device)?;
    let (vars, head_trained) = trained_vars(mode, reward, lm, frozen_u.as_ref());
    let tables =
        ReferenceTables::of_run(&scorer, mode, settings, problem, &u0, checkpoints, on_event)?;
    let reference = tables.all;
    let flush = flushed(reward, mode, problem, t)?;
    let cut = flush.then(|| flush::evaluation_rows(seqs, &reference, &problem.eval_batches));
    let (eval_seqs, eval_reference) = match &cut {
        Some((s, r)) => (s.as_slice(), r.as_slice()),
        None => (seqs, reference.as_slice()),
    };
    let params = t.adamw.params();
    let mut optimizers =
        Optimizers::new(vars, head_trained.then_some(&head), params, t.adamw.head_lr)?;
    let session = Session {
        reward,
        mode,
        settings,
        problem,
        seqs,
        scorer: &scorer,
        frozen_u: frozen_u.as_ref(),
        head: &head,
        train_reference: tables.training.as_ref().unwrap_or(&reference),
        eval_seqs,
        eval_reference,
        flush,
        clock: start,
    };
    let p = session.resume_and_run(&mut optimizers, checkpoints, on_event)?;
    let seconds = p.seconds + start.elapsed().as_secs_f64();
    Ok(TrainRun::of(
        p,
        (mode, reward),
        optimizers.parameters(),
        seconds,
        extraction,
    ))
}

/// Whether the run replicates the official flush's last-token drop: asked for, and a reward
/// whose batches the official code flushes (not the EX-GRM); refused in head mode (the frozen
/// features are of whole sequences) and where the experiment does not describe the official
/// evaluation batches.
fn flushed(
    reward: Reward,
    mode: Mode,
    problem: &PreferenceProblem,
    t: &TrainConfig,
) -> Result<bool> {
    if !t.drop_last_token_of_longest || reward == Reward::Exgrm {
        return Ok(false);
    }
    let refuse = |why: &str| {
        Err(crate::error::InputError(format!("train.drop_last_token_of_longest: {why}")).into())
    };
    match (mode, problem.eval_batches.is_empty()) {
        (Mode::Head, _) => refuse("full fine-tuning only (--mode full)"),
        (_, true) => refuse("this experiment does not describe the official evaluation batches"),
        _ => Ok(true),
    }
}

/// An [`Interrupted`](crate::error::Interrupted) error (exit code 5) where SIGTERM asked the run
/// to stop, once a checkpoint is written `at` this point.
fn stop_if_requested(checkpoints: &dyn Checkpoints, at: &str) -> Result<()> {
    if checkpoints.stop_requested() {
        return Err(crate::error::Interrupted(format!(
            "stopped by SIGTERM {at}; a checkpoint was written (--resume continues)"
        ))
        .into());
    }
    Ok(())
}

/// A checkpoint's named tensors ([`state_tensors`]).
type NamedTensors = Vec<(String, Tensor)>;

/// The tensors a checkpoint saves of `optimizers` (trained variables, moments) and their step
/// counts.
fn state_of(optimizers: &Optimizers) -> Result<(NamedTensors, Vec<i32>)> {
    let adam = optimizers.states()?;
    let vars: Vec<Tensor> = optimizers
        .vars
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    Ok((
        state_tensors(&vars, &adam)?,
        adam.iter().map(|a| a.step).collect(),
    ))
}

/// What of a replayed step, or of the weights after the last, departs from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    Position,
    Loss,
    BatchAccuracy,
    StepCounts,
    Weights,
}

impl Departure {
    fn what(self) -> &'static str {
        match self {
            Departure::Position => "the position",
            Departure::Loss => "the loss",
            Departure::BatchAccuracy => "the batch accuracy",
            Departure::StepCounts => "the optimizers' step counts after it",
            Departure::Weights => "the weights' SHA-256 after it",
        }
    }

    /// Whether rounding alone (other kernels) can cause it: not other pairs or step counts.
    fn rounding(self) -> bool {
        matches!(
            self,
            Departure::Loss | Departure::BatchAccuracy | Departure::Weights
        )
    }
}

/// A departure from the record: what, recorded, replayed.
type Difference = (Departure, String, String);

/// A replayed step against its record (what differs where they differ in a bit).
fn same_step(recorded: &TrainStep, replayed: &TrainStep) -> Option<Difference> {
    if (recorded.step, recorded.epoch, &recorded.pairs)
        != (replayed.step, replayed.epoch, &replayed.pairs)
    {
        let show =
            |s: &TrainStep| format!("step {} of epoch {}, pairs {:?}", s.step, s.epoch, s.pairs);
        return Some((Departure::Position, show(recorded), show(replayed)));
    }
    if recorded.loss.to_bits() != replayed.loss.to_bits() {
        let (a, b) = (recorded.loss, replayed.loss);
        return Some((Departure::Loss, format!("{a:e}"), format!("{b:e}")));
    }
    if recorded.batch_accuracy.to_bits() != replayed.batch_accuracy.to_bits() {
        let (a, b) = (recorded.batch_accuracy, replayed.batch_accuracy);
        return Some((Departure::BatchAccuracy, a.to_string(), b.to_string()));
    }
    None
}

/// The weights after replaying `p`'s steps (`adam_steps`, `digest`) against its record.
fn same_weights(p: &Progress, adam_steps: &[i32], digest: String) -> Option<Difference> {
    if adam_steps != p.adam_steps {
        let (a, b) = (format!("{:?}", p.adam_steps), format!("{adam_steps:?}"));
        return Some((Departure::StepCounts, a, b));
    }
    match &p.digest {
        Some(d) if *d != digest => Some((Departure::Weights, d.clone(), digest)),
        _ => None,
    }
}

/// `p`'s replay departed from it at `step` ([`ReplayMismatch`], naming the machines).
fn departed(p: &Progress, step: usize, (what, recorded, replayed): Difference) -> anyhow::Error {
    ReplayMismatch {
        step,
        what: what.what(),
        recorded,
        replayed,
        recorded_on: p.machines.clone(),
        this: Machine::this(),
    }
    .into()
}

/// A departure of `p`'s replay at `step`, kept where `policy` lets the replay go on: the
/// loss, batch accuracy or weights (rounding); never the pairs or the step counts (another run).
fn tolerated(p: &Progress, step: usize, d: Difference, policy: Replay) -> Result<Drift> {
    if policy != Replay::Drifting || !d.0.rounding() {
        return Err(departed(p, step, d));
    }
    let (what, recorded, replayed) = d;
    Ok(Drift {
        step,
        what: what.what().to_string(),
        recorded,
        replayed,
    })
}

/// Optimizer steps taken in this process (the tests' kill points, [`test_hook`]).
static STEPS: AtomicUsize = AtomicUsize::new(0);

/// The trained variables and the optimizers set from a checkpoint's `tensors` (its `progress`'s
/// step counts).
pub(crate) fn restore(
    progress: &Progress,
    tensors: &HashMap<String, Tensor>,
    optimizers: &mut Optimizers,
) -> Result<()> {
    for (k, var) in optimizers.vars.iter().enumerate() {
        let name = format!("var.{k}");
        let t = tensors
            .get(&name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))?;
        if t.dims() != var.dims() {
            bail!(
                "the checkpoint's {name} has shape {:?}, this run's {:?}",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let counts = optimizers.var_counts();
    optimizers.restore(adam_states(tensors, &progress.adam_steps, &counts)?)
}

/// Head-only training's frozen features of `seqs` (what `reward` reads), extracted once, and
/// the extraction's record.
fn extract_frozen(
    reward: Reward,
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
    batch: usize,
    on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
) -> Result<(Option<FrozenFeatures>, Option<Extraction>)> {
    on_event(TrainEvent::Stage(format!(
        "extracting the frozen features of {} sequences",
        seqs.len()
    )))?;
    let t0 = std::time::Instant::now();
    let f = FrozenFeatures::extract(lm, seqs, batch, Need::of(reward))?;
    let extraction = Extraction {
        seconds: t0.elapsed().as_secs_f64(),
        tokens: seqs.iter().map(|s| s.ids.len()).sum(),
    };
    Ok((Some(f), Some(extraction)))
}

/// The EX-RM head `u(0)`: `N(0, std²)` per entry from the head RNG (the run's `seed`, salted),
/// or 0.
pub(crate) fn initial_head(seed: u64, std: f64, dim: usize, device: &Device) -> Result<Var> {
    let mut head_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4ead_1a17);
    let head_values: Vec<f32> = if std > 0.0 {
        let normal = Normal::new(0.0, std as f32)
            .map_err(|e| anyhow::anyhow!("train.head_init_std: {e}"))?;
        (0..dim).map(|_| normal.sample(&mut head_rng)).collect()
    } else {
        vec![0.0; dim]
    };
    Ok(Var::from_tensor(&Tensor::from_vec(
        head_values,
        dim,
        device,
    )?)?)
}

/// EX-GRM: the ids of "Yes" and "No" in the checkpoint's vocabulary (the official
/// `convert_tokens_to_ids`); an input error where either is missing.
pub(crate) fn verdict_tokens(reward: Reward, lm: &LanguageModel) -> Result<Option<(u32, u32)>> {
    if reward != Reward::Exgrm {
        return Ok(None);
    }
    let id = |t: &str| {
        lm.tokenizer.token_to_id(t).ok_or_else(|| {
            crate::error::InputError(format!(
                "{}: the EX-GRM needs the token {t:?} in the vocabulary (its reward is P({:?} | ·))",
                lm.dir.join("tokenizer.json").display(),
                super::reward::YES_TOKEN
            ))
        })
    };
    Ok(Some((
        id(super::reward::YES_TOKEN)?,
        id(super::reward::NO_TOKEN)?,
    )))
}

/// The tensors Adam trains besides the head, and whether the head is trained: every parameter
/// (full IM-RMs, EX-GRM), the body (full EX-RMs), the unembedding alone (head-only IM-RMs and
/// EX-GRM), or nothing but the head (head-only EX-RMs).
pub(crate) fn trained_vars(
    mode: Mode,
    reward: Reward,
    lm: &LanguageModel,
    frozen_u: Option<&Var>,
) -> (Vec<Var>, bool) {
    match (mode, reward.has_head()) {
        (Mode::Full, false) => (lm.parameters().into_iter().map(|(_, v)| v).collect(), false),
        (Mode::Full, true) => (
            lm.body_parameters().into_iter().map(|(_, v)| v).collect(),
            true,
        ),
        (Mode::Head, false) => (vec![frozen_u.cloned().expect("head-only U")], false),
        (Mode::Head, true) => (vec![], true),
    }
}

/// One reward model's training: what a step and an evaluation read.
struct Session<'a> {
    reward: Reward,
    mode: Mode,
    settings: Settings<'a>,
    problem: &'a PreferenceProblem,
    /// The sequences the reward reads (the EX-GRM's verification prompts, else the problem's).
    seqs: &'a [ScoredSequence],
    scorer: &'a Scorer<'a>,
    /// The head-only IM-RM's trained copy of `U` (the model's own `U` otherwise).
    frozen_u: Option<&'a Var>,
    head: &'a Var,
    /// `ln π_ref` of every response token of every sequence (IM-RM), as the training forward
    /// scores the training sequences (evaluation's values for the others).
    train_reference: &'a [Vec<f64>],
    /// The sequences and `ln π_ref` as evaluation scores them: all of `seqs` whole, or with the
    /// official flush's drop, those it cuts short ([`flush`]).
    eval_seqs: &'a [ScoredSequence],
    eval_reference: &'a [Vec<f64>],
    /// `train.drop_last_token_of_longest` (never for the EX-GRM, whose batches are not flushed).
    flush: bool,
    /// When this process began the training: a checkpoint adds the time since to its
    /// progress's `seconds`.
    clock: std::time::Instant,
}

impl Session<'_> {
    /// The epochs from the start, or from the checkpoint `checkpoints` resumes (its tensors and
    /// moments restored into `optimizers`).
    fn resume_and_run(
        &self,
        optimizers: &mut Optimizers,
        checkpoints: &mut dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<Progress> {
        let resumed = match checkpoints.resumed()? {
            None => None,
            Some(Saved {
                progress,
                weights: Weights::Kept(tensors),
            }) => {
                restore(&progress, &tensors, optimizers)?;
                Some(progress)
            }
            Some(Saved {
                mut progress,
                weights: Weights::Lost,
            }) => {
                let policy = checkpoints.replay();
                let drift = self.replay(&progress, policy, optimizers, on_event)?;
                if !drift.is_empty() {
                    // A journal of the evaluation under way scored the recorded weights.
                    self.journal(progress.history.len(), checkpoints).remove();
                    progress.replay_drift.extend(drift);
                }
                Some(progress)
            }
        };
        self.run_epochs(optimizers, resumed, checkpoints, on_event)
    }

    /// Every epoch's optimizer steps (pairs shuffled by the seeded RNG), evaluating before the
    /// first, every `eval_every_epochs` epochs and after the last, from the start or from
    /// `resumed`; saved to `checkpoints` after the first evaluation, before and after every due
    /// evaluation and when due (and stopped after a step when asked).
    fn run_epochs(
        &self,
        optimizers: &mut Optimizers,
        resumed: Option<Progress>,
        checkpoints: &mut dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<Progress> {
        let (settings, problem) = (self.settings, self.problem);
        let t = settings.train;
        let mut p = match resumed {
            Some(p) => {
                on_event(TrainEvent::Resumed {
                    steps: p.history.len(),
                    epoch: p.epoch,
                    in_epoch: p.steps_in_epoch,
                })?;
                p
            }
            None => self.start(optimizers, checkpoints, on_event)?,
        };
        took_over(&mut p.machines, Machine::this(), p.history.len() + 1);
        let orders = epoch_orders(settings.seed, problem.splits[0].chosen.len());
        for (epoch, order) in (1..=t.epochs).zip(orders).skip(p.epoch - 1) {
            on_event(TrainEvent::Stage(format!(
                "training epoch {epoch} of {}",
                t.epochs
            )))?;
            let left = order.chunks(t.pairs_per_step).skip(p.steps_in_epoch);
            self.steps(left, epoch, &mut p, optimizers, checkpoints, on_event)?;
            let evaluated = epoch % t.eval_every_epochs == 0 || epoch == t.epochs;
            if evaluated {
                // An evaluation can take as long as the epoch's steps (large evaluation sets):
                // a run killed during it resumes at the evaluation, its steps kept (the
                // epoch's steps all done, so the resumed loop goes straight to evaluating).
                if checkpoints.due(epoch) {
                    self.save(&p, optimizers, checkpoints)?;
                }
                let (c, r) = self.evaluate(epoch, p.history.len(), checkpoints, on_event)?;
                p.evaluations.push(c);
                p.rewards = r;
            }
            (p.epoch, p.steps_in_epoch) = (epoch + 1, 0);
            // After the last epoch the run records the finished reward model (and stops at the
            // next one's first interrupt point).
            if epoch < t.epochs && (checkpoints.due(epoch) || checkpoints.stop_requested()) {
                self.save(&p, optimizers, checkpoints)?;
            }
            // The evaluation's scoring journal, once the checkpoint holds what it scored (or
            // where none is written now: a kill then replays the steps and scores again).
            if evaluated {
                self.journal(p.history.len(), checkpoints).remove();
            }
            if epoch < t.epochs {
                stop_if_requested(checkpoints, &format!("after epoch {epoch}"))?;
            }
        }
        Ok(p)
    }

    /// A run's start: the evaluation before any step, saved where a checkpoint is due (the
    /// first evaluation can cost as much as an epoch: a run killed during epoch 1 resumes after
    /// it).
    fn start(
        &self,
        optimizers: &Optimizers,
        checkpoints: &mut dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<Progress> {
        let (first, rewards) = self.evaluate(0, 0, checkpoints, on_event)?;
        let mut p = Progress {
            epoch: 1,
            steps_in_epoch: 0,
            history: Vec::new(),
            evaluations: vec![first],
            rewards,
            step_seconds: 0.0,
            seconds: 0.0,
            adam_steps: Vec::new(),
            digest: None,
            machines: Vec::new(),
            replay_drift: Vec::new(),
        };
        took_over(&mut p.machines, Machine::this(), 1);
        if checkpoints.due(0) || checkpoints.stop_requested() {
            self.save(&p, optimizers, checkpoints)?;
        }
        if !self.untrained(0) {
            self.journal(0, checkpoints).remove();
        }
        stop_if_requested(checkpoints, "after the first evaluation")?;
        Ok(p)
    }

    /// The optimizer steps `batches` of `epoch`, recorded in `p`; saved and stopped after a step
    /// where a stop is asked for.
    fn steps<'b>(
        &self,
        batches: impl Iterator<Item = &'b [usize]>,
        epoch: usize,
        p: &mut Progress,
        optimizers: &mut Optimizers,
        checkpoints: &mut dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<()> {
        for pairs in batches {
            let t0 = std::time::Instant::now();
            let record = self.optimizer_step(pairs, optimizers, p.history.len(), epoch)?;
            p.step_seconds += t0.elapsed().as_secs_f64();
            on_event(TrainEvent::Step(&record))?;
            p.history.push(record);
            p.steps_in_epoch += 1;
            test_hook("step", STEPS.fetch_add(1, Ordering::Relaxed) + 1);
            if checkpoints.stop_requested() {
                self.save(p, optimizers, checkpoints)?;
                let at = format!("after step {} (epoch {epoch})", p.history.len());
                stop_if_requested(checkpoints, &at)?;
            }
        }
        Ok(())
    }

    /// Saves `p` with the trained variables and the optimizers' moments (and their digest).
    fn save(
        &self,
        p: &Progress,
        optimizers: &Optimizers,
        checkpoints: &mut dyn Checkpoints,
    ) -> Result<()> {
        let (tensors, adam_steps) = state_of(optimizers)?;
        let progress = Progress {
            adam_steps,
            seconds: p.seconds + self.clock.elapsed().as_secs_f64(),
            digest: Some(tensors_digest(tensors.iter().map(|(n, t)| (n, t)))?),
            ..p.clone()
        };
        checkpoints.save(&progress, tensors)
    }

    /// Rebuilds the weights of a checkpoint that lost them (`--replay`): `p`'s recorded
    /// optimizer steps again from the model as loaded, each one's pairs, loss and batch
    /// accuracy checked bit for bit against its record, then the optimizers' step counts and the
    /// weights' digest against the checkpoint's. Its evaluations are the record's, not scored
    /// again. A departure stops the replay ([`ReplayMismatch`]), or with [`Replay::Drifting`]
    /// is returned and the replay goes on (but for the pairs or step counts: another run).
    fn replay(
        &self,
        p: &Progress,
        policy: Replay,
        optimizers: &mut Optimizers,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<Vec<Drift>> {
        let t = self.settings.train;
        let n = p.history.len();
        let orders = epoch_orders(self.settings.seed, self.problem.splits[0].chosen.len());
        let batches = (1..=t.epochs).zip(orders).flat_map(|(epoch, order)| {
            let steps: Vec<Vec<usize>> = order
                .chunks(t.pairs_per_step)
                .map(<[usize]>::to_vec)
                .collect();
            steps.into_iter().map(move |pairs| (epoch, pairs))
        });
        let mut drift = Vec::new();
        for (done, ((epoch, pairs), recorded)) in batches.zip(&p.history).enumerate() {
            on_event(TrainEvent::Stage(format!(
                "replaying step {} of the {n} recorded (the checkpoint lost its weights)",
                done + 1
            )))?;
            let replayed = self.optimizer_step(&pairs, optimizers, done, epoch)?;
            if let Some(d) = same_step(recorded, &replayed) {
                drift.push(tolerated(p, recorded.step, d, policy)?);
            }
        }
        let (tensors, adam_steps) = state_of(optimizers)?;
        let digest = tensors_digest(tensors.iter().map(|(n, t)| (n, t)))?;
        if let Some(d) = same_weights(p, &adam_steps, digest) {
            drift.push(tolerated(p, n, d, policy)?);
        }
        if let Some(first) = drift.first() {
            on_event(TrainEvent::Stage(format!(
                "replayed with drift (--allow-drift): {} departures from the record, the first at step {} ({}); going on with the rebuilt weights",
                drift.len(),
                first.step,
                first.what
            )))?;
        }
        Ok(drift)
    }

    /// The unembedding the rewards read now.
    fn u_now(&self) -> Tensor {
        match self.frozen_u {
            Some(v) => v.as_tensor().clone(),
            None => self.scorer.lm.unembedding().clone(),
        }
    }

    /// The scoring pass of the evaluation after `step` optimizer steps, journaled where
    /// `checkpoints` keeps files.
    fn pass<'e>(
        &self,
        (epoch, step): (usize, usize),
        checkpoints: &dyn Checkpoints,
        on_event: &'e mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Pass<'e> {
        let stage = format!("evaluating every split after epoch {epoch}");
        Pass::kept((self.evaluation(step), &stage), checkpoints, on_event)
    }

    /// The name of the evaluation after `step` optimizer steps, as its journal knows it.
    fn evaluation(&self, step: usize) -> String {
        let (reward, mode) = (self.reward.name(), self.mode.name());
        format!("{reward}-{mode}-evaluation-after-step-{step:06}")
    }

    /// The journal of the evaluation after `step` optimizer steps.
    fn journal(&self, step: usize, checkpoints: &dyn Checkpoints) -> Journal {
        Journal::of(&self.evaluation(step), checkpoints)
    }

    /// Whether the evaluation after `step` optimizer steps is the IM-RM's before training, whose
    /// rewards are all 0 without a forward (`π = π_ref`), so that it runs no scoring pass.
    fn untrained(&self, step: usize) -> bool {
        step == 0 && self.reward == Reward::Imrm
    }

    /// Every split scored after `epoch` (`step` optimizer steps), its scoring journaled where
    /// `checkpoints` keeps files; the rewards of every sequence.
    fn evaluate(
        &self,
        epoch: usize,
        step: usize,
        checkpoints: &dyn Checkpoints,
        on_event: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<(Evaluation, Vec<f64>)> {
        let mut pass = self.pass((epoch, step), checkpoints, &mut *on_event);
        pass.begin()?;
        let start = std::time::Instant::now();
        let scores = if self.untrained(step) {
            self.scorer.untrained_implicit(self.eval_seqs)
        } else {
            self.scorer.score_all(
                self.eval_seqs,
                (&self.u_now(), self.head.as_tensor()),
                self.eval_reference,
                &mut pass,
            )?
        };
        drop(pass);
        let seconds = start.elapsed().as_secs_f64();
        let rewards = scores.rewards;
        if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
            bail!(
                "{} ({} mode): reward of sequence {i} is {} after {step} steps (lower train.lr?)",
                self.reward.name(),
                self.mode.name(),
                rewards[i]
            );
        }
        let tau = self.settings.tie_tolerance;
        let splits = evaluate_splits(self.problem, &rewards, scores.parts.as_deref(), tau);
        let representation_alignment = scores.last.map_or(Vec::new(), |h| {
            alignment::of_splits(&self.problem.splits, &h)
        });
        on_event(TrainEvent::Evaluated {
            epoch,
            step,
            rewards: &rewards,
            model: self.scorer.lm,
            unembedding: &self.u_now(),
        })?;
        Ok((
            Evaluation {
                epoch,
                step,
                splits,
                representation_alignment,
                rewards: rewards.clone(),
                seconds,
                tokens: if self.untrained(step) {
                    0
                } else {
                    self.eval_seqs.iter().map(|q| q.ids.len()).sum()
                },
            },
            rewards,
        ))
    }

    /// One optimizer step on the training pairs `pairs`, in micro-batches whose gradients are
    /// accumulated; `done` steps came before it.
    fn optimizer_step(
        &self,
        pairs: &[usize],
        optimizers: &mut Optimizers,
        done: usize,
        epoch: usize,
    ) -> Result<TrainStep> {
        let t = self.settings.train;
        let mut grads = None;
        let (mut loss_sum, mut wins) = (0.0, 0usize);
        // accelerate divides every micro-batch's mean loss by the configured accumulation
        // steps, the last, smaller step of an epoch included (MATH.md §6).
        let accumulation = t.pairs_per_step.div_ceil(t.micro_batch) as f64;
        let mut cut = 0;
        for micro in pairs.chunks(t.micro_batch) {
            let MicroBatch {
                total,
                terms,
                margins,
                cut: c,
            } = self.micro_batch_loss(micro)?;
            cut += c;
            let loss = (&total / (terms as f64 * accumulation))?;
            // Reported: the mean loss term over the step (per pair; the EX-GRM's per response).
            let value = f64::from(total.to_scalar::<f32>()?) * (micro.len() as f64 / terms as f64)
                / pairs.len() as f64;
            if !value.is_finite() {
                bail!(
                    "{} ({} mode): loss is {value} at step {done} (epoch {epoch}; lower train.lr?)",
                    self.reward.name(),
                    self.mode.name()
                );
            }
            loss_sum += value;
            wins += margins.into_iter().filter(|&x| x > 0.0).count();
            accumulate(&mut grads, loss.backward()?, &optimizers.vars)?;
        }
        optimizers.step(&grads.expect("a step has at least one micro-batch"))?;
        Ok(TrainStep {
            step: done + 1,
            epoch,
            loss: loss_sum,
            batch_accuracy: wins as f64 / pairs.len() as f64,
            pairs: pairs.to_vec(),
            last_tokens_dropped: cut,
        })
    }

    /// One micro-batch of training pairs: the summed loss terms (differentiable), how many terms
    /// the official mean divides by, and the pairs' reward margins. Bradley–Terry
    /// `Σ softplus(r⁻ − r⁺)` over the pairs; EX-GRM cross-entropy
    /// `−Σ [ln P(Yes | x, y⁺) + ln P(No | x, y⁻)]` over the `2b` responses.
    fn micro_batch_loss(&self, micro: &[usize]) -> Result<MicroBatch> {
        let idx = micro_batch_sequences(self.problem, micro);
        let b = micro.len();
        let scorer = self.scorer;
        let (u, head) = (self.u_now(), self.head.as_tensor());
        if self.reward == Reward::Exgrm {
            let f = scorer.features(self.seqs, &idx)?;
            let lp = scorer.verdict_logprobs(&f, &u)?;
            let yes = lp.narrow(1, 0, 1)?.squeeze(1)?;
            let chosen_yes = yes.narrow(0, 0, b)?;
            let rejected_no = lp.narrow(1, 1, 1)?.squeeze(1)?.narrow(0, b, b)?;
            let total = (chosen_yes.sum_all()? + rejected_no.sum_all()?)?.neg()?;
            let p = yes.exp()?;
            let m = (p.narrow(0, 0, b)? - p.narrow(0, b, b)?)?;
            return MicroBatch::new(total, 2 * b, &m, 0);
        }
        let (seqs, reference, idx, cut) = self.batch_rows(idx);
        let f = scorer.features(&seqs, &idx)?;
        let r = scorer.rewards(&f, &seqs, &idx, &u, head, &reference)?;
        let m = (r.narrow(0, 0, b)? - r.narrow(0, b, b)?)?;
        MicroBatch::new(softplus_neg(&m)?.sum_all()?, b, &m, cut)
    }

    /// The micro-batch's sequences `idx` as the training forward reads them: as they are, or
    /// (flush) copies with the rows the official flush cuts short; the reference values to match
    /// and how many rows were cut.
    fn batch_rows(&self, idx: Vec<usize>) -> BatchRows<'_> {
        let cut = match self.flush {
            true => flush::dropped_rows(self.seqs, &idx),
            false => vec![],
        };
        let n = cut.iter().filter(|&&c| c).count();
        if n == 0 {
            return (self.seqs.into(), self.train_reference.into(), idx, 0);
        }
        let rows: Vec<ScoredSequence> = idx.iter().map(|&i| self.seqs[i].clone()).collect();
        let refs: Vec<Vec<f64>> = idx
            .iter()
            .map(|&i| self.train_reference[i].clone())
            .collect();
        let (seqs, reference) = flush::apply(&rows, &refs, &cut);
        (seqs.into(), reference.into(), (0..idx.len()).collect(), n)
    }
}

/// A micro-batch's sequences, reference values, row indices and cut rows
/// ([`Session::batch_rows`]).
type BatchRows<'a> = (
    Cow<'a, [ScoredSequence]>,
    Cow<'a, [Vec<f64>]>,
    Vec<usize>,
    usize,
);

/// One micro-batch's loss: the summed terms (differentiable), how many terms the official mean
/// divides by, the pairs' reward margins and the rows the flush cut short.
struct MicroBatch {
    total: Tensor,
    terms: usize,
    margins: Vec<f32>,
    cut: usize,
}

impl MicroBatch {
    fn new(total: Tensor, terms: usize, margins: &Tensor, cut: usize) -> Result<MicroBatch> {
        Ok(MicroBatch {
            total,
            terms,
            margins: margins.to_vec1::<f32>()?,
            cut,
        })
    }
}
