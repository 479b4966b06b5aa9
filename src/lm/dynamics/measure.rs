//! One reward model's velocities and first step on the selected pairs (MATH.md §3).

use super::states::{sequence_states, SequenceStates};
use crate::analysis::dynamics::direction::{head_direction, log_probs_all, TrainingDirection};
use crate::analysis::dynamics::flow_weights;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::train::epochs::{trained_vars, Mode};
use crate::lm::train::evaluate::Scorer;
use crate::lm::train::loss::softplus_neg;
use crate::lm::train::optimizers::accumulate;
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::ScoredSequence;
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use ndarray::{Array1, Array2};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A pair of sequences (indices into the problem's sequences): chosen, rejected.
pub type Pair = (usize, usize);

/// What one measurement reads: the sequences, the training pairs, the evaluation pairs (all
/// splits, concatenated), `β`, and the IM-RM's `ln π_ref` per response token (indexed like the
/// sequences), or `None` where the model measured is the reference (a run's step 0).
pub struct Inputs<'a> {
    pub seqs: &'a [ScoredSequence],
    pub train: &'a [Pair],
    pub eval: &'a [Pair],
    pub beta: f64,
    pub reference: Option<&'a [Vec<f64>]>,
    /// Sequences per forward (scoring) and pairs per backward (the gradient).
    pub batch: usize,
    pub micro: usize,
}

/// The measured dynamics of every evaluation pair (in `Inputs::eval` order).
#[derive(Debug, Clone)]
pub struct Measured {
    pub margins: Vec<f64>,
    /// Predicted margin velocity of the part (IM-RM unembedding, EX-RM head).
    pub velocity: Vec<f64>,
    /// IM-RM: its token-identity part.
    pub identity: Option<Vec<f64>>,
    /// IM-RM: per pair, each token's identity part (chosen occurrences +, rejected −).
    pub identity_tokens: Vec<BTreeMap<usize, f64>>,
    /// Token occurrences per pair (chosen + rejected responses).
    pub token_counts: Vec<BTreeMap<usize, usize>>,
    pub eta: f64,
    /// Margin changes after one step on the part alone, at `η` and `η/2`.
    pub part_change: [Vec<f64>; 2],
    /// The whole model's margin velocities by central differences (`None` where not asked for).
    pub whole: Option<WholeStep>,
}

/// The whole model's margin velocities `(m(θ − εg) − m(θ + εg)) / 2ε` along the loss gradient
/// `g` (every parameter the reward model trains), at `ε` and `ε/2`: first order up to `O(ε²)`.
/// `ε` is set by the step's size relative to the parameters (f32: a step below a few hundred
/// ulps is mostly rounded away).
#[derive(Debug, Clone)]
pub struct WholeStep {
    pub eta: f64,
    pub velocity: [Vec<f64>; 2],
    /// `‖εg‖ / ‖θ‖`.
    pub relative_step: f64,
    /// `⟨θ(−εg) − θ, −g⟩ / (ε‖g‖²)` after rounding to f32, at `ε` (1: the step as asked).
    pub applied: f64,
}

/// `ln π(y_k | ·)` of every response token of the sequences `idx` from their states under `u`
/// (indexed like `states`; empty rows for the others).
fn state_log_probs(
    states: &[Option<SequenceStates>],
    u: &Array2<f64>,
    idx: &[usize],
) -> Vec<Vec<f64>> {
    let responses: Vec<_> = idx
        .iter()
        .map(|&i| {
            states[i]
                .as_ref()
                .expect("states of every selected sequence")
                .response()
        })
        .collect();
    let mut table = vec![Vec::new(); states.len()];
    for (&i, lp) in idx.iter().zip(log_probs_all(u.view(), &responses)) {
        table[i] = lp;
    }
    table
}

/// IM-RM rewards `β Σ_k (ln π − ln π_ref)` of the sequences of `pairs` from their `ln π` table.
fn implicit_rewards(
    lp: &[Vec<f64>],
    (beta, reference): (f64, &[Vec<f64>]),
    pairs: &[Pair],
) -> Vec<f64> {
    let mut out = vec![f64::NAN; lp.len()];
    for &i in pairs.iter().flat_map(|(c, r)| [c, r]) {
        out[i] = beta
            * lp[i]
                .iter()
                .zip(&reference[i])
                .map(|(a, b)| a - b)
                .sum::<f64>();
    }
    out
}

