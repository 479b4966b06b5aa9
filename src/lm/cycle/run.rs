//! The experiment end to end: data, the initial model, its pretraining into `π_ref`, then the
//! IM-RM and the EX-RM trained by the trainer ([`crate::lm::train`]) from `π_ref`, measured at
//! every evaluated epoch: verification accuracy and the smallest test margin `δ` (both reward
//! models); sampled and greedy generation success, the exact `π(C|x)` and `π(orders|x)`, and the
//! check of `π(C|x) ≤ e^{δ/β} π_ref(C|x)` per prompt (the IM-RM, whose policy generates).

use super::checkpoint::write_initial_checkpoint;
use super::config::CycleFile;
use super::enumerate::{order_masses, OrderMass};
use super::generate::{Decoder, Decoding};
use super::pretrain::{pretrain, PretrainStep};
use super::problem::{cycle_problem, prompt_ids, template_of};
use super::resume::{save_pretraining, saved_pretraining, Observations};
use super::tokens::CycleTokens;
use crate::experiment::observables::split_metrics;
use crate::lm::checkpoint::chat_template::{
    parse_template_date, ChatTemplate, DEFAULT_TEMPLATE_DATE,
};
use crate::lm::checkpoint::vocabulary::AddedTokens;
use crate::lm::recipe::template::PromptFormat;
use crate::lm::recipe::{Mode, Reward, TrainEvent, TrainRun, TrainStep};
use crate::lm::train::epochs::train_reward;
use crate::lm::train::epochs::Settings;
use crate::lm::train::resume::{CheckpointDir, Checkpoints, NoCheckpoints, Observed};
use crate::lm::{Forward, LanguageModel};
use crate::problem::hamiltonian::{generate, vertex_orders, CyclePair, EDGE_SEP, SEP};
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a run reports as it goes (progress).
pub enum CycleEvent<'a> {
    /// A stage of the pretraining (`None`) or of one reward model's training.
    Stage(Option<Reward>, String),
    Pretrain(&'a PretrainStep),
    Step(Reward, &'a TrainStep),
    /// One reward model's training resumed after this many optimizer steps, with its message.
    Resumed(Reward, usize, String),
    /// A scoring pass of one reward model (an evaluation, the reference log-probabilities) has
    /// this many of its sequences scored, of so many.
    Scored(Reward, usize, usize),
}

/// One evaluation of one reward model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleEpoch {
    pub reward: String,
    pub epoch: usize,
    pub step: usize,
    /// Accuracy with exact ties ½ (the paper's), train and test pairs.
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// `δ`: the smallest reward margin over the test pairs.
    pub min_test_margin: f64,
    pub mean_test_margin: f64,
    /// IM-RM: fraction of the evaluated prompts whose one sample (T = 1) is a correct cycle.
    pub sampled_success: Option<f64>,
    /// IM-RM: the same for greedy decoding.
    pub greedy_success: Option<f64>,
    /// IM-RM, exact: mean over prompts of `π(C|x)`.
    pub mean_cycle_mass: Option<f64>,
    /// IM-RM, exact: mean of `π_ref(C|x)` (the reference is the epoch-0 policy).
    pub mean_reference_cycle_mass: Option<f64>,
    /// IM-RM, exact: mean of `π(orders|x)`.
    pub mean_order_mass: Option<f64>,
    /// IM-RM, exact: fraction of prompts with `ln π(C|x) − ln π_ref(C|x) ≤ δ/β`.
    pub bound_holds: Option<f64>,
    /// IM-RM, exact: the largest `ln π(C|x) − ln π_ref(C|x) − δ/β` (> 0 where the bound fails).
    pub max_bound_excess: Option<f64>,
    /// IM-RM, exact: `max |restricted total − 1|` (the enumeration's bookkeeping check).
    pub max_restricted_error: Option<f64>,
    /// IM-RM: tokens produced by the sampled and the greedy decoding of every evaluated prompt
    /// (each eos included).
    #[serde(default)]
    pub generated_tokens: usize,
    /// Seconds of this evaluation's decoding (sampled and greedy).
    pub generation_seconds: f64,
    /// Seconds of this evaluation's exact enumeration.
    #[serde(default)]
    pub enumeration_seconds: f64,
}

