//! The recipe config (`experiments/persona_paper.toml`): data, responses, training and
//! evaluation tables, validated on load; the prompts' sources.

use super::preferences::PreferenceData;
use crate::config::{read_toml, ConfigError};
use crate::lm::data::persona::read_persona_jsonl;
use crate::lm::data::read_statements;
use crate::lm::train::config::{field, non_negative, TrainConfig, DEFAULT_TIE_TOLERANCE};
use crate::lm::train::epochs::Settings;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[data]`: where the prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeData {
    /// Statements file, relative to the working directory: one statement per line (`#`
    /// comments) under `format = "lines"`, or Anthropic's persona JSONL under
    /// `format = "persona_jsonl"`.
    pub statements: PathBuf,
    /// `"lines"` (default): rmflow's statements file, prompts from `question`. `"persona_jsonl"`:
    /// Anthropic's persona format (`anthropics/evals` `persona/agreeableness.jsonl`), one JSON
    /// object per line with `question`, `statement` and `answer_matching_behavior`; as the
    /// official code, only records whose `answer_matching_behavior` is " Yes" (trimmed, any case)
    /// are kept and the prompt is the record's `question` as it stands (`question` below and
    /// `group_size` > 1 do not apply).
    #[serde(default)]
    pub format: StatementFormat,
    /// Consecutive lines sharing a behaviour: no group is split between train and test.
    #[serde(default = "one")]
    pub group_size: usize,
    /// Training prompts (the paper: 80).
    #[serde(default = "eighty")]
    pub train_prompts: usize,
    /// Test prompts (the paper: 40).
    #[serde(default = "forty")]
    pub test_prompts: usize,
    /// Prompt template; `{statement}` is replaced.
    pub question: String,
    /// How prompts are split into train and test and the training responses drawn:
    /// `"groups"` (default): rmflow's seeded shuffle of whole groups (ChaCha8, `seed`) and
    /// draws. `"official"`: as `persona_controlled_datamodule.py`, per record,
    /// `torch.randperm(n)` from a torch generator seeded with `split_seed` (train = its first
    /// `train_prompts`, test the next `test_prompts`), then each training and test example's
    /// prefix and word (chosen, then rejected) by `torch.randint` from the same generator
    /// (`lm::data::torch_rng`); needs `group_size = 1`.
    #[serde(default)]
    pub split: SplitRule,
    /// The torch generator's seed of `split = "official"` (the official plan's
    /// `dataset_prep_random_seed`, 875).
    #[serde(default = "official_seed")]
    pub split_seed: u64,
}

/// `data.split`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    #[default]
    Groups,
    Official,
}

fn official_seed() -> u64 {
    875
}

pub(super) fn one() -> usize {
    1
}

/// `data.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementFormat {
    #[default]
    Lines,
    PersonaJsonl,
}

/// Every prompt the data source offers, in file order: the statements under `question`, or the
/// persona records' questions.
pub(super) fn source_prompts(d: &RecipeData) -> Result<Vec<String>> {
    match d.format {
        StatementFormat::Lines => Ok(read_statements(&d.statements)?
            .iter()
            .map(|s| d.question.replace("{statement}", s))
            .collect()),
        StatementFormat::PersonaJsonl => read_persona_jsonl(&d.statements),
    }
}

pub(super) fn eighty() -> usize {
    80
}

pub(super) fn forty() -> usize {
    40
}

pub(super) fn yes() -> bool {
    true
}

/// `[responses]`: prefixes and words of the training and the shifted evaluation responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    pub chosen_prefixes: Vec<String>,
    pub rejected_prefixes: Vec<String>,
    pub chosen_words: Vec<String>,
    pub rejected_words: Vec<String>,
    pub eval_chosen_prefixes: Vec<String>,
    pub eval_rejected_prefixes: Vec<String>,
    pub eval_chosen_words: Vec<String>,
    pub eval_rejected_words: Vec<String>,
    /// Render the checkpoint's chat template where it has one (otherwise, or when false: the
    /// prompt and the response text are concatenated as they are).
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// The date a template's `strftime_now` renders (`YYYY-MM-DD`; Llama-3.2-Instruct's system
    /// header carries it). Fixed, never the wall clock; default 2024-07-26, the date that
    /// template renders where `strftime_now` is undefined.
    #[serde(default = "template_date")]
    pub template_date: String,
}

