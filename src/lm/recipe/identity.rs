//! What a recipe run trains, as its checkpoint folder's `run.json` records it (written when the
//! run starts): read back by `lm-recipe --resume`, `lm-progress --pairs` and `lm-dynamics`.

use super::config::RecipeFile;
use super::run::training_order;
use crate::error::InputError;
use crate::lm::train::epochs::Mode;
use crate::lm::train::reward::Reward;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fields of a recipe run's `run.json` that say what it trains (the rest: the rmflow version
/// and the model files' digests, which `--resume` compares).
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// The model folder.
    pub model: PathBuf,
    /// The resolved config.
    pub config: RecipeFile,
    pub modes: Vec<Mode>,
    pub rewards: Vec<Reward>,
}

impl RunIdentity {
    /// `identity`, read from `origin` (the `run.json` named in errors); an input error naming
    /// the first field missing or invalid.
    pub fn of(identity: &Value, origin: &Path) -> Result<RunIdentity, InputError> {
        Ok(RunIdentity {
            model: field(identity, origin, "model")?,
            config: field(identity, origin, "config")?,
            modes: field(identity, origin, "modes")?,
            rewards: field(identity, origin, "rewards")?,
        })
    }

    /// The reward models in the order the run trains them.
    pub fn trained_in_order(&self) -> Vec<(Mode, Reward)> {
        training_order(&self.modes, &self.rewards)
    }
}

/// `run.json`'s field `name`, parsed.
fn field<T: DeserializeOwned>(
    identity: &Value,
    origin: &Path,
    name: &str,
) -> Result<T, InputError> {
    let value = identity.get(name).ok_or_else(|| {
        InputError(format!(
            "{}: no `{name}` (not an lm-recipe run?)",
            origin.display()
        ))
    })?;
    serde_json::from_value(value.clone())
        .map_err(|e| InputError(format!("{}: `{name}`: {e}", origin.display())))
}
