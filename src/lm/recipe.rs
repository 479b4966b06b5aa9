//! The paper's controlled experiment in its own recipe (MATH.md §6; `rmflow lm-recipe`,
//! `experiments/persona_paper.toml`): responses are token sequences `prefix + word` with
//! label-specific prefixes, rewards are sequence-level, evaluation shifts prefixes and words.
//!
//! - IM-RM: `r(x, y) = β Σ_k [ln π(y_k | x, y_<k) − ln π_ref(y_k | x, y_<k)]` over the response
//!   tokens, `ln π = log_softmax(U h)` at the position before each token (causal families), or
//!   for a masked encoder the pseudo-log-likelihood proxy: each response token masked in turn and
//!   read at its own position through the tied word embeddings (not a language model's `π`).
//! - EX-RM: `r(x, y) = u·h` at the last response token (the official code's read-out).
//! - Loss `mean softplus(r⁻ − r⁺)` (MATH.md §2), Adam on every parameter (`full`), or on the
//!   head / the unembedding alone over frozen representations (`head`).
//! - Metrics per split: accuracy with exact ties (τ = 0, `1{m > 0} + ½·1{m = 0}`) beside the
//!   τ-tolerant one, the official evaluator's normalised absolute margin, mean rewards per answer.

use super::chat::ChatTemplate;
use super::finetune::softplus_neg;
use super::read_statements;
use super::{Forward, LanguageModel};
use crate::experiment::observables::{reward_summary, split_metrics, RewardSummary, SplitMetrics};
use crate::experiment::simulation::ModelKind;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
}
fn one() -> usize {
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

/// The `question` of every record of a persona JSONL file whose `answer_matching_behavior` is
/// "yes" (trimmed, any case: the official `answer_matching_behavior_to_use = "Yes"` filter), in
/// file order. A malformed line is an error naming the file and the line.
pub fn read_persona_jsonl(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read persona file {}", path.display()))?;
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), k + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON object: {e}", at()))?;
        let field = |name: &str| -> Result<&str> {
            v.get(name)
                .and_then(|x| x.as_str())
                .ok_or_else(|| anyhow::anyhow!("{}: no string field `{name}`", at()))
        };
        let (question, answer) = (field("question")?, field("answer_matching_behavior")?);
        field("statement")?;
        if answer.trim().eq_ignore_ascii_case("yes") {
            out.push(question.to_string());
        }
    }
    if out.is_empty() {
        bail!(
            "persona file {} has no record with answer_matching_behavior \" Yes\"",
            path.display()
        );
    }
    Ok(out)
}

/// Every prompt the data source offers, in file order: the statements under `question`, or the
/// persona records' questions.
fn source_prompts(d: &RecipeData) -> Result<Vec<String>> {
    match d.format {
        StatementFormat::Lines => Ok(read_statements(&d.statements)?
            .iter()
            .map(|s| d.question.replace("{statement}", s))
            .collect()),
        StatementFormat::PersonaJsonl => read_persona_jsonl(&d.statements),
    }
}
fn eighty() -> usize {
    80
}
fn forty() -> usize {
    40
}
fn yes() -> bool {
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
}

/// `[train]`: the optimisation (defaults: the paper's recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeTrain {
    /// IM-RM `β` (the paper: 0.01).
    pub beta: f64,
    /// Adam learning rate (the paper: 1e-6).
    pub lr: f64,
    /// Learning rate of the EX-RM head; `None`: `lr`.
    pub head_lr: Option<f64>,
    /// Decoupled weight decay (the paper: 0, i.e. Adam).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Passes over the training pairs (the paper: 50).
    pub epochs: usize,
    /// Pairs per optimizer step (the paper: 32 = 8 × 4 accumulation); the last step of an epoch
    /// takes what is left.
    pub pairs_per_step: usize,
    /// Pairs per forward/backward pass; gradients are accumulated over a step.
    pub micro_batch: usize,
    /// Standard deviation of the EX-RM head's initial entries (Hugging Face's
    /// `initializer_range`, 0.02; 0 starts at the zero head).
    pub head_init_std: f64,
    /// Evaluate every split every this many epochs (and before the first, after the last).
    pub eval_every_epochs: usize,
    /// Sequences per forward pass when scoring (evaluation, reference log-probabilities).
    pub eval_batch: usize,
}

impl Default for RecipeTrain {
    fn default() -> Self {
        RecipeTrain {
            beta: 0.01,
            lr: 1e-6,
            head_lr: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            epochs: 50,
            pairs_per_step: 32,
            micro_batch: 8,
            head_init_std: 0.02,
            eval_every_epochs: 10,
            eval_batch: 32,
        }
    }
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
            tie_tolerance: 1e-6,
        }
    }
}

/// A recipe config (`experiments/persona_paper.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    #[serde(default)]
    pub seed: u64,
    pub data: RecipeData,
    pub responses: ResponseSpec,
    #[serde(default)]
    pub train: RecipeTrain,
    #[serde(default)]
    pub eval: RecipeEval,
}

impl RecipeFile {
    /// `--persona-jsonl`: the prompts come from Anthropic's persona JSONL at `path` (one
    /// statement per record, so `data.group_size = 1`).
    pub fn use_persona_jsonl(&mut self, path: PathBuf) {
        self.data.statements = path;
        self.data.format = StatementFormat::PersonaJsonl;
        self.data.group_size = 1;
    }

    /// Reads and validates a recipe config; every error is an input error (exit code 2) naming
    /// the file and the field.
    pub fn from_file(path: &Path) -> Result<RecipeFile> {
        Self::read_and_validate(path).map_err(|e| crate::error::InputError(format!("{e:#}")).into())
    }