pub(super) fn template_date() -> String {
    crate::lm::checkpoint::chat_template::DEFAULT_TEMPLATE_DATE.to_string()
}

/// A recipe's data source.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Persona(&'a RecipeData, &'a ResponseSpec),
    Preferences(&'a PreferenceData),
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeEval {
    /// τ of the tie-tolerant accuracy (reward units); the exact-tie accuracy uses τ = 0.
    pub tie_tolerance: f64,
}

impl Default for RecipeEval {
    fn default() -> Self {
        RecipeEval {
            tie_tolerance: DEFAULT_TIE_TOLERANCE,
        }
    }
}

/// A recipe config: its data source is the persona statements and responses (`[data]` and
/// `[responses]`, `experiments/persona_paper.toml`) or preference datasets (`[preferences]`,
/// `experiments/uf_shift.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RecipeData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<ResponseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<PreferenceData>,
    #[serde(default, deserialize_with = "TrainConfig::recipe_table")]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: RecipeEval,
}

impl RecipeFile {
    /// What the trainer reads: the seed, `[train]` and the tie tolerance.
    pub fn settings(&self) -> Settings<'_> {
        Settings {
            seed: self.seed,
            train: &self.train,
            tie_tolerance: self.eval.tie_tolerance,
        }
    }

    /// `--persona-jsonl`: the prompts come from Anthropic's persona JSONL at `path` (one
    /// statement per record, so `data.group_size = 1`); refused for a preference-data recipe.
    pub fn use_persona_jsonl(&mut self, path: PathBuf) -> Result<(), ConfigError> {
        let Some(data) = self.data.as_mut() else {
            return Err(ConfigError::Field {
                field: "data".into(),
                expected: "a persona recipe ([data] and [responses]) for --persona-jsonl",
                got: "a [preferences] recipe".into(),
                origin: None,
            });
        };
        data.statements = path;
        data.format = StatementFormat::PersonaJsonl;
        data.group_size = 1;
        Ok(())
    }

    /// The data source: the persona's tables, or the preference sets (validated: exactly one).
    pub fn source(&self) -> Source<'_> {
        match (&self.data, &self.responses, &self.preferences) {
            (Some(d), Some(r), None) => Source::Persona(d, r),
            (_, _, Some(p)) => Source::Preferences(p),
            _ => unreachable!("RecipeFile::validate admits exactly one data source"),
        }
    }

    /// Whether to render the chat template, and the date it renders.
    pub fn chat_template(&self) -> (bool, &str) {
        match self.source() {
            Source::Persona(_, r) => (r.chat_template, &r.template_date),
            Source::Preferences(p) => (p.chat_template, &p.template_date),
        }
    }

    /// The files the recipe reads its data from.
    pub fn data_paths(&self) -> Vec<&Path> {
        match self.source() {
            Source::Persona(d, _) => vec![d.statements.as_path()],
            Source::Preferences(p) => p.sets().map(|s| s.path.as_path()).collect(),
        }
    }

    /// Reads and validates a recipe config; every error a [`ConfigError`] (exit code 2) naming
    /// the file and the field.
    pub fn from_file(path: &Path) -> Result<RecipeFile, ConfigError> {
        read_toml(path, "recipe config", RecipeFile::validate)
    }

    /// Domains of every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate()?;
        let source = |got: &str| ConfigError::Field {
            field: "preferences".into(),
            expected: "one data source: [data] with [responses] (persona), or [preferences]",
            got: got.into(),
            origin: None,
        };
        match (&self.data, &self.responses, &self.preferences) {
            (Some(d), Some(r), None) => {
                d.validate()?;
                r.validate()?;
            }
            (None, None, Some(p)) => p.validate()?,
            (None, None, None) => return Err(source("none")),
            (Some(_), None, None) | (None, Some(_), None) => {
                return Err(source("only one of [data] and [responses]"))
            }
            (_, _, Some(_)) => return Err(source("[preferences] beside [data] or [responses]")),
        }
        non_negative("eval", "tie_tolerance", self.eval.tie_tolerance)
    }
}

