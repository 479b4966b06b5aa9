//! Decoding from the policy, as the official evaluator scores it: one sample at temperature 1
//! (no top-k or top-p) and, beside it, greedy decoding; generation stops at eos or after
//! `2n + extra` new tokens; the text (special tokens skipped) is checked by
//! [`crate::problem::hamiltonian::is_correct_generation`].

use super::tokens::CycleTokens;
use crate::lm::LanguageModel;
use crate::problem::hamiltonian::{is_correct_generation, Graph};
use anyhow::Result;
use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What decoding one prompt gave.
#[derive(Debug, Clone)]
pub struct Decoding {
    /// The generated text (special tokens skipped).
    pub text: String,
    /// Whether it is a Hamiltonian cycle of the prompt's graph (the official check).
    pub correct: bool,
    /// Whether the policy ended it (eos) within the token budget; `false`: cut at the budget.
    pub stopped: bool,
    /// Tokens the policy produced (the eos that ended it included).
    pub tokens: usize,
}

/// What decoding reads: the policy (its network and unembedding `U`), the vocabulary, the
/// token budget and the batch size.
pub struct Decoder<'a> {
    pub lm: &'a LanguageModel,
    pub unembedding: &'a Tensor,
    pub tokens: &'a CycleTokens,
    /// New tokens at most (eos stops earlier).
    pub max_new: usize,
    /// Prompts per forward.
    pub batch: usize,
}

impl Decoder<'_> {
    /// Decodes a continuation of every prompt (`prompts[i]` the ids of the rendered prompt of
    /// `graphs[i]`): sampled at temperature 1 from `rng`, or greedily (`rng = None`; ties go to
    /// the lowest id).
    pub fn decode(
        &self,
        prompts: &[Vec<u32>],
        graphs: &[&Graph],
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Vec<Decoding>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (chunk, g) in prompts.chunks(self.batch).zip(graphs.chunks(self.batch)) {
            let start = self.lm.start_decoding(chunk)?;
            out.extend(self.decode_batch(chunk, g, start, rng.as_deref_mut())?);
        }
        Ok(out)
    }

    /// Both decodings of every prompt, `(sampled, greedy)`, equal to [`decode`](Self::decode)
    /// with `Some(rng)` then with `None` (the draws come in the same order), with each batch's
    /// prompts run through the network once for both where it keeps a cache.
    pub fn decode_sampled_and_greedy(
        &self,
        prompts: &[Vec<u32>],
        graphs: &[&Graph],
        rng: &mut ChaCha8Rng,
    ) -> Result<(Vec<Decoding>, Vec<Decoding>)> {
        let (mut sampled, mut greedy) = (Vec::new(), Vec::new());
        for (chunk, g) in prompts.chunks(self.batch).zip(graphs.chunks(self.batch)) {
            let start = self.lm.start_decoding(chunk)?;
            sampled.extend(self.decode_batch(chunk, g, start.clone(), Some(&mut *rng))?);
            greedy.extend(self.decode_batch(chunk, g, start, None)?);
        }
        Ok((sampled, greedy))
    }

    /// The decodings of one batch (from its prefill `start`): each text and whether it is a
    /// cycle of its graph.
    fn decode_batch(
        &self,
        prompts: &[Vec<u32>],
        graphs: &[&Graph],
        start: Option<(Tensor, crate::lm::nets::KvCache)>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Vec<Decoding>> {
        let (generated, stopped) = self.continue_batch(prompts, start, rng)?;
        let mut out = Vec::with_capacity(generated.len());
        for ((ids, graph), stopped) in generated.iter().zip(graphs).zip(stopped) {
            let text = self.tokens.decode(ids)?;
            let correct = is_correct_generation(graph, &text);
            out.push(Decoding {
                text,
                correct,
                stopped,
                tokens: ids.len() + usize::from(stopped),
            });
        }
        Ok(out)
    }

    /// The new tokens of each prompt of one batch (eos not included), and whether each ended
    /// at eos: from the prompts' prefill and cache (`start`) where the network keeps one, else
    /// by recomputing each live sequence per token. The draws are the same either way (one per
    /// live row, in row order).
    fn continue_batch(
        &self,
        prompts: &[Vec<u32>],
        start: Option<(Tensor, crate::lm::nets::KvCache)>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        match start {
            Some((h, cache)) => self.continue_cached(prompts.len(), h, cache, rng),
            None => self.continue_recomputed(prompts, rng),
        }
    }

    /// Decoding through the cache: every row steps each time (a finished row is fed eos and
    /// ignored).
    fn continue_cached(
        &self,
        rows: usize,
        mut h: Tensor,
        mut cache: crate::lm::nets::KvCache,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        let mut done = vec![false; rows];
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); rows];
        for t in 0..self.max_new {
            let logits = crate::lm::model::to_array2(&h.matmul(&self.unembedding.t()?)?)?;
            let mut next = vec![self.tokens.eos; rows];
            for i in 0..rows {
                if done[i] {
                    continue;
                }
                next[i] = choose(logits.row(i), rng.as_deref_mut());
                match next[i] == self.tokens.eos {
                    true => done[i] = true,
                    false => generated[i].push(next[i]),
                }
            }
            if done.iter().all(|&d| d) || t + 1 == self.max_new {
                break;
            }
            h = self.lm.decode_step(&mut cache, &next)?;
        }
        Ok((generated, done))
    }

    /// Decoding by recomputing every live sequence per token (networks without a cache).
    fn continue_recomputed(
        &self,
        prompts: &[Vec<u32>],
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
        let mut done = vec![false; seqs.len()];
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); seqs.len()];
        for _ in 0..self.max_new {
            let live: Vec<usize> = (0..seqs.len()).filter(|&i| !done[i]).collect();
            if live.is_empty() {
                break;
            }
            let ids: Vec<Vec<u32>> = live.iter().map(|&i| seqs[i].clone()).collect();
            let pos: Vec<usize> = ids.iter().map(|s| s.len() - 1).collect();
            let h = self.lm.hidden_states(&ids, &pos)?;
            let logits = crate::lm::model::to_array2(&h.matmul(&self.unembedding.t()?)?)?;
            for (row, &i) in live.iter().enumerate() {
                let next = choose(logits.row(row), rng.as_deref_mut());
                if next == self.tokens.eos {
                    done[i] = true;
                } else {
                    seqs[i].push(next);
                    generated[i].push(next);
                }
            }
        }
        Ok((generated, done))
    }
}

/// A token from `logits`: sampled from `softmax(logits)` (f64, max-shifted), or the argmax.
fn choose(logits: ndarray::ArrayView1<f64>, rng: Option<&mut ChaCha8Rng>) -> u32 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match rng {
        None => logits.iter().position(|&x| x == max).unwrap_or(0) as u32,
        Some(rng) => {
            let weights: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut u = rng.random::<f64>() * total;
            for (k, w) in weights.iter().enumerate() {
                u -= w;
                if u < 0.0 {
                    return k as u32;
                }
            }
            // Rounding left `u` ≥ 0 past the last weight: the last token with weight.
            weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
        }
    }
}