/// One prompt at one IM-RM evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptRecord {
    pub epoch: usize,
    pub prompt: usize,
    pub sampled_correct: bool,
    pub greedy_correct: bool,
    pub sampled_text: String,
    pub greedy_text: String,
    /// Whether the sample (greedy decoding) ended at eos within the budget of
    /// `2n + eval.extra_new_tokens` tokens; `false`: cut there (counted incorrect).
    #[serde(default)]
    pub sampled_stopped: bool,
    #[serde(default)]
    pub greedy_stopped: bool,
    pub cycle_orders: Option<usize>,
    pub ln_cycle_mass: Option<f64>,
    pub ln_reference_cycle_mass: Option<f64>,
    pub ln_order_mass: Option<f64>,
}

/// A finished experiment.
pub struct CycleOutcome {
    pub file: CycleFile,
    pub pretrain: Vec<PretrainStep>,
    pub pretrain_seconds: f64,
    pub runs: Vec<TrainRun>,
    pub epochs: Vec<CycleEpoch>,
    pub prompts: Vec<PromptRecord>,
    pub train: Vec<CyclePair>,
    pub test: Vec<CyclePair>,
    pub tokens: CycleTokens,
}

/// The evaluated test prompts and what measuring them needs.
struct Probe<'a> {
    file: &'a CycleFile,
    tokens: &'a CycleTokens,
    pairs: &'a [CyclePair],
    prompts: Vec<Vec<u32>>,
    orders: Option<Vec<Vec<usize>>>,
    /// `ln π_ref(C|x)` per prompt, from the IM-RM's epoch-0 evaluation.
    reference: Option<Vec<f64>>,
}

impl Probe<'_> {
    /// Generation and exact masses under `lm` with unembedding `u`.
    fn measure(
        &mut self,
        lm: &LanguageModel,
        u: &Tensor,
        epoch: usize,
        delta: f64,
    ) -> Result<(CycleEpochParts, Vec<PromptRecord>)> {
        let t0 = std::time::Instant::now();
        let n = self.file.data.vertices;
        let max_new = 2 * n + self.file.eval.extra_new_tokens;
        let graphs: Vec<_> = self.pairs.iter().map(|p| &p.graph).collect();
        let batch = self.file.train.eval_batch;
        let mut rng = ChaCha8Rng::seed_from_u64(self.file.seed ^ 0x5a3b_1e00 ^ epoch as u64);
        let decoder = Decoder {
            lm,
            unembedding: u,
            tokens: self.tokens,
            max_new,
            batch,
        };
        let (sampled, greedy) =
            decoder.decode_sampled_and_greedy(&self.prompts, &graphs, &mut rng)?;
        let decoded = t0.elapsed().as_secs_f64();
        let masses: Option<Vec<OrderMass>> = match &self.orders {
            Some(orders) => Some(
                self.prompts
                    .iter()
                    .zip(&graphs)
                    .map(|(p, g)| {
                        order_masses(lm, u, self.tokens, p, g, orders, self.file.eval.exact_batch)
                    })
                    .collect::<Result<_>>()?,
            ),
            None => None,
        };
        if let (Some(m), None) = (&masses, &self.reference) {
            self.reference = Some(m.iter().map(|x| x.ln_cycles).collect());
        }
        let beta = self.file.train.beta;
        let parts = CycleEpochParts::of(
            &sampled,
            &greedy,
            masses.as_deref(),
            self.reference.as_deref(),
            delta / beta,
            Timing {
                tokens: sampled.iter().chain(&greedy).map(|d| d.tokens).sum(),
                decode: decoded,
                enumerate: t0.elapsed().as_secs_f64() - decoded,
            },
        );
        let records = (0..self.prompts.len())
            .map(|i| PromptRecord {
                epoch,
                prompt: i,
                sampled_correct: sampled[i].correct,
                greedy_correct: greedy[i].correct,
                sampled_text: sampled[i].text.clone(),
                greedy_text: greedy[i].text.clone(),
                sampled_stopped: sampled[i].stopped,
                greedy_stopped: greedy[i].stopped,
                cycle_orders: masses.as_ref().map(|m| m[i].cycle_orders),
                ln_cycle_mass: masses.as_ref().map(|m| m[i].ln_cycles),
                ln_reference_cycle_mass: self.reference.as_ref().map(|r| r[i]),
                ln_order_mass: masses.as_ref().map(|m| m[i].ln_orders),
            })
            .collect();
        Ok((parts, records))
    }
}