    fn read_and_validate(path: &Path) -> Result<RecipeFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let f: RecipeFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid recipe config {}: {}",
                path.display(),
                crate::config::one_line_toml_error(&text, &e)
            )
        })?;
        f.validate()
            .map_err(|e| anyhow::anyhow!("invalid recipe config {}: {e}", path.display()))?;
        Ok(f)
    }

    /// Domains of every field.
    pub fn validate(&self) -> Result<()> {
        let (d, r, t) = (&self.data, &self.responses, &self.train);
        let positive = |name: &str, v: f64| -> Result<()> {
            if !(v > 0.0 && v.is_finite()) {
                bail!("field `{name}` must be a finite number > 0, got {v}");
            }
            Ok(())
        };
        positive("train.beta", t.beta)?;
        positive("train.lr", t.lr)?;
        positive("train.eps", t.eps)?;
        if let Some(h) = t.head_lr {
            positive("train.head_lr", h)?;
        }
        for (name, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("field `{name}` must be in [0, 1), got {v}");
            }
        }
        for (name, v) in [
            ("train.weight_decay", t.weight_decay),
            ("train.head_init_std", t.head_init_std),
            ("eval.tie_tolerance", self.eval.tie_tolerance),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("field `{name}` must be a finite number ≥ 0, got {v}");
            }
        }
        for (name, v) in [
            ("data.group_size", d.group_size),
            ("data.train_prompts", d.train_prompts),
            ("data.test_prompts", d.test_prompts),
            ("train.epochs", t.epochs),
            ("train.pairs_per_step", t.pairs_per_step),
            ("train.micro_batch", t.micro_batch),
            ("train.eval_batch", t.eval_batch),
            ("train.eval_every_epochs", t.eval_every_epochs),
        ] {
            if v == 0 {
                bail!("field `{name}` must be ≥ 1");
            }
        }
        if d.format == StatementFormat::PersonaJsonl && d.group_size != 1 {
            bail!("field `data.group_size` must be 1 with `data.format = \"persona_jsonl\"` (records are not grouped)");
        }
        if d.format == StatementFormat::Lines && !d.question.contains("{statement}") {
            bail!("field `data.question` must contain `{{statement}}`");
        }
        for (name, v) in [
            ("responses.chosen_prefixes", &r.chosen_prefixes),
            ("responses.rejected_prefixes", &r.rejected_prefixes),
            ("responses.chosen_words", &r.chosen_words),
            ("responses.rejected_words", &r.rejected_words),
            ("responses.eval_chosen_prefixes", &r.eval_chosen_prefixes),
            (
                "responses.eval_rejected_prefixes",
                &r.eval_rejected_prefixes,
            ),
            ("responses.eval_chosen_words", &r.eval_chosen_words),
            ("responses.eval_rejected_words", &r.eval_rejected_words),
        ] {
            if v.is_empty() {
                bail!("field `{name}` must list at least one entry");
            }
        }
        Ok(())
    }
}

/// Which side of a pair a response stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Chosen,
    Rejected,
}

/// One scored sequence `prompt + response`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredSequence {
    pub ids: Vec<u32>,
    /// Index of the first response token in `ids`.
    pub response_start: usize,
    /// One past the last scored response token (BERT: before `[SEP]`).
    pub response_end: usize,
    /// Token range of the answer word in `ids`, where prefix and word tokenize on their own
    /// boundaries (for the per-part reward contributions).
    pub word_span: Option<(usize, usize)>,
    pub prompt: usize,
    pub side: Side,
    pub prefix: String,
    pub word: String,
    /// The response text as tokenized (chat-template suffix included).
    pub response_text: String,
    /// The response's tokens as strings (the tokenizer's pieces).
    pub response_tokens: Vec<String>,
}

/// Pairs of sequences evaluated together.
#[derive(Debug, Clone, Serialize)]
pub struct PairSplit {
    pub name: String,
    pub chosen: Vec<usize>,
    pub rejected: Vec<usize>,
}

/// Every sequence of a run and the splits over them (`train` first: the training pairs).
#[derive(Debug, Clone, Serialize)]
pub struct RecipeProblem {
    pub prompts_train: Vec<String>,
    pub prompts_test: Vec<String>,
    pub sequences: Vec<ScoredSequence>,
    pub splits: Vec<PairSplit>,
    /// Where the chat template came from, or why none was used.
    pub prompt_format: String,
}

/// Train and test statements: groups in seeded order, train filled first (a group cut at the
/// boundary is dropped, so no behaviour is on both sides).
fn select_prompts(d: &RecipeData, rng: &mut ChaCha8Rng) -> Result<(Vec<String>, Vec<String>)> {
    let prompts = source_prompts(d)?;
    let need = d.train_prompts + d.test_prompts;
    let mut groups: Vec<&[String]> = prompts.chunks(d.group_size).collect();
    groups.shuffle(rng);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for g in groups {
        if train.len() < d.train_prompts {
            let take = (d.train_prompts - train.len()).min(g.len());
            train.extend_from_slice(&g[..take]);
        } else if test.len() < d.test_prompts {
            let take = (d.test_prompts - test.len()).min(g.len());
            test.extend_from_slice(&g[..take]);
        }
    }
    if train.len() < d.train_prompts || test.len() < d.test_prompts {
        bail!(
            "statements file {} has {} usable prompts in groups of {}: not enough for data.train_prompts = {} and data.test_prompts = {} ({need} in whole groups)",
            d.statements.display(),
            prompts.len(),
            d.group_size,
            d.train_prompts,
            d.test_prompts
        );
    }
    Ok((train, test))
}

/// Tokenizes prompts and responses as the official code does (each text on its own, no special
/// tokens added), with the chat template where there is one; masked encoders get
/// `[CLS] prompt response [SEP]`.
struct SequenceBuilder<'a> {
    lm: &'a LanguageModel,
    template: Option<ChatTemplate>,
}

