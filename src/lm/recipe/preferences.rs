//! The recipe on preference datasets (the paper's Section 5.2, `experiments/uf_shift.toml`): a
//! training set and named evaluation sets read from the formats researchers have
//! ([`crate::lm::data::preference`]), each optionally length-filtered and sampled as the official
//! code does, rendered through the chat template as the persona responses are.

use super::config::{template_date, yes};
use crate::config::ConfigError;
use crate::lm::data::preference::{read_pairs, Columns, DataFormat, DataSource, PreferencePair};
use crate::lm::data::preference::{Message, Turns};
use crate::lm::data::torch_rng::TorchGenerator;
use crate::lm::train::config::field;
use crate::lm::train::sequences::{PairSplit, PreferenceProblem, SequenceBuilder, Side};
use crate::lm::LanguageModel;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[preferences]`: where the pairs come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceData {
    /// The training pairs (split `train` of the outputs, evaluated like every other set).
    pub train: PreferenceSet,
    /// The evaluation sets, in order (`[[preferences.eval]]`), each a split named by its `name`.
    #[serde(default)]
    pub eval: Vec<PreferenceSet>,
    /// Drop pairs whose prompt has more tokens (the model's tokenizer, special tokens added, as
    /// `prepare_preference_dataset.py` counts), before any `limit`; absent: no filter.
    #[serde(default)]
    pub max_prompt_tokens: Option<usize>,
    /// Drop pairs where either response has more tokens; absent: no filter.
    #[serde(default)]
    pub max_response_tokens: Option<usize>,
    /// Seed of the torch generator that draws each `limit`'s sample (the official plan's
    /// `dataset_prep_random_seed`, 517).
    #[serde(default = "official_sample_seed")]
    pub sample_seed: u64,
    /// Render pairs with the checkpoint's chat template where it has one (as the persona's
    /// `responses.chat_template`).
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// The date a template's `strftime_now` renders (as the persona's `responses.template_date`).
    #[serde(default = "template_date")]
    pub template_date: String,
}

fn official_sample_seed() -> u64 {
    517
}

/// One set: a split of a dataset ([`DataSource`]'s fields), its name and an optional sample size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceSet {
    /// The split's name in the outputs (evaluation sets; the training set is `train`).
    #[serde(default)]
    pub name: Option<String>,
    pub path: PathBuf,
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub format: Option<DataFormat>,
    #[serde(default)]
    pub columns: Columns,
    /// At most this many pairs: where the set has more, the first `limit` of
    /// `torch.randperm(pairs)` from the shared generator (`sample_seed`), in that order, as the
    /// official evaluator samples; absent: every pair in file order.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl PreferenceSet {
    pub fn source(&self) -> DataSource {
        DataSource {
            path: self.path.clone(),
            split: self.split.clone(),
            format: self.format,
            columns: self.columns.clone(),
        }
    }

    /// The split name in the outputs.
    fn split_name(&self) -> &str {
        self.name.as_deref().unwrap_or("train")
    }
}

impl PreferenceData {
    /// Domains of `[preferences]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        field(
            "preferences.train",
            "name",
            matches!(self.train.name.as_deref(), None | Some("train")),
            "must be absent or \"train\" (the training pairs are split `train`)",
            format!("{:?}", self.train.name),
        )?;
        let mut names = vec!["train".to_string()];
        for (k, set) in self.eval.iter().enumerate() {
            let table = format!("preferences.eval[{k}]");
            let name = set.name.clone().unwrap_or_default();
            let ok = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
            field(
                &table,
                "name",
                ok,
                "must be given: letters, digits and `_`",
                &name,
            )?;
            field(
                &table,
                "name",
                !names.contains(&name),
                "must differ from every other set's (and from \"train\")",
                &name,
            )?;
            names.push(name);
        }
        for (k, set) in std::iter::once(&self.train).chain(&self.eval).enumerate() {
            let table = match k {
                0 => "preferences.train".to_string(),
                _ => format!("preferences.eval[{}]", k - 1),
            };
            field(&table, "limit", set.limit != Some(0), "must be ≥ 1", 0)?;
        }
        for (name, v) in [
            ("max_prompt_tokens", self.max_prompt_tokens),
            ("max_response_tokens", self.max_response_tokens),
        ] {
            field("preferences", name, v != Some(0), "must be ≥ 1", 0)?;
        }
        super::config::template_date_field("preferences", &self.template_date)
    }

    /// Every set in order, the training set first.
    pub(super) fn sets(&self) -> impl Iterator<Item = &PreferenceSet> {
        std::iter::once(&self.train).chain(&self.eval)
    }
}

