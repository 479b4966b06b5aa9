//! Checkpoints a run resumes from (`--checkpoint-every`, `--resume`): every trained tensor, both
//! Adam moments and step counts, the position in the epoch loop (the pairs' shuffle is replayed
//! from the seed to it), and the steps, evaluations and rewards so far, with the reward models a
//! run already finished. A resumed run's outputs equal an uninterrupted run's bit for bit (wall
//! times aside; `tests/lm_resume.rs` kills runs at several points, during a checkpoint's write
//! included).
//!
//! A run's checkpoints live in `<OUT>.checkpoint/` beside its output folder:
//! - `run.json`: what the run is (model, config, reward models, modes), written before training;
//! - `state-NNNNNN/`: one checkpoint, `progress.cbor` (CBOR: exact f64, NaN included; the
//!   SHA-256 of the tensors among them) and `tensors.safetensors` (the trained variables and the
//!   optimizers' moments, f32). A checkpoint kept without its tensors (they are most of its
//!   size) is resumed with `--replay`: the recorded steps are run again from the model, each
//!   checked against its record, and the rebuilt tensors against the digest;
//! - `LATEST`: the name of the newest complete checkpoint;
//! - `reference-imrm-<mode>.cbor`: the IM-RM's `ln π_ref` tables, written once computed
//!   ([`super::reference`]), read back by a resumed run.
//!
//! A checkpoint is written into `state-NNNNNN.tmp/`, renamed into place, and only then named
//! by `LATEST` (itself replaced by a rename), so a kill at any moment leaves the previous
//! checkpoint valid; older ones are removed after (unless kept). The folder is removed when the
//! run's output is committed.

use super::adamw::AdamState;
use super::epochs::{Extraction, Mode, TrainRun, TrainStep};
use super::evaluate::Evaluation;
use super::machine::{Machine, MachineSpan, Spans};
use super::reward::Reward;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Where one reward model's training stands: the epoch loop's position and what it produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress (1-based) and how many of its optimizer steps are done.
    pub epoch: usize,
    pub steps_in_epoch: usize,
    pub history: Vec<TrainStep>,
    #[serde(with = "stored")]
    pub evaluations: Vec<Evaluation>,
    /// The last evaluation's reward of every sequence.
    pub rewards: Vec<f64>,
    pub step_seconds: f64,
    /// Wall time of this training in the processes before this one, up to the checkpoint it
    /// resumed from (0 from the start); a checkpoint stores it with its own process's time
    /// added. Checkpoints written before it existed read as 0.
    #[serde(default)]
    pub seconds: f64,
    /// Each optimizer's step count (the body's, then the head's).
    pub adam_steps: Vec<i32>,
    /// SHA-256 of the checkpoint's tensors ([`tensors_digest`]): a restore checks the file
    /// against it, and `--replay` the weights it rebuilt. Checkpoints written before it existed
    /// carry none.
    #[serde(default)]
    pub digest: Option<String>,
    /// The machines the steps ran on, each from the step where it took over
    /// ([`super::machine`]); empty in checkpoints written before it existed.
    #[serde(default)]
    pub machines: Vec<MachineSpan>,
    /// The replayed steps that departed from their record (`--replay --allow-drift`); empty
    /// in a run replayed bit for bit or not at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay_drift: Vec<Drift>,
}

/// How `--replay` treats a replayed step that departs from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Stop with [`ReplayMismatch`] (exit code 4): the rebuilt weights are the run's, bit for
    /// bit, or there are none.
    Exact,
    /// Go on with the rebuilt weights, each departure kept as a [`Drift`] in the run's record
    /// and outputs (`--allow-drift`: another CPU's kernels round differently).
    Drifting,
}

/// A replayed step that departed from its record, kept (`--replay --allow-drift`): the run
/// went on from weights rebuilt on other kernels, which its evaluations after `step` read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The optimizer step (1-based), or the last one where the weights after it differ.
    pub step: usize,
    /// What differs (`the loss`, `the batch accuracy`, `the weights' SHA-256 after it`).
    pub what: String,
    pub recorded: String,
    pub replayed: String,
}