impl SequenceBuilder<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_pieces(text)?.0)
    }

    fn encode_with_pieces(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        let e = self
            .lm
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        Ok((e.get_ids().to_vec(), e.get_tokens().to_vec()))
    }

    fn build(
        &self,
        prompt_index: usize,
        prompt: &str,
        side: Side,
        prefix: &str,
        word: &str,
    ) -> Result<ScoredSequence> {
        let answer = format!("{prefix}{word}");
        let (prompt_text, response_text) = match &self.template {
            Some(t) => t.prompt_and_response(prompt, &answer)?,
            None => (prompt.to_string(), answer.clone()),
        };
        let prompt_ids = self.encode(&prompt_text)?;
        let (response_ids, response_tokens) = self.encode_with_pieces(&response_text)?;
        if response_ids.is_empty() {
            bail!("response {response_text:?} encodes to no tokens");
        }
        // The word's tokens: where `prefix` and `prefix + word` tokenize on their own boundaries
        // into leading parts of the response's tokens.
        let (prefix_ids, answer_ids) = (self.encode(prefix)?, self.encode(&answer)?);
        let word_span = (answer_ids.starts_with(&prefix_ids)
            && response_ids.starts_with(&answer_ids)
            && prefix_ids.len() < answer_ids.len())
        .then_some((prefix_ids.len(), answer_ids.len()));
        let (ids, start, end) = match self.lm.mask_id {
            Some(_) => {
                let cls = self.special("[CLS]")?;
                let sep = self.special("[SEP]")?;
                let mut ids = vec![cls];
                ids.extend(&prompt_ids);
                let start = ids.len();
                ids.extend(&response_ids);
                let end = ids.len();
                ids.push(sep);
                (ids, start, end)
            }
            None => {
                if prompt_ids.is_empty() {
                    bail!("prompt {prompt_text:?} encodes to no tokens: the first response token has no position to be predicted from");
                }
                let mut ids = prompt_ids.clone();
                let start = ids.len();
                ids.extend(&response_ids);
                let end = ids.len();
                (ids, start, end)
            }
        };
        Ok(ScoredSequence {
            ids,
            response_start: start,
            response_end: end,
            word_span: word_span.map(|(a, b)| (start + a, start + b)),
            prompt: prompt_index,
            side,
            prefix: prefix.to_string(),
            word: word.to_string(),
            response_text,
            response_tokens,
        })
    }

    fn special(&self, token: &str) -> Result<u32> {
        self.lm.tokenizer.token_to_id(token).with_context(|| {
            format!(
                "{}: no {token} token",
                self.lm.dir.join("tokenizer.json").display()
            )
        })
    }
}

/// Draws the pairs (MATH.md §6): per prompt one prefix and one word per side for the training
/// responses (train and test prompts), and one evaluation prefix per side for the shifted
/// responses, scored with every evaluation word.
pub fn build_problem(file: &RecipeFile, lm: &LanguageModel) -> Result<RecipeProblem> {
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed);
    let (train, test) = select_prompts(&file.data, &mut rng)?;
    let r = &file.responses;
    let template = if r.chat_template && lm.arch.is_causal() {
        ChatTemplate::from_model_dir(&lm.dir)?
    } else {
        None
    };
    let prompt_format = match (&template, r.chat_template, lm.arch.is_causal()) {
        (Some(t), _, _) => format!("chat template of {}", t.source),
        (None, false, _) => "plain concatenation (responses.chat_template = false)".into(),
        (None, true, false) => "plain concatenation (masked encoder: no chat template)".into(),
        (None, true, true) => "plain concatenation (the checkpoint has no chat_template)".into(),
    };
    let b = SequenceBuilder { lm, template };
    let mut sequences = Vec::new();
    let mut splits = Vec::new();
    let pick = |v: &[String], rng: &mut ChaCha8Rng| v[rng.random_range(0..v.len())].clone();
    for (name, prompts, offset) in [("train", &train, 0), ("test", &test, train.len())] {
        let mut split = PairSplit {
            name: name.into(),
            chosen: vec![],
            rejected: vec![],
        };
        for (i, p) in prompts.iter().enumerate() {
            let (cp, cw) = (
                pick(&r.chosen_prefixes, &mut rng),
                pick(&r.chosen_words, &mut rng),
            );
            let (rp, rw) = (
                pick(&r.rejected_prefixes, &mut rng),
                pick(&r.rejected_words, &mut rng),
            );
            split.chosen.push(sequences.len());
            sequences.push(b.build(offset + i, p, Side::Chosen, &cp, &cw)?);
            split.rejected.push(sequences.len());
            sequences.push(b.build(offset + i, p, Side::Rejected, &rp, &rw)?);
        }
        splits.push(split);
    }
    for (name, prompts, offset) in [
        ("paraphrased_train", &train, 0),
        ("paraphrased_test", &test, train.len()),
    ] {
        let mut chosen_of: Vec<Vec<usize>> = Vec::new();
        let mut rejected_of: Vec<Vec<usize>> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let cp = pick(&r.eval_chosen_prefixes, &mut rng);
            let rp = pick(&r.eval_rejected_prefixes, &mut rng);
            let mut c = Vec::new();
            for w in &r.eval_chosen_words {
                c.push(sequences.len());
                sequences.push(b.build(offset + i, p, Side::Chosen, &cp, w)?);
            }
            let mut rj = Vec::new();
            for w in &r.eval_rejected_words {
                rj.push(sequences.len());
                sequences.push(b.build(offset + i, p, Side::Rejected, &rp, w)?);
            }
            chosen_of.push(c);
            rejected_of.push(rj);
        }
        // Every (chosen word, rejected word) combination on every prompt.
        let mut split = PairSplit {
            name: name.into(),
            chosen: vec![],
            rejected: vec![],
        };
        for a in 0..r.eval_chosen_words.len() {
            for z in 0..r.eval_rejected_words.len() {
                for (c, rj) in chosen_of.iter().zip(&rejected_of) {
                    split.chosen.push(c[a]);
                    split.rejected.push(rj[z]);
                }
            }
        }
        splits.push(split);
    }
    Ok(RecipeProblem {
        prompts_train: train,
        prompts_test: test,
        sequences,
        splits,
        prompt_format,
    })
}

/// Representations a batch of sequences is scored from.
struct Features {
    /// Hidden states that predict each scored response token `[M, D]`.
    predict: Tensor,
    /// The scored tokens, `[M]`.
    targets: Vec<u32>,
    /// Which sequence of the batch each scored token belongs to.
    owner: Vec<usize>,
    /// Hidden state at the last response token `[n, D]`.
    last: Tensor,
}

