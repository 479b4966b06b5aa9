//! Theorem 2's setting on a real transformer (`rmflow lm`, MATH.md §6): single-token answers in
//! a `[MASK]` slot or after the prompt, representations extracted once and trained head-only
//! with the engine's flows; with `--mode full`, full fine-tuning beside it.
//!
//! The response token fills a `[MASK]` slot after the prompt and a response prefix. IM-RM:
//! `π(y|x) = softmax(E h_mask(x))_y` with the word-embedding matrix `E` as the (tied, trainable)
//! unembedding, `π_ref = π_{E}`. EX-RM: a linear head on the final hidden state at the response
//! token's position of `prompt + prefix + y`. Representations are extracted once (f32 forward,
//! stored as f64), then the run is an ordinary [`crate::experiment::simulation::Simulation`].

use crate::config::{Config, SetupConfig, UnembeddingInit};
use crate::experiment::simulation::{max_margin_for, run_model, ModelKind, Simulation};
use crate::lm::checkpoint::chat_template as chat;
use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::model::extract::distinct_prompts;
use crate::lm::model::extract::to_array2;
use crate::lm::model::extract::LAST_EXTRACTION_TOKENS;
use crate::lm::model::language_model::Forward;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::nets::kernels::Kernels;
use crate::lm::single_token::config::split_statements;
use crate::lm::single_token::config::LmFile;
use crate::lm::single_token::config::LmSpec;
use crate::lm::single_token::finetune;
use crate::lm::train::alignment;
use crate::lm::train::epochs::Mode;
use crate::lm::Device;
use crate::problem::synthetic::SplitId;
use crate::problem::synthetic::{PairSet, Setup, TokenLabel, Vocabulary};
use anyhow::Result;
use ndarray::{Array1, Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The answer words and their token ids, as reported by `rmflow lm`.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerTokens {
    pub train_chosen: Vec<(String, u32)>,
    pub train_rejected: Vec<(String, u32)>,
    pub unseen_chosen: Vec<(String, u32)>,
    pub unseen_rejected: Vec<(String, u32)>,
}

/// One split's token sequences: per pair the prompt (with the position `π(·|x)` is read at)
/// and the two responses `prompt + y±` (with the position of `y±`).
#[derive(Debug, Clone)]
pub struct SplitSequences {
    pub name: String,
    pub prompts: Vec<Vec<u32>>,
    pub prompt_pos: Vec<usize>,
    pub chosen: Vec<Vec<u32>>,
    pub chosen_pos: Vec<usize>,
    pub rejected: Vec<Vec<u32>>,
    pub rejected_pos: Vec<usize>,
    pub chosen_token: Vec<u32>,
    pub rejected_token: Vec<u32>,
}

impl SplitSequences {
    /// A split with no pairs yet.
    pub fn new(name: &str) -> SplitSequences {
        SplitSequences {
            name: name.to_string(),
            prompts: vec![],
            prompt_pos: vec![],
            chosen: vec![],
            chosen_pos: vec![],
            rejected: vec![],
            rejected_pos: vec![],
            chosen_token: vec![],
            rejected_token: vec![],
        }
    }

    /// Adds the pair `(prompt + y⁺, prompt + y⁻)` with `π(·|x)` read at `pos` of `prompt`
    /// ([`LanguageModel::with_answer`]).
    pub fn push_pair(
        &mut self,
        lm: &LanguageModel,
        prompt: Vec<u32>,
        pos: usize,
        yp: u32,
        ym: u32,
    ) {
        let (c, cp) = lm.with_answer(&prompt, pos, yp);
        let (r, rp) = lm.with_answer(&prompt, pos, ym);
        self.prompts.push(prompt);
        self.prompt_pos.push(pos);
        self.chosen.push(c);
        self.chosen_pos.push(cp);
        self.rejected.push(r);
        self.rejected_pos.push(rp);
        self.chosen_token.push(yp);
        self.rejected_token.push(ym);
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// Theorem 2's problem on a real model: the engine's [`Setup`] (representations extracted once)
/// and the token sequences behind it (train first, then the eval splits, in `setup`'s order).
pub struct RealProblem {
    pub setup: Setup,
    pub answers: AnswerTokens,
    pub sequences: Vec<SplitSequences>,
    /// How prompts were rendered: `"plain: question prefix"` or `"chat template of FILE"`.
    pub prompt_format: String,
}

/// The pairs of every split as token sequences (seeded draw of prefixes and answers), and how
/// the prompts were rendered ([`RealProblem::prompt_format`]).
pub fn split_sequences(
    file: &LmFile,
    lm: &LanguageModel,
) -> Result<(AnswerTokens, Vec<SplitSequences>, String)> {
    let s = &file.lm;
    let chat = prompt_template(s, lm)?;
    let prompt_format = match &chat {
        Some(t) => format!(
            "chat template of {} (user turn + generation prompt + prefix)",
            t.source
        ),
        None => "plain: question prefix".to_string(),
    };
    // The answer follows a space unless it opens the assistant turn (chat, empty prefixes).
    let leading_space = lm.arch.is_causal() && !(chat.is_some() && s.prefixes[0].is_empty());
    let ids = |words: &[String]| -> Result<Vec<(String, u32)>> {
        words
            .iter()
            .map(|w| Ok((w.clone(), lm.answer_token(w, leading_space)?)))
            .collect()
    };
    let answers = AnswerTokens {
        train_chosen: ids(&s.train_chosen)?,
        train_rejected: ids(&s.train_rejected)?,
        unseen_chosen: ids(&s.unseen_chosen)?,
        unseen_rejected: ids(&s.unseen_rejected)?,
    };
    let only_ids = |w: &[(String, u32)]| w.iter().map(|p| p.1).collect::<Vec<_>>();
    crate::lm::train::config::disjoint(&[
        ("lm.train_chosen", &only_ids(&answers.train_chosen)),
        ("lm.train_rejected", &only_ids(&answers.train_rejected)),
        ("lm.unseen_chosen", &only_ids(&answers.unseen_chosen)),
        ("lm.unseen_rejected", &only_ids(&answers.unseen_rejected)),
    ])
    .map_err(|e| {
        anyhow::anyhow!(
            "answer words of two lists encode to the same token of {} ({e}); the token ids are: {:?}",
            lm.dir.join("tokenizer.json").display(),
            answers
        )
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed);
    let (train_statements, eval_statements) = tagged_statements(s, &mut rng)?;
    let builder = SplitBuilder {
        spec: s,
        lm,
        chat: chat.as_ref(),
    };
    // (split, statements, question, chosen words, rejected words), drawn in this order.
    let (seen, unseen) = (
        (&answers.train_chosen, &answers.train_rejected),
        (&answers.unseen_chosen, &answers.unseen_rejected),
    );
    let splits = [
        (SplitId::Train.name(), &train_statements, &s.question, seen),
        (SplitId::Seen.name(), &eval_statements, &s.question, seen),
        (
            SplitId::Unseen.name(),
            &eval_statements,
            &s.question,
            unseen,
        ),
        (
            SplitId::Domain.name(),
            &eval_statements,
            &s.domain_question,
            seen,
        ),
    ];
    let seqs = splits
        .into_iter()
        .map(|(name, stmts, question, (good, bad))| {
            builder.split(name, stmts, question, good, bad, &mut rng)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((answers, seqs, prompt_format))
}

/// Training and evaluation statements, each tagged with whether the persona disagrees (the
/// `rejected_statements`, whose pairs swap the answers).
#[allow(clippy::type_complexity)]
fn tagged_statements(
    s: &LmSpec,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<(String, bool)>, Vec<(String, bool)>)> {
    let tag = |v: Vec<String>, flip: bool| v.into_iter().map(move |x| (x, flip));
    let (t, e) = split_statements(s, &s.statements, rng)?;
    let mut train: Vec<(String, bool)> = tag(t, false).collect();
    let mut eval: Vec<(String, bool)> = tag(e, false).collect();
    if let Some(path) = &s.rejected_statements {
        let (t, e) = split_statements(s, path, rng)?;
        train.extend(tag(t, true));
        eval.extend(tag(e, true));
    }
    Ok((train, eval))
}

/// Builds one split's token sequences: per statement a prompt (the question, rendered through
/// the chat template when there is one, and a drawn prefix) and the drawn answers appended.
struct SplitBuilder<'a> {
    spec: &'a LmSpec,
    lm: &'a LanguageModel,
    chat: Option<&'a chat::ChatTemplate>,
}

impl SplitBuilder<'_> {
    fn split(
        &self,
        name: &str,
        stmts: &[(String, bool)],
        question: &str,
        good: &[(String, u32)],
        bad: &[(String, u32)],
        rng: &mut ChaCha8Rng,
    ) -> Result<SplitSequences> {
        let (s, lm) = (self.spec, self.lm);
        let mut out = SplitSequences::new(name);
        for (st, disagree) in stmts {
            let (good, bad) = if *disagree { (bad, good) } else { (good, bad) };
            let prefix = &s.prefixes[rng.random_range(0..s.prefixes.len())];
            let user = question.replace("{statement}", st);
            let text = match self.chat {
                Some(t) => format!(
                    "{}{prefix}",
                    t.render(
                        &[chat::Message {
                            role: "user",
                            content: &user
                        }],
                        true
                    )?
                ),
                None => format!("{user} {prefix}"),
            };
            let (prompt, p) = lm.prompt_ids(&text)?;
            let (yp, ym) = (
                good[rng.random_range(0..good.len())].1,
                bad[rng.random_range(0..bad.len())].1,
            );
            out.push_pair(lm, prompt, p, yp, ym);
        }
        Ok(out)
    }
}

/// The chat template of `lm.chat_template = true`: the checkpoint's own, or an error naming the
/// model folder when it has none (or is not causal).
pub(super) fn prompt_template(
    s: &LmSpec,
    lm: &LanguageModel,
) -> Result<Option<chat::ChatTemplate>> {
    if !s.chat_template {
        return Ok(None);
    }
    if !lm.arch.is_causal() {
        return Err(crate::error::InputError(format!(
            "lm.chat_template = true needs a causal checkpoint; {} is {}",
            lm.dir.display(),
            lm.arch.model_type()
        ))
        .into());
    }
    match chat::ChatTemplate::from_model_dir(&lm.dir)? {
        Some(t) => Ok(Some(t)),
        None => Err(crate::error::InputError(format!(
            "lm.chat_template = true but {} has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)",
            lm.dir.display()
        ))
        .into()),
    }
}

/// Hidden representations of one split's sequences: `h_x` at the prompt's read position,
/// `h_{x,y±}` at the answer's position (MATH.md §6). On a causal Llama-family body the answers
/// continue their prompts, and [`shared_prompt_hidden`] computes each prompt once; other bodies
/// read each sequence in batches of `batch`.
pub fn extract_pairs(lm: &LanguageModel, seq: &SplitSequences, batch: usize) -> Result<PairSet> {
    let (prompt_hidden, chosen_hidden, rejected_hidden) = if answers_continue_prompts(lm, seq) {
        shared_prompt_hidden(lm, seq, batch)?
    } else {
        (
            lm.hidden_at(&seq.prompts, &seq.prompt_pos, batch)?,
            lm.hidden_at(&seq.chosen, &seq.chosen_pos, batch)?,
            lm.hidden_at(&seq.rejected, &seq.rejected_pos, batch)?,
        )
    };
    let (n, d) = prompt_hidden.dim();
    let prefix = Array3::from_shape_fn((n, 1, d), |(i, _, j)| prompt_hidden[[i, j]]);
    let tokens = |t: &[u32]| Array2::from_shape_fn((n, 1), |(i, _)| t[i] as usize);
    Ok(PairSet {
        name: seq.name.clone(),
        chosen_prefix_hidden: prefix.clone(),
        rejected_prefix_hidden: prefix,
        prompt_hidden,
        chosen_hidden,
        rejected_hidden,
        chosen_tokens: tokens(&seq.chosen_token),
        rejected_tokens: tokens(&seq.rejected_token),
    })
}

/// Whether every pair of `seq` is `prompt`, `prompt + y⁺`, `prompt + y⁻` read at the prompt's
/// last position and at the answer, on a body with a shared-prompt forward.
pub fn answers_continue_prompts(lm: &LanguageModel, seq: &SplitSequences) -> bool {
    let continues = |s: &[u32], pos: usize, p: &[u32], y: u32| {
        s.len() == p.len() + 1 && s[..p.len()] == *p && s[p.len()] == y && pos == p.len()
    };
    lm.shares_prefixes()
        && (0..seq.len()).all(|i| {
            let p = &seq.prompts[i];
            !p.is_empty()
                && seq.prompt_pos[i] + 1 == p.len()
                && continues(&seq.chosen[i], seq.chosen_pos[i], p, seq.chosen_token[i])
                && continues(
                    &seq.rejected[i],
                    seq.rejected_pos[i],
                    p,
                    seq.rejected_token[i],
                )
        })
}

/// `h_x`, `h_{x,y⁺}` and `h_{x,y⁻}` [n, D] of causal pairs, no gradient: the pairs ordered by
/// prompt length, in chunks of `batch` pairs, each chunk's distinct prompts computed once and
/// the two answers as one-token continuations ([`LanguageModel::prompt_group_hidden_states`],
/// inference kernels; equal to the per-sequence forward up to f32 rounding). Counts the tokens of
/// the three sequences per pair, as the per-sequence path does.
fn shared_prompt_hidden(
    lm: &LanguageModel,
    seq: &SplitSequences,
    batch: usize,
) -> Result<(Array2<f64>, Array2<f64>, Array2<f64>)> {
    let (n, d) = (seq.len(), lm.dim);
    let tokens: usize = (0..n)
        .map(|i| seq.prompts[i].len() + seq.chosen[i].len() + seq.rejected[i].len())
        .sum();
    LAST_EXTRACTION_TOKENS.fetch_add(tokens, std::sync::atomic::Ordering::Relaxed);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (seq.prompts[i].len(), i));
    let mut out = [(); 3].map(|_| Array2::zeros((n, d)));
    for chunk in order.chunks(batch.max(1)) {
        let (prompts, group) = distinct_prompts(chunk.iter().map(|&i| seq.prompts[i].as_slice()));
        let conts: Vec<Vec<u32>> = (chunk.iter().map(|&i| seq.chosen_token[i]))
            .chain(chunk.iter().map(|&i| seq.rejected_token[i]))
            .map(|y| vec![y])
            .collect();
        let both: Vec<usize> = group.iter().chain(&group).copied().collect();
        let (h_last, h) =
            lm.prompt_group_hidden_states(&prompts, &conts, &both, Kernels::Inference)?;
        let h_last = to_array2(&h_last)?;
        let h = to_array2(&h.reshape((2 * chunk.len(), d))?)?;
        for (k, &i) in chunk.iter().enumerate() {
            out[0].row_mut(i).assign(&h_last.row(group[k]));
            out[1].row_mut(i).assign(&h.row(k));
            out[2].row_mut(i).assign(&h.row(chunk.len() + k));
        }
    }
    let [prompt, chosen, rejected] = out;
    Ok((prompt, chosen, rejected))
}

/// Builds Theorem 2's [`Setup`] on the model's representations (body frozen).
pub fn build_setup(file: &LmFile, lm: &LanguageModel) -> Result<RealProblem> {
    // Statements, answer words, prompts and their lengths: all input errors (exit code 2).
    let (answers, sequences, prompt_format) =
        split_sequences(file, lm).map_err(|e| crate::error::InputError(format!("{e:#}")))?;
    let mut sets = sequences
        .iter()
        .map(|q| extract_pairs(lm, q, file.lm.batch_size))
        .collect::<Result<Vec<_>>>()?;
    let train = sets.remove(0);
    let evals = sets;
    let unembedding = lm.unembedding_f64()?;
    let (v, d) = unembedding.dim();
    let mut labels = vec![TokenLabel::Filler; v];
    let tok = |a: &[(String, u32)]| a.iter().map(|x| x.1 as usize).collect::<Vec<_>>();
    for &t in tok(&answers.train_chosen)
        .iter()
        .chain(&tok(&answers.unseen_chosen))
    {
        labels[t] = TokenLabel::Good;
    }
    for &t in tok(&answers.train_rejected)
        .iter()
        .chain(&tok(&answers.unseen_rejected))
    {
        labels[t] = TokenLabel::Bad;
    }
    let vocab = Vocabulary {
        labels,
        good_seen: tok(&answers.train_chosen),
        good_unseen: tok(&answers.unseen_chosen),
        bad_seen: tok(&answers.train_rejected),
        bad_unseen: tok(&answers.unseen_rejected),
    };
    let answer_count = vocab.good_seen.len()
        + vocab.good_unseen.len()
        + vocab.bad_seen.len()
        + vocab.bad_unseen.len();
    let config = SetupConfig {
        dim: d,
        good_seen: vocab.good_seen.len(),
        good_unseen: vocab.good_unseen.len(),
        bad_seen: vocab.bad_seen.len(),
        bad_unseen: vocab.bad_unseen.len(),
        filler_tokens: v.saturating_sub(answer_count),
        unembedding_init: UnembeddingInit::Tied,
        head_scale: 0.0,
        beta: file.lm.beta,
        train_pairs: train.len(),
        eval_pairs: evals[0].len(),
        ..SetupConfig::default()
    };
    let seen_tokens = train.tokens();
    let setup = Setup {
        config,
        seed: file.seed,
        vocab,
        generator: None,
        unembedding_init: crate::problem::synthetic::InitialUnembedding::Given(unembedding),
        head_init: Array1::zeros(d),
        train,
        evals,
        seen_tokens,
    };
    Ok(RealProblem {
        setup,
        answers,
        sequences,
        prompt_format,
    })
}

/// Head-only training (body frozen): both reward models on the extracted representations.
pub fn run_head_only(file: &LmFile, setup: Setup) -> Result<Simulation> {
    let mut config = Config {
        seed: file.seed,
        train: file.train.clone(),
        eval: file.eval.clone(),
        ..Config::default()
    };
    config.setup = setup.config.clone();
    config.validate()?;
    let tau = config.eval.tie_tolerance;
    let run = |kind| {
        run_model(
            kind,
            &config,
            &setup,
            max_margin_for(kind, &setup, tau),
            &mut |_| {},
        )
    };
    let (explicit, implicit) = (run(ModelKind::Explicit)?, run(ModelKind::Implicit)?);
    Simulation::new(config, setup, explicit, implicit)
}

/// Wall-clock seconds of each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub load: f64,
    pub extract: f64,
    pub train_head_only: f64,
}

/// A whole real-model experiment: the head-only run (a [`Simulation`]) and, in full mode, the
/// fully fine-tuned EX-RM and IM-RM.
pub struct RealModelRun {
    pub model: PathBuf,
    pub arch: Architecture,
    pub device: String,
    pub mode: Mode,
    pub file: LmFile,
    pub answers: AnswerTokens,
    pub prompt_format: String,
    pub sim: Simulation,
    /// The footnote-3 statistics of the head-only run (training vs unseen pairs).
    pub alignment: Option<alignment::Alignment>,
    pub full: Vec<finetune::FullRun>,
    pub sequences_encoded: usize,
    pub tokens_encoded: usize,
    pub timing: Timing,
    /// The token sequences of every split, as extracted (`sequences.jsonl`).
    pub sequences: Vec<SplitSequences>,
}

/// [`alignment::alignment`] of the head-only run's training pairs with its `unseen` split.
pub(super) fn head_only_alignment(sim: &Simulation) -> Option<alignment::Alignment> {
    let unseen = sim.setup.split(SplitId::Unseen)?;
    let u_star = sim
        .explicit
        .max_margin
        .as_ref()
        .ok()
        .map(|m| m.params.as_slice());
    Some(alignment::alignment(&sim.setup.train, unseen, u_star))
}

/// Runs the experiment of `file` on the model in `model_dir`; `on_step` sees every full
/// fine-tuning step (progress bars).
pub fn run_experiment(
    model_dir: &Path,
    file: &LmFile,
    device: &Device,
    mode: Mode,
    on_step: &mut dyn FnMut(ModelKind, &finetune::StepRecord),
) -> Result<RealModelRun> {
    let t0 = std::time::Instant::now();
    let lm = LanguageModel::load(model_dir, device, Forward::Nets)?;
    let t1 = std::time::Instant::now();
    let tokens_before = LAST_EXTRACTION_TOKENS.load(std::sync::atomic::Ordering::Relaxed);
    let problem = build_setup(file, &lm)?;
    let tokens_encoded =
        LAST_EXTRACTION_TOKENS.load(std::sync::atomic::Ordering::Relaxed) - tokens_before;
    let t2 = std::time::Instant::now();
    let arch = lm.arch;
    drop(lm);
    let sequences = problem.sequences;
    let sim = run_head_only(file, problem.setup)?;
    let t3 = std::time::Instant::now();
    let timing = Timing {
        load: (t1 - t0).as_secs_f64(),
        extract: (t2 - t1).as_secs_f64(),
        train_head_only: (t3 - t2).as_secs_f64(),
    };
    let mut full = Vec::new();
    if mode == Mode::Full {
        // The untrained model's representations, shared by both full runs: the head-only
        // run's, extracted by the same forward.
        let initial: Vec<PairSet> = std::iter::once(&sim.setup.train)
            .chain(&sim.setup.evals)
            .cloned()
            .collect();
        for kind in [ModelKind::Explicit, ModelKind::Implicit] {
            let run = finetune::finetune(
                kind,
                model_dir,
                device,
                file,
                (&sequences, &initial),
                &mut |r| on_step(kind, r),
            )?;
            full.push(run);
        }
    }
    Ok(RealModelRun {
        model: model_dir.to_path_buf(),
        arch,
        device: format!("{device:?}"),
        mode,
        file: file.clone(),
        answers: problem.answers,
        prompt_format: problem.prompt_format,
        alignment: head_only_alignment(&sim),
        sim,
        full,
        sequences_encoded: 3 * sequences.iter().map(SplitSequences::len).sum::<usize>(),
        tokens_encoded,
        timing,
        sequences,
    })
}