/// A saved training: its progress and what the checkpoint holds of its weights.
pub struct Saved {
    pub progress: Progress,
    pub weights: Weights,
}

/// A checkpoint's weights.
pub enum Weights {
    /// `tensors.safetensors`: the trained variables `var.K` and the optimizers' moments
    /// `adam.J.m.K` / `adam.J.v.K`.
    Kept(HashMap<String, Tensor>),
    /// Gone (the record was kept without its largest file, e.g. committed after a session on a
    /// machine that did not outlive it): `--replay` rebuilds them by re-running the recorded
    /// optimizer steps from the model, each checked against its record.
    Lost,
}

/// `--replay` computed something other than the checkpoint's record, so the weights it rebuilt
/// are not the run's: exit code 4 (another build, or a CPU with other kernels or cache
/// geometry than the run's, can round differently).
#[derive(Debug, thiserror::Error)]
#[error(
    "--replay: step {step}: {what} is {replayed}, the record says {recorded}; this binary on this machine does not rebuild the run's weights (replay with the build that ran it, on a CPU with the same kernels and caches). The record's steps ran {}; this machine is {this}",
    Spans(.recorded_on)
)]
pub struct ReplayMismatch {
    /// The optimizer step (1-based) whose record differs, or after which the weights do.
    pub step: usize,
    /// What differs: the step's position (epoch, pairs), loss or batch accuracy, or after the
    /// last step the optimizers' step counts or the weights' SHA-256.
    pub what: &'static str,
    pub recorded: String,
    pub replayed: String,
    /// The machines the record's steps ran on, and the one that replayed them.
    pub recorded_on: Vec<MachineSpan>,
    pub this: Machine,
}