/// What was read of one set: its rows before and after the length filter, and the rows used
/// (after `limit`), in the order of the split's pairs.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub split: String,
    pub path: PathBuf,
    pub source_split: Option<String>,
    pub rows: usize,
    pub after_length_filter: usize,
    pub used: usize,
    pub conversational: bool,
    /// The dataset row of each pair of the split.
    pub pair_rows: Vec<usize>,
}

/// Every pair of every set, read and selected (length filter, then `limit`), before rendering.
pub struct SelectedSets {
    pub pairs: Vec<Vec<PreferencePair>>,
    pub reports: Vec<SetReport>,
}

/// Reads every set of `d` and selects its pairs: the length filter (counted with `lm`'s
/// tokenizer) then the `limit` sample, one torch generator across the sets in order.
pub fn select_sets(d: &PreferenceData, lm: &LanguageModel) -> Result<SelectedSets> {
    let mut generator = TorchGenerator::manual_seed(d.sample_seed);
    let mut out = SelectedSets {
        pairs: Vec::new(),
        reports: Vec::new(),
    };
    for set in d.sets() {
        let all = read_pairs(&set.source())?;
        let rows = all.len();
        let mut kept = Vec::with_capacity(rows);
        for p in all {
            if within_lengths(&p, d, lm)? {
                kept.push(p);
            }
        }
        let after = kept.len();
        let kept = match set.limit {
            Some(n) if n < kept.len() => {
                let perm = generator.randperm(kept.len());
                perm[..n].iter().map(|&k| kept[k].clone()).collect()
            }
            _ => kept,
        };
        out.reports.push(SetReport {
            split: set.split_name().to_string(),
            path: set.path.clone(),
            source_split: set.split.clone(),
            rows,
            after_length_filter: after,
            used: kept.len(),
            conversational: kept.first().is_some_and(PreferencePair::is_conversational),
            pair_rows: kept.iter().map(|p| p.row).collect(),
        });
        if kept.is_empty() {
            let limit = |v: Option<usize>| v.map_or("no limit".into(), |n| n.to_string());
            return Err(crate::error::InputError(format!(
                "{}: none of its {rows} pairs is within the length filter (preferences.max_prompt_tokens = {}, max_response_tokens = {})",
                set.path.display(),
                limit(d.max_prompt_tokens),
                limit(d.max_response_tokens)
            ))
            .into());
        }
        out.pairs.push(kept);
    }
    Ok(out)
}

/// The official length filter: the prompt within `max_prompt_tokens` and both responses within
/// `max_response_tokens`, each text (a conversation: its contents, [`content_text`]) tokenized
/// on its own with special tokens, as `tokenizer.encode` counts.
fn within_lengths(p: &PreferencePair, d: &PreferenceData, lm: &LanguageModel) -> Result<bool> {
    let tokens = |t: &Turns| -> Result<usize> {
        let text = content_text(t);
        let e = lm
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| lm.tokenizer_error(&text, e))?;
        Ok(e.get_ids().len())
    };
    let within = |max: Option<usize>, t: &Turns| -> Result<bool> {
        Ok(match max {
            Some(m) => tokens(t)? <= m,
            None => true,
        })
    };
    Ok(within(d.max_prompt_tokens, &p.prompt)?
        && within(d.max_response_tokens, &p.chosen)?
        && within(d.max_response_tokens, &p.rejected)?)
}