/// The body's representations of `seqs` (differentiable): causal — `h` at the position before
/// each response token and at the last one, one forward per sequence; masked — each response
/// token masked in turn (one forward per token) and the unmasked sequence for the EX-RM.
fn live_features(lm: &LanguageModel, seqs: &[&ScoredSequence], need: Need) -> Result<Features> {
    let dev = &lm.device;
    let d = lm.dim;
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for k in s.response_start..s.response_end {
            targets.push(s.ids[k]);
            owner.push(i);
        }
    }
    let select = |h: &Tensor, rows: Vec<u32>| -> Result<Tensor> {
        let (n, l, _) = h.dims3()?;
        Ok(h.reshape((n * l, d))?
            .index_select(&Tensor::new(rows, dev)?, 0)?)
    };
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    match lm.mask_id {
        None => {
            let h = lm.padded_hidden_states(&ids)?;
            let len = h.dim(1)?;
            let mut rows = Vec::new();
            for (i, s) in seqs.iter().enumerate() {
                for k in s.response_start..s.response_end {
                    rows.push((i * len + k - 1) as u32);
                }
            }
            let last_rows = seqs
                .iter()
                .enumerate()
                .map(|(i, s)| (i * len + s.response_end - 1) as u32)
                .collect();
            Ok(Features {
                predict: select(&h, rows)?,
                targets,
                owner,
                last: select(&h, last_rows)?,
            })
        }
        Some(mask) => {
            let predict = if need.implicit {
                let mut masked = Vec::new();
                let mut rows = Vec::new();
                let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
                for s in seqs {
                    for k in s.response_start..s.response_end {
                        let mut m = s.ids.clone();
                        m[k] = mask;
                        rows.push((masked.len() * len + k) as u32);
                        masked.push(m);
                    }
                }
                let h = lm.padded_hidden_states(&masked)?;
                // Padding to the batch's longest sequence keeps `len` the row stride.
                debug_assert_eq!(h.dim(1)?, len);
                select(&h, rows)?
            } else {
                Tensor::zeros((0, d), DType::F32, dev)?
            };
            let last = if need.explicit {
                let h = lm.padded_hidden_states(&ids)?;
                let len = h.dim(1)?;
                select(
                    &h,
                    seqs.iter()
                        .enumerate()
                        .map(|(i, s)| (i * len + s.response_end - 1) as u32)
                        .collect(),
                )?
            } else {
                Tensor::zeros((seqs.len(), d), DType::F32, dev)?
            };
            Ok(Features {
                predict,
                targets,
                owner,
                last,
            })
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Need {
    implicit: bool,
    explicit: bool,
}

impl Need {
    fn of(kind: ModelKind) -> Need {
        Need {
            implicit: kind == ModelKind::Implicit,
            explicit: kind == ModelKind::Explicit,
        }
    }
}

/// `ln π(y_k | ·)` of every scored token, `[M]`: `log_softmax(h Uᵀ)` gathered at the targets.
fn token_logprobs(f: &Features, u: &Tensor) -> Result<Tensor> {
    let dev = u.device();
    let lp = candle_nn::ops::log_softmax(&f.predict.matmul(&u.t()?)?, D::Minus1)?;
    let idx = Tensor::new(f.targets.as_slice(), dev)?.unsqueeze(1)?;
    Ok(lp.gather(&idx, 1)?.squeeze(1)?)
}

/// Per-sequence sums of per-token values `[M] → [n]` (a 0/1 matrix product, differentiable).
fn per_sequence_sum(values: &Tensor, owner: &[usize], n: usize) -> Result<Tensor> {
    let m = owner.len();
    let mut seg = vec![0f32; n * m];
    for (j, &i) in owner.iter().enumerate() {
        seg[i * m + j] = 1.0;
    }
    let seg = Tensor::from_vec(seg, (n, m), values.device())?;
    Ok(seg.matmul(&values.unsqueeze(1)?)?.squeeze(1)?)
}

/// Representations of every sequence under the initial (frozen) body, for head-only training.
struct FrozenFeatures {
    predict: Tensor,
    /// Range of each sequence's scored tokens in `predict`.
    spans: Vec<(usize, usize)>,
    targets: Vec<u32>,
    last: Tensor,
}

impl FrozenFeatures {
    fn extract(
        lm: &LanguageModel,
        seqs: &[ScoredSequence],
        batch: usize,
        need: Need,
    ) -> Result<FrozenFeatures> {
        let (mut predict, mut last, mut spans, mut targets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for chunk in seqs.chunks(batch) {
            let refs: Vec<&ScoredSequence> = chunk.iter().collect();
            let f = live_features(lm, &refs, need)?;
            for s in chunk {
                let r = s.response_end - s.response_start;
                spans.push((at, r));
                at += r;
            }
            targets.extend(f.targets);
            predict.push(f.predict.detach());
            last.push(f.last.detach());
        }
        Ok(FrozenFeatures {
            predict: Tensor::cat(&predict, 0)?,
            spans,
            targets,
            last: Tensor::cat(&last, 0)?,
        })
    }

    fn features(&self, idx: &[usize], need: Need) -> Result<Features> {
        let dev = self.predict.device();
        let (mut rows, mut owner, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &s) in idx.iter().enumerate() {
            let (a, r) = self.spans[s];
            for j in a..a + r {
                rows.push(j as u32);
                owner.push(i);
                targets.push(self.targets[j]);
            }
        }
        let predict = if need.implicit {
            self.predict.index_select(&Tensor::new(rows, dev)?, 0)?
        } else {
            Tensor::zeros((0, self.last.dim(1)?), DType::F32, dev)?
        };
        let last_rows: Vec<u32> = idx.iter().map(|&s| s as u32).collect();
        Ok(Features {
            predict,
            targets,
            owner,
            last: self.last.index_select(&Tensor::new(last_rows, dev)?, 0)?,
        })
    }
}

/// What is trained: the whole model (`Full`) or the head / unembedding over frozen features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipeMode {
    Head,
    Full,
}

impl RecipeMode {
    pub fn name(self) -> &'static str {
        match self {
            RecipeMode::Head => "head",
            RecipeMode::Full => "full",
        }
    }
}

/// One split's metrics at one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeSplitMetrics {
    #[serde(flatten)]
    pub accuracy: SplitMetrics,
    #[serde(flatten)]
    pub rewards: RewardSummary,
    /// Mean reward of the split's responses by answer word (each distinct sequence once).
    pub mean_reward_by_answer: BTreeMap<String, f64>,
    /// IM-RM: mean per-sequence contribution `β Σ_k [ln π − ln π_ref]` of the prefix tokens,
    /// the answer-word tokens and the rest (chat-template suffix), chosen and rejected sides.
    pub implicit_parts: Option<ImplicitParts>,
    /// IM-RM: mean contribution `β (ln π − ln π_ref)` of each response token (by side and token
    /// piece) over the split's sequences: which tokens' rewards moved.
    pub implicit_tokens: Option<Vec<TokenContribution>>,
}

