//! Real-model mode (MATH.md §6), behind the `lm` feature: Theorem 2's setting on the frozen
//! representations of a pretrained BERT-family model (candle), trained with the engine's own flows.
//!
//! The response token fills a `[MASK]` slot after the prompt and a response prefix. IM-RM:
//! `π(y|x) = softmax(E h_mask(x))_y` with the word-embedding matrix `E` as the (tied, trainable)
//! unembedding, `π_ref = π_{E}`. EX-RM: a linear head on the final hidden state at the response
//! token's position of `prompt + prefix + y`. Representations are extracted once (f32 forward,
//! stored as f64), then the run is an ordinary [`crate::simulation::Simulation`].

use crate::config::{Config, SetupConfig, UnembeddingInit};
use crate::simulation::{max_margin_for, run_model, ModelKind, Simulation};
use crate::synthetic::{PairSet, RecurrentMap, Setup, TokenLabel, Vocabulary};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use ndarray::{Array1, Array2, Array3};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// `[lm]` table of a real-model config (`experiments/persona.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSpec {
    /// Statements file, one per line (`#` comments), relative to the working directory.
    pub statements: PathBuf,
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
}

impl LmFile {
    pub fn from_file(path: &Path) -> Result<LmFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let f: LmFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid real-model config {}: {e}", path.display()))?;
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
        Ok(f)
    }
}

/// A loaded encoder: BERT body, word embeddings `E` [V, D] and tokenizer.
pub struct Encoder {
    pub model: BertModel,
    pub word_embeddings: Array2<f64>,
    pub tokenizer: Tokenizer,
    pub mask_id: u32,
    pub device: Device,
}