/// SHA-256 (hex) of named tensors, in name order: each name, shape and f32 values
/// (little-endian). Equal digests mean bit-identical weights and moments.
pub fn tensors_digest<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((t.dims().len() as u64).to_le_bytes());
        for &d in t.dims() {
            h.update((d as u64).to_le_bytes());
        }
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        for chunk in values.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.update(&bytes);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The optimizers' states from a checkpoint's `tensors` and step counts `steps` (`counts[j]`
/// variables in optimizer `j`).
pub fn adam_states(
    tensors: &HashMap<String, Tensor>,
    steps: &[i32],
    counts: &[usize],
) -> Result<Vec<AdamState>> {
    let vec = |name: String| -> Result<Vec<f32>> {
        let t = tensors
            .get(&name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    if steps.len() != counts.len() {
        bail!(
            "the checkpoint has {} optimizers, this run {}",
            steps.len(),
            counts.len()
        );
    }
    let mut out = Vec::new();
    for (j, (&step, &n)) in steps.iter().zip(counts).enumerate() {
        let moments = (0..n)
            .map(|k| {
                Ok((
                    vec(format!("adam.{j}.m.{k}"))?,
                    vec(format!("adam.{j}.v.{k}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(AdamState { step, moments });
    }
    Ok(out)
}

/// The tensors of a checkpoint: the trained variables and the optimizers' moments.
pub fn state_tensors(vars: &[Tensor], adam: &[AdamState]) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = vars
        .iter()
        .enumerate()
        .map(|(k, v)| (format!("var.{k}"), v.clone()))
        .collect();
    for (j, a) in adam.iter().enumerate() {
        for (k, (m, v)) in a.moments.iter().enumerate() {
            out.push((
                format!("adam.{j}.m.{k}"),
                Tensor::from_slice(m, m.len(), &Device::Cpu)?,
            ));
            out.push((
                format!("adam.{j}.v.{k}"),
                Tensor::from_slice(v, v.len(), &Device::Cpu)?,
            ));
        }
    }
    Ok(out)
}

/// What the trainer asks of a run's checkpointing (the observer of argmin, for resumable runs).
pub trait Checkpoints {
    /// The saved training of the reward model about to be trained, if the run resumes it.
    fn resumed(&mut self) -> Result<Option<Saved>>;
    /// Whether to save after `epoch`.
    fn due(&self, epoch: usize) -> bool;
    /// Whether a stop was asked for (SIGTERM): save after the current step, then stop.
    fn stop_requested(&self) -> bool;
    /// Saves a checkpoint of the reward model in training.
    fn save(&mut self, progress: &Progress, tensors: Vec<(String, Tensor)>) -> Result<()>;
    /// Where the run keeps what it computes once under `name` (the IM-RM's reference tables)
    /// for a resumed process to read back; `None` where it keeps nothing.
    fn kept_path(&self, name: &str) -> Option<PathBuf>;
    /// How a replay of lost weights treats a step that departs from its record.
    fn replay(&self) -> Replay {
        Replay::Exact
    }
}

/// No checkpoints (tests, and runs that do not ask for them).
pub struct NoCheckpoints;

impl Checkpoints for NoCheckpoints {
    fn resumed(&mut self) -> Result<Option<Saved>> {
        Ok(None)
    }
    fn due(&self, _epoch: usize) -> bool {
        false
    }
    fn stop_requested(&self) -> bool {
        false
    }
    fn save(&mut self, _progress: &Progress, _tensors: Vec<(String, Tensor)>) -> Result<()> {
        Ok(())
    }
    fn kept_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

/// A finished reward model's training, kept in every later checkpoint ([`TrainRun`] with its
/// rewards, which its own serialization leaves out).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finished {
    mode: Mode,
    reward: Reward,
    parameters: usize,
    history: Vec<TrainStep>,
    #[serde(with = "stored")]
    evaluations: Vec<Evaluation>,
    rewards: Vec<f64>,
    seconds: f64,
    step_seconds: f64,
    extraction: Option<Extraction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replay_drift: Vec<Drift>,
}

impl Finished {
    fn of(r: &TrainRun) -> Finished {
        Finished {
            mode: r.mode,
            reward: r.reward,
            parameters: r.parameters,
            history: r.history.clone(),
            evaluations: r.evaluations.clone(),
            rewards: r.rewards.clone(),
            seconds: r.seconds,
            step_seconds: r.step_seconds,
            extraction: r.extraction,
            replay_drift: r.replay_drift.clone(),
        }
    }

    fn run(&self) -> TrainRun {
        TrainRun {
            mode: self.mode,
            reward: self.reward,
            parameters: self.parameters,
            history: self.history.clone(),
            evaluations: self.evaluations.clone(),
            rewards: self.rewards.clone(),
            seconds: self.seconds,
            step_seconds: self.step_seconds,
            extraction: self.extraction,
            replay_drift: self.replay_drift.clone(),
        }
    }
}

/// Evaluations as a checkpoint stores them: each split's parts as fields (the output's
/// flattened form repeats the key `split`, which reads back ambiguously).
mod stored {
    use crate::experiment::observables::{RewardSummary, SplitMetrics};
    use crate::lm::train::alignment::Alignment;
    use crate::lm::train::evaluate::{
        Evaluation, ImplicitParts, SplitEvaluation, TokenContribution,
    };
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    struct Split {
        accuracy: SplitMetrics,
        rewards: RewardSummary,
        #[serde(default)]
        loss: f64,
        mean_reward_by_answer: BTreeMap<String, f64>,
        implicit_parts: Option<ImplicitParts>,
        implicit_tokens: Option<Vec<TokenContribution>>,
    }

    #[derive(Serialize, Deserialize)]
    struct Stored {
        epoch: usize,
        step: usize,
        splits: Vec<Split>,
        #[serde(default)]
        representation_alignment: Vec<Alignment>,
        #[serde(default)]
        rewards: Vec<f64>,
        #[serde(default)]
        seconds: f64,
        #[serde(default)]
        tokens: usize,
    }

    pub fn serialize<S: Serializer>(v: &[Evaluation], s: S) -> Result<S::Ok, S::Error> {
        let stored: Vec<Stored> = v
            .iter()
            .map(|e| Stored {
                epoch: e.epoch,
                step: e.step,
                representation_alignment: e.representation_alignment.clone(),
                rewards: e.rewards.clone(),
                seconds: e.seconds,
                tokens: e.tokens,
                splits: e
                    .splits
                    .iter()
                    .map(|x| Split {
                        accuracy: x.accuracy.clone(),
                        rewards: x.rewards.clone(),
                        loss: x.loss,
                        mean_reward_by_answer: x.mean_reward_by_answer.clone(),
                        implicit_parts: x.implicit_parts.clone(),
                        implicit_tokens: x.implicit_tokens.clone(),
                    })
                    .collect(),
            })
            .collect();
        stored.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Evaluation>, D::Error> {
        let stored = Vec::<Stored>::deserialize(d)?;
        Ok(stored
            .into_iter()
            .map(|e| Evaluation {
                epoch: e.epoch,
                step: e.step,
                representation_alignment: e.representation_alignment,
                rewards: e.rewards,
                seconds: e.seconds,
                tokens: e.tokens,
                splits: e
                    .splits
                    .into_iter()
                    .map(|x| SplitEvaluation {
                        accuracy: x.accuracy,
                        rewards: x.rewards,
                        loss: x.loss,
                        mean_reward_by_answer: x.mean_reward_by_answer,
                        implicit_parts: x.implicit_parts,
                        implicit_tokens: x.implicit_tokens,
                    })
                    .collect(),
            })
            .collect())
    }
}

/// `progress.cbor`: the finished reward models, the one in training, and what the experiment's
/// observer measured so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    finished: Vec<Finished>,
    current: Option<Progress>,
    #[serde(default)]
    observed: Option<Vec<u8>>,
}

/// What an experiment measures beside the trainer (the cycle's generations and masses), as CBOR
/// bytes it encodes itself: shared between the observer, which replaces it after each
/// evaluation, and the checkpoints, which save it with every state (the trainer holds the
/// checkpoints while the observer runs, hence the cell).
pub type Observed = Rc<RefCell<Option<Vec<u8>>>>;

/// The checkpoints of a run that trains several reward models in turn, in `<OUT>.checkpoint/`.
pub struct CheckpointDir {
    dir: PathBuf,
    every: usize,
    keep_all: bool,
    finished: Vec<Finished>,
    resume: Option<Saved>,
    written: usize,
    observed: Observed,
    replay: Replay,
}

/// Whether `dir` holds what a run resumes from: a checkpoint, or what an experiment kept there
/// (the cycle's pretrained reference); `run.json` and unfinished `*.tmp` writes alone are not.
fn holds_a_run(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        name != "run.json" && !name.ends_with(".tmp")
    })
}

/// The checkpoint folder of the run whose output is `out`.
pub fn checkpoint_dir_of(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    out.with_file_name(name)
}

/// One checkpoint's progress (`state_dir` = `state-NNNNNN/`).
fn read_progress(state_dir: &Path) -> Result<RunState> {
    let bytes = std::fs::read(state_dir.join("progress.cbor"))
        .with_context(|| format!("cannot read {}", state_dir.display()))?;
    ciborium::from_reader(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: unreadable progress: {e}", state_dir.display()))
}

/// One checkpoint's progress and weights (`state_dir` = `state-NNNNNN/`): [`Weights::Lost`]
/// where its `tensors.safetensors` is gone; an input error where the file's digest is not the
/// record's.
fn read_state(state_dir: &Path) -> Result<(RunState, Weights)> {
    let state = read_progress(state_dir)?;
    let path = state_dir.join(TENSORS_FILE);
    if !path.exists() {
        return Ok((state, Weights::Lost));
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(recorded) = state.current.as_ref().and_then(|p| p.digest.as_ref()) {
        let found = tensors_digest(&tensors)?;
        if found != *recorded {
            return Err(crate::error::InputError(format!(
                "{}: damaged (its tensors' SHA-256 is {found}, the checkpoint's record says {recorded})",
                path.display()
            ))
            .into());
        }
    }
    Ok((state, Weights::Kept(tensors)))
}

/// A checkpoint's weights file (the largest by far: a record kept without it is `--replay`ed).
pub const TENSORS_FILE: &str = "tensors.safetensors";

/// Why a checkpoint folder's run files could not be read ([`read_run_files`]).
#[derive(Debug)]
enum RunFileError {
    /// `run.json` is missing or unreadable (its path, the reason).
    NoIdentity(PathBuf, std::io::Error),
    /// `run.json` is not JSON (its path, the parser's message).
    BadIdentity(PathBuf, serde_json::Error),
}

impl std::fmt::Display for RunFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunFileError::NoIdentity(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            RunFileError::BadIdentity(p, e) => write!(f, "{} is not valid JSON: {e}", p.display()),
        }
    }
}

/// A checkpoint folder's `run.json` and its newest checkpoint (`LATEST`: none before the first
/// is written), as `--resume` and `lm-progress` both read them.
fn read_run_files(dir: &Path) -> Result<(serde_json::Value, Option<PathBuf>), RunFileError> {
    let p = dir.join("run.json");
    let text = std::fs::read_to_string(&p).map_err(|e| RunFileError::NoIdentity(p.clone(), e))?;
    let identity = serde_json::from_str(&text).map_err(|e| RunFileError::BadIdentity(p, e))?;
    let latest = std::fs::read_to_string(dir.join("LATEST"))
        .ok()
        .map(|name| dir.join(name.trim()));
    Ok((identity, latest))
}

/// What the newest checkpoint of a run holds, read without its tensors: a long run read before
/// it ends (`rmflow lm-progress`).
pub struct RunSoFar {
    /// The checkpoint read (`<OUT>.checkpoint/state-NNNNNN/`).
    pub state: PathBuf,
    /// The run's `run.json`.
    pub identity: serde_json::Value,
    /// The reward models finished before the checkpoint, in order.
    pub finished: Vec<TrainRun>,
    /// The reward model in training, where there is one.
    pub current: Option<Progress>,
    /// The experiment's observer state (the cycle's records), as it encoded it.
    pub observed: Option<Vec<u8>>,
}

impl RunSoFar {
    /// The run's `run.json` (beside its checkpoints).
    pub fn run_json(&self) -> PathBuf {
        self.state
            .parent()
            .unwrap_or(Path::new("."))
            .join("run.json")
    }

    /// The newest checkpoint of the run whose `--out` is `out`; an input error naming the
    /// folder where it has none.
    pub fn read(out: &Path) -> Result<RunSoFar> {
        let dir = checkpoint_dir_of(out);
        let input = |m: String| -> anyhow::Error { crate::error::InputError(m).into() };
        let (identity, latest) = read_run_files(&dir).map_err(|e| {
            input(match e {
                RunFileError::NoIdentity(_, e) => format!(
                    "{}: no run's checkpoints ({e}); give the --out folder of a run started with checkpoints",
                    dir.display()
                ),
                e => e.to_string(),
            })
        })?;
        let state = latest.ok_or_else(|| {
            input(format!(
                "{}: no checkpoint written yet (the first follows the first evaluation)",
                dir.display()
            ))
        })?;
        let s = read_progress(&state).map_err(|e| input(format!("{e:#}")))?;
        Ok(RunSoFar {
            state,
            identity,
            finished: s.finished.iter().map(Finished::run).collect(),
            current: s.current,
            observed: s.observed,
        })
    }
}

/// A checkpoint read on its own (`lm-dynamics --checkpoint`): how many of the run's reward
/// models were finished before it, and the training it holds (none where it was written
/// between two reward models).
pub struct StateFile {
    pub finished: usize,
    pub saved: Option<Saved>,
}

impl StateFile {
    /// Reads `state_dir` (`<OUT>.checkpoint/state-NNNNNN/`); an input error naming it where it
    /// is not a checkpoint.
    pub fn read(state_dir: &Path) -> Result<StateFile> {
        if !state_dir.join("progress.cbor").is_file() {
            return Err(crate::error::InputError(format!(
                "--checkpoint {}: not a checkpoint (no progress.cbor; give a state-NNNNNN folder of a run's .checkpoint folder, kept with --keep-checkpoints)",
                state_dir.display()
            ))
            .into());
        }
        let (state, weights) = read_state(state_dir)
            .map_err(|e| crate::error::InputError(format!("--checkpoint: {e:#}")))?;
        if matches!(weights, Weights::Lost) && state.current.is_some() {
            return Err(crate::error::InputError(format!(
                "--checkpoint {}: its {TENSORS_FILE} is gone, so it holds no weights to read",
                state_dir.display()
            ))
            .into());
        }
        Ok(StateFile {
            finished: state.finished.len(),
            saved: state.current.map(|progress| Saved { progress, weights }),
        })
    }
}

impl CheckpointDir {
    /// A new run's checkpoints every `every` epochs (0: none but SIGTERM's) in `dir`, which must
    /// not hold another run's (`--resume` continues one); `identity` is written as `run.json`.
    pub fn create(
        dir: &Path,
        identity: &serde_json::Value,
        every: usize,
        keep_all: bool,
    ) -> Result<CheckpointDir> {
        if holds_a_run(dir) {
            return Err(crate::error::InputError(format!(
                "{} holds the checkpoints of an unfinished run: continue it with --resume, or remove the folder",
                dir.display()
            ))
            .into());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        replace_file(
            &dir.join("run.json"),
            serde_json::to_string_pretty(identity)?.as_bytes(),
        )?;
        Ok(CheckpointDir::new(dir, every, keep_all, Vec::new(), None))
    }

    /// The run in `dir` resumed from its newest checkpoint; also its `run.json`. A checkpoint
    /// whose weights are gone is refused (an input error naming the file) unless `replay` says
    /// how to rebuild them.
    pub fn open(
        dir: &Path,
        every: usize,
        keep_all: bool,
        replay: Option<Replay>,
    ) -> Result<(CheckpointDir, serde_json::Value)> {
        let (identity, latest) =
            read_run_files(dir).map_err(|e| crate::error::InputError(format!("--resume: {e}")))?;
        let (finished, resume, written, observed) = match latest {
            None => (Vec::new(), None, 0, None),
            Some(state_dir) => {
                let (state, weights) = read_state(&state_dir)?;
                if let (Weights::Lost, Some(p), None) = (&weights, &state.current, replay) {
                    return Err(crate::error::InputError(format!(
                        "--resume: {} is gone, so the checkpoint holds the record of the run without its weights; --replay rebuilds them by re-running its {} recorded optimizer steps from the model, each checked against the record",
                        state_dir.join(TENSORS_FILE).display(),
                        p.history.len()
                    ))
                    .into());
                }
                let written = state_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("state-"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let resume = state.current.map(|progress| Saved { progress, weights });
                (state.finished, resume, written, state.observed)
            }
        };
        let mut c = CheckpointDir::new(dir, every, keep_all, finished, resume);
        c.written = written;
        c.replay = replay.unwrap_or(Replay::Exact);
        *c.observed.borrow_mut() = observed;
        Ok((c, identity))
    }

    fn new(
        dir: &Path,
        every: usize,
        keep_all: bool,
        finished: Vec<Finished>,
        resume: Option<Saved>,
    ) -> CheckpointDir {
        // SIGTERM (Slurm preemption, `kill`) now stops the run with a checkpoint (exit 5).
        catch_sigterm();
        CheckpointDir {
            dir: dir.to_path_buf(),
            every,
            keep_all,
            finished,
            resume,
            written: 0,
            observed: Rc::default(),
            replay: Replay::Exact,
        }
    }

    /// The experiment's observer state ([`Observed`]): restored on `--resume`, saved with every
    /// checkpoint.
    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }

    /// The folder the checkpoints are in (an experiment keeps what it builds once there, e.g.
    /// the cycle's pretrained reference).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The reward models finished before the run was resumed, in order, with their rewards.
    pub fn finished(&self) -> Vec<TrainRun> {
        self.finished.iter().map(Finished::run).collect()
    }

    /// Records a finished reward model (saved with the next checkpoint, and at once).
    pub fn finish(&mut self, run: &TrainRun) -> Result<()> {
        self.finished.push(Finished::of(run));
        self.write(None, Vec::new())
    }

    /// Whether no checkpoint was written (nothing to resume from).
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Removes the folder (the run's output is committed).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    /// Writes a checkpoint (see the module doc for the order that makes it atomic); on an error
    /// (a full disk) the partial one is removed and the previous one stays the newest.
    fn write(&mut self, current: Option<&Progress>, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let name = format!("state-{:06}", self.written + 1);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let result = self.write_into(&tmp, &name, current, tensors);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            return result;
        }
        self.written += 1;
        if !self.keep_all {
            self.remove_older(&name);
        }
        Ok(())
    }

    /// The checkpoint's files into `tmp`, then renamed to `name` and named by `LATEST`.
    fn write_into(
        &self,
        tmp: &Path,
        name: &str,
        current: Option<&Progress>,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let _ = std::fs::remove_dir_all(tmp);
        std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let state = RunState {
            finished: self.finished.clone(),
            current: current.cloned(),
            observed: self.observed.borrow().clone(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&state, &mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot encode the checkpoint: {e}"))?;
        write_synced(&tmp.join("progress.cbor"), &bytes)?;
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        let path = tmp.join(TENSORS_FILE);
        candle_core::safetensors::save(&map, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(&path)?.sync_all()?;
        test_hook("checkpoint-write", self.written + 1);
        let done = self.dir.join(name);
        std::fs::rename(tmp, &done).with_context(|| format!("cannot rename {}", tmp.display()))?;
        replace_file(&self.dir.join("LATEST"), name.as_bytes())
    }

    /// Removes every checkpoint but `keep`.
    fn remove_older(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("state-") && name != keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Checkpoints for CheckpointDir {
    fn resumed(&mut self) -> Result<Option<Saved>> {
        Ok(self.resume.take())
    }

    fn replay(&self) -> Replay {
        self.replay
    }

    fn due(&self, epoch: usize) -> bool {
        self.every > 0 && epoch % self.every == 0
    }

    fn stop_requested(&self) -> bool {
        sigterm_received()
    }

    fn save(&mut self, progress: &Progress, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.write(Some(progress), tensors)
    }

    fn kept_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.join(name))
    }
}

/// The process's SIGTERM flag (Slurm preemption, `kill`), registered by the first run with
/// checkpoints; a process without one keeps SIGTERM's default (it terminates).
static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Registers the SIGTERM flag (once per process).
fn catch_sigterm() {
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()) {
            eprintln!(
                "warning: SIGTERM cannot be caught ({e}): a kill ends the run without a checkpoint"
            );
        }
        stop
    });
}

/// Whether SIGTERM arrived since [`catch_sigterm`].
fn sigterm_received() -> bool {
    STOP.get().is_some_and(|s| s.load(Ordering::Relaxed))
}

/// Stops a long stage without optimizer steps (scoring every sequence for the reference tables,
/// an evaluation or the frozen features) once a run with checkpoints was sent SIGTERM: an [`Interrupted`] error
/// (exit code 5) naming `stage`. The run resumes from its newest checkpoint, or from the start
/// with what it kept (the reference tables, the cycle's pretrained reference). A step in
/// progress finishes instead, and is saved ([`Checkpoints::stop_requested`]).
///
/// [`Interrupted`]: crate::error::Interrupted
pub fn interrupt_point(stage: &str) -> Result<()> {
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    test_hook(
        "interrupt-point",
        REACHED.fetch_add(1, Ordering::Relaxed) + 1,
    );
    if sigterm_received() {
        return Err(crate::error::Interrupted(format!(
            "stopped by SIGTERM while {stage}; --resume continues from the newest checkpoint (or from the start, with what the run kept)"
        ))
        .into());
    }
    Ok(())
}

/// `bytes` into `path`, synced to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `bytes` into `path` through a synced temporary and a rename.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))
}

/// Tests' kill points: `RMFLOW_TEST_ABORT=EVENT:N` aborts the process (no cleanup, as SIGKILL)
/// at the `N`-th `event` (`step`: an optimizer step done; `checkpoint-write`: a checkpoint's
/// files written but not yet renamed into place); `RMFLOW_TEST_SIGTERM=EVENT:N` sends it SIGTERM
/// there instead (`interrupt-point`: an [`interrupt_point`] reached).
/// The variables are read once per process (the hook sits on the step loop).
pub fn test_hook(event: &str, n: usize) {
    static AT: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();
    let (abort, term) = AT.get_or_init(|| {
        (
            std::env::var("RMFLOW_TEST_ABORT").ok(),
            std::env::var("RMFLOW_TEST_SIGTERM").ok(),
        )
    });
    let here = format!("{event}:{n}");
    if abort.as_deref() == Some(here.as_str()) {
        std::process::abort();
    }
    if term.as_deref() == Some(here.as_str()) {
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
    }
}