/// One response token's mean reward contribution on one side of a split.
#[derive(Debug, Clone, Serialize)]
pub struct TokenContribution {
    pub side: Side,
    pub token: String,
    pub mean: f64,
    /// Occurrences over the split's distinct sequences.
    pub count: usize,
}

/// Where the IM-RM's reward sits within the response (means over the split's sequences).
#[derive(Debug, Clone, Serialize)]
pub struct ImplicitParts {
    pub chosen_prefix: f64,
    pub chosen_word: f64,
    pub chosen_rest: f64,
    pub rejected_prefix: f64,
    pub rejected_word: f64,
    pub rejected_rest: f64,
}

/// Every split evaluated after `step` optimizer steps (`epoch` passes).
#[derive(Debug, Clone, Serialize)]
pub struct RecipeCheckpoint {
    pub epoch: usize,
    pub step: usize,
    pub splits: Vec<RecipeSplitMetrics>,
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum RecipeEvent<'a> {
    /// A stage without steps (feature extraction, reference scoring, evaluation).
    Stage(String),
    /// An optimizer step done.
    Step(&'a RecipeStep),
}

/// One optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeStep {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub batch_accuracy: f64,
}

/// A trained reward model under the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeRun {
    pub mode: RecipeMode,
    pub kind: ModelKind,
    pub parameters: usize,
    pub history: Vec<RecipeStep>,
    pub checkpoints: Vec<RecipeCheckpoint>,
    /// Final reward of every sequence (index as in `sequences.jsonl`).
    #[serde(skip)]
    pub rewards: Vec<f64>,
    pub seconds: f64,
    /// Wall time of the optimizer steps alone (no evaluation), for the per-step cost.
    pub step_seconds: f64,
}

/// The split metrics from per-sequence rewards (and, for the IM-RM, per-token contributions).
fn evaluate_splits(
    problem: &RecipeProblem,
    rewards: &[f64],
    contributions: Option<&[Vec<f64>]>,
    tau: f64,
) -> Vec<RecipeSplitMetrics> {
    problem
        .splits
        .iter()
        .map(|s| {
            let c: Vec<f64> = s.chosen.iter().map(|&i| rewards[i]).collect();
            let r: Vec<f64> = s.rejected.iter().map(|&i| rewards[i]).collect();
            let margins: Vec<f64> = c.iter().zip(&r).map(|(a, b)| a - b).collect();
            let mut distinct: Vec<usize> = s.chosen.iter().chain(&s.rejected).copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            let mut by_answer: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for &i in &distinct {
                let e = by_answer
                    .entry(problem.sequences[i].word.clone())
                    .or_default();
                e.0 += rewards[i];
                e.1 += 1;
            }
            let implicit_parts = contributions.map(|tok| {
                let mut acc = [0.0f64; 6];
                let mut count = [0usize; 2];
                for &i in &distinct {
                    let q = &problem.sequences[i];
                    let side = usize::from(q.side == Side::Rejected);
                    count[side] += 1;
                    for (j, v) in tok[i].iter().enumerate() {
                        let k = q.response_start + j;
                        let part = match q.word_span {
                            Some((a, _)) if k < a => 0,
                            Some((_, b)) if k < b => 1,
                            _ => 2,
                        };
                        acc[3 * side + part] += v;
                    }
                }
                let m = |k: usize| acc[k] / count[k / 3].max(1) as f64;
                ImplicitParts {
                    chosen_prefix: m(0),
                    chosen_word: m(1),
                    chosen_rest: m(2),
                    rejected_prefix: m(3),
                    rejected_word: m(4),
                    rejected_rest: m(5),
                }
            });
            let implicit_tokens = contributions.map(|tok| {
                let mut by: BTreeMap<(u8, String), (f64, usize)> = BTreeMap::new();
                for &i in &distinct {
                    let q = &problem.sequences[i];
                    for (piece, v) in q.response_tokens.iter().zip(&tok[i]) {
                        let e = by.entry((q.side as u8, piece.clone())).or_default();
                        e.0 += v;
                        e.1 += 1;
                    }
                }
                by.into_iter()
                    .map(|((side, token), (sum, count))| TokenContribution {
                        side: if side == 0 {
                            Side::Chosen
                        } else {
                            Side::Rejected
                        },
                        token,
                        mean: sum / count as f64,
                        count,
                    })
                    .collect()
            });
            RecipeSplitMetrics {
                accuracy: split_metrics(&s.name, &margins, tau),
                rewards: reward_summary(&s.name, &c, &r),
                mean_reward_by_answer: by_answer
                    .into_iter()
                    .map(|(w, (sum, n))| (w, sum / n as f64))
                    .collect(),
                implicit_parts,
                implicit_tokens,
            }
        })
        .collect()
}

/// Per-sequence rewards and, for the IM-RM, each token's contribution.
type Scores = (Vec<f64>, Option<Vec<Vec<f64>>>);

/// Scores sequences for one reward model: from live forwards (`full`) or frozen features.
struct Scorer<'a> {
    kind: ModelKind,
    lm: &'a LanguageModel,
    frozen: Option<&'a FrozenFeatures>,
    beta: f64,
    batch: usize,
}