/// The generation columns of a [`CycleEpoch`].
struct CycleEpochParts {
    sampled: f64,
    greedy: f64,
    cycle: Option<f64>,
    reference: Option<f64>,
    orders: Option<f64>,
    holds: Option<f64>,
    excess: Option<f64>,
    restricted: Option<f64>,
    timing: Timing,
}

/// What an evaluation's decoding and enumeration cost.
#[derive(Clone, Copy)]
struct Timing {
    /// Tokens decoded (sampled and greedy).
    tokens: usize,
    decode: f64,
    enumerate: f64,
}

impl CycleEpochParts {
    fn of(
        sampled: &[Decoding],
        greedy: &[Decoding],
        masses: Option<&[OrderMass]>,
        reference: Option<&[f64]>,
        bound: f64,
        timing: Timing,
    ) -> CycleEpochParts {
        let rate = |d: &[Decoding]| d.iter().filter(|x| x.correct).count() as f64 / d.len() as f64;
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (mut holds, mut excess) = (None, None);
        if let (Some(m), Some(r)) = (masses, reference) {
            let ex: Vec<f64> = m
                .iter()
                .zip(r)
                .map(|(a, b)| a.ln_cycles - b - bound)
                .collect();
            holds = Some(ex.iter().filter(|&&e| e <= 0.0).count() as f64 / ex.len() as f64);
            excess = Some(ex.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        }
        CycleEpochParts {
            sampled: rate(sampled),
            greedy: rate(greedy),
            cycle: masses.map(|m| mean(m.iter().map(|x| x.ln_cycles.exp()).collect())),
            reference: reference.map(|r| mean(r.iter().map(|x| x.exp()).collect())),
            orders: masses.map(|m| mean(m.iter().map(|x| x.ln_orders.exp()).collect())),
            holds,
            excess,
            restricted: masses.map(|m| {
                m.iter()
                    .map(|x| (x.restricted_total - 1.0).abs())
                    .fold(0.0, f64::max)
            }),
            timing,
        }
    }
}

/// Accuracy (ties ½) and margins of a split from every sequence's reward.
fn split_scores(
    problem: &crate::lm::recipe::PreferenceProblem,
    rewards: &[f64],
    split: usize,
) -> (f64, f64, f64) {
    let s = &problem.splits[split];
    let m: Vec<f64> = s
        .chosen
        .iter()
        .zip(&s.rejected)
        .map(|(&c, &r)| rewards[c] - rewards[r])
        .collect();
    let metrics = split_metrics(&s.name, &m, 0.0);
    (
        metrics.exact_tie_accuracy,
        metrics.min_margin,
        metrics.mean_margin,
    )
}

impl<'a> Probe<'a> {
    /// The probe of the first `eval.prompts` test pairs (all where 0): their prompts' token ids
    /// under `template`, and every vertex order where the masses are exact.
    fn new(
        lm: &LanguageModel,
        template: &crate::lm::checkpoint::chat_template::ChatTemplate,
        file: &'a CycleFile,
        tokens: &'a CycleTokens,
        test: &'a [CyclePair],
    ) -> Result<Probe<'a>> {
        let count = match file.eval.prompts {
            0 => test.len(),
            k => k,
        };
        let pairs = &test[..count];
        Ok(Probe {
            file,
            tokens,
            pairs,
            prompts: pairs
                .iter()
                .map(|p| prompt_ids(lm, template, &p.graph.prompt()))
                .collect::<Result<_>>()?,
            orders: if file.exact() {
                Some(vertex_orders(file.data.vertices)?)
            } else {
                None
            },
            reference: None,
        })
    }
}

