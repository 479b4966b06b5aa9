//! One vocabulary for training every real-model experiment (MATH.md §6): AdamW's
//! hyperparameters ([`AdamW`]), the epoch schedule of the recipe and the Hamiltonian-cycle
//! experiment ([`TrainConfig`], their `[train]` table) and the step schedule of `rmflow lm`'s full
//! fine-tuning ([`FinetuneConfig`], its `[finetune]` table: `[train]` there is the engine's
//! head-only flow). The three tables are read by one parser ([`TrainTable`]), so a field has one
//! name and one meaning everywhere; a field an experiment does not use is refused naming it.
//!
//! Aliases (older names that still parse): `batch_pairs` = `pairs_per_step`, `eval_every` =
//! `eval_every_steps`.

use crate::config::ConfigError;
use candle_nn::ParamsAdamW;
use serde::{Deserialize, Deserializer, Serialize};

/// τ of the tie-tolerant accuracy unless a config sets it (reward units).
pub const DEFAULT_TIE_TOLERANCE: f64 = 1e-6;

/// AdamW (decoupled weight decay; Adam at `weight_decay = 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// Learning rate of the EX-RM head; `None`: `lr`.
    #[serde(default)]
    pub head_lr: Option<f64>,
    /// Decoupled weight decay; it shrinks every row of `U`, unseen ones included.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamW {
    /// Adam at `lr` (no weight decay, β = (0.9, 0.999), ε = 1e-8: the paper's and PyTorch's).
    pub fn adam(lr: f64) -> AdamW {
        AdamW {
            lr,
            head_lr: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// candle's parameters (the body's learning rate).
    pub fn params(&self) -> ParamsAdamW {
        ParamsAdamW {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Domains, the fields named under `table`.
    pub fn validate(&self, table: &str) -> Result<(), ConfigError> {
        positive(table, "lr", self.lr)?;
        if let Some(h) = self.head_lr {
            positive(table, "head_lr", h)?;
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            field(table, name, (0.0..1.0).contains(&v), "must be in [0, 1)", v)?;
        }
        non_negative(table, "weight_decay", self.weight_decay)?;
        positive(table, "eps", self.eps)
    }
}

/// `[train]` of the recipe and the Hamiltonian-cycle experiment: AdamW, epochs of mini-batches
/// with gradient accumulation, the evaluation schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    /// IM-RM `β` (the paper: 0.01).
    pub beta: f64,
    #[serde(flatten)]
    pub adamw: AdamW,
    /// Passes over the training pairs (the paper: 50).
    pub epochs: usize,
    /// Pairs per optimizer step (the paper: 32 = 8 × 4 accumulation); the last step of an epoch
    /// takes what is left.
    pub pairs_per_step: usize,
    /// Pairs per forward/backward pass; gradients are accumulated over a step.
    pub micro_batch: usize,
    /// Standard deviation of the EX-RM head's initial entries; absent: the model's
    /// `initializer_range` (as Hugging Face initialises a new `score` head; 0.02 where
    /// config.json has none); 0 starts at the zero head.
    pub head_init_std: Option<f64>,
    /// Evaluate every split every this many epochs (and before the first, after the last).
    pub eval_every_epochs: usize,
    /// Sequences per forward pass when scoring (evaluation, reference log-probabilities).
    pub eval_batch: usize,
    /// Replicate the official code's flush (`utils/rm_utils.py:84-88`, [`super::flush`]): in
    /// every batch whose padded width has an empty column, the rows of maximal length lose their
    /// last token (the IM-RM drops its term, the EX-RM reads the token before it). Off: every
    /// response is scored whole, as the paper describes it.
    pub drop_last_token_of_longest: bool,
}

impl TrainConfig {
    /// The paper's recipe (`experiments/persona_paper.toml`): Adam at 1e-6, 50 epochs of 32 pairs
    /// in micro-batches of 8.
    pub fn recipe() -> TrainConfig {
        TrainConfig {
            beta: 0.01,
            adamw: AdamW::adam(1e-6),
            epochs: 50,
            pairs_per_step: 32,
            micro_batch: 8,
            head_init_std: None,
            eval_every_epochs: 10,
            eval_batch: 32,
            drop_last_token_of_longest: false,
        }
    }

    /// The Hamiltonian-cycle experiment (`experiments/ham_cycle.toml`): the official 15 epochs of
    /// 32 pairs (16 × 2 accumulation); Adam at 1e-4 (official: 1e-6 for Pythia-1B; a model of
    /// 4·10⁵ parameters needs more).
    pub fn cycle() -> TrainConfig {
        TrainConfig {
            adamw: AdamW::adam(1e-4),
            epochs: 15,
            micro_batch: 16,
            head_init_std: Some(0.02),
            eval_every_epochs: 1,
            eval_batch: 64,
            ..TrainConfig::recipe()
        }
    }

    /// Domains of every field (named `train.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("train", "beta", self.beta)?;
        self.adamw.validate("train")?;
        if let Some(v) = self.head_init_std {
            non_negative("train", "head_init_std", v)?;
        }
        for (name, v) in [
            ("epochs", self.epochs),
            ("pairs_per_step", self.pairs_per_step),
            ("micro_batch", self.micro_batch),
            ("eval_every_epochs", self.eval_every_epochs),
            ("eval_batch", self.eval_batch),
        ] {
            field("train", name, v >= 1, "must be ≥ 1", v)?;
        }
        Ok(())
    }

    /// Deserializes `[train]` over the recipe's defaults (serde `deserialize_with`).
    pub fn recipe_table<'de, D: Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
        TrainTable::deserialize(d)?
            .epochs_over(TrainConfig::recipe())
            .map_err(serde::de::Error::custom)
    }

    /// Deserializes `[train]` over the Hamiltonian-cycle experiment's defaults.
    pub fn cycle_table<'de, D: Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
        TrainTable::deserialize(d)?
            .epochs_over(TrainConfig::cycle())
            .map_err(serde::de::Error::custom)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::recipe()
    }
}

