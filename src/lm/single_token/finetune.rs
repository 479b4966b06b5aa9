//! Full fine-tuning (MATH.md §6, beyond Theorem 2): every parameter of the transformer, the
//! unembedding `U` included, trained by AdamW on the same preference loss
//! `L = mean softplus(−m)` (MATH.md §2) with candle autograd through [`crate::lm::nets`].
//!
//! EX-RM: `m = u·(h_{x,y⁺} − h_{x,y⁻})`, head `u(0) = 0`. IM-RM: `m = β[(ln π(y⁺|x) − ln π(y⁻|x)) −
//! (ln π_ref(y⁺|x) − ln π_ref(y⁻|x))]` with `ln π = log_softmax(U h_x)` over the full vocabulary
//! and `π_ref` the initial model. The representations move, so Theorem 2 no longer applies:
//! with single-token answers the normaliser still cancels and the unseen rows of `U` get no
//! gradient, but `m = β[(U_{y⁺}−U_{y⁻})·h_x(T) − (U_{y⁺}−U_{y⁻})(0)·h_x(0)]` changes with `h_x`.

use crate::experiment::observables::{split_metrics, SplitMetrics};
use crate::experiment::simulation::ModelKind;
use crate::lm::model::language_model::Forward;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::single_token::config::LmFile;
use crate::lm::single_token::setup::extract_pairs;
use crate::lm::single_token::setup::SplitSequences;
use crate::lm::train::config::FinetuneConfig;
use crate::lm::train::loss::softplus_neg;
use crate::lm::train::optimizers::Optimizers;
use crate::lm::train::shuffle::Batches;
use crate::problem::synthetic::PairSet;
use crate::problem::synthetic::SplitId;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use ndarray::{Array1, Array2};
use serde::Serialize;
use std::path::Path;

/// One optimizer step: loss and strict accuracy of the batch before the update.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub batch_strict_accuracy: f64,
}

/// Accuracy of every split after `step` updates (representations re-extracted).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub step: usize,
    pub splits: Vec<SplitMetrics>,
}

/// How far a split's representations moved: `mean ‖h(T) − h(0)‖ / mean ‖h(0)‖`.
#[derive(Debug, Clone, Serialize)]
pub struct RepresentationShift {
    pub split: String,
    /// `h_x` (what the IM-RM reads).
    pub prompt: f64,
    /// `h_{x,y±}` (what the EX-RM reads).
    pub response: f64,
}