/// Rewards of the sequences of `pairs` (indexed like the sequences) from their states: IM-RM
/// `β Σ_k (ln π − ln π_ref)` under `u`, EX-RM `⟨head, h_last⟩`.
fn rewards(
    reward: Reward,
    states: &[Option<SequenceStates>],
    (u, head): (&Array2<f64>, &Array1<f64>),
    scored: (f64, &[Vec<f64>]),
    pairs: &[Pair],
) -> Vec<f64> {
    let idx: Vec<usize> = pairs.iter().flat_map(|&(c, r)| [c, r]).collect();
    if reward.is_implicit() {
        return implicit_rewards(&state_log_probs(states, u, &idx), scored, pairs);
    }
    let mut out = vec![f64::NAN; states.len()];
    for &i in &idx {
        out[i] = states[i]
            .as_ref()
            .expect("states of every selected sequence")
            .last
            .dot(head);
    }
    out
}

/// `ln π_ref` of every response token of the sequences `idx`: the given table, or (step 0) the
/// model's own `current` one; zeros for the IM-RM without reference; empty rows for the EX-RM.
fn reference_table(
    reward: Reward,
    current: &[Vec<f64>],
    inputs: &Inputs,
    idx: &[usize],
) -> Vec<Vec<f64>> {
    let mut table = vec![Vec::new(); current.len()];
    for &i in idx {
        table[i] = match (reward, inputs.reference) {
            (Reward::Imrm, Some(t)) => t[i].clone(),
            (Reward::Imrm, None) => current[i].clone(),
            (Reward::ImrmNoRef, _) => vec![0.0; current[i].len()],
            _ => Vec::new(),
        };
    }
    table
}

fn margins_of(r: &[f64], pairs: &[Pair]) -> Vec<f64> {
    pairs.iter().map(|&(c, x)| r[c] - r[x]).collect()
}

/// The IM-RM's training direction `D` (and identity part) under `u`, weights `c`.
fn imrm_direction(
    u: &Array2<f64>,
    states: &[Option<SequenceStates>],
    train: &[Pair],
    c: &[f64],
) -> TrainingDirection {
    let mut d = TrainingDirection::zeros(u.nrows(), u.ncols());
    let responses: Vec<_> = train
        .iter()
        .zip(c)
        .flat_map(|(&(chosen, rejected), &w)| [(chosen, w), (rejected, -w)])
        .map(|(i, w)| (states[i].as_ref().expect("training states").response(), w))
        .collect();
    d.add_all(u.view(), &responses);
    d
}

