//! The real-model config (`experiments/persona.toml`): the `[lm]` table and the whole file,
//! validated on load; the statements files it names.

use crate::config::{read_toml, ConfigError};
use crate::lm::data::statements::read_statements;
use crate::lm::train::config::disjoint;
use crate::lm::train::config::{field, positive, FinetuneConfig};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[lm]` table of a real-model config (`experiments/persona.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSpec {
    /// Statements file, one per line (`#` comments), relative to the working directory.
    pub statements: PathBuf,
    /// Optional statements the persona would *not* say: their pairs prefer the `*_rejected`
    /// answers (a control: no answer-independent shift can rank both kinds).
    #[serde(default)]
    pub rejected_statements: Option<PathBuf>,
    /// Consecutive lines sharing a behaviour (phrasings); train/eval split by groups of this size.
    pub group_size: usize,
    /// Fraction of groups used for training.
    pub train_fraction: f64,
    /// Prompt template for training and the `seen`/`unseen` splits; `{statement}` is replaced.
    pub question: String,
    /// Prompt template of the `domain` split (a different framing).
    pub domain_question: String,
    /// Response prefixes placed before the `[MASK]` slot (drawn per pair).
    pub prefixes: Vec<String>,
    pub train_chosen: Vec<String>,
    pub train_rejected: Vec<String>,
    pub unseen_chosen: Vec<String>,
    pub unseen_rejected: Vec<String>,
    /// IM-RM `β`.
    pub beta: f64,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Causal checkpoints with a chat template (`tokenizer_config.json`): the prompt is the
    /// rendered user turn (the template's default system turn included) plus the generation
    /// prompt, then the prefix; the answer is the first assistant token after it. With empty
    /// prefixes (`prefixes = [""]`) the answer word opens the assistant turn and is encoded without
    /// a leading space. Default `false`: `question prefix` as plain text.
    #[serde(default)]
    pub chat_template: bool,
}

/// A real-model config: `seed`, `[lm]`, and the engine's `[train]` and `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmFile {
    #[serde(default)]
    pub seed: u64,
    pub lm: LmSpec,
    #[serde(default)]
    pub train: crate::config::TrainConfig,
    #[serde(default)]
    pub eval: crate::config::EvalConfig,
    /// Full fine-tuning (`rmflow lm --mode full`): the shared training vocabulary
    /// ([`crate::lm::train::config`]) under its own name, `[train]` being the engine's.
    #[serde(default, deserialize_with = "FinetuneConfig::table")]
    pub finetune: FinetuneConfig,
}

impl LmFile {
    /// Reads and validates a real-model config; every error a [`ConfigError`] (exit code 2)
    /// naming the file and the field.
    pub fn from_file(path: &Path) -> Result<LmFile, ConfigError> {
        read_toml(path, "real-model config", LmFile::validate)
    }

    /// Domains of every field: the engine's tables (checked before any model is loaded; the
    /// setup comes later, from the model, and the default stands in for it here), `[lm]` and
    /// `[finetune]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::Config {
            seed: self.seed,
            train: self.train.clone(),
            eval: self.eval.clone(),
            ..crate::config::Config::default()
        }
        .validate()?;
        self.lm.validate()?;
        self.finetune.validate()
    }
}

impl LmSpec {
    /// Domains of `[lm]`.
    fn validate(&self) -> Result<(), ConfigError> {
        let f = self.train_fraction;
        field(
            "lm",
            "train_fraction",
            f > 0.0 && f < 1.0,
            "must be in (0, 1)",
            f,
        )?;
        field(
            "lm",
            "group_size",
            self.group_size >= 1,
            "must be ≥ 1",
            self.group_size,
        )?;
        field(
            "lm",
            "batch_size",
            self.batch_size >= 1,
            "must be ≥ 1",
            self.batch_size,
        )?;
        field(
            "lm",
            "prefixes",
            !self.prefixes.is_empty(),
            "must list at least one entry",
            "[]",
        )?;
        positive("lm", "beta", self.beta)?;
        let empty = self.prefixes.iter().filter(|p| p.is_empty()).count();
        field(
            "lm",
            "prefixes",
            !self.chat_template || empty == 0 || empty == self.prefixes.len(),
            "must be all empty (the answer opens the assistant turn) or all non-empty with `lm.chat_template = true`",
            format!("{:?}", self.prefixes),
        )?;
        for (name, words) in [
            ("train_chosen", &self.train_chosen),
            ("train_rejected", &self.train_rejected),
            ("unseen_chosen", &self.unseen_chosen),
            ("unseen_rejected", &self.unseen_rejected),
        ] {
            field(
                "lm",
                name,
                !words.is_empty(),
                "must list at least one word",
                "[]",
            )?;
        }
        disjoint(&[
            ("lm.train_chosen", &self.train_chosen),
            ("lm.train_rejected", &self.train_rejected),
            ("lm.unseen_chosen", &self.unseen_chosen),
            ("lm.unseen_rejected", &self.unseen_rejected),
        ])
    }
}

/// The statements of `path` split into train and eval by whole groups of `lm.group_size` lines.
pub(super) fn split_statements(
    s: &LmSpec,
    path: &Path,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<String>, Vec<String>)> {
    let statements = read_statements(path)?;
    let groups = statements.len().div_ceil(s.group_size);
    if groups < 2 {
        bail!(
            "statements file {} has {} statements: with lm.group_size = {} that is {groups} group, need ≥ 2 for a train/eval split",
            path.display(),
            statements.len(),
            s.group_size
        );
    }
    let mut order: Vec<usize> = (0..groups).collect();
    order.shuffle(rng);
    let n_train = ((groups as f64 * s.train_fraction).round() as usize).clamp(1, groups - 1);
    let members = |g: &[usize]| -> Vec<String> {
        g.iter()
            .flat_map(|&k| statements.iter().skip(k * s.group_size).take(s.group_size))
            .cloned()
            .collect()
    };
    Ok((members(&order[..n_train]), members(&order[n_train..])))
}