/// One reward model's training on the cycle pairs, from the pretrained `reference`.
struct RewardRun<'a> {
    reward: Reward,
    reference: &'a Reference,
    device: &'a Device,
    settings: Settings<'a>,
    problem: &'a crate::lm::recipe::PreferenceProblem,
}

impl RewardRun<'_> {
    /// Trains the model with the trainer ([`train_reward`]), recording each evaluation into
    /// `record` (for the IM-RM with generation and exact masses from `probe`) and, with
    /// checkpoints, into their `observed` copy; the first probe error ends the run.
    fn train(
        &self,
        probe: &mut Probe,
        record: &mut Observations,
        (checkpoints, observed): (&mut dyn Checkpoints, Option<&Observed>),
        on_event: &mut dyn FnMut(CycleEvent),
    ) -> Result<TrainRun> {
        let reward = self.reward;
        let start = std::time::Instant::now();
        let lm = self.reference.load(self.device)?;
        let loading = start.elapsed().as_secs_f64();
        // The observer's failure (generation, the exact masses) stops the training at once.
        let run = train_reward(
            reward,
            Mode::Full,
            &lm,
            self.settings,
            self.problem,
            checkpoints,
            &mut |e| match e {
                TrainEvent::Stage(s) => {
                    on_event(CycleEvent::Stage(Some(reward), s));
                    Ok(())
                }
                TrainEvent::Step(s) => {
                    on_event(CycleEvent::Step(reward, s));
                    Ok(())
                }
                TrainEvent::Scored { sequences, of } => {
                    on_event(CycleEvent::Scored(reward, sequences, of));
                    Ok(())
                }
                e @ TrainEvent::Resumed { steps, .. } => {
                    on_event(CycleEvent::Resumed(reward, steps, e.resumed_message()));
                    Ok(())
                }
                TrainEvent::Evaluated {
                    epoch,
                    step,
                    rewards,
                    model,
                    unembedding,
                } => {
                    self.observe(
                        probe,
                        record,
                        (epoch, step, rewards),
                        (model, unembedding),
                        on_event,
                    )?;
                    match observed {
                        Some(slot) => record.store(slot),
                        None => Ok(()),
                    }
                }
            },
        )?;
        // The trainer's time spans every process of a resumed run; this one's loading is added.
        Ok(TrainRun {
            seconds: run.seconds + loading,
            ..run
        })
    }

    /// Records one evaluation: both splits' scores, and for the IM-RM the probe's generations
    /// and masses under `model` with unembedding `u`.
    fn observe(
        &self,
        probe: &mut Probe,
        record: &mut Observations,
        (epoch, step, rewards): (usize, usize, &[f64]),
        (model, u): (&LanguageModel, &Tensor),
        on_event: &mut dyn FnMut(CycleEvent),
    ) -> Result<()> {
        let reward = self.reward;
        let scores = (
            split_scores(self.problem, rewards, 0),
            split_scores(self.problem, rewards, 1),
        );
        let parts = if reward == Reward::Imrm {
            on_event(CycleEvent::Stage(
                Some(reward),
                format!("generating and enumerating after epoch {epoch}"),
            ));
            let (p, r) = probe.measure(model, u, epoch, scores.1 .1)?;
            record.prompts.extend(r);
            record.reference_masses.clone_from(&probe.reference);
            Some(p)
        } else {
            None
        };
        record
            .epochs
            .push(CycleEpoch::of(reward, epoch, step, scores, parts.as_ref()));
        Ok(())
    }
}