/// `[finetune]` of `rmflow lm` (full fine-tuning on single-token answers): AdamW steps, the
/// training pairs drawn per step, the evaluation steps. `β` is `lm.beta`, the head starts at 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneConfig {
    /// AdamW steps.
    pub steps: usize,
    #[serde(flatten)]
    pub adamw: AdamW,
    /// Training pairs per step, drawn without replacement per epoch (0 = all pairs every step).
    pub pairs_per_step: usize,
    /// Evaluate every split every this many steps (0 = only after the last step).
    pub eval_every_steps: usize,
    /// Further steps after which to evaluate (e.g. the first few).
    pub eval_at: Vec<usize>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            steps: 30,
            adamw: AdamW::adam(2e-5),
            pairs_per_step: 0,
            eval_every_steps: 0,
            eval_at: vec![],
        }
    }
}

impl FinetuneConfig {
    /// Domains of every field (named `finetune.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        field(
            "finetune",
            "steps",
            self.steps >= 1,
            "must be ≥ 1",
            self.steps,
        )?;
        self.adamw.validate("finetune")
    }

    /// Deserializes `[finetune]` over its defaults (serde `deserialize_with`).
    pub fn table<'de, D: Deserializer<'de>>(d: D) -> Result<FinetuneConfig, D::Error> {
        TrainTable::deserialize(d)?
            .steps_over(FinetuneConfig::default())
            .map_err(serde::de::Error::custom)
    }
}

/// Every field a training table may set, each optional (absent: the experiment's default): the
/// one vocabulary of [`TrainConfig`] and [`FinetuneConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTable {
    beta: Option<f64>,
    lr: Option<f64>,
    head_lr: Option<f64>,
    weight_decay: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    eps: Option<f64>,
    epochs: Option<usize>,
    steps: Option<usize>,
    #[serde(alias = "batch_pairs")]
    pairs_per_step: Option<usize>,
    micro_batch: Option<usize>,
    head_init_std: Option<f64>,
    eval_every_epochs: Option<usize>,
    #[serde(alias = "eval_every")]
    eval_every_steps: Option<usize>,
    eval_at: Option<Vec<usize>>,
    eval_batch: Option<usize>,
    drop_last_token_of_longest: Option<bool>,
}

impl TrainTable {
    /// AdamW's fields over `d`.
    fn adamw_over(&self, d: AdamW) -> AdamW {
        AdamW {
            lr: self.lr.unwrap_or(d.lr),
            head_lr: self.head_lr.or(d.head_lr),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            beta1: self.beta1.unwrap_or(d.beta1),
            beta2: self.beta2.unwrap_or(d.beta2),
            eps: self.eps.unwrap_or(d.eps),
        }
    }