/// Per evaluation pair: the IM-RM's predicted margin velocity `β² ⟨G(y⁺) − G(y⁻), D⟩`, its
/// identity part, and each token's identity part.
fn imrm_velocities(
    u: &Array2<f64>,
    d: &TrainingDirection,
    states: &[Option<SequenceStates>],
    inputs: &Inputs,
) -> (Vec<f64>, Vec<f64>, Vec<BTreeMap<usize, f64>>) {
    let b2 = inputs.beta * inputs.beta;
    let seqs: Vec<&SequenceStates> = inputs
        .eval
        .iter()
        .flat_map(|&(c, r)| [c, r])
        .map(|i| states[i].as_ref().expect("evaluation states"))
        .collect();
    let responses: Vec<_> = seqs.iter().map(|s| s.response()).collect();
    let mut all = d.velocities_all(u.view(), &responses).into_iter();
    let (mut total, mut identity, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    for pair in seqs.chunks(2) {
        let (mut t, mut id, mut by) = (0.0, 0.0, BTreeMap::new());
        for (s, sign) in pair.iter().zip([1.0, -1.0]) {
            let v = all.next().expect("one row per response");
            for (v, &y) in v.iter().zip(&s.tokens) {
                t += sign * b2 * v.total;
                id += sign * b2 * v.identity;
                *by.entry(y).or_insert(0.0) += sign * b2 * v.identity;
            }
        }
        total.push(t);
        identity.push(id);
        tokens.push(by);
    }
    (total, identity, tokens)
}

fn token_counts(states: &[Option<SequenceStates>], eval: &[Pair]) -> Vec<BTreeMap<usize, usize>> {
    eval.iter()
        .map(|&(c, r)| {
            let mut by = BTreeMap::new();
            for i in [c, r] {
                for &y in &states[i].as_ref().expect("evaluation states").tokens {
                    *by.entry(y).or_insert(0) += 1;
                }
            }
            by
        })
        .collect()
}

/// Per evaluation pair: the part's predicted margin velocity, its identity part (IM-RM) and each
/// token's identity part.
type PartVelocities = (Vec<f64>, Option<Vec<f64>>, Vec<BTreeMap<usize, f64>>);

/// What the part (the IM-RM's unembedding, the EX-RM's head) moves along under the flow: the
/// training direction `D`, or the head's `Σ_i c_i z_i`.
enum Part {
    Unembedding(TrainingDirection),
    Head(Array1<f64>),
}

impl Part {
    fn of(
        reward: Reward,
        u: &Array2<f64>,
        states: &[Option<SequenceStates>],
        inputs: &Inputs,
        c: &[f64],
    ) -> Part {
        match reward.is_implicit() {
            true => Part::Unembedding(imrm_direction(u, states, inputs.train, c)),
            false => Part::Head(head_direction(differences(states, inputs.train).view(), c)),
        }
    }

    /// Per evaluation pair: the predicted margin velocity and, for the IM-RM, its identity part
    /// and each token's.
    fn velocities(
        &self,
        u: &Array2<f64>,
        states: &[Option<SequenceStates>],
        inputs: &Inputs,
    ) -> PartVelocities {
        match self {
            Part::Unembedding(d) => {
                let (v, id, by) = imrm_velocities(u, d, states, inputs);
                (v, Some(id), by)
            }
            Part::Head(z) => {
                let v = inputs
                    .eval
                    .iter()
                    .map(|&(a, b)| (last(states, a) - last(states, b)).dot(z))
                    .collect();
                (v, None, Vec::new())
            }
        }
    }

    /// `(U, u)` after one gradient-descent step on the part alone: `U + η β D` (`−∇_U L = β D`),
    /// or `u + η Σ c_i z_i`; `scaled` is `η β`.
    fn step<'a>(
        &self,
        u: &'a Array2<f64>,
        head: &Array1<f64>,
        scaled: f64,
        eta: f64,
    ) -> (Cow<'a, Array2<f64>>, Array1<f64>) {
        match self {
            Part::Unembedding(d) => (Cow::Owned(u + &(&d.full * scaled)), head.clone()),
            Part::Head(z) => (Cow::Borrowed(u), head + &(z * eta)),
        }
    }
}

/// `η`: given, or the step whose predicted largest margin change is `target`.
fn step_size(eta: Option<f64>, target: f64, velocity: &[f64]) -> f64 {
    let top = velocity.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    match eta {
        Some(e) => e,
        None if top > 0.0 => target / top,
        None => 1.0,
    }
}

