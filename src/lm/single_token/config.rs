//! The real-model config (`experiments/persona.toml`): the `[lm]` table and the whole file,
//! validated on load; the statements files it names.

use crate::lm::single_token::finetune;
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
    /// Full fine-tuning (`rmflow lm --mode full`).
    #[serde(default)]
    pub finetune: finetune::FinetuneSpec,
}

impl LmFile {
    /// Reads and validates a real-model config; every error is an input error (exit code 2)
    /// naming the file and the field.
    pub fn from_file(path: &Path) -> Result<LmFile> {
        LmFile::read_and_validate(path)
            .map_err(|e| crate::error::InputError(format!("{e:#}")).into())
    }

    pub(super) fn read_and_validate(path: &Path) -> Result<LmFile> {
        let text = crate::io::input::read_text(path, "real-model config")?;
        let f: LmFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid real-model config {}: {}",
                path.display(),
                crate::config::one_line_toml_error(&text, &e)
            )
        })?;
        // The engine's tables, checked before any model is loaded (the setup comes later, from
        // the model; the default stands in for it here).
        crate::config::Config {
            seed: f.seed,
            train: f.train.clone(),
            eval: f.eval.clone(),
            ..crate::config::Config::default()
        }
        .validate()
        .map_err(|e| e.in_origin(&path.display().to_string()))?;
        let s = &f.lm;
        if !(s.train_fraction > 0.0 && s.train_fraction < 1.0) {
            bail!(
                "invalid real-model config {}: field `lm.train_fraction` must be in (0, 1)",
                path.display()
            );
        }
        if s.group_size == 0 || s.batch_size == 0 || s.prefixes.is_empty() {
            bail!("invalid real-model config {}: `lm.group_size`, `lm.batch_size` must be ≥ 1 and `lm.prefixes` non-empty", path.display());
        }
        let ft = &f.finetune;
        let head_ok = ft.head_lr.map_or(true, |l| l > 0.0 && l.is_finite());
        let ok =
            ft.lr > 0.0 && ft.lr.is_finite() && head_ok && ft.weight_decay >= 0.0 && ft.steps > 0;
        if !ok {
            bail!("invalid real-model config {}: `finetune.lr` and `finetune.head_lr` must be > 0, `finetune.weight_decay` ≥ 0 and `finetune.steps` ≥ 1", path.display());
        }
        if !(s.beta > 0.0 && s.beta.is_finite()) {
            bail!(
                "invalid real-model config {}: field `lm.beta` must be > 0",
                path.display()
            );
        }
        if s.chat_template {
            let empty = s.prefixes.iter().filter(|p| p.is_empty()).count();
            if empty != 0 && empty != s.prefixes.len() {
                bail!("invalid real-model config {}: with `lm.chat_template = true`, `lm.prefixes` must be all empty (the answer opens the assistant turn) or all non-empty", path.display());
            }
        }
        for (field, words) in [
            ("lm.train_chosen", &s.train_chosen),
            ("lm.train_rejected", &s.train_rejected),
            ("lm.unseen_chosen", &s.unseen_chosen),
            ("lm.unseen_rejected", &s.unseen_rejected),
        ] {
            if words.is_empty() {
                bail!(
                    "invalid real-model config {}: field `{field}` must list at least one word",
                    path.display()
                );
            }
        }
        disjoint(&[
            ("lm.train_chosen", &s.train_chosen),
            ("lm.train_rejected", &s.train_rejected),
            ("lm.unseen_chosen", &s.unseen_chosen),
            ("lm.unseen_rejected", &s.unseen_rejected),
        ])
        .map_err(|e| anyhow::anyhow!("invalid real-model config {}: {e}", path.display()))?;
        Ok(f)
    }
}

/// Errors if an entry appears in two of the named lists: a word on both sides makes its pairs
/// ties by construction, and an "unseen" word that is trained on is not unseen.
pub(crate) fn disjoint<T: PartialEq + std::fmt::Debug>(lists: &[(&str, &[T])]) -> Result<()> {
    for (i, (a, xs)) in lists.iter().enumerate() {
        for (b, ys) in &lists[i + 1..] {
            if let Some(x) = xs.iter().find(|x| ys.contains(x)) {
                bail!("{x:?} is in both `{a}` and `{b}`; the lists must not share an entry");
            }
        }
    }
    Ok(())
}

pub(crate) fn read_statements(path: &Path) -> Result<Vec<String>> {
    let text = crate::io::input::read_text(path, "statements file")?;
    let s: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if s.is_empty() {
        bail!("statements file {} has no statements", path.display());
    }
    Ok(s)
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