impl Scorer<'_> {
    fn features(&self, seqs: &[ScoredSequence], idx: &[usize]) -> Result<Features> {
        let need = Need::of(self.kind);
        match self.frozen {
            Some(f) => f.features(idx, need),
            None => {
                let refs: Vec<&ScoredSequence> = idx.iter().map(|&i| &seqs[i]).collect();
                live_features(self.lm, &refs, need)
            }
        }
    }

    /// Differentiable rewards of the sequences `idx` `[n]`: IM-RM `β Σ_k (ln π − ln π_ref)`
    /// (difference taken per token, then summed), EX-RM `u·h_last`.
    fn rewards(
        &self,
        seqs: &[ScoredSequence],
        idx: &[usize],
        u: &Tensor,
        head: &Tensor,
        reference: &[Vec<f64>],
    ) -> Result<Tensor> {
        let f = self.features(seqs, idx)?;
        match self.kind {
            ModelKind::Implicit => {
                let lp = token_logprobs(&f, u)?;
                let r: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| reference[i].iter().map(|&x| x as f32))
                    .collect();
                let r = Tensor::from_vec(r, lp.dims1()?, lp.device())?;
                let sums = per_sequence_sum(&(lp - r)?, &f.owner, idx.len())?;
                Ok((sums * self.beta)?)
            }
            ModelKind::Explicit => Ok(f.last.matmul(&head.unsqueeze(1)?)?.squeeze(1)?),
        }
    }

    /// `ln π` of every scored token of every sequence, f64 (no gradient).
    fn token_logprob_table(&self, seqs: &[ScoredSequence], u: &Tensor) -> Result<Vec<Vec<f64>>> {
        let all: Vec<usize> = (0..seqs.len()).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for idx in all.chunks(self.batch) {
            let f = self.features(seqs, idx)?;
            let lp = token_logprobs(&f, u)?.detach().to_vec1::<f32>()?;
            let mut at = 0;
            for &i in idx {
                let r = seqs[i].response_end - seqs[i].response_start;
                out.push(lp[at..at + r].iter().map(|&x| f64::from(x)).collect());
                at += r;
            }
        }
        Ok(out)
    }

    /// Rewards of every sequence (f64) and, for the IM-RM, each token's contribution
    /// `β (ln π − ln π_ref)` (no gradient).
    fn score_all(
        &self,
        seqs: &[ScoredSequence],
        u: &Tensor,
        head: &Tensor,
        reference: &[Vec<f64>],
    ) -> Result<Scores> {
        match self.kind {
            ModelKind::Implicit => {
                let now = self.token_logprob_table(seqs, u)?;
                let parts: Vec<Vec<f64>> = now
                    .iter()
                    .zip(reference)
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| self.beta * (x - y)).collect())
                    .collect();
                Ok((parts.iter().map(|p| p.iter().sum()).collect(), Some(parts)))
            }
            ModelKind::Explicit => {
                let all: Vec<usize> = (0..seqs.len()).collect();
                let mut out = Vec::with_capacity(seqs.len());
                for idx in all.chunks(self.batch) {
                    let f = self.features(seqs, idx)?;
                    let r = f.last.matmul(&head.unsqueeze(1)?)?.squeeze(1)?.detach();
                    out.extend(r.to_vec1::<f32>()?.into_iter().map(f64::from));
                }
                Ok((out, None))
            }
        }
    }
}