/// A fully fine-tuned reward model, evaluated on re-extracted representations.
pub struct FullRun {
    pub kind: ModelKind,
    pub history: Vec<StepRecord>,
    /// Evaluations at step 0, every `eval_every` steps and after the last step.
    pub evaluations: Vec<Evaluation>,
    /// Final margins' metrics per split (train first), strict and tie-aware.
    pub splits: Vec<SplitMetrics>,
    /// IM-RM: `max ‖U_z(T) − U_z(0)‖` over the unseen answer tokens `z`.
    pub unseen_row_drift: Option<f64>,
    /// `cos(mean (U_{y⁺} − U_{y⁻})(0) over train pairs, same over unseen pairs)`: how much a
    /// move of `h_x` that separates the seen answers also separates the unseen ones.
    pub answer_direction_cosine: Option<f64>,
    pub shift: Vec<RepresentationShift>,
    /// `‖θ(T) − θ(0)‖ / ‖θ(0)‖` over all transformer parameters.
    pub relative_parameter_change: f64,
    /// Final representations per split.
    pub pairs: Vec<PairSet>,
    /// EX-RM head `u(T)`.
    pub head: Option<Array1<f64>>,
    /// IM-RM answer tokens and their rows of `U(0)` and `U(T)`.
    pub answer_rows: Option<(Vec<u32>, Array2<f64>, Array2<f64>)>,
    pub parameters: usize,
    /// Parameter tensors left bit-identical by training (a tensor cut off from the loss's
    /// gradient shows up here; empty for a healthy run of ≥ 2 steps).
    pub unchanged_parameters: Vec<String>,
    pub seconds: f64,
    /// Wall time of the optimizer steps alone (forward, backward, update; no evaluation).
    pub step_seconds: f64,
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

fn rows(u: &Tensor, ids: &[u32], device: &Device) -> Result<Tensor> {
    Ok(u.index_select(&Tensor::new(ids, device)?, 0)?)
}

fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

/// `β[(ln π(y⁺|x) − ln π(y⁻|x))]` from `log_softmax(U h_x)` over the full vocabulary, [b].
fn implicit_log_ratio(
    lm: &LanguageModel,
    seq: &SplitSequences,
    idx: &[usize],
    beta: f64,
) -> Result<Tensor> {
    let h = lm.hidden_states(&pick(&seq.prompts, idx), &pick(&seq.prompt_pos, idx))?;
    let lp = candle_nn::ops::log_softmax(&h.matmul(&lm.unembedding().t()?)?, 1)?;
    let ids =
        |t: &[u32]| -> Result<Tensor> { Ok(Tensor::new(pick(t, idx), &lm.device)?.unsqueeze(1)?) };
    let c = lp.gather(&ids(&seq.chosen_token)?, 1)?.squeeze(1)?;
    let r = lp.gather(&ids(&seq.rejected_token)?, 1)?.squeeze(1)?;
    Ok(((c - r)? * beta)?)
}

/// `u·(h_{x,y⁺} − h_{x,y⁻})`, [b] (one forward over both responses).
fn explicit_margin(
    lm: &LanguageModel,
    seq: &SplitSequences,
    idx: &[usize],
    head: &Tensor,
) -> Result<Tensor> {
    let mut seqs = pick(&seq.chosen, idx);
    seqs.extend(pick(&seq.rejected, idx));
    let mut pos = pick(&seq.chosen_pos, idx);
    pos.extend(pick(&seq.rejected_pos, idx));
    let h = lm.hidden_states(&seqs, &pos)?;
    let b = idx.len();
    let diff = (h.narrow(0, 0, b)? - h.narrow(0, b, b)?)?;
    Ok(diff.matmul(&head.unsqueeze(1)?)?.squeeze(1)?)
}

fn mean_norm_ratio(now: &Array2<f64>, then: &Array2<f64>) -> f64 {
    let norm = |a: ndarray::ArrayView1<f64>| a.dot(&a).sqrt();
    let moved: f64 = now
        .outer_iter()
        .zip(then.outer_iter())
        .map(|(a, b)| norm((&a - &b).view()))
        .sum();
    let base: f64 = then.outer_iter().map(norm).sum();
    moved / base.max(f64::MIN_POSITIVE)
}

struct EvalContext<'a> {
    kind: ModelKind,
    sequences: &'a [SplitSequences],
    initial: &'a [PairSet],
    u0: &'a Tensor,
    beta: f64,
    batch_size: usize,
    tie_tolerance: f64,
}

/// Re-extracts every split's representations from the current body and scores them (f64):
/// EX-RM `u·(h⁺ − h⁻)`, IM-RM `β[(U_{y⁺}−U_{y⁻})·h_x − (U_{y⁺}−U_{y⁻})(0)·h_x(0)]` (the
/// log-normalisers cancel within a pair).
fn evaluate(
    ctx: &EvalContext,
    lm: &LanguageModel,
    head: &Var,
) -> Result<(Vec<PairSet>, Vec<SplitMetrics>)> {
    let device = &lm.device;
    let pairs: Vec<PairSet> = ctx
        .sequences
        .iter()
        .map(|q| extract_pairs(lm, q, ctx.batch_size))
        .collect::<Result<_>>()?;
    let head = Array1::from(flat(head.as_tensor())?);
    let mut splits = Vec::new();
    for (now, then) in pairs.iter().zip(ctx.initial) {
        let margins: Vec<f64> = match ctx.kind {
            ModelKind::Explicit => (&now.chosen_hidden - &now.rejected_hidden)
                .dot(&head)
                .to_vec(),
            ModelKind::Implicit => {
                let tokens =
                    |t: &Array2<usize>| t.column(0).iter().map(|&x| x as u32).collect::<Vec<_>>();
                let (c, r) = (tokens(&now.chosen_tokens), tokens(&now.rejected_tokens));
                let diff = |u: &Tensor| -> Result<Array2<f64>> {
                    crate::lm::model::to_array2(&(rows(u, &c, device)? - rows(u, &r, device)?)?)
                };
                let (d_now, d_then) = (diff(lm.unembedding())?, diff(ctx.u0)?);
                (0..now.len())
                    .map(|i| {
                        ctx.beta
                            * (d_now.row(i).dot(&now.prompt_hidden.row(i))
                                - d_then.row(i).dot(&then.prompt_hidden.row(i)))
                    })
                    .collect()
            }
        };
        splits.push(split_metrics(&now.name, &margins, ctx.tie_tolerance));
    }
    Ok((pairs, splits))
}