/// Measures `reward` on `lm` (with the EX-RM head `head`) from the `states` of the training and
/// evaluation sequences ([`selected_states`]): the part's velocities, the part's step and (with
/// `whole`) every parameter's step, at `eta` or the automatic step size.
pub fn measure(
    reward: Reward,
    (lm, head): (&LanguageModel, &Var),
    inputs: &Inputs,
    states: &[Option<SequenceStates>],
    (eta, target, whole): (Option<f64>, f64, Option<f64>),
    on_stage: &mut dyn FnMut(&str),
) -> Result<Measured> {
    let all: Vec<Pair> = inputs.train.iter().chain(inputs.eval).copied().collect();
    let idx: Vec<usize> = all.iter().flat_map(|&(c, r)| [c, r]).collect();
    let u = lm.unembedding_f64()?;
    let h0 = to_array1(head.as_tensor())?;
    // The IM-RM's `ln π` now, read once: its rewards and, at step 0, its reference.
    let lp = match reward.is_implicit() {
        true => state_log_probs(states, &u, &idx),
        false => vec![Vec::new(); states.len()],
    };
    let reference = reference_table(reward, &lp, inputs, &idx);
    let scored = (inputs.beta, reference.as_slice());
    let r = match reward.is_implicit() {
        true => implicit_rewards(&lp, scored, &all),
        false => rewards(reward, states, (&u, &h0), scored, &all),
    };
    let c = flow_weights(&margins_of(&r, inputs.train));
    let margins = margins_of(&r, inputs.eval);
    if let Some(j) = margins.iter().position(|m| !m.is_finite()) {
        bail!(
            "{}: the margin of evaluation pair {j} is {}",
            reward.name(),
            margins[j]
        );
    }
    on_stage("the training direction and the velocities");
    let part = Part::of(reward, &u, states, inputs, &c);
    let (velocity, identity, identity_tokens) = part.velocities(&u, states, inputs);
    let eta = step_size(eta, target, &velocity);
    let part_change = [eta, eta / 2.0].map(|e| {
        let moved = part.step(&u, &h0, e * inputs.beta, e);
        let r2 = rewards(reward, states, (&moved.0, &moved.1), scored, inputs.eval);
        change(&margins_of(&r2, inputs.eval), &margins)
    });
    let whole = match whole {
        Some(relative) => Some(whole_step(
            reward,
            (lm, head),
            (inputs, scored),
            relative,
            on_stage,
        )?),
        None => None,
    };
    Ok(Measured {
        token_counts: token_counts(states, inputs.eval),
        margins,
        velocity,
        identity,
        identity_tokens,
        eta,
        part_change,
        whole,
    })
}

/// The states of every training and evaluation sequence of `inputs` under `lm` as it is.
pub fn selected_states(lm: &LanguageModel, inputs: &Inputs) -> Result<Vec<Option<SequenceStates>>> {
    let idx: Vec<usize> = (inputs.train.iter().chain(inputs.eval))
        .flat_map(|&(c, r)| [c, r])
        .collect();
    sequence_states(lm, inputs.seqs, &idx, inputs.batch)
}