/// Adds `new`'s gradients of `vars` into `acc` (gradient accumulation over micro-batches).
fn accumulate(
    acc: &mut Option<candle_core::backprop::GradStore>,
    new: candle_core::backprop::GradStore,
    vars: &[Var],
) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(a) => {
            for v in vars {
                if let Some(g) = new.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// Trains one reward model (`kind`) under the recipe in `mode` on a fresh copy of the model in
/// `model_dir`, evaluating every split before training, every `eval_every_epochs` epochs and
/// after the last; `on_event` sees every stage and optimizer step (progress).
pub fn train_recipe(
    kind: ModelKind,
    mode: RecipeMode,
    model_dir: &Path,
    device: &Device,
    file: &RecipeFile,
    problem: &RecipeProblem,
    on_event: &mut dyn FnMut(RecipeEvent),
) -> Result<RecipeRun> {
    let start = std::time::Instant::now();
    let t = &file.train;
    let lm = LanguageModel::load(model_dir, device, Forward::Differentiable)?;
    let need = Need::of(kind);
    let seqs = &problem.sequences;
    let frozen = match mode {
        RecipeMode::Head => {
            on_event(RecipeEvent::Stage(format!(
                "extracting the frozen features of {} sequences",
                seqs.len()
            )));
            Some(FrozenFeatures::extract(&lm, seqs, t.eval_batch, need)?)
        }
        RecipeMode::Full => None,
    };
    let scorer = Scorer {
        kind,
        lm: &lm,
        frozen: frozen.as_ref(),
        beta: t.beta,
        batch: t.eval_batch,
    };
    let u0 = lm.unembedding().detach().copy()?;
    let frozen_u = match (mode, kind) {
        (RecipeMode::Head, ModelKind::Implicit) => Some(Var::from_tensor(&u0)?),
        _ => None,
    };
    let mut head_rng = ChaCha8Rng::seed_from_u64(file.seed ^ 0x4ead_1a17);
    let head_values: Vec<f32> = if t.head_init_std > 0.0 {
        let normal = Normal::new(0.0, t.head_init_std as f32)
            .map_err(|e| anyhow::anyhow!("train.head_init_std: {e}"))?;
        (0..lm.dim).map(|_| normal.sample(&mut head_rng)).collect()
    } else {
        vec![0.0; lm.dim]
    };
    let head = Var::from_tensor(&Tensor::from_vec(head_values, lm.dim, device)?)?;
    let (vars, head_trained): (Vec<Var>, bool) = match (mode, kind) {
        (RecipeMode::Full, ModelKind::Implicit) => {
            (lm.parameters().into_iter().map(|(_, v)| v).collect(), false)
        }
        (RecipeMode::Full, ModelKind::Explicit) => (
            lm.body_parameters().into_iter().map(|(_, v)| v).collect(),
            true,
        ),
        (RecipeMode::Head, ModelKind::Implicit) => {
            (vec![frozen_u.clone().expect("head-only IM-RM U")], false)
        }
        (RecipeMode::Head, ModelKind::Explicit) => (vec![], true),
    };
    let u_now = || -> Tensor {
        match &frozen_u {
            Some(v) => v.as_tensor().clone(),
            None => lm.unembedding().clone(),
        }
    };
    let reference: Vec<Vec<f64>> = match kind {
        ModelKind::Implicit => {
            on_event(RecipeEvent::Stage(
                "reference log-probabilities of every sequence".into(),
            ));
            scorer.token_logprob_table(seqs, &u0)?
        }
        ModelKind::Explicit => vec![vec![]; seqs.len()],
    };
    let parameters =
        vars.iter().map(|v| v.elem_count()).sum::<usize>() + if head_trained { lm.dim } else { 0 };
    let adam = |vars: Vec<Var>, lr: f64| {
        AdamW::new(
            vars,
            ParamsAdamW {
                lr,
                beta1: t.beta1,
                beta2: t.beta2,
                eps: t.eps,
                weight_decay: t.weight_decay,
            },
        )
    };
    let mut opt = adam(vars.clone(), t.lr)?;
    let mut head_opt = if head_trained {
        Some(adam(vec![head.clone()], t.head_lr.unwrap_or(t.lr))?)
    } else {
        None
    };
    let mut all_vars = vars.clone();
    if head_trained {
        all_vars.push(head.clone());
    }
    let tau = file.eval.tie_tolerance;
    let evaluate = |epoch: usize,
                    step: usize,
                    on_event: &mut dyn FnMut(RecipeEvent)|
     -> Result<(RecipeCheckpoint, Vec<f64>)> {
        on_event(RecipeEvent::Stage(format!(
            "evaluating every split after epoch {epoch}"
        )));
        let (rewards, parts) = scorer.score_all(seqs, &u_now(), head.as_tensor(), &reference)?;
        if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
            bail!(
                "{} ({} mode): reward of sequence {i} is {} after {step} steps (lower train.lr?)",
                kind.name(),
                mode.name(),
                rewards[i]
            );
        }
        let splits = evaluate_splits(problem, &rewards, parts.as_deref(), tau);
        Ok((
            RecipeCheckpoint {
                epoch,
                step,
                splits,
            },
            rewards,
        ))
    };
    let (first, mut rewards) = evaluate(0, 0, on_event)?;
    let mut checkpoints = vec![first];
    let train = &problem.splits[0];
    let n = train.chosen.len();
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed ^ 0x5eed_f17e);
    let mut history = Vec::new();
    let mut step = 0;
    let mut step_seconds = 0.0;
    for epoch in 1..=t.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for pairs in order.chunks(t.pairs_per_step) {
            let t0 = std::time::Instant::now();
            let mut grads = None;
            let (mut loss_sum, mut wins) = (0.0, 0usize);
            // accelerate divides every micro-batch's mean loss by the configured accumulation
            // steps, the last, smaller step of an epoch included (MATH.md §6).
            let accumulation = t.pairs_per_step.div_ceil(t.micro_batch) as f64;
            for micro in pairs.chunks(t.micro_batch) {
                let mut idx: Vec<usize> = micro.iter().map(|&p| train.chosen[p]).collect();
                idx.extend(micro.iter().map(|&p| train.rejected[p]));
                let r = scorer.rewards(seqs, &idx, &u_now(), head.as_tensor(), &reference)?;
                let b = micro.len();
                let m = (r.narrow(0, 0, b)? - r.narrow(0, b, b)?)?;
                let total = softplus_neg(&m)?.sum_all()?;
                let loss = (&total / (b as f64 * accumulation))?;
                // Reported: the mean loss over the step's pairs.
                let value = f64::from(total.to_scalar::<f32>()?) / pairs.len() as f64;
                if !value.is_finite() {
                    bail!(
                        "{} ({} mode): loss is {value} at step {step} (epoch {epoch}; lower train.lr?)",
                        kind.name(),
                        mode.name()
                    );
                }
                loss_sum += value;
                wins += m.to_vec1::<f32>()?.into_iter().filter(|&x| x > 0.0).count();
                accumulate(&mut grads, loss.backward()?, &all_vars)?;
            }
            let grads = grads.expect("a step has at least one micro-batch");
            opt.step(&grads)?;
            if let Some(h) = head_opt.as_mut() {
                h.step(&grads)?;
            }
            step += 1;
            step_seconds += t0.elapsed().as_secs_f64();
            let record = RecipeStep {
                step,
                epoch,
                loss: loss_sum,
                batch_accuracy: wins as f64 / pairs.len() as f64,
            };
            on_event(RecipeEvent::Step(&record));
            history.push(record);
        }
        if epoch % t.eval_every_epochs == 0 || epoch == t.epochs {
            let (c, r) = evaluate(epoch, step, on_event)?;
            checkpoints.push(c);
            rewards = r;
        }
    }
    Ok(RecipeRun {
        mode,
        kind,
        parameters,
        history,
        checkpoints,
        rewards,
        seconds: start.elapsed().as_secs_f64(),
        step_seconds,
    })
}

/// Optimizer steps of one run: `epochs × ⌈train pairs / pairs_per_step⌉`.
pub fn steps_per_run(file: &RecipeFile) -> usize {
    file.train.epochs * file.data.train_prompts.div_ceil(file.train.pairs_per_step)
}

/// A whole recipe experiment: the problem and one run per (mode, reward model).
pub struct RecipeOutcome {
    pub model: PathBuf,
    pub arch: super::Architecture,
    pub device: String,
    pub file: RecipeFile,
    pub problem: RecipeProblem,
    pub runs: Vec<RecipeRun>,
}

/// Runs the recipe of `file` on the model in `model_dir` in each of `modes`, both reward models;
/// `on_event` sees every stage and step (progress bars).
pub fn run_recipe(
    model_dir: &Path,
    file: &RecipeFile,
    device: &Device,
    modes: &[RecipeMode],
    kinds: &[ModelKind],
    on_event: &mut dyn FnMut(RecipeMode, ModelKind, RecipeEvent),
) -> Result<RecipeOutcome> {
    let lm = LanguageModel::load(model_dir, device, Forward::Differentiable)?;
    // Statements, prompts, tokenization and chat template: all input errors (exit code 2).
    let problem =
        build_problem(file, &lm).map_err(|e| crate::error::InputError(format!("{e:#}")))?;
    let arch = lm.arch;
    drop(lm);
    let mut runs = Vec::new();
    for &mode in modes {
        for &kind in kinds {
            runs.push(train_recipe(
                kind,
                mode,
                model_dir,
                device,
                file,
                &problem,
                &mut |e| on_event(mode, kind, e),
            )?);
        }
    }
    Ok(RecipeOutcome {
        model: model_dir.to_path_buf(),
        arch,
        device: format!("{device:?}"),
        file: file.clone(),
        problem,
        runs,
    })
}

/// What a masked encoder's rewards are (said in every output of such a run).
pub const PSEUDO_LIKELIHOOD_NOTE: &str = "masked encoder: the IM-RM's ln π is a masked-LM pseudo-log-likelihood proxy (each response token masked in turn, read through the tied word embeddings; the checkpoint has no MLM head), not a causal language model's distribution";