impl CycleEpoch {
    /// The record of one evaluation: `(train, test)` scores as [`split_scores`] gives them, and
    /// the IM-RM's generation columns.
    fn of(
        reward: Reward,
        epoch: usize,
        step: usize,
        (train, test): ((f64, f64, f64), (f64, f64, f64)),
        parts: Option<&CycleEpochParts>,
    ) -> CycleEpoch {
        CycleEpoch {
            reward: reward.name().to_string(),
            epoch,
            step,
            train_accuracy: train.0,
            test_accuracy: test.0,
            min_test_margin: test.1,
            mean_test_margin: test.2,
            sampled_success: parts.map(|p| p.sampled),
            greedy_success: parts.map(|p| p.greedy),
            mean_cycle_mass: parts.and_then(|p| p.cycle),
            mean_reference_cycle_mass: parts.and_then(|p| p.reference),
            mean_order_mass: parts.and_then(|p| p.orders),
            bound_holds: parts.and_then(|p| p.holds),
            max_bound_excess: parts.and_then(|p| p.excess),
            max_restricted_error: parts.and_then(|p| p.restricted),
            generated_tokens: parts.map_or(0, |p| p.timing.tokens),
            generation_seconds: parts.map_or(0.0, |p| p.timing.decode),
            enumeration_seconds: parts.map_or(0.0, |p| p.timing.enumerate),
        }
    }
}

/// Runs the experiment of `file`. With the model trained from scratch, the initial and the
/// pretrained checkpoints are written into `folders` (`initial`, `reference`; created); a
/// pretrained `model.path` is read where it is. With `checkpoints`, resumable (the pretrained
/// reference, each reward model's training and the observations kept there); `on_event` sees
/// the stages and steps.
pub fn run_cycle(
    file: &CycleFile,
    folders: (&Path, &Path),
    device: &Device,
    mut checkpoints: Option<&mut CheckpointDir>,
    on_event: &mut dyn FnMut(CycleEvent),
) -> Result<CycleOutcome> {
    on_event(CycleEvent::Stage(None, "drawing the graphs".into()));
    let (train, test) = generate(&file.data)?;
    let kept = checkpoints.as_deref().map(|c| c.path().to_path_buf());
    let (reference, history, pretrain_seconds) =
        reference_model(file, folders, device, kept.as_deref(), on_event)?;
    let lm = reference.load(device)?;
    let tokens = reference.tokens(&lm, file.data.vertices)?;
    let problem = cycle_problem(&lm, &reference.template, &train, &test)?;
    tokens.check(&problem.sequences[0], &train[0].chosen)?;
    let mut probe = Probe::new(&lm, &reference.template, file, &tokens, &test)?;
    drop(lm);
    let observed = checkpoints.as_deref().map(CheckpointDir::observed);
    let mut record = match &observed {
        Some(slot) => Observations::restore(slot)?,
        None => Observations::default(),
    };
    probe.reference.clone_from(&record.reference_masses);
    let mut runs = checkpoints
        .as_deref()
        .map_or(Vec::new(), CheckpointDir::finished);
    for reward in [Reward::Imrm, Reward::Exrm].into_iter().skip(runs.len()) {
        let ctx = RewardRun {
            reward,
            reference: &reference,
            device,
            settings: file.settings(),
            problem: &problem,
        };
        let mut none = NoCheckpoints;
        let c: &mut dyn Checkpoints = match checkpoints.as_deref_mut() {
            Some(c) => c,
            None => &mut none,
        };
        let run = ctx.train(&mut probe, &mut record, (c, observed.as_ref()), on_event)?;
        if let Some(c) = checkpoints.as_deref_mut() {
            c.finish(&run)?;
        }
        runs.push(run);
    }
    Ok(CycleOutcome {
        file: file.clone(),
        pretrain: history,
        pretrain_seconds,
        runs,
        epochs: record.epochs,
        prompts: record.prompts,
        train,
        test,
        tokens,
    })
}