impl Encoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Encoder> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "model folder {}: missing {name} (fetch it with scripts/fetch-model.sh)",
                    dir.display()
                );
            }
            Ok(p)
        };
        let (cfg_path, weights, tok_path) = (
            file("config.json")?,
            file("model.safetensors")?,
            file("tokenizer.json")?,
        );
        let config: BertConfig = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
            .with_context(|| format!("{}: not a BERT config", cfg_path.display()))?;
        // SAFETY: the file is memory-mapped read-only for the lifetime of the loaded tensors.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let model = BertModel::load(vb.clone(), &config).with_context(|| {
            format!(
                "{}: weights do not match a BERT model of {}",
                weights.display(),
                cfg_path.display()
            )
        })?;
        let e = [
            "embeddings.word_embeddings.weight",
            "bert.embeddings.word_embeddings.weight",
        ]
        .iter()
        .find_map(|n| vb.get((config.vocab_size, config.hidden_size), n).ok())
        .with_context(|| {
            format!(
                "{}: no word-embedding matrix [{}, {}]",
                weights.display(),
                config.vocab_size,
                config.hidden_size
            )
        })?;
        let e: Vec<f32> = e.flatten_all()?.to_vec1()?;
        let word_embeddings = Array2::from_shape_vec(
            (config.vocab_size, config.hidden_size),
            e.into_iter().map(f64::from).collect(),
        )?;
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        // Sentence-transformers ship fixed-length padding; sequences are padded per batch here.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let mask_id = tokenizer
            .token_to_id("[MASK]")
            .with_context(|| format!("{}: no [MASK] token", tok_path.display()))?;
        if tokenizer.get_vocab_size(true) != config.vocab_size {
            bail!(
                "{} has {} tokens but {} declares vocab_size = {}: tokenizer and weights do not match",
                tok_path.display(),
                tokenizer.get_vocab_size(true),
                cfg_path.display(),
                config.vocab_size
            );
        }
        Ok(Encoder {
            model,
            word_embeddings,
            tokenizer,
            mask_id,
            device,
        })
    }

    /// The single token id of `word`, or an error naming it.
    pub fn single_token(&self, word: &str) -> Result<u32> {
        let enc = self
            .tokenizer
            .encode(word, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {word:?}: {e}"))?;
        match enc.get_ids() {
            [id] => Ok(*id),
            ids => bail!(
                "answer word {word:?} is not a single token (it splits into {:?})",
                enc.get_tokens().iter().zip(ids).collect::<Vec<_>>()
            ),
        }
    }

    /// Final hidden states at position `pos[i]` of each id sequence, in batches of `batch`.
    pub fn hidden_at(&self, seqs: &[Vec<u32>], pos: &[usize], batch: usize) -> Result<Array2<f64>> {
        let d = self.word_embeddings.ncols();
        let mut out = Array2::zeros((seqs.len(), d));
        LAST_EXTRACTION_TOKENS.fetch_add(
            seqs.iter().map(Vec::len).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        for (b, chunk) in seqs.chunks(batch).enumerate() {
            let len = chunk.iter().map(Vec::len).max().unwrap_or(1);
            let mut ids = vec![0u32; chunk.len() * len];
            let mut mask = vec![0u32; chunk.len() * len];
            for (r, s) in chunk.iter().enumerate() {
                ids[r * len..r * len + s.len()].copy_from_slice(s);
                mask[r * len..r * len + s.len()]
                    .iter_mut()
                    .for_each(|m| *m = 1);
            }
            let ids = Tensor::from_vec(ids, (chunk.len(), len), &self.device)?;
            let mask = Tensor::from_vec(mask, (chunk.len(), len), &self.device)?;
            let types = ids.zeros_like()?;
            let h = self.model.forward(&ids, &types, Some(&mask))?; // [B, L, D]
            let h: Vec<Vec<Vec<f32>>> = h.to_dtype(DType::F32)?.to_vec3()?;
            for (r, row) in h.iter().enumerate() {
                let i = b * batch + r;
                out.row_mut(i).assign(&Array1::from_iter(
                    row[pos[i]].iter().map(|&v| f64::from(v)),
                ));
            }
        }
        Ok(out)
    }
}

/// Non-padding tokens encoded by the last extraction (reported as tokens/s by `rmflow lm`).
pub static LAST_EXTRACTION_TOKENS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Token ids of `text` with `[CLS] … [SEP]`, and the index of the `[MASK]` slot.
fn encode_with_mask(enc: &Encoder, text: &str) -> Result<(Vec<u32>, usize)> {
    let e = enc
        .tokenizer
        .encode(text, true)
        .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
    let ids = e.get_ids().to_vec();
    let pos = ids
        .iter()
        .position(|&t| t == enc.mask_id)
        .with_context(|| format!("no [MASK] slot in {text:?}"))?;
    Ok((ids, pos))
}

fn read_statements(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read statements file {}", path.display()))?;
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

/// The answer words and their token ids, as reported by `rmflow lm`.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerTokens {
    pub train_chosen: Vec<(String, u32)>,
    pub train_rejected: Vec<(String, u32)>,
    pub unseen_chosen: Vec<(String, u32)>,
    pub unseen_rejected: Vec<(String, u32)>,
}

/// Builds the synthetic-free [`Setup`] of Theorem 2 on the encoder's representations.
pub fn build_setup(file: &LmFile, enc: &Encoder) -> Result<(Setup, AnswerTokens)> {
    let s = &file.lm;
    let ids = |words: &[String]| -> Result<Vec<(String, u32)>> {
        words
            .iter()
            .map(|w| Ok((w.clone(), enc.single_token(w)?)))
            .collect()
    };
    let answers = AnswerTokens {
        train_chosen: ids(&s.train_chosen)?,
        train_rejected: ids(&s.train_rejected)?,
        unseen_chosen: ids(&s.unseen_chosen)?,
        unseen_rejected: ids(&s.unseen_rejected)?,
    };
    let statements = read_statements(&s.statements)?;
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed);
    let groups = statements.len().div_ceil(s.group_size);
    let mut order: Vec<usize> = (0..groups).collect();
    order.shuffle(&mut rng);
    let n_train = ((groups as f64 * s.train_fraction).round() as usize).clamp(1, groups - 1);
    let members = |g: &[usize]| -> Vec<&String> {
        g.iter()
            .flat_map(|&k| statements.iter().skip(k * s.group_size).take(s.group_size))
            .collect()
    };
    let (train_statements, eval_statements) =
        (members(&order[..n_train]), members(&order[n_train..]));

    let make = |name: &str,
                stmts: &[&String],
                question: &str,
                good: &[(String, u32)],
                bad: &[(String, u32)],
                rng: &mut ChaCha8Rng|
     -> Result<PairSet> {
        let (mut seqs, mut pos, mut chosen, mut rejected) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for st in stmts {
            let prefix = &s.prefixes[rng.random_range(0..s.prefixes.len())];
            let text = format!("{} {prefix} [MASK]", question.replace("{statement}", st));
            let (masked, p) = encode_with_mask(enc, &text)?;
            let (yp, ym) = (
                good[rng.random_range(0..good.len())].1,
                bad[rng.random_range(0..bad.len())].1,
            );
            for y in [None, Some(yp), Some(ym)] {
                let mut q = masked.clone();
                if let Some(y) = y {
                    q[p] = y;
                }
                seqs.push(q);
                pos.push(p);
            }
            chosen.push(yp as usize);
            rejected.push(ym as usize);
        }
        let h = enc.hidden_at(&seqs, &pos, s.batch_size)?;
        let n = stmts.len();
        let pick = |k: usize| Array2::from_shape_fn((n, h.ncols()), |(i, j)| h[[3 * i + k, j]]);
        let prompt_hidden = pick(0);
        let d = prompt_hidden.ncols();
        Ok(PairSet {
            name: name.to_string(),
            chosen_prefix_hidden: Array3::from_shape_fn((n, 1, d), |(i, _, j)| {
                prompt_hidden[[i, j]]
            }),
            rejected_prefix_hidden: Array3::from_shape_fn((n, 1, d), |(i, _, j)| {
                prompt_hidden[[i, j]]
            }),
            prompt_hidden,
            chosen_hidden: pick(1),
            rejected_hidden: pick(2),
            chosen_tokens: Array2::from_shape_vec((n, 1), chosen)?,
            rejected_tokens: Array2::from_shape_vec((n, 1), rejected)?,
        })
    };
    let train = make(
        "train",
        &train_statements,
        &s.question,
        &answers.train_chosen,
        &answers.train_rejected,
        &mut rng,
    )?;
    let evals = vec![
        make(
            "seen",
            &eval_statements,
            &s.question,
            &answers.train_chosen,
            &answers.train_rejected,
            &mut rng,
        )?,
        make(
            "unseen",
            &eval_statements,
            &s.question,
            &answers.unseen_chosen,
            &answers.unseen_rejected,
            &mut rng,
        )?,
        make(
            "domain",
            &eval_statements,
            &s.domain_question,
            &answers.train_chosen,
            &answers.train_rejected,
            &mut rng,
        )?,
    ];
    let (v, d) = enc.word_embeddings.dim();
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
    let config = SetupConfig {
        dim: d,
        good_seen: vocab.good_seen.len(),
        good_unseen: vocab.good_unseen.len(),
        bad_seen: vocab.bad_seen.len(),
        bad_unseen: vocab.bad_unseen.len(),
        filler_tokens: v
            - vocab.good_seen.len()
            - vocab.good_unseen.len()
            - vocab.bad_seen.len()
            - vocab.bad_unseen.len(),
        unembedding_init: UnembeddingInit::Tied,
        head_scale: 0.0,
        beta: s.beta,
        train_pairs: train.len(),
        eval_pairs: evals[0].len(),
        ..SetupConfig::default()
    };
    let seen_tokens = train.tokens();
    let zero = Array1::zeros(d);
    let setup = Setup {
        config,
        seed: file.seed,
        vocab,
        // The synthetic-only fields are not used by real-model runs.
        quality_direction: zero.clone(),
        cluster_directions: [zero.clone(), zero],
        embeddings: enc.word_embeddings.clone(),
        recurrent: RecurrentMap {
            a: Array2::zeros((d, d)),
            b: Array2::zeros((d, d)),
        },
        unembedding_init: enc.word_embeddings.clone(),
        head_init: Array1::zeros(d),
        train,
        evals,
        seen_tokens,
    };
    Ok((setup, answers))
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
    let explicit = run_model(
        ModelKind::Explicit,
        &config,
        &setup,
        max_margin_for(ModelKind::Explicit, &setup, tau),
        &mut |_| {},
    )?;
    let implicit = run_model(
        ModelKind::Implicit,
        &config,
        &setup,
        max_margin_for(ModelKind::Implicit, &setup, tau),
        &mut |_| {},
    )?;
    Ok(Simulation {
        config,
        setup,
        explicit,
        implicit,
    })
}