/// Writes `recipe.json`, `sequences.jsonl`, `metrics.csv`, `history.csv`, `rewards.csv` and
/// `<mode>/<model>/summary.json` (experiments/README.md, "Recipe output").
pub fn write_outputs(dir: &crate::io::atomic::AtomicDir, o: &RecipeOutcome) -> Result<()> {
    let masked = o.arch == super::Architecture::Bert;
    dir.write_json(
        "recipe.json",
        &serde_json::json!({
            "rmflow_version": env!("CARGO_PKG_VERSION"),
            "model": o.model.display().to_string(),
            "architecture": o.arch,
            "device": o.device,
            "seed": o.file.seed,
            "config": o.file,
            "prompt_format": o.problem.prompt_format,
            "note": if masked { Some(PSEUDO_LIKELIHOOD_NOTE) } else { None },
            "train_prompts": o.problem.prompts_train,
            "test_prompts": o.problem.prompts_test,
            "splits": o.problem.splits.iter().map(|s| serde_json::json!({
                "name": s.name, "pairs": s.chosen.len(),
            })).collect::<Vec<_>>(),
            "runs": o.runs.iter().map(|r| serde_json::json!({
                "mode": r.mode, "model": r.kind.name(), "parameters": r.parameters,
                "steps": r.history.len(), "seconds": r.seconds,
                "seconds_per_step": r.step_seconds / r.history.len().max(1) as f64,
                "final": r.checkpoints.last().map(|c| &c.splits),
            })).collect::<Vec<_>>(),
        }),
    )?;
    let mut jsonl = String::new();
    for (i, s) in o.problem.sequences.iter().enumerate() {
        jsonl.push_str(&serde_json::to_string(&serde_json::json!({
            "index": i, "prompt": s.prompt, "side": s.side, "prefix": s.prefix, "word": s.word,
            "response_text": s.response_text, "ids": s.ids, "response_start": s.response_start,
            "response_end": s.response_end, "word_span": s.word_span,
        }))?);
        jsonl.push('\n');
    }
    dir.write_text("sequences.jsonl", &jsonl)?;
    let mut metrics = String::from("mode,model,epoch,step,split,pairs,exact_tie_accuracy,tie_aware_accuracy,strict_accuracy,ties,normalised_abs_margin,mean_chosen_reward,mean_rejected_reward,mean_margin\n");
    let mut history = String::from("mode,model,step,epoch,loss,batch_accuracy\n");
    let mut rewards = String::from("mode,model,sequence,reward\n");
    for r in &o.runs {
        let (mode, model) = (r.mode.name(), r.kind.name());
        for c in &r.checkpoints {
            for (s, split) in c.splits.iter().zip(&o.problem.splits) {
                metrics.push_str(&format!(
                    "{mode},{model},{},{},{},{},{},{},{},{},{:e},{:e},{:e},{:e}\n",
                    c.epoch,
                    c.step,
                    split.name,
                    split.chosen.len(),
                    s.accuracy.exact_tie_accuracy,
                    s.accuracy.tie_aware_accuracy,
                    s.accuracy.strict_accuracy,
                    s.accuracy.ties,
                    s.rewards.normalised_abs_margin,
                    s.rewards.mean_chosen_reward,
                    s.rewards.mean_rejected_reward,
                    s.accuracy.mean_margin
                ));
            }
        }
        for h in &r.history {
            history.push_str(&format!(
                "{mode},{model},{},{},{:e},{}\n",
                h.step, h.epoch, h.loss, h.batch_accuracy
            ));
        }
        for (i, x) in r.rewards.iter().enumerate() {
            rewards.push_str(&format!("{mode},{model},{i},{x:e}\n"));
        }
        dir.write_json(
            &format!("{mode}/{model}/summary.json"),
            &serde_json::to_value(r)?,
        )?;
    }
    dir.write_text("metrics.csv", &metrics)?;
    dir.write_text("history.csv", &history)?;
    dir.write_text("rewards.csv", &rewards)?;
    Ok(())
}

/// The final accuracy table: per run, each split's exact-tie and τ-tolerant accuracy and the
/// normalised margin.
pub fn final_table(o: &RecipeOutcome) -> String {
    let mut s = format!(
        "{:<6} {:<8} {:<18} {:>9} {:>9} {:>11}\n",
        "mode", "model", "split", "acc(τ=0)", "acc(τ)", "norm|Δr|"
    );
    for r in &o.runs {
        if let Some(c) = r.checkpoints.last() {
            for m in &c.splits {
                s.push_str(&format!(
                    "{:<6} {:<8} {:<18} {:>9.3} {:>9.3} {:>11.3}\n",
                    r.mode.name(),
                    r.kind.name(),
                    m.accuracy.split,
                    m.accuracy.exact_tie_accuracy,
                    m.accuracy.tie_aware_accuracy,
                    m.rewards.normalised_abs_margin
                ));
            }
        }
    }
    s
}

/// Every text a recipe tokenizes (questions with their statements, prefixes, words): the
/// vocabulary a tiny word-level checkpoint needs to run the recipe (`rmflow lm-tiny --recipe`).
pub fn vocabulary_texts(file: &RecipeFile) -> Result<Vec<String>> {
    let d = &file.data;
    let r = &file.responses;
    let mut texts: Vec<String> = source_prompts(d)?;
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

/// `ln π(y_k | ·)` of every response token of `seqs` under `lm` (its own unembedding), f64:
/// the quantity the IM-RM's reward sums, exposed for checks against an independent computation.
pub fn response_token_logprobs(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let scorer = Scorer {
        kind: ModelKind::Implicit,
        lm,
        frozen: None,
        beta: 1.0,
        batch: batch.max(1),
    };
    scorer.token_logprob_table(seqs, lm.unembedding())
}

/// The EX-RM's representation of each sequence: `h` at its last response token, f64 `[n, D]`.
pub fn last_response_hidden(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
) -> Result<ndarray::Array2<f64>> {
    let refs: Vec<&ScoredSequence> = seqs.iter().collect();
    let f = live_features(lm, &refs, Need::of(ModelKind::Explicit))?;
    super::model::to_array2(&f.last.detach())
}