fn change(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

fn last(states: &[Option<SequenceStates>], i: usize) -> &Array1<f64> {
    &states[i].as_ref().expect("states").last
}

/// `z_i = h(x_i, y_i⁺) − h(x_i, y_i⁻)` of the training pairs, one row each.
fn differences(states: &[Option<SequenceStates>], train: &[Pair]) -> Array2<f64> {
    let d = train.first().map_or(0, |&(c, _)| last(states, c).len());
    let mut z = Array2::zeros((train.len(), d));
    for (mut row, &(c, r)) in z.rows_mut().into_iter().zip(train) {
        row.assign(&(last(states, c) - last(states, r)));
    }
    z
}

fn to_array1(t: &Tensor) -> Result<Array1<f64>> {
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

/// The whole model's margin velocities along `−∇L` (every parameter the reward model trains,
/// the EX-RM's head included) by central differences at `ε` and `ε/2`, `ε` the step of relative
/// size `relative`. The model is restored after.
fn whole_step(
    reward: Reward,
    (lm, head): (&LanguageModel, &Var),
    (inputs, scored): (&Inputs, (f64, &[Vec<f64>])),
    relative: f64,
    on_stage: &mut dyn FnMut(&str),
) -> Result<WholeStep> {
    let (mut vars, head_trained) = trained_vars(Mode::Full, reward, lm, None);
    if head_trained {
        vars.push(head.clone());
    }
    on_stage(&format!(
        "the loss gradient over {} training pairs",
        inputs.train.len()
    ));
    let grads = loss_gradient(reward, (lm, head), inputs, scored.1, &vars)?;
    let saved: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<Result<_, _>>()?;
    let (g2, t2) = norms(&vars, &grads)?;
    if g2 == 0.0 {
        bail!("{}: the loss gradient is zero", reward.name());
    }
    let eta = relative * (t2 / g2).sqrt();
    let eval_idx: Vec<usize> = inputs.eval.iter().flat_map(|&(c, r)| [c, r]).collect();
    let mut velocity = [Vec::new(), Vec::new()];
    let mut applied = 0.0;
    for (k, e) in [eta, eta / 2.0].into_iter().enumerate() {
        let mut sides = Vec::new();
        for sign in [1.0, -1.0] {
            on_stage(&format!(
                "the whole model at θ {} εg, ε = {e:.3e}",
                if sign > 0.0 { "−" } else { "+" }
            ));
            let moved = sgd(&vars, &grads, sign * e)?;
            if k == 0 && sign > 0.0 {
                applied = moved / (e * g2);
            }
            let states = sequence_states(lm, inputs.seqs, &eval_idx, inputs.batch)?;
            let u = lm.unembedding_f64()?;
            let h = to_array1(head.as_tensor())?;
            sides.push(margins_of(
                &rewards(reward, &states, (&u, &h), scored, inputs.eval),
                inputs.eval,
            ));
            for (v, s) in vars.iter().zip(&saved) {
                v.set(s)?;
            }
        }
        velocity[k] = change(&sides[0], &sides[1])
            .iter()
            .map(|d| d / (2.0 * e))
            .collect();
    }
    Ok(WholeStep {
        eta,
        velocity,
        relative_step: relative,
        applied,
    })
}

/// `(‖g‖², ‖θ‖²)` over `vars`.
fn norms(vars: &[Var], grads: &candle_core::backprop::GradStore) -> Result<(f64, f64)> {
    let sq = |t: &Tensor| -> Result<f64> {
        Ok(t.to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?)
    };
    let (mut g2, mut t2) = (0.0, 0.0);
    for v in vars {
        t2 += sq(v.as_tensor())?;
        if let Some(g) = grads.get(v.as_tensor()) {
            g2 += sq(g)?;
        }
    }
    Ok((g2, t2))
}

/// `θ ← θ − η g` for every variable (f32); `⟨θ_new − θ, −g⟩`, the step as applied after rounding.
fn sgd(vars: &[Var], grads: &candle_core::backprop::GradStore, eta: f64) -> Result<f64> {
    let mut moved = 0.0;
    for v in vars {
        let Some(g) = grads.get(v.as_tensor()) else {
            continue;
        };
        let new = (v.as_tensor() - (g * eta)?)?;
        let delta = (&new - v.as_tensor())?.to_dtype(candle_core::DType::F64)?;
        let g64 = g.to_dtype(candle_core::DType::F64)?;
        moved -= (delta * g64)?.sum_all()?.to_scalar::<f64>()?;
        v.set(&new)?;
    }
    Ok(moved)
}

/// `∇ L` of `L = (1/N) Σ_i softplus(−m_i)` over the training pairs, with respect to `vars`,
/// accumulated over micro-batches of `inputs.micro` pairs.
fn loss_gradient(
    reward: Reward,
    (lm, head): (&LanguageModel, &Var),
    inputs: &Inputs,
    reference: &[Vec<f64>],
    vars: &[Var],
) -> Result<candle_core::backprop::GradStore> {
    let scorer = Scorer {
        reward,
        lm,
        frozen: None,
        beta: inputs.beta,
        batch: inputs.batch,
        yes_no: None,
    };
    let n = inputs.train.len() as f64;
    let mut grads = None;
    for micro in inputs.train.chunks(inputs.micro.max(1)) {
        let b = micro.len();
        let mut idx: Vec<usize> = micro.iter().map(|p| p.0).collect();
        idx.extend(micro.iter().map(|p| p.1));
        let f = scorer.features(inputs.seqs, &idx)?;
        let r = scorer.rewards(
            &f,
            inputs.seqs,
            &idx,
            lm.unembedding(),
            head.as_tensor(),
            reference,
        )?;
        let m = (r.narrow(0, 0, b)? - r.narrow(0, b, b)?)?;
        let loss = (softplus_neg(&m)?.sum_all()? / n)?;
        accumulate(&mut grads, loss.backward()?, vars)?;
    }
    grads.ok_or_else(|| anyhow::anyhow!("no training pairs"))
}

/// `ln π(y_k | ·)` of every response token of the sequences `idx` under `lm` (f64 from its
/// states; empty rows for the others): the reference table of a checkpoint's IM-RM.
pub fn log_prob_table(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
    idx: &[usize],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let states = sequence_states(lm, seqs, idx, batch)?;
    Ok(state_log_probs(&states, &lm.unembedding_f64()?, idx))
}