/// Fine-tunes a fresh copy of the model in `model_dir` as `kind` on `sequences[0]` under `file`'s
/// `[finetune]` (β = `lm.beta`, `lm.batch_size` sequences a forward, the run's seed and tie
/// tolerance) and evaluates every split. `initial` holds the splits' representations under the untrained
/// [`Forward::Nets`] model (`h(0)` of the IM-RM margins and the shifts); `on_step` sees
/// each step's record (progress bars).
pub fn finetune(
    kind: ModelKind,
    model_dir: &Path,
    device: &Device,
    file: &LmFile,
    (sequences, initial): (&[SplitSequences], &[PairSet]),
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<FullRun> {
    let (spec, seed) = (&file.finetune, file.seed);
    let (beta, batch_size) = (file.lm.beta, file.lm.batch_size);
    let tie_tolerance = file.eval.tie_tolerance;
    let start = std::time::Instant::now();
    if initial.len() != sequences.len() {
        bail!(
            "full fine-tuning: {} initial representation sets for {} splits",
            initial.len(),
            sequences.len()
        );
    }
    let trainee = Trainee::load(kind, model_dir, device)?;
    let train = &sequences[0];
    let reference = match kind {
        ModelKind::Implicit => Some(reference_log_ratios(&trainee.lm, train, batch_size, beta)?),
        ModelKind::Explicit => None,
    };
    let ctx = EvalContext {
        kind,
        sequences,
        initial,
        u0: &trainee.u0,
        beta,
        batch_size,
        tie_tolerance,
    };
    let (history, mut evaluations, step_seconds) =
        train_steps(&trainee, &ctx, spec, reference.as_ref(), seed, on_step)?;
    let (pairs, splits) = evaluate(&ctx, &trainee.lm, &trainee.head)?;
    evaluations.push(Evaluation {
        step: spec.steps,
        splits: splits.clone(),
    });
    let (relative_parameter_change, unchanged_parameters) = trainee.parameter_change()?;
    let (unseen_row_drift, answer_rows) = match kind {
        ModelKind::Implicit => {
            let (drift, rows) = trainee.answer_rows(sequences)?;
            (Some(drift), Some(rows))
        }
        ModelKind::Explicit => (None, None),
    };
    Ok(FullRun {
        kind,
        history,
        evaluations,
        splits,
        unseen_row_drift,
        answer_direction_cosine: answer_direction_cosine(sequences, &trainee.u0, device)?,
        shift: representation_shifts(&pairs, initial),
        relative_parameter_change,
        pairs,
        head: (kind == ModelKind::Explicit)
            .then_some(Array1::from(flat(trainee.head.as_tensor())?)),
        answer_rows,
        parameters: trainee.parameters,
        unchanged_parameters,
        seconds: start.elapsed().as_secs_f64(),
        step_seconds,
    })
}

/// The optimizer steps of [`finetune`], evaluating every split at the scheduled steps: the
/// step records, the evaluations (step 0 included), and the seconds spent in steps.
fn train_steps(
    trainee: &Trainee,
    ctx: &EvalContext,
    spec: &FinetuneConfig,
    reference: Option<&Tensor>,
    seed: u64,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<(Vec<StepRecord>, Vec<Evaluation>, f64)> {
    let train = &ctx.sequences[0];
    let mut optimizers = optimizers(trainee, spec)?;
    let mut batches = Batches::new(train.len(), spec.pairs_per_step, seed);
    let mut history = Vec::with_capacity(spec.steps);
    let mut evaluations = vec![Evaluation {
        step: 0,
        splits: ctx
            .initial
            .iter()
            .map(|p| split_metrics(&p.name, &vec![0.0; p.len()], ctx.tie_tolerance))
            .collect(),
    }];
    let mut step_seconds = 0.0;
    for step in 0..spec.steps {
        let scheduled = spec.eval_every_steps > 0 && step % spec.eval_every_steps == 0;
        if step > 0 && (scheduled || spec.eval_at.contains(&step)) {
            evaluations.push(Evaluation {
                step,
                splits: evaluate(ctx, &trainee.lm, &trainee.head)?.1,
            });
        }
        let step_start = std::time::Instant::now();
        let idx = batches.next_step();
        let (loss, record) = step_loss(trainee, train, &idx, reference, ctx.beta, step)?;
        optimizers.step(&loss.backward()?)?;
        step_seconds += step_start.elapsed().as_secs_f64();
        on_step(&record);
        history.push(record);
    }
    Ok((history, evaluations, step_seconds))
}

/// The model being fine-tuned as one reward model, with what is kept of its start.
struct Trainee {
    kind: ModelKind,
    lm: LanguageModel,
    /// The trained tensors: the body (EX-RM) or the body and the unembedding (IM-RM).
    params: Vec<(String, Var)>,
    /// Their initial values.
    theta0: Vec<Tensor>,
    /// The initial unembedding `U(0)`.
    u0: Tensor,
    /// The EX-RM head `u`, from 0 (unused by the IM-RM).
    head: Var,
    /// Trained parameter count (the head included for the EX-RM).
    parameters: usize,
}

impl Trainee {
    fn load(kind: ModelKind, model_dir: &Path, device: &Device) -> Result<Trainee> {
        let lm = LanguageModel::load(model_dir, device, Forward::Nets)?;
        let params = match kind {
            ModelKind::Explicit => lm.body_parameters(),
            ModelKind::Implicit => lm.parameters(),
        };
        let theta0: Vec<Tensor> = params
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        let u0 = lm.unembedding().copy()?;
        let head = Var::zeros(lm.dim, DType::F32, device)?;
        let parameters = params.iter().map(|(_, v)| v.elem_count()).sum::<usize>()
            + if kind == ModelKind::Explicit {
                head.elem_count()
            } else {
                0
            };
        Ok(Trainee {
            kind,
            lm,
            params,
            theta0,
            u0,
            head,
            parameters,
        })
    }

    /// `‖θ − θ(0)‖ / ‖θ(0)‖` over every trained tensor, and the tensors that did not move.
    fn parameter_change(&self) -> Result<(f64, Vec<String>)> {
        let (mut moved, mut base, mut unchanged) = (0.0, 0.0, Vec::new());
        for ((name, v), t0) in self.params.iter().zip(&self.theta0) {
            let m = f64::from((v.as_tensor() - t0)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
            if m == 0.0 {
                unchanged.push(name.clone());
            }
            moved += m;
            base += f64::from(t0.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        Ok(((moved / base).sqrt(), unchanged))
    }

    /// IM-RM: `max_z ‖U_z − U_z(0)‖` over the unseen answer tokens, and the answer tokens' rows
    /// of `U(0)` and `U`.
    #[allow(clippy::type_complexity)]
    fn answer_rows(
        &self,
        sequences: &[SplitSequences],
    ) -> Result<(f64, (Vec<u32>, Array2<f64>, Array2<f64>))> {
        let device = &self.lm.device;
        let u_final = self.lm.unembedding();
        let unseen: Vec<u32> = sequences
            .iter()
            .find(|q| SplitId::Unseen.is(&q.name))
            .map(|q| sorted_tokens(std::slice::from_ref(q)))
            .unwrap_or_default();
        let drift = if unseen.is_empty() {
            0.0
        } else {
            let d = (rows(u_final, &unseen, device)? - rows(&self.u0, &unseen, device)?)?;
            flat(&d.sqr()?.sum(1)?.sqrt()?)?
                .into_iter()
                .fold(0.0, f64::max)
        };
        let answers = sorted_tokens(sequences);
        let a0 = crate::lm::model::to_array2(&rows(&self.u0, &answers, device)?)?;
        let a1 = crate::lm::model::to_array2(&rows(u_final, &answers, device)?)?;
        Ok((drift, (answers, a0, a1)))
    }
}

/// The answer tokens of `sequences` (chosen and rejected), sorted, without repeats.
fn sorted_tokens(sequences: &[SplitSequences]) -> Vec<u32> {
    let mut t: Vec<u32> = sequences
        .iter()
        .flat_map(|q| q.chosen_token.iter().chain(&q.rejected_token).copied())
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// Reference log-ratios `β[ln π_ref(y⁺|x) − ln π_ref(y⁻|x)]` of the training pairs (constants).
fn reference_log_ratios(
    lm: &LanguageModel,
    train: &SplitSequences,
    batch_size: usize,
    beta: f64,
) -> Result<Tensor> {
    let all: Vec<usize> = (0..train.len()).collect();
    let parts = all
        .chunks(batch_size)
        .map(|c| implicit_log_ratio(lm, train, c, beta).map(|t| t.detach()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The optimizers of [`finetune`]: the head is trained for the EX-RM only.
fn optimizers(trainee: &Trainee, spec: &FinetuneConfig) -> Result<Optimizers> {
    let vars: Vec<Var> = trainee.params.iter().map(|(_, v)| v.clone()).collect();
    let params = spec.adamw.params();
    let head = (trainee.kind == ModelKind::Explicit).then_some(&trainee.head);
    Optimizers::new(vars, head, params, spec.adamw.head_lr)
}

/// The loss `mean softplus(−m)` on the pairs `idx` and the step's record; an error names the step
/// when the loss is not finite.
fn step_loss(
    trainee: &Trainee,
    train: &SplitSequences,
    idx: &[usize],
    reference: Option<&Tensor>,
    beta: f64,
    step: usize,
) -> Result<(Tensor, StepRecord)> {
    let lm = &trainee.lm;
    let m = match (reference, trainee.kind) {
        (Some(r), ModelKind::Implicit) => {
            let r = r.index_select(
                &Tensor::new(
                    idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    &lm.device,
                )?,
                0,
            )?;
            (implicit_log_ratio(lm, train, idx, beta)? - r)?
        }
        _ => explicit_margin(lm, train, idx, &trainee.head)?,
    };
    let loss = softplus_neg(&m)?.mean_all()?;
    let value = f64::from(loss.to_scalar::<f32>()?);
    if !value.is_finite() {
        bail!(
            "{}: full fine-tuning loss is {value} at step {step} (lower finetune.lr?)",
            trainee.kind.name()
        );
    }
    let margins = flat(&m)?;
    let record = StepRecord {
        step,
        loss: value,
        batch_strict_accuracy: margins.iter().filter(|&&x| x > 0.0).count() as f64
            / margins.len() as f64,
    };
    Ok((loss, record))
}

/// How far each split's prompt and response representations moved (mean norm ratios).
fn representation_shifts(pairs: &[PairSet], initial: &[PairSet]) -> Vec<RepresentationShift> {
    let both =
        |p: &PairSet| ndarray::concatenate![ndarray::Axis(0), p.chosen_hidden, p.rejected_hidden];
    pairs
        .iter()
        .zip(initial)
        .map(|(now, then)| RepresentationShift {
            split: now.name.clone(),
            prompt: mean_norm_ratio(&now.prompt_hidden, &then.prompt_hidden),
            response: mean_norm_ratio(&both(now), &both(then)),
        })
        .collect()
}

/// Cosine between the mean answer direction `U(0)_{y⁺} − U(0)_{y⁻}` of the training and the
/// unseen pairs (`None` without both splits).
fn answer_direction_cosine(
    sequences: &[SplitSequences],
    u0: &Tensor,
    device: &Device,
) -> Result<Option<f64>> {
    let mean_diff = |id: SplitId| -> Result<Option<Array1<f64>>> {
        let Some(q) = sequences.iter().find(|q| id.is(&q.name)) else {
            return Ok(None);
        };
        let d = crate::lm::model::to_array2(
            &(rows(u0, &q.chosen_token, device)? - rows(u0, &q.rejected_token, device)?)?,
        )?;
        Ok(d.mean_axis(ndarray::Axis(0)))
    };
    Ok(
        match (mean_diff(SplitId::Train)?, mean_diff(SplitId::Unseen)?) {
            (Some(a), Some(b)) => Some(a.dot(&b) / (a.dot(&a) * b.dot(&b)).sqrt()),
            _ => None,
        },
    )
}