/// The reference model `π_ref` the reward models start from: its folder, the tokens loading it
/// adds, and the chat template its prompts and responses go through.
pub struct Reference {
    pub dir: PathBuf,
    pub added: Option<AddedTokens>,
    pub template: ChatTemplate,
    /// The from-scratch model's word-level tokens (a pretrained tokenizer's are read on load).
    words: Option<CycleTokens>,
}

impl Reference {
    /// A pretrained checkpoint as the official code prepares it: `update_tokenizer` (its own
    /// chat template, or the default one with its special tokens), then `<sep>` and
    /// `<edge_sep>` added as plain tokens, the vocabulary matrices resized (rows drawn from
    /// `seed`) to match.
    pub fn pretrained(dir: &Path, seed: u64) -> Result<Reference> {
        let date = parse_template_date(DEFAULT_TEMPLATE_DATE)?;
        let format = PromptFormat::of_checkpoint(dir, seed, date)?;
        let template = format
            .template
            .expect("a causal checkpoint's format has a template");
        let mut added = format.added.unwrap_or(AddedTokens {
            tokens: Vec::new(),
            plain: Vec::new(),
            seed,
        });
        added.plain = vec![SEP.to_string(), EDGE_SEP.to_string()];
        Ok(Reference {
            dir: dir.to_path_buf(),
            added: Some(added),
            template,
            words: None,
        })
    }

    /// The model, loaded for training and measuring (the differentiable forward).
    pub fn load(&self, device: &Device) -> Result<LanguageModel> {
        LanguageModel::load_with(&self.dir, device, Forward::Nets, self.added.as_ref())
    }

    /// The task's token ids in `lm` (this reference, loaded).
    fn tokens(&self, lm: &LanguageModel, vertices: usize) -> Result<CycleTokens> {
        match &self.words {
            Some(t) => Ok(t.clone()),
            None => CycleTokens::of_tokenizer(&lm.tokenizer, &self.template, vertices),
        }
    }
}

/// The reference model of `file`: `model.path` as it is, or the from-scratch model written
/// into `initial` and pretrained into `reference` (see [`pretrained`]); the pretraining's
/// history and seconds (none for a pretrained checkpoint).
fn reference_model(
    file: &CycleFile,
    (initial, reference): (&Path, &Path),
    device: &Device,
    kept: Option<&Path>,
    on_event: &mut dyn FnMut(CycleEvent),
) -> Result<(Reference, Vec<PretrainStep>, f64)> {
    if let Some(dir) = &file.model.path {
        file.check_model()?;
        return Ok((Reference::pretrained(dir, file.seed)?, Vec::new(), 0.0));
    }
    let words = write_initial_checkpoint(initial, file)?;
    let (history, seconds) = pretrained(file, (initial, reference), device, kept, on_event)?;
    let template = template_of(reference)?;
    let r = Reference {
        dir: reference.to_path_buf(),
        added: None,
        template,
        words: Some(words),
    };
    Ok((r, history, seconds))
}

/// The pretrained reference in `reference`: copied from the checkpoints in `kept` where a run
/// left it there, else pretrained from `initial` (and kept there); its history and seconds.
fn pretrained(
    file: &CycleFile,
    (initial, reference): (&Path, &Path),
    device: &Device,
    kept: Option<&Path>,
    on_event: &mut dyn FnMut(CycleEvent),
) -> Result<(Vec<PretrainStep>, f64)> {
    if let Some(saved) = kept
        .map(|k| saved_pretraining(k, reference))
        .transpose()?
        .flatten()
    {
        return Ok(saved);
    }
    on_event(CycleEvent::Stage(
        None,
        "pretraining the reference model".into(),
    ));
    let t0 = std::time::Instant::now();
    let history = pretrain(initial, reference, file, device, &mut |s| {
        on_event(CycleEvent::Pretrain(s))
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(k) = kept {
        save_pretraining(k, reference, &history, seconds)?;
    }
    Ok((history, seconds))
}
