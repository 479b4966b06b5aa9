//! Evaluation of every split: sequence rewards, accuracies (exact ties ½), the official
//! evaluator's normalised margins, and the IM-RM's per-token parts.

use crate::experiment::observables::{reward_summary, split_metrics, RewardSummary, SplitMetrics};
use crate::lm::model::language_model::LanguageModel;
use crate::lm::nets::kernels::Kernels;
use crate::lm::train::alignment::Alignment;
use crate::lm::train::features::{
    by_length, per_sequence_sum, prompt_chunks, shared_prompt_features, token_logprobs, Features,
    FrozenFeatures, Need,
};
use crate::lm::train::journal::Pass;
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::PreferenceProblem;
use crate::lm::train::sequences::ScoredSequence;
use crate::lm::train::sequences::Side;
use crate::numerics::softplus;
use anyhow::Result;
use candle_core::{Tensor, D};
use ndarray::Array2;
use serde::Serialize;
use std::collections::BTreeMap;

/// One split's metrics at one evaluation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SplitEvaluation {
    #[serde(flatten)]
    pub accuracy: SplitMetrics,
    #[serde(flatten)]
    pub rewards: RewardSummary,
    /// The preference loss over the split's pairs, `mean softplus(r⁻ − r⁺)` (the official
    /// evaluator's `eval … loss`).
    #[serde(default)]
    pub loss: f64,
    /// Mean reward of the split's responses by answer word (each distinct sequence once; the
    /// persona's words; empty for preference data, whose responses have no answer word).
    pub mean_reward_by_answer: BTreeMap<String, f64>,
    /// IM-RM: mean per-sequence contribution `β Σ_k [ln π − ln π_ref]` of the prefix tokens,
    /// the answer-word tokens and the rest (chat-template suffix), chosen and rejected sides.
    pub implicit_parts: Option<ImplicitParts>,
    /// IM-RM: mean contribution `β (ln π − ln π_ref)` of each response token (by side and token
    /// piece) over the split's sequences: which tokens' rewards moved. Per side, the
    /// [`TOKENS_KEPT`] pieces with the largest total |contribution| (every piece where there are
    /// fewer, as in the persona's responses).
    pub implicit_tokens: Option<Vec<TokenContribution>>,
}

/// One response token's mean reward contribution on one side of a split.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TokenContribution {
    pub side: Side,
    pub token: String,
    pub mean: f64,
    /// Occurrences over the split's distinct sequences.
    pub count: usize,
}

/// Where the IM-RM's reward sits within the response (means over the split's sequences).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ImplicitParts {
    pub chosen_prefix: f64,
    pub chosen_word: f64,
    pub chosen_rest: f64,
    pub rejected_prefix: f64,
    pub rejected_word: f64,
    pub rejected_rest: f64,
}

/// Every split evaluated after `step` optimizer steps (`epoch` passes).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub epoch: usize,
    pub step: usize,
    pub splits: Vec<SplitEvaluation>,
    /// EX-RM: how far the representations its head reads carry the training preference to each
    /// other split (the paper's footnote 3, [`crate::lm::train::alignment`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub representation_alignment: Vec<Alignment>,
    /// Every sequence's reward (index as in the problem's sequences): `pair_rewards.csv`.
    #[serde(skip)]
    pub rewards: Vec<f64>,
    /// Wall time of the evaluation's forwards, and the tokens of the sequences they read (for
    /// evaluation tokens per second).
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub tokens: usize,
}

/// The split metrics from per-sequence rewards (and, for the IM-RM, per-token contributions).
pub(crate) fn evaluate_splits(
    problem: &PreferenceProblem,
    rewards: &[f64],
    contributions: Option<&[Vec<f64>]>,
    tau: f64,
) -> Vec<SplitEvaluation> {
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
            for &i in distinct
                .iter()
                .filter(|&&i| !problem.sequences[i].word.is_empty())
            {
                let e = by_answer
                    .entry(problem.sequences[i].word.clone())
                    .or_default();
                e.0 += rewards[i];
                e.1 += 1;
            }
            SplitEvaluation {
                accuracy: split_metrics(&s.name, &margins, tau),
                rewards: reward_summary(&s.name, &c, &r),
                loss: margins.iter().map(|&m| softplus(-m)).sum::<f64>()
                    / margins.len().max(1) as f64,
                mean_reward_by_answer: by_answer
                    .into_iter()
                    .map(|(w, (sum, n))| (w, sum / n as f64))
                    .collect(),
                implicit_parts: contributions.map(|tok| implicit_parts(problem, &distinct, tok)),
                implicit_tokens: contributions.map(|tok| implicit_tokens(problem, &distinct, tok)),
            }
        })
        .collect()
}

