//! Training: Adam on every parameter (`full`) or on the head / unembedding (`head`), with the
//! official code's mini-batches and gradient accumulation, evaluated along the way.

use super::config::RecipeFile;
use super::evaluate::{evaluate_splits, RecipeCheckpoint, Scorer};
use super::features::{FrozenFeatures, Need};
use super::problem::{build_problem, RecipeProblem};
use crate::experiment::simulation::ModelKind;
use crate::lm::finetune::{softplus_neg, Optimizers};
use crate::lm::{Forward, LanguageModel};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::ParamsAdamW;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What is trained: the whole model (`Full`) or the head / unembedding over frozen features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipeMode {
    Head,
    Full,
}

impl RecipeMode {
    pub fn name(self) -> &'static str {
        match self {
            RecipeMode::Head => "head",
            RecipeMode::Full => "full",
        }
    }
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum RecipeEvent<'a> {
    /// A stage without steps (feature extraction, reference scoring, evaluation).
    Stage(String),
    /// An optimizer step done.
    Step(&'a RecipeStep),
}

/// One optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeStep {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub batch_accuracy: f64,
}

/// A trained reward model under the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeRun {
    pub mode: RecipeMode,
    pub kind: ModelKind,
    pub parameters: usize,
    pub history: Vec<RecipeStep>,
    pub checkpoints: Vec<RecipeCheckpoint>,
    /// Final reward of every sequence (index as in `sequences.jsonl`).
    #[serde(skip)]
    pub rewards: Vec<f64>,
    pub seconds: f64,
    /// Wall time of the optimizer steps alone (no evaluation), for the per-step cost.
    pub step_seconds: f64,
}

