//! The model a measurement reads: the pretrained one (a run's step 0, the EX-RM head drawn as
//! the trainer draws it), or one reward model of a run at a checkpoint kept with
//! `--keep-checkpoints`.

use crate::error::InputError;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::recipe::{RecipeFile, RunIdentity};
use crate::lm::train::epochs::{initial_head, restore, trained_vars, Mode};
use crate::lm::train::optimizers::Optimizers;
use crate::lm::train::resume::{StateFile, Weights};
use crate::lm::train::reward::Reward;
use anyhow::Result;
use candle_core::Var;
use std::path::{Path, PathBuf};

/// A run's checkpoint: `<OUT>.checkpoint/state-NNNNNN/`, its run's `run.json` beside it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: PathBuf,
    /// The run's model folder and config (from `run.json`).
    pub model: PathBuf,
    pub file: RecipeFile,
    /// The reward model the checkpoint trains, and its epoch and step.
    pub reward: Reward,
    pub epoch: usize,
    pub step: usize,
}

impl Checkpoint {
    /// Reads what `state` is: the run it belongs to (`../run.json`) and which of its reward
    /// models it holds. Full fine-tuning only (a head-mode checkpoint holds no body).
    pub fn open(state: &Path) -> Result<Checkpoint> {
        let input = |m: String| -> anyhow::Error { InputError(m).into() };
        let saved = StateFile::read(state)?;
        let run_json = state.parent().unwrap_or(Path::new(".")).join("run.json");
        let text = std::fs::read_to_string(&run_json).map_err(|e| {
            input(format!(
                "--checkpoint {}: cannot read its run's {}: {e}",
                state.display(),
                run_json.display()
            ))
        })?;
        let identity: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| input(format!("{}: not valid JSON: {e}", run_json.display())))?;
        let id = RunIdentity::of(&identity, &run_json)?;
        let runs = id.trained_in_order();
        let (mode, reward) = match (runs.get(saved.finished), &saved.saved) {
            (Some(&run), Some(_)) => run,
            _ => {
                return Err(input(format!(
                    "--checkpoint {}: it holds no reward model in training (written after one finished); take another state",
                    state.display()
                )))
            }
        };
        if mode != Mode::Full {
            return Err(input(format!(
                "--checkpoint {}: a {} checkpoint of the {}; lm-dynamics reads full fine-tuning checkpoints",
                state.display(),
                mode.name(),
                reward.name()
            )));
        }
        let p = &saved.saved.as_ref().expect("matched").progress;
        Ok(Checkpoint {
            state: state.to_path_buf(),
            model: id.model,
            file: id.config,
            reward,
            epoch: p.epoch - usize::from(p.steps_in_epoch == 0),
            step: p.history.len(),
        })
    }

    /// Sets `lm`'s parameters (and `head`, for an EX-RM) to the checkpoint's.
    pub fn load_into(&self, lm: &LanguageModel, head: &Var) -> Result<()> {
        let saved = StateFile::read(&self.state)?
            .saved
            .expect("checked when opened");
        let (vars, head_trained) = trained_vars(Mode::Full, self.reward, lm, None);
        let params = self.file.train.adamw.params();
        let mut optimizers = Optimizers::new(vars, head_trained.then_some(head), params, None)?;
        let Weights::Kept(tensors) = &saved.weights else {
            unreachable!("StateFile::read refuses a checkpoint in training without its weights")
        };
        restore(&saved.progress, tensors, &mut optimizers).map_err(|e| {
            InputError(format!(
                "--checkpoint {}: does not fit the model: {e:#}",
                self.state.display()
            ))
        })?;
        Ok(())
    }
}

/// The EX-RM head `u(0)` the trainer draws for `file`'s seed (the run's step 0).
pub fn initial_head_of(file: &RecipeFile, lm: &LanguageModel) -> Result<Var> {
    let std = file
        .train
        .head_init_std
        .unwrap_or(lm.initializer_range.unwrap_or(0.02));
    initial_head(file.seed, std, lm.dim, &lm.device)
}