/// The IM-RM's mean reward from the prefix, the word and the rest of the response, per side,
/// over the split's distinct sequences `distinct`.
fn implicit_parts(
    problem: &PreferenceProblem,
    distinct: &[usize],
    tok: &[Vec<f64>],
) -> ImplicitParts {
    let mut acc = [0.0f64; 6];
    let mut count = [0usize; 2];
    for &i in distinct {
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
}

/// How many token pieces per side [`SplitEvaluation::implicit_tokens`] keeps.
pub const TOKENS_KEPT: usize = 100;

/// The IM-RM's mean contribution of every response token (by side and token text) over the
/// split's distinct sequences.
fn implicit_tokens(
    problem: &PreferenceProblem,
    distinct: &[usize],
    tok: &[Vec<f64>],
) -> Vec<TokenContribution> {
    let mut by: BTreeMap<(u8, String), (f64, usize)> = BTreeMap::new();
    for &i in distinct {
        let q = &problem.sequences[i];
        for (piece, v) in q.response_tokens.iter().zip(&tok[i]) {
            let e = by.entry((q.side as u8, piece.clone())).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    for side in [0u8, 1] {
        let mut totals: Vec<f64> = by
            .iter()
            .filter(|((s, _), _)| *s == side)
            .map(|(_, (sum, _))| sum.abs())
            .collect();
        if totals.len() > TOKENS_KEPT {
            totals.sort_by(|a, b| b.total_cmp(a));
            let least = totals[TOKENS_KEPT - 1];
            let mut kept = 0;
            by.retain(|(s, _), (sum, _)| {
                let keep = *s != side || (sum.abs() >= least && kept < TOKENS_KEPT);
                kept += usize::from(*s == side && keep);
                keep
            });
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
}

/// Every sequence scored at an evaluation.
pub(crate) struct Scores {
    pub(crate) rewards: Vec<f64>,
    /// IM-RMs: each token's contribution `β (ln π − ln π_ref)`.
    pub(crate) parts: Option<Vec<Vec<f64>>>,
    /// EX-RM: the last-token hidden state of every sequence `[n, D]` (what the head reads).
    pub(crate) last: Option<Array2<f64>>,
}

/// Scores sequences for one reward model: from live forwards (`full`) or frozen features.
pub(crate) struct Scorer<'a> {
    pub(crate) reward: Reward,
    pub(crate) lm: &'a LanguageModel,
    pub(crate) frozen: Option<&'a FrozenFeatures>,
    pub(crate) beta: f64,
    pub(crate) batch: usize,
    /// EX-GRM: the ids of "Yes" and "No".
    pub(crate) yes_no: Option<(u32, u32)>,
}

impl Scorer<'_> {
    /// The representations of the sequences `idx` as a training step reads them
    /// (differentiable; each prompt computed once where the body allows).
    pub(crate) fn features(&self, seqs: &[ScoredSequence], idx: &[usize]) -> Result<Features> {
        self.features_through(seqs, idx, Kernels::Autograd)
    }

    /// The representations of the sequences `idx` through `kernels`: differentiable (as a
    /// training step reads them) or inference kernels (scoring without a gradient; equal up to f32 rounding).
    fn features_through(
        &self,
        seqs: &[ScoredSequence],
        idx: &[usize],
        kernels: Kernels,
    ) -> Result<Features> {
        let need = Need::of(self.reward);
        match self.frozen {
            Some(f) => f.features(idx, need),
            None => {
                let refs: Vec<&ScoredSequence> = idx.iter().map(|&i| &seqs[i]).collect();
                shared_prompt_features(self.lm, &refs, need, kernels)
            }
        }
    }

    /// Differentiable rewards of the sequences `idx` `[n]` from their features `f`: IM-RM
    /// `β Σ_k (ln π − ln π_ref)` (difference taken per token, then summed; `reference` holds
    /// zeros without a reference), EX-RM `u·h_last`, token-mean EX-RM `(1/K) Σ_k u·h_k`, EX-GRM
    /// `P(Yes | ·)`.
    pub(crate) fn rewards(
        &self,
        f: &Features,
        seqs: &[ScoredSequence],
        idx: &[usize],
        u: &Tensor,
        head: &Tensor,
        reference: &[Vec<f64>],
    ) -> Result<Tensor> {
        match self.reward {
            Reward::Imrm | Reward::ImrmNoRef => {
                let lp = token_logprobs(f, u)?;
                let r: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| reference[i].iter().map(|&x| x as f32))
                    .collect();
                let r = Tensor::from_vec(r, lp.dims1()?, lp.device())?;
                let sums = per_sequence_sum(&(lp - r)?, &f.owner, idx.len())?;
                Ok((sums * self.beta)?)
            }
            Reward::Exrm => Ok(f.last.matmul(&head.unsqueeze(1)?)?.squeeze(1)?),
            Reward::ExrmTokenMean => {
                let per_token = f.response.matmul(&head.unsqueeze(1)?)?.squeeze(1)?;
                let sums = per_sequence_sum(&per_token, &f.owner, idx.len())?;
                let counts: Vec<f32> = idx
                    .iter()
                    .map(|&i| (seqs[i].response_end - seqs[i].response_start) as f32)
                    .collect();
                Ok((sums / Tensor::from_vec(counts, idx.len(), u.device())?)?)
            }
            Reward::Exgrm => Ok(self
                .verdict_logprobs(f, u)?
                .narrow(1, 0, 1)?
                .squeeze(1)?
                .exp()?),
        }
    }

    /// EX-GRM: `(ln P(Yes | ·), ln P(No | ·))` at the last token of each verification sequence,
    /// `[n, 2]`.
    pub(crate) fn verdict_logprobs(&self, f: &Features, u: &Tensor) -> Result<Tensor> {
        let (yes, no) = self.yes_no.expect("the EX-GRM scorer knows Yes and No");
        let lp = candle_nn::ops::log_softmax(&f.last.matmul(&u.t()?)?, D::Minus1)?;
        Ok(lp.index_select(&Tensor::new(&[yes, no], u.device())?, 1)?)
    }

    /// `ln π` of every scored token of every sequence, f64 (no gradient), through the
    /// inference kernels, as the scoring pass `pass`.
    pub(crate) fn token_logprob_table(
        &self,
        seqs: &[ScoredSequence],
        u: &Tensor,
        pass: &mut Pass,
    ) -> Result<Vec<Vec<f64>>> {
        let all: Vec<usize> = (0..seqs.len()).collect();
        let mut table = vec![Vec::new(); seqs.len()];
        let chunks = prompt_chunks(seqs, &by_length(seqs, &all), self.batch);
        for (i, lp) in self.logprob_table(seqs, &chunks, u, Kernels::Inference, pass)? {
            table[i] = lp;
        }
        Ok(table)
    }

    /// `ln π` of every scored token of the sequences of each chunk (one forward per chunk),
    /// f64, by sequence index in chunk order (no gradient kept), through `kernels`
    /// (differentiable: exactly as the training step scores the same chunks), as the scoring
    /// pass `pass`. A sequence's values depend on its chunk only through f32 rounding; the same
    /// chunks give the same bits.
    pub(crate) fn logprob_table(
        &self,
        seqs: &[ScoredSequence],
        chunks: &[Vec<usize>],
        u: &Tensor,
        kernels: Kernels,
        pass: &mut Pass,
    ) -> Result<Vec<(usize, Vec<f64>)>> {
        pass.run(chunks, |chunk| {
            let f = self.features_through(seqs, chunk, kernels)?;
            let lp = token_logprobs(&f, u)?.detach().to_vec1::<f32>()?;
            Ok(per_sequence(&lp, seqs, chunk))
        })
    }

    /// The IM-RM's scores before any optimizer step: the policy is the reference, so every
    /// token's contribution `β (ln π − ln π_ref)` is exactly 0 (MATH.md §1) and no forward is
    /// run. A forward would give the same zeros wherever it batched the sequences as the
    /// reference pass did, and f32 rounding noise elsewhere (the flush's cut sequences); on a
    /// preference dataset it saves a pass over every sequence.
    pub(crate) fn untrained_implicit(&self, seqs: &[ScoredSequence]) -> Scores {
        let parts: Vec<Vec<f64>> = seqs
            .iter()
            .map(|s| vec![0.0; s.response_end - s.response_start])
            .collect();
        Scores {
            rewards: vec![0.0; seqs.len()],
            parts: Some(parts),
            last: None,
        }
    }

    /// Rewards of every sequence (f64) and, for the IM-RMs, each token's contribution
    /// `β (ln π − ln π_ref)`, for the EX-RM the representations its head reads (no gradient),
    /// as the scoring pass `pass`.
    pub(crate) fn score_all(
        &self,
        seqs: &[ScoredSequence],
        (u, head): (&Tensor, &Tensor),
        reference: &[Vec<f64>],
        pass: &mut Pass,
    ) -> Result<Scores> {
        if self.reward.is_implicit() {
            let now = self.token_logprob_table(seqs, u, pass)?;
            let parts: Vec<Vec<f64>> = now
                .iter()
                .zip(reference)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| self.beta * (x - y)).collect())
                .collect();
            return Ok(Scores {
                rewards: parts.iter().map(|p| p.iter().sum()).collect(),
                parts: Some(parts),
                last: None,
            });
        }
        let all: Vec<usize> = (0..seqs.len()).collect();
        let keep_last = self.reward == Reward::Exrm;
        let chunks = prompt_chunks(seqs, &by_length(seqs, &all), self.batch);
        // Each sequence's reward and, for the EX-RM, its last-token representation.
        let scored = pass.run(&chunks, |idx| {
            let f = self.features_through(seqs, idx, Kernels::Inference)?;
            let r = self.rewards(&f, seqs, idx, u, head, reference)?;
            let r = r.detach().to_vec1::<f32>()?.into_iter().map(f64::from);
            let last: Vec<Vec<f64>> = match keep_last {
                true => f.last.to_vec2::<f32>()?.iter().map(|h| to_f64(h)).collect(),
                false => vec![Vec::new(); idx.len()],
            };
            Ok(r.zip(last).collect::<Vec<(f64, Vec<f64>)>>())
        })?;
        let mut out = vec![0.0; seqs.len()];
        let mut last = Array2::zeros((if keep_last { seqs.len() } else { 0 }, self.lm.dim));
        for (i, (r, h)) in scored {
            out[i] = r;
            if keep_last {
                last.row_mut(i).assign(&ndarray::ArrayView1::from(&h));
            }
        }
        Ok(Scores {
            rewards: out,
            parts: None,
            last: keep_last.then_some(last),
        })
    }
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// The per-token values `lp` of the sequences `idx` (concatenated in `idx` order) cut back into
/// one f64 vector per sequence.
fn per_sequence(lp: &[f32], seqs: &[ScoredSequence], idx: &[usize]) -> Vec<Vec<f64>> {
    let mut at = 0;
    idx.iter()
        .map(|&i| {
            let r = seqs[i].response_end - seqs[i].response_start;
            at += r;
            lp[at - r..at].iter().map(|&x| f64::from(x)).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint, PROBE_TEXTS};
    use crate::lm::recipe::{build_problem, load_recipe_model, vocabulary_texts, RecipeFile};
    use crate::lm::train::flush;
    use crate::lm::{Device, Forward};
    use std::path::Path;

    /// The IM-RM before any step, scored by a forward through the reference unembedding, is
    /// what [`Scorer::untrained_implicit`] returns without one: exactly 0 per token on the
    /// sequences as the reference pass batched them (the same chunks give the same bits), and 0
    /// up to f32 rounding on the official flush's cut copies (other chunks): `|Δ ln π| ≤ 1e-4 ·
    /// max(|ln π_ref|, 1)`, the bound the other batching comparisons use (tests/lm_tiny.rs).
    #[test]
    fn the_untrained_imrm_is_exactly_its_reference() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut file =
            RecipeFile::from_file(&root.join("experiments/persona_paper.toml")).expect("config");
        let data = file.data.as_mut().expect("persona data");
        data.statements = root.join(&data.statements);
        let dir = std::env::temp_dir().join(format!("rmflow-untrained-{}", std::process::id()));
        let mut texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
        texts.extend(vocabulary_texts(&file).expect("texts"));
        write_tiny_checkpoint(&dir, standard_specs()[0].1, &texts).expect("checkpoint");
        let (lm, _) = load_recipe_model(&dir, &Device::Cpu, Forward::Nets, &file).expect("model");
        let problem = build_problem(&file, &lm).expect("problem");
        let scorer = Scorer {
            reward: Reward::Imrm,
            lm: &lm,
            frozen: None,
            beta: 0.01,
            batch: 7,
            yes_no: None,
        };
        let u0 = lm.unembedding().clone();
        let reference = scorer
            .token_logprob_table(&problem.sequences, &u0, &mut Pass::plain())
            .expect("reference");
        let dropped = flush::evaluation_drops(&problem.sequences, &problem.eval_batches);
        assert!(
            dropped.iter().any(|&d| d),
            "no sequence is cut: a vacuous check"
        );
        let (cut, cut_reference) = flush::apply(&problem.sequences, &reference, &dropped);
        let head = Tensor::zeros(lm.dim, candle_core::DType::F32, &lm.device).expect("head");
        for (seqs, reference) in [(&problem.sequences, &reference), (&cut, &cut_reference)] {
            let forward = scorer
                .score_all(seqs, (&u0, &head), reference, &mut Pass::plain())
                .expect("scores");
            let shortcut = scorer.untrained_implicit(seqs);
            assert_eq!(shortcut.rewards.len(), forward.rewards.len());
            let (f, s) = (
                forward.parts.expect("parts"),
                shortcut.parts.expect("parts"),
            );
            let exact = std::ptr::eq(seqs, &problem.sequences);
            for (i, (a, b)) in f.iter().zip(&s).enumerate() {
                assert_eq!(a.len(), b.len(), "sequence {i}: token count");
                for ((x, y), r) in a.iter().zip(b).zip(&reference[i]) {
                    let bound = if exact {
                        0.0
                    } else {
                        0.01 * 1e-4 * r.abs().max(1.0)
                    };
                    assert!((x - y).abs() <= bound, "sequence {i}: {x:e} vs {y:e}");
                }
            }
            assert!(forward.rewards.iter().all(|r| r.is_finite()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