/// Adds `new`'s gradients of `vars` into `acc` (gradient accumulation over micro-batches).
pub(super) fn accumulate(
    acc: &mut Option<candle_core::backprop::GradStore>,
    new: candle_core::backprop::GradStore,
    vars: &[Var],
) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(a) => {
            for v in vars {
                if let Some(g) = new.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// Trains one reward model (`kind`) under the recipe in `mode` on a fresh copy of the model in
/// `model_dir`, evaluating every split before training, every `eval_every_epochs` epochs and
/// after the last; `on_event` sees every stage and optimizer step (progress).
pub fn train_recipe(
    kind: ModelKind,
    mode: RecipeMode,
    model_dir: &Path,
    device: &Device,
    file: &RecipeFile,
    problem: &RecipeProblem,
    on_event: &mut dyn FnMut(RecipeEvent),
) -> Result<RecipeRun> {
    let start = std::time::Instant::now();
    let t = &file.train;
    let lm = LanguageModel::load(model_dir, device, Forward::Differentiable)?;
    let seqs = &problem.sequences;
    let frozen = match mode {
        RecipeMode::Head => {
            on_event(RecipeEvent::Stage(format!(
                "extracting the frozen features of {} sequences",
                seqs.len()
            )));
            Some(FrozenFeatures::extract(
                &lm,
                seqs,
                t.eval_batch,
                Need::of(kind),
            )?)
        }
        RecipeMode::Full => None,
    };
    let scorer = Scorer {
        kind,
        lm: &lm,
        frozen: frozen.as_ref(),
        beta: t.beta,
        batch: t.eval_batch,
    };
    let u0 = lm.unembedding().detach().copy()?;
    let frozen_u = match (mode, kind) {
        (RecipeMode::Head, ModelKind::Implicit) => Some(Var::from_tensor(&u0)?),
        _ => None,
    };
    let head = initial_head(file, lm.dim, device)?;
    let (vars, head_trained) = trained_vars(mode, kind, &lm, frozen_u.as_ref());
    let reference: Vec<Vec<f64>> = match kind {
        ModelKind::Implicit => {
            on_event(RecipeEvent::Stage(
                "reference log-probabilities of every sequence".into(),
            ));
            scorer.token_logprob_table(seqs, &u0)?
        }
        ModelKind::Explicit => vec![vec![]; seqs.len()],
    };
    let parameters =
        vars.iter().map(|v| v.elem_count()).sum::<usize>() + if head_trained { lm.dim } else { 0 };
    let params = ParamsAdamW {
        lr: t.lr,
        beta1: t.beta1,
        beta2: t.beta2,
        eps: t.eps,
        weight_decay: t.weight_decay,
    };
    let mut optimizers = Optimizers::new(vars, head_trained.then_some(&head), params, t.head_lr)?;
    let session = Session {
        kind,
        mode,
        file,
        problem,
        scorer: &scorer,
        frozen_u: frozen_u.as_ref(),
        head: &head,
        reference: &reference,
    };
    let (history, checkpoints, rewards, step_seconds) =
        session.run_epochs(&mut optimizers, on_event)?;
    Ok(RecipeRun {
        mode,
        kind,
        parameters,
        history,
        checkpoints,
        rewards,
        seconds: start.elapsed().as_secs_f64(),
        step_seconds,
    })
}

/// The EX-RM head `u(0)`: `N(0, head_init_std²)` per entry from the seeded head RNG, or 0.
fn initial_head(file: &RecipeFile, dim: usize, device: &Device) -> Result<Var> {
    let t = &file.train;
    let mut head_rng = ChaCha8Rng::seed_from_u64(file.seed ^ 0x4ead_1a17);
    let head_values: Vec<f32> = if t.head_init_std > 0.0 {
        let normal = Normal::new(0.0, t.head_init_std as f32)
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

/// The tensors Adam trains besides the head, and whether the head is trained: every parameter
/// (full IM-RM), the body (full EX-RM), the unembedding alone (head-only IM-RM), or nothing
/// but the head (head-only EX-RM).
fn trained_vars(
    mode: RecipeMode,
    kind: ModelKind,
    lm: &LanguageModel,
    frozen_u: Option<&Var>,
) -> (Vec<Var>, bool) {
    match (mode, kind) {
        (RecipeMode::Full, ModelKind::Implicit) => {
            (lm.parameters().into_iter().map(|(_, v)| v).collect(), false)
        }
        (RecipeMode::Full, ModelKind::Explicit) => (
            lm.body_parameters().into_iter().map(|(_, v)| v).collect(),
            true,
        ),
        (RecipeMode::Head, ModelKind::Implicit) => {
            (vec![frozen_u.cloned().expect("head-only IM-RM U")], false)
        }
        (RecipeMode::Head, ModelKind::Explicit) => (vec![], true),
    }
}

/// One reward model's training under the recipe: what a step and an evaluation read.
struct Session<'a> {
    kind: ModelKind,
    mode: RecipeMode,
    file: &'a RecipeFile,
    problem: &'a RecipeProblem,
    scorer: &'a Scorer<'a>,
    /// The head-only IM-RM's trained copy of `U` (the model's own `U` otherwise).
    frozen_u: Option<&'a Var>,
    head: &'a Var,
    /// `ln π_ref` of every response token of every sequence (IM-RM).
    reference: &'a [Vec<f64>],
}

impl Session<'_> {
    /// Every epoch's optimizer steps (pairs shuffled by the seeded RNG), evaluating before the
    /// first, every `eval_every_epochs` epochs and after the last: the steps, the checkpoints,
    /// the last rewards of every sequence, and the seconds spent in steps.
    #[allow(clippy::type_complexity)]
    fn run_epochs(
        &self,
        optimizers: &mut Optimizers,
        on_event: &mut dyn FnMut(RecipeEvent),
    ) -> Result<(Vec<RecipeStep>, Vec<RecipeCheckpoint>, Vec<f64>, f64)> {
        let (file, problem) = (self.file, self.problem);
        let t = &file.train;
        let (first, mut rewards) = self.evaluate(0, 0, on_event)?;
        let mut checkpoints = vec![first];
        let n = problem.splits[0].chosen.len();
        let mut rng = ChaCha8Rng::seed_from_u64(file.seed ^ 0x5eed_f17e);
        let mut history = Vec::new();
        let mut step_seconds = 0.0;
        for epoch in 1..=t.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for pairs in order.chunks(t.pairs_per_step) {
                let t0 = std::time::Instant::now();
                let record = self.optimizer_step(pairs, optimizers, history.len(), epoch)?;
                step_seconds += t0.elapsed().as_secs_f64();
                on_event(RecipeEvent::Step(&record));
                history.push(record);
            }
            if epoch % t.eval_every_epochs == 0 || epoch == t.epochs {
                let (c, r) = self.evaluate(epoch, history.len(), on_event)?;
                checkpoints.push(c);
                rewards = r;
            }
        }
        Ok((history, checkpoints, rewards, step_seconds))
    }

    /// The unembedding the rewards read now.
    fn u_now(&self) -> Tensor {
        match self.frozen_u {
            Some(v) => v.as_tensor().clone(),
            None => self.scorer.lm.unembedding().clone(),
        }
    }

    /// Every split scored after `epoch` (`step` optimizer steps); the rewards of every sequence.
    fn evaluate(
        &self,
        epoch: usize,
        step: usize,
        on_event: &mut dyn FnMut(RecipeEvent),
    ) -> Result<(RecipeCheckpoint, Vec<f64>)> {
        on_event(RecipeEvent::Stage(format!(
            "evaluating every split after epoch {epoch}"
        )));
        let seqs = &self.problem.sequences;
        let (rewards, parts) =
            self.scorer
                .score_all(seqs, &self.u_now(), self.head.as_tensor(), self.reference)?;
        if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
            bail!(
                "{} ({} mode): reward of sequence {i} is {} after {step} steps (lower train.lr?)",
                self.kind.name(),
                self.mode.name(),
                rewards[i]
            );
        }
        let tau = self.file.eval.tie_tolerance;
        let splits = evaluate_splits(self.problem, &rewards, parts.as_deref(), tau);
        Ok((
            RecipeCheckpoint {
                epoch,
                step,
                splits,
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
    ) -> Result<RecipeStep> {
        let t = &self.file.train;
        let train = &self.problem.splits[0];
        let seqs = &self.problem.sequences;
        let mut grads = None;
        let (mut loss_sum, mut wins) = (0.0, 0usize);
        // accelerate divides every micro-batch's mean loss by the configured accumulation
        // steps, the last, smaller step of an epoch included (MATH.md §6).
        let accumulation = t.pairs_per_step.div_ceil(t.micro_batch) as f64;
        for micro in pairs.chunks(t.micro_batch) {
            let mut idx: Vec<usize> = micro.iter().map(|&p| train.chosen[p]).collect();
            idx.extend(micro.iter().map(|&p| train.rejected[p]));
            let r = self.scorer.rewards(
                seqs,
                &idx,
                &self.u_now(),
                self.head.as_tensor(),
                self.reference,
            )?;
            let b = micro.len();
            let m = (r.narrow(0, 0, b)? - r.narrow(0, b, b)?)?;
            let total = softplus_neg(&m)?.sum_all()?;
            let loss = (&total / (b as f64 * accumulation))?;
            // Reported: the mean loss over the step's pairs.
            let value = f64::from(total.to_scalar::<f32>()?) / pairs.len() as f64;
            if !value.is_finite() {
                bail!(
                    "{} ({} mode): loss is {value} at step {done} (epoch {epoch}; lower train.lr?)",
                    self.kind.name(),
                    self.mode.name()
                );
            }
            loss_sum += value;
            wins += m.to_vec1::<f32>()?.into_iter().filter(|&x| x > 0.0).count();
            accumulate(&mut grads, loss.backward()?, &optimizers.vars)?;
        }
        optimizers.step(&grads.expect("a step has at least one micro-batch"))?;
        Ok(RecipeStep {
            step: done + 1,
            epoch,
            loss: loss_sum,
            batch_accuracy: wins as f64 / pairs.len() as f64,
        })
    }
}

/// Optimizer steps of one run: `epochs × ⌈train pairs / pairs_per_step⌉`.
pub fn steps_per_run(file: &RecipeFile) -> usize {
    file.train.epochs * file.data.train_prompts.div_ceil(file.train.pairs_per_step)
}

/// A whole recipe experiment: the problem and one run per (mode, reward model).
pub struct RecipeOutcome {
    pub model: PathBuf,
    pub arch: crate::lm::Architecture,
    pub device: String,
    pub file: RecipeFile,
    pub problem: RecipeProblem,
    pub runs: Vec<RecipeRun>,
}

/// Runs the recipe of `file` on the model in `model_dir` in each of `modes`, both reward models;
/// `on_event` sees every stage and step (progress bars).
pub fn run_recipe(
    model_dir: &Path,
    file: &RecipeFile,
    device: &Device,
    modes: &[RecipeMode],
    kinds: &[ModelKind],
    on_event: &mut dyn FnMut(RecipeMode, ModelKind, RecipeEvent),
) -> Result<RecipeOutcome> {
    let lm = LanguageModel::load(model_dir, device, Forward::Differentiable)?;
    // Statements, prompts, tokenization and chat template: all input errors (exit code 2).
    let problem =
        build_problem(file, &lm).map_err(|e| crate::error::InputError(format!("{e:#}")))?;
    let arch = lm.arch;
    drop(lm);
    let mut runs = Vec::new();
    for &mode in modes {
        for &kind in kinds {
            runs.push(train_recipe(
                kind,
                mode,
                model_dir,
                device,
                file,
                &problem,
                &mut |e| on_event(mode, kind, e),
            )?);
        }
    }
    Ok(RecipeOutcome {
        model: model_dir.to_path_buf(),
        arch,
        device: format!("{device:?}"),
        file: file.clone(),
        problem,
        runs,
    })
}

/// What a masked encoder's rewards are (said in every output of such a run).
pub const PSEUDO_LIKELIHOOD_NOTE: &str = "masked encoder: the IM-RM's ln π is a masked-LM pseudo-log-likelihood proxy (each response token masked in turn, read through the tied word embeddings; the checkpoint has no MLM head), not a causal language model's distribution";