/// A prompt or response's words: the text, or a conversation's contents, one per paragraph.
fn content_text(t: &Turns) -> String {
    match t {
        Turns::Text(s) => s.clone(),
        Turns::Messages(m) => m
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
    }
}

/// A prompt or response as one text: itself, or a conversation's messages `role: content`, one
/// per line (`recipe.json`'s prompts).
fn display_text(t: &Turns) -> String {
    match t {
        Turns::Text(s) => s.clone(),
        Turns::Messages(m) => m
            .iter()
            .map(|Message { role, content }| format!("{role}: {content}"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The problem of preference sets: one split per set (the training set first, `train`), each
/// pair's prompt its own entry (training prompts, then the evaluation sets'), each response a
/// sequence through `builder`; with the EX-GRM's verification requests where `verification`
/// (causal models).
pub(super) fn problem_of_sets(
    sets: &SelectedSets,
    builder: &SequenceBuilder,
    verification: bool,
) -> Result<PreferenceProblem> {
    let mut problem = PreferenceProblem {
        prompts_train: Vec::new(),
        prompts_test: Vec::new(),
        sequences: Vec::new(),
        splits: Vec::new(),
        prompt_format: String::new(),
        added_tokens: Vec::new(),
        verification: Vec::new(),
        eval_batches: Vec::new(),
    };
    for (k, (pairs, report)) in sets.pairs.iter().zip(&sets.reports).enumerate() {
        let mut split = PairSplit {
            name: report.split.clone(),
            chosen: vec![],
            rejected: vec![],
        };
        for pair in pairs {
            let index = problem.prompts_train.len() + problem.prompts_test.len();
            match k {
                0 => problem.prompts_train.push(display_text(&pair.prompt)),
                _ => problem.prompts_test.push(display_text(&pair.prompt)),
            }
            for (side, response) in [
                (Side::Chosen, &pair.chosen),
                (Side::Rejected, &pair.rejected),
            ] {
                let s = builder
                    .build_turns(index, &pair.prompt, response, side)
                    .map_err(|e| in_row(e, report, pair.row))?;
                problem.sequences.push(s);
                if verification {
                    problem
                        .verification
                        .push(verification_of(builder, index, pair, response, side)?);
                }
                match side {
                    Side::Chosen => split.chosen.push(problem.sequences.len() - 1),
                    Side::Rejected => split.rejected.push(problem.sequences.len() - 1),
                }
            }
        }
        problem.splits.push(split);
    }
    Ok(problem)
}

/// An error building a pair's sequence, with the set's file and row.
fn in_row(e: anyhow::Error, report: &SetReport, row: usize) -> anyhow::Error {
    crate::error::InputError(format!(
        "{} (set {:?}), row {row}: {e:#}",
        report.path.display(),
        report.split
    ))
    .into()
}

/// The EX-GRM's verification request of one response: the official `GEN_RM_INPUT_FORMAT` over
/// the prompt and the response as text (a conversation's contents, one per paragraph).
fn verification_of(
    builder: &SequenceBuilder,
    index: usize,
    pair: &PreferencePair,
    response: &Turns,
    side: Side,
) -> Result<crate::lm::train::sequences::ScoredSequence> {
    builder.verification(
        index,
        &content_text(&pair.prompt),
        side,
        "",
        &content_text(response),
    )
}

/// The texts of every set (prompts and responses, a conversation's contents), for a tiny
/// checkpoint's vocabulary (`rmflow lm-tiny --recipe`).
pub fn set_texts(d: &PreferenceData) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for set in d.sets() {
        for p in read_pairs(&set.source())? {
            for t in [&p.prompt, &p.chosen, &p.rejected] {
                match t {
                    Turns::Text(s) => texts.push(s.clone()),
                    Turns::Messages(m) => texts.extend(m.iter().map(|m| m.content.clone())),
                }
            }
        }
    }
    Ok(texts)
}
