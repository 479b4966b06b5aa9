//! `rmflow lm-dynamics`: the recipe's pairs built as `lm-recipe` builds them, the model set to a
//! run's step 0 or checkpoint, and every asked reward model measured ([`super::measure`]).

use super::measure::{log_prob_table, measure, selected_states, Inputs, Measured, Pair};
use super::model::{initial_head_of, Checkpoint};
use crate::error::InputError;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::recipe::{build_input, load_recipe_model, Built, RecipeFile};
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::PreferenceProblem;
use crate::lm::Forward;
use anyhow::Result;
use candle_core::Device;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which model is measured.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The pretrained model: every reward model's step 0.
    Pretrained { model: PathBuf, file: RecipeFile },
    /// One reward model of a run at a kept checkpoint.
    Checkpoint(Checkpoint),
}

impl ModelSource {
    fn model_and_file(&self) -> (&PathBuf, &RecipeFile) {
        match self {
            ModelSource::Pretrained { model, file } => (model, file),
            ModelSource::Checkpoint(c) => (&c.model, &c.file),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct DynamicsOptions {
    /// `imrm`, `imrm_no_ref`, `exrm`.
    pub rewards: Vec<Reward>,
    /// Evaluation splits by name (empty: every split but `train`).
    pub sets: Vec<String>,
    /// The first `limit` pairs of each evaluation split.
    pub limit: Option<usize>,
    /// The step `η` (default: the one whose predicted largest margin change is `target_change`).
    pub eta: Option<f64>,
    pub target_change: f64,
    /// The whole-model step's size relative to the parameters, `‖εg‖/‖θ‖` (`None`: no
    /// whole-model step; it costs a backward over every training pair and four scorings).
    pub whole_step: Option<f64>,
}

/// One evaluation split's selected pairs: index in the split, dataset row (preference data).
#[derive(Debug, Clone, Serialize)]
pub struct SplitPairs {
    pub name: String,
    pub pairs: Vec<(usize, Option<usize>, Pair)>,
}

/// One reward model measured.
#[derive(Debug, Clone)]
pub struct RewardDynamics {
    pub reward: Reward,
    pub measured: Measured,
    pub seconds: f64,
}

/// A whole measurement.
pub struct DynamicsOutcome {
    pub source: ModelSource,
    pub options: DynamicsOptions,
    pub train_pairs: usize,
    pub splits: Vec<SplitPairs>,
    pub rewards: Vec<RewardDynamics>,
    /// Each token id met in an evaluation response, as the tokenizer writes it.
    pub token_names: BTreeMap<usize, String>,
    pub seconds: f64,
}

/// Measures `options.rewards` on the model of `source` over its recipe's pairs.
pub fn run_dynamics(
    source: ModelSource,
    options: DynamicsOptions,
    device: &Device,
    on_stage: &mut dyn FnMut(&str),
) -> Result<DynamicsOutcome> {
    let start = std::time::Instant::now();
    let (model, file) = source.model_and_file();
    file.validate()?;
    on_stage(&format!(
        "loading {} and building the pairs",
        model.display()
    ));
    let (lm, _) = load_recipe_model(model, device, Forward::Nets, file)?;
    let Built { problem, sets } = build_input(file, &lm)?;
    let splits = select(&problem, &sets, &options)?;
    let train: Vec<Pair> = pairs_of(&problem, 0);
    let eval: Vec<Pair> = splits
        .iter()
        .flat_map(|s| s.pairs.iter().map(|p| p.2))
        .collect();
    let reference = checkpoint_reference(&source, &lm, &problem, (&train, &eval), on_stage)?;
    let head = initial_head_of(file, &lm)?;
    if let ModelSource::Checkpoint(c) = &source {
        on_stage(&format!("setting the model to {}", c.state.display()));
        c.load_into(&lm, &head)?;
    }
    let inputs = Inputs {
        seqs: &problem.sequences,
        train: &train,
        eval: &eval,
        beta: file.train.beta,
        reference: reference.as_deref(),
        batch: file.train.eval_batch,
        micro: file.train.micro_batch,
    };
    on_stage(&format!(
        "representations of {} training and {} evaluation pairs",
        train.len(),
        eval.len()
    ));
    let states = selected_states(&lm, &inputs)?;
    let mut rewards = Vec::new();
    for &reward in &options.rewards {
        let t0 = std::time::Instant::now();
        let step = (options.eta, options.target_change, options.whole_step);
        let measured = measure(reward, (&lm, &head), &inputs, &states, step, &mut |m| {
            on_stage(&format!("{}: {m}", reward.label()))
        })?;
        rewards.push(RewardDynamics {
            reward,
            measured,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let token_names = token_names(&lm, &rewards);
    Ok(DynamicsOutcome {
        source,
        options,
        train_pairs: train.len(),
        splits,
        rewards,
        token_names,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn pairs_of(problem: &PreferenceProblem, k: usize) -> Vec<Pair> {
    let s = &problem.splits[k];
    s.chosen
        .iter()
        .copied()
        .zip(s.rejected.iter().copied())
        .collect()
}

/// The evaluation splits asked for (every one but `train` by default), each cut to `limit`.
fn select(
    problem: &PreferenceProblem,
    sets: &[crate::lm::recipe::SetReport],
    options: &DynamicsOptions,
) -> Result<Vec<SplitPairs>> {
    let names: Vec<&str> = problem.splits.iter().map(|s| s.name.as_str()).collect();
    for want in &options.sets {
        if !names.contains(&want.as_str()) {
            return Err(InputError(format!(
                "--sets: no split {want:?} (the config's splits: {})",
                names.join(", ")
            ))
            .into());
        }
    }
    let chosen = |k: usize| match options.sets.is_empty() {
        true => k > 0,
        false => options.sets.iter().any(|w| w == names[k]),
    };
    Ok((0..names.len())
        .filter(|&k| chosen(k))
        .map(|k| {
            let rows = sets.get(k).map(|s| s.pair_rows.as_slice());
            let pairs = pairs_of(problem, k)
                .into_iter()
                .enumerate()
                .take(options.limit.unwrap_or(usize::MAX))
                .map(|(j, p)| (j, rows.and_then(|r| r.get(j)).copied(), p))
                .collect();
            SplitPairs {
                name: names[k].to_string(),
                pairs,
            }
        })
        .collect())
}

/// A checkpoint's IM-RM reads `ln π_ref` of the pretrained model, computed before the
/// checkpoint is loaded; `None` otherwise (step 0: the model is its own reference).
fn checkpoint_reference(
    source: &ModelSource,
    lm: &LanguageModel,
    problem: &PreferenceProblem,
    (train, eval): (&[Pair], &[Pair]),
    on_stage: &mut dyn FnMut(&str),
) -> Result<Option<Vec<Vec<f64>>>> {
    let ModelSource::Checkpoint(c) = source else {
        return Ok(None);
    };
    if c.reward != Reward::Imrm {
        return Ok(None);
    }
    on_stage("reference log-probabilities (the pretrained model)");
    let idx: Vec<usize> = train
        .iter()
        .chain(eval)
        .flat_map(|&(a, b)| [a, b])
        .collect();
    Ok(Some(log_prob_table(
        lm,
        &problem.sequences,
        &idx,
        c.file.train.eval_batch,
    )?))
}

fn token_names(lm: &LanguageModel, rewards: &[RewardDynamics]) -> BTreeMap<usize, String> {
    let mut out = BTreeMap::new();
    for r in rewards {
        for by in &r.measured.token_counts {
            for &id in by.keys() {
                out.entry(id).or_insert_with(|| {
                    lm.tokenizer
                        .id_to_token(id as u32)
                        .unwrap_or_else(|| format!("<{id}>"))
                });
            }
        }
    }
    out
}