impl RecipeData {
    /// Domains of `[data]`.
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("group_size", self.group_size),
            ("train_prompts", self.train_prompts),
            ("test_prompts", self.test_prompts),
        ] {
            field("data", name, v >= 1, "must be ≥ 1", v)?;
        }
        let jsonl = self.format == StatementFormat::PersonaJsonl;
        field(
            "data",
            "group_size",
            !jsonl || self.group_size == 1,
            "must be 1 with `data.format = \"persona_jsonl\"` (records are not grouped)",
            self.group_size,
        )?;
        field(
            "data",
            "group_size",
            self.split != SplitRule::Official || self.group_size == 1,
            "must be 1 with `data.split = \"official\"` (the official split is per record)",
            self.group_size,
        )?;
        let lines = self.format == StatementFormat::Lines;
        field(
            "data",
            "question",
            !lines || self.question.contains("{statement}"),
            "must contain `{statement}`",
            format!("{:?}", self.question),
        )
    }
}

/// `TABLE.template_date` must be a date `YYYY-MM-DD`.
pub(super) fn template_date_field(table: &str, date: &str) -> Result<(), ConfigError> {
    crate::lm::checkpoint::chat_template::parse_template_date(date)
        .map(|_| ())
        .map_err(|e| ConfigError::Field {
            field: format!("{table}.template_date"),
            expected: "must be a date YYYY-MM-DD",
            got: format!("{date:?} ({e})"),
            origin: None,
        })
}

impl ResponseSpec {
    /// Domains of `[responses]`.
    fn validate(&self) -> Result<(), ConfigError> {
        template_date_field("responses", &self.template_date)?;
        for (name, v) in [
            ("chosen_prefixes", &self.chosen_prefixes),
            ("rejected_prefixes", &self.rejected_prefixes),
            ("chosen_words", &self.chosen_words),
            ("rejected_words", &self.rejected_words),
            ("eval_chosen_prefixes", &self.eval_chosen_prefixes),
            ("eval_rejected_prefixes", &self.eval_rejected_prefixes),
            ("eval_chosen_words", &self.eval_chosen_words),
            ("eval_rejected_words", &self.eval_rejected_words),
        ] {
            field(
                "responses",
                name,
                !v.is_empty(),
                "must list at least one entry",
                "[]",
            )?;
        }
        crate::lm::train::config::disjoint(&[
            ("responses.chosen_words", &self.chosen_words),
            ("responses.rejected_words", &self.rejected_words),
            ("responses.eval_chosen_words", &self.eval_chosen_words),
            ("responses.eval_rejected_words", &self.eval_rejected_words),
        ])
    }
}

/// Every text a recipe tokenizes (questions with their statements, prefixes, words, the EX-GRM's
/// verification request and its verdicts): the vocabulary a tiny word-level checkpoint needs to
/// run the recipe (`rmflow lm-tiny --recipe`).
pub fn vocabulary_texts(file: &RecipeFile) -> Result<Vec<String>> {
    use crate::lm::train::reward::{NO_TOKEN, VERIFICATION_FORMAT, YES_TOKEN};
    let (d, r) = match file.source() {
        Source::Persona(d, r) => (d, r),
        Source::Preferences(p) => {
            let mut texts = super::preferences::set_texts(p)?;
            texts.push(
                VERIFICATION_FORMAT
                    .replace("{question}", "")
                    .replace("{answer}", ""),
            );
            texts.push(format!("{YES_TOKEN} {NO_TOKEN}"));
            return Ok(texts);
        }
    };
    let mut texts: Vec<String> = source_prompts(d)?;
    texts.push(
        VERIFICATION_FORMAT
            .replace("{question}", "")
            .replace("{answer}", ""),
    );
    texts.push(format!("{YES_TOKEN} {NO_TOKEN}"));
    for v in [
        &r.chosen_prefixes,
        &r.rejected_prefixes,
        &r.chosen_words,
        &r.rejected_words,
        &r.eval_chosen_prefixes,
        &r.eval_rejected_prefixes,
        &r.eval_chosen_words,
        &r.eval_rejected_words,
    ] {
        texts.extend(v.iter().cloned());
    }
    Ok(texts)
}