    /// An epoch schedule: the set fields over `d`; a step-schedule field is refused.
    fn epochs_over(self, d: TrainConfig) -> Result<TrainConfig, String> {
        unused(
            &[
                ("steps", self.steps.is_some()),
                ("eval_every_steps", self.eval_every_steps.is_some()),
                ("eval_at", self.eval_at.is_some()),
            ],
            "an epoch schedule (`epochs`, `eval_every_epochs`)",
        )?;
        Ok(TrainConfig {
            beta: self.beta.unwrap_or(d.beta),
            adamw: self.adamw_over(d.adamw.clone()),
            epochs: self.epochs.unwrap_or(d.epochs),
            pairs_per_step: self.pairs_per_step.unwrap_or(d.pairs_per_step),
            micro_batch: self.micro_batch.unwrap_or(d.micro_batch),
            head_init_std: self.head_init_std.or(d.head_init_std),
            eval_every_epochs: self.eval_every_epochs.unwrap_or(d.eval_every_epochs),
            eval_batch: self.eval_batch.unwrap_or(d.eval_batch),
            drop_last_token_of_longest: self
                .drop_last_token_of_longest
                .unwrap_or(d.drop_last_token_of_longest),
        })
    }

    /// A step schedule: the set fields over `d`; an epoch-schedule field is refused.
    fn steps_over(self, d: FinetuneConfig) -> Result<FinetuneConfig, String> {
        unused(
            &[
                ("beta", self.beta.is_some()),
                ("epochs", self.epochs.is_some()),
                ("micro_batch", self.micro_batch.is_some()),
                ("head_init_std", self.head_init_std.is_some()),
                ("eval_every_epochs", self.eval_every_epochs.is_some()),
                ("eval_batch", self.eval_batch.is_some()),
                (
                    "drop_last_token_of_longest",
                    self.drop_last_token_of_longest.is_some(),
                ),
            ],
            "a step schedule (`steps`, `eval_every_steps`, `eval_at`; β is `lm.beta`)",
        )?;
        Ok(FinetuneConfig {
            steps: self.steps.unwrap_or(d.steps),
            adamw: self.adamw_over(d.adamw.clone()),
            pairs_per_step: self.pairs_per_step.unwrap_or(d.pairs_per_step),
            eval_every_steps: self.eval_every_steps.unwrap_or(d.eval_every_steps),
            eval_at: self.eval_at.unwrap_or(d.eval_at),
        })
    }
}

/// A parse error naming the first field set that the table's schedule does not use.
fn unused(fields: &[(&str, bool)], schedule: &str) -> Result<(), String> {
    match fields.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(format!(
            "field `{name}` is not used by this table, which trains by {schedule}"
        )),
        None => Ok(()),
    }
}

/// A field error on `table.name` unless `ok`.
pub(crate) fn field(
    table: &str,
    name: &str,
    ok: bool,
    expected: &'static str,
    got: impl ToString,
) -> Result<(), ConfigError> {
    if ok {
        return Ok(());
    }
    Err(ConfigError::Field {
        field: format!("{table}.{name}"),
        expected,
        got: got.to_string(),
        origin: None,
    })
}

/// `table.name` must be finite and > 0.
pub(crate) fn positive(table: &str, name: &str, v: f64) -> Result<(), ConfigError> {
    field(
        table,
        name,
        v > 0.0 && v.is_finite(),
        "must be a finite number > 0",
        v,
    )
}

/// `table.name` must be finite and ≥ 0.
pub(crate) fn non_negative(table: &str, name: &str, v: f64) -> Result<(), ConfigError> {
    field(
        table,
        name,
        v >= 0.0 && v.is_finite(),
        "must be a finite number ≥ 0",
        v,
    )
}

/// Errors if an entry appears in two of the named lists: a word on both sides makes its pairs
/// ties by construction, and an "unseen" word that is trained on is not unseen.
pub(crate) fn disjoint<T: PartialEq + std::fmt::Debug>(
    lists: &[(&str, &[T])],
) -> Result<(), ConfigError> {
    for (i, (a, xs)) in lists.iter().enumerate() {
        for (b, ys) in &lists[i + 1..] {
            if let Some(x) = xs.iter().find(|x| ys.contains(x)) {
                return Err(ConfigError::Field {
                    field: b.to_string(),
                    expected: "must not share an entry with the other lists",
                    got: format!("{x:?}, also in `{a}`"),
                    origin: None,
                });
            }
        }
    }
    Ok(())
}
