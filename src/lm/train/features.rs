//! What the rewards read from the transformer: response-token log-probabilities (IM-RMs), the
//! hidden states at the response tokens (token-mean EX-RM) and at the last token (EX-RM, EX-GRM),
//! live (full fine-tuning) or frozen (head-only).

use crate::lm::model::language_model::LanguageModel;
use crate::lm::nets::kernels::Kernels;
use crate::lm::train::evaluate::Scorer;
use crate::lm::train::journal::Pass;
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::ScoredSequence;
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// Representations a batch of sequences is scored from.
pub(crate) struct Features {
    /// Hidden states that predict each scored response token `[M, D]` (IM-RMs; empty otherwise).
    pub(crate) predict: Tensor,
    /// Hidden states at each response token `[M, D]` (the token-mean EX-RM; empty otherwise).
    pub(crate) response: Tensor,
    /// The scored tokens, `[M]`.
    pub(crate) targets: Vec<u32>,
    /// Which sequence of the batch each scored token belongs to.
    pub(crate) owner: Vec<usize>,
    /// Hidden state at the last token `[n, D]` (EX-RM, EX-GRM; zeros otherwise).
    pub(crate) last: Tensor,
}

/// The body's representations of `seqs` (differentiable): causal — `h` at the position before
/// each response token, at each response token and at the last one, one padded forward; masked —
/// each response token masked in turn (one forward per token) for the IM-RM and the unmasked
/// sequence for the EX-RMs.
pub(crate) fn live_features(
    lm: &LanguageModel,
    seqs: &[&ScoredSequence],
    need: Need,
) -> Result<Features> {
    let (dev, d) = (&lm.device, lm.dim);
    let (targets, owner) = scored_tokens(seqs);
    let empty = || Tensor::zeros((0, d), DType::F32, dev);
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    // Every position's states, where more than the last token's are read.
    let unmasked = if need.response || (need.implicit && lm.mask_id.is_none()) {
        Some(lm.padded_hidden_states(&ids)?)
    } else {
        None
    };
    // Rows of the unmasked `h` at offset `shift` from each response token (−1: the predicting
    // position of a causal LM; 0: the token itself).
    let response_rows = |shift: usize| -> Result<Tensor> {
        let h = unmasked.as_ref().expect("unmasked forward");
        rows_at(h, seqs, |s| {
            (s.response_start..s.response_end)
                .map(|k| k - shift)
                .collect()
        })
    };
    let predict = match (need.implicit, lm.mask_id) {
        (false, _) => empty()?,
        (true, None) => response_rows(1)?,
        (true, Some(mask)) => masked_predict(lm, seqs, mask)?,
    };
    let response = if need.response {
        response_rows(0)?
    } else {
        empty()?
    };
    let last = if need.last {
        match &unmasked {
            Some(h) => rows_at(h, seqs, |s| vec![s.response_end - 1])?,
            None => {
                let at: Vec<usize> = seqs.iter().map(|s| s.response_end - 1).collect();
                lm.hidden_states(&ids, &at)?
            }
        }
    } else {
        Tensor::zeros((seqs.len(), d), DType::F32, dev)?
    };
    Ok(Features {
        predict,
        response,
        targets,
        owner,
        last,
    })
}

/// The body's representations of `seqs` with each distinct prompt (`ids[..response_start]`)
/// computed once for all its sequences, on a causal Llama-family forward
/// ([`LanguageModel::prompt_group_hidden_states`]; equal to [`live_features`] up to f32
/// rounding): differentiable `kernels` for a training step (a pair's chosen and rejected
/// responses share their prompt, so a step runs about half the tokens of the padded forward),
/// inference ones for scoring without a gradient. Other bodies fall back to [`live_features`].
pub(crate) fn shared_prompt_features(
    lm: &LanguageModel,
    seqs: &[&ScoredSequence],
    need: Need,
    kernels: Kernels,
) -> Result<Features> {
    if !lm.shares_prefixes() || seqs.iter().any(|s| s.response_start == 0) {
        return live_features(lm, seqs, need);
    }
    let d = lm.dim;
    let groups = prompt_groups(seqs);
    let width = seqs
        .iter()
        .map(|s| s.response_end - s.response_start)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut prompts = Vec::with_capacity(groups.len());
    let (mut conts, mut group) = (vec![Vec::new(); seqs.len()], vec![0; seqs.len()]);
    for (g, members) in groups.iter().enumerate() {
        let first = seqs[members[0]];
        prompts.push(&first.ids[..first.response_start]);
        for &i in members {
            let s = seqs[i];
            let mut c = s.ids[s.response_start..s.response_end].to_vec();
            // Right padding: causal attention never lets a real position see it.
            c.resize(width, 0);
            conts[i] = c;
            group[i] = g;
        }
    }
    let (h_last, h) = lm.prompt_group_hidden_states(&prompts, &conts, &group, kernels)?;
    // Rows: every prompt's last position, then each sequence's `width` response positions.
    let g = prompts.len();
    let table = Tensor::cat(&[h_last, h.reshape((seqs.len() * width, d))?], 0)?;
    let rows_of: Vec<(usize, usize)> = (0..seqs.len()).map(|i| (group[i], g + i * width)).collect();
    // The row of absolute position `k` of sequence `i` (the prompt's last, or a response token).
    let row = |i: usize, k: usize| -> u32 {
        let (last, start) = rows_of[i];
        let s = seqs[i];
        (if k + 1 == s.response_start {
            last
        } else {
            start + k - s.response_start
        }) as u32
    };
    let pick = |wanted: bool, positions: &dyn Fn(usize) -> Vec<usize>| -> Result<Tensor> {
        if !wanted {
            return Ok(Tensor::zeros((0, d), DType::F32, &lm.device)?);
        }
        let rows: Vec<u32> = (0..seqs.len())
            .flat_map(|i| positions(i).into_iter().map(move |k| row(i, k)))
            .collect();
        Ok(table.index_select(&Tensor::new(rows, &lm.device)?, 0)?)
    };
    let span = |i: usize| seqs[i].response_start..seqs[i].response_end;
    let (targets, owner) = scored_tokens(seqs);
    Ok(Features {
        predict: pick(need.implicit, &|i| span(i).map(|k| k - 1).collect())?,
        response: pick(need.response, &|i| span(i).collect())?,
        targets,
        owner,
        last: if need.last {
            pick(true, &|i| vec![seqs[i].response_end - 1])?
        } else {
            Tensor::zeros((seqs.len(), d), DType::F32, &lm.device)?
        },
    })
}

/// The sequences of each distinct prompt (token ids before the response), in order of first
/// appearance.
fn prompt_groups(seqs: &[&ScoredSequence]) -> Vec<Vec<usize>> {
    let (distinct, group) =
        crate::lm::model::distinct_prompts(seqs.iter().map(|s| &s.ids[..s.response_start]));
    let mut groups = vec![Vec::new(); distinct.len()];
    for (i, g) in group.into_iter().enumerate() {
        groups[g].push(i);
    }
    groups
}

/// Every scored response token of `seqs` and the sequence it belongs to.
fn scored_tokens(seqs: &[&ScoredSequence]) -> (Vec<u32>, Vec<usize>) {
    seqs.iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.ids[s.response_start..s.response_end]
                .iter()
                .map(move |&t| (t, i))
        })
        .unzip()
}

/// `idx` with the sequences of one prompt adjacent and the prompts ordered by their longest
/// response, then their length: scoring many sequences of varied lengths (preference datasets),
/// chunks of similar widths pad little. Rewards are placed by index, so the order is only speed.
pub(crate) fn by_length(seqs: &[ScoredSequence], idx: &[usize]) -> Vec<usize> {
    let refs: Vec<&ScoredSequence> = idx.iter().map(|&i| &seqs[i]).collect();
    let mut groups = prompt_groups(&refs);
    groups.sort_by_key(|g| {
        let widest = g
            .iter()
            .map(|&j| refs[j].response_end - refs[j].response_start);
        (widest.max().unwrap_or(0), refs[g[0]].response_start)
    });
    groups.into_iter().flatten().map(|j| idx[j]).collect()
}

/// `idx` reordered so that the sequences of one prompt are adjacent, cut into chunks of whole
/// prompt groups of at most `batch` sequences (a larger group is cut on its own): the shared
/// prompt forward of [`shared_prompt_features`] then computes each prompt about once.
pub(crate) fn prompt_chunks(
    seqs: &[ScoredSequence],
    idx: &[usize],
    batch: usize,
) -> Vec<Vec<usize>> {
    let refs: Vec<&ScoredSequence> = idx.iter().map(|&i| &seqs[i]).collect();
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    for group in prompt_groups(&refs) {
        let members: Vec<usize> = group.iter().map(|&j| idx[j]).collect();
        match chunks.last_mut() {
            Some(c) if c.len() + members.len() <= batch => c.extend(members),
            _ => chunks.extend(members.chunks(batch.max(1)).map(<[usize]>::to_vec)),
        }
    }
    chunks
}

/// The rows `positions(s)` of every sequence's hidden states `h` `[n, L, D]`, in order, `[·, D]`.
fn rows_at(
    h: &Tensor,
    seqs: &[&ScoredSequence],
    positions: impl Fn(&ScoredSequence) -> Vec<usize>,
) -> Result<Tensor> {
    let (n, l, d) = h.dims3()?;
    let rows: Vec<u32> = seqs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| positions(s).into_iter().map(move |k| (i * l + k) as u32))
        .collect();
    Ok(h.reshape((n * l, d))?
        .index_select(&Tensor::new(rows, h.device())?, 0)?)
}

/// A masked encoder's pseudo-likelihood states: each response token masked in turn and read at
/// its own position, one sequence per token, `[M, D]`.
fn masked_predict(lm: &LanguageModel, seqs: &[&ScoredSequence], mask: u32) -> Result<Tensor> {
    let mut masked = Vec::new();
    let mut at = Vec::new();
    for s in seqs {
        for k in s.response_start..s.response_end {
            let mut m = s.ids.clone();
            m[k] = mask;
            at.push(k);
            masked.push(m);
        }
    }
    lm.hidden_states(&masked, &at)
}

/// Which representations a reward model reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    /// The states predicting each response token (IM-RMs).
    pub(crate) implicit: bool,
    /// The states at each response token (the token-mean EX-RM).
    pub(crate) response: bool,
    /// The state at the last token (EX-RM; EX-GRM on its verification sequence).
    pub(crate) last: bool,
}

impl Need {
    pub(crate) fn of(reward: Reward) -> Need {
        Need {
            implicit: reward.is_implicit(),
            response: reward == Reward::ExrmTokenMean,
            last: matches!(reward, Reward::Exrm | Reward::Exgrm),
        }
    }
}

/// `ln π(y_k | ·)` of every scored token, `[M]`: `log_softmax(h Uᵀ)` gathered at the targets.
pub(crate) fn token_logprobs(f: &Features, u: &Tensor) -> Result<Tensor> {
    let dev = u.device();
    let lp = candle_nn::ops::log_softmax(&f.predict.matmul(&u.t()?)?, D::Minus1)?;
    let idx = Tensor::new(f.targets.as_slice(), dev)?.unsqueeze(1)?;
    Ok(lp.gather(&idx, 1)?.squeeze(1)?)
}

/// Per-sequence sums of per-token values `[M] → [n]` (a 0/1 matrix product, differentiable).
pub(crate) fn per_sequence_sum(values: &Tensor, owner: &[usize], n: usize) -> Result<Tensor> {
    let m = owner.len();
    let mut seg = vec![0f32; n * m];
    for (j, &i) in owner.iter().enumerate() {
        seg[i * m + j] = 1.0;
    }
    let seg = Tensor::from_vec(seg, (n, m), values.device())?;
    Ok(seg.matmul(&values.unsqueeze(1)?)?.squeeze(1)?)
}

/// Representations of every sequence under the initial (frozen) body, for head-only training.
pub(crate) struct FrozenFeatures {
    pub(crate) predict: Tensor,
    pub(crate) response: Tensor,
    /// Range of each sequence's scored tokens in `predict` / `response`.
    pub(crate) spans: Vec<(usize, usize)>,
    pub(crate) targets: Vec<u32>,
    pub(crate) last: Tensor,
}

impl FrozenFeatures {
    pub(crate) fn extract(
        lm: &LanguageModel,
        seqs: &[ScoredSequence],
        batch: usize,
        need: Need,
    ) -> Result<FrozenFeatures> {
        let all: Vec<usize> = (0..seqs.len()).collect();
        let (mut predict, mut response, mut last) = (Vec::new(), Vec::new(), Vec::new());
        // Per sequence, in computation order: its first scored row and its last-token row.
        let mut rows_of = vec![(0u32, 0u32); seqs.len()];
        let (mut scored, mut done) = (0u32, 0u32);
        for chunk in prompt_chunks(seqs, &by_length(seqs, &all), batch) {
            super::resume::interrupt_point("extracting the frozen features")?;
            let refs: Vec<&ScoredSequence> = chunk.iter().map(|&i| &seqs[i]).collect();
            let f = shared_prompt_features(lm, &refs, need, Kernels::Inference)?;
            for &i in &chunk {
                rows_of[i] = (scored, done);
                scored += (seqs[i].response_end - seqs[i].response_start) as u32;
                done += 1;
            }
            predict.push(f.predict.detach());
            response.push(f.response.detach());
            last.push(f.last.detach());
        }
        // Back to sequence order.
        let dev = &lm.device;
        let (mut scored_rows, mut spans, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (s, &(first, _)) in seqs.iter().zip(&rows_of) {
            let r = s.response_end - s.response_start;
            spans.push((scored_rows.len(), r));
            scored_rows.extend(first..first + r as u32);
            targets.extend_from_slice(&s.ids[s.response_start..s.response_end]);
        }
        let scored_rows = Tensor::new(scored_rows, dev)?;
        let reorder = |parts: Vec<Tensor>, wanted: bool| -> Result<Tensor> {
            let t = Tensor::cat(&parts, 0)?;
            Ok(if wanted {
                t.index_select(&scored_rows, 0)?
            } else {
                t
            })
        };
        let last_rows: Vec<u32> = rows_of.iter().map(|&(_, l)| l).collect();
        Ok(FrozenFeatures {
            predict: reorder(predict, need.implicit)?,
            response: reorder(response, need.response)?,
            spans,
            targets,
            last: Tensor::cat(&last, 0)?.index_select(&Tensor::new(last_rows, dev)?, 0)?,
        })
    }

    pub(crate) fn features(&self, idx: &[usize], need: Need) -> Result<Features> {
        let dev = self.last.device();
        let d = self.last.dim(1)?;
        let (mut rows, mut owner, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &s) in idx.iter().enumerate() {
            let (a, r) = self.spans[s];
            for j in a..a + r {
                rows.push(j as u32);
                owner.push(i);
                targets.push(self.targets[j]);
            }
        }
        let rows = Tensor::new(rows, dev)?;
        let pick = |t: &Tensor, wanted: bool| -> Result<Tensor> {
            Ok(if wanted {
                t.index_select(&rows, 0)?
            } else {
                Tensor::zeros((0, d), DType::F32, dev)?
            })
        };
        let last_rows: Vec<u32> = idx.iter().map(|&s| s as u32).collect();
        Ok(Features {
            predict: pick(&self.predict, need.implicit)?,
            response: pick(&self.response, need.response)?,
            targets,
            owner,
            last: self.last.index_select(&Tensor::new(last_rows, dev)?, 0)?,
        })
    }
}

/// `ln π(y_k | ·)` of every response token of `seqs` under `lm` (its own unembedding), f64:
/// the quantity the IM-RM's reward sums, exposed for checks against an independent computation.
pub fn response_token_logprobs(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let scorer = Scorer {
        reward: Reward::Imrm,
        lm,
        frozen: None,
        beta: 1.0,
        batch: batch.max(1),
        yes_no: None,
    };
    scorer.token_logprob_table(seqs, lm.unembedding(), &mut Pass::plain())
}

/// The EX-RM's representation of each sequence: `h` at its last response token, f64 `[n, D]`.
pub fn last_response_hidden(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
) -> Result<ndarray::Array2<f64>> {
    let refs: Vec<&ScoredSequence> = seqs.iter().collect();
    let f = live_features(lm, &refs, Need::of(Reward::Exrm))?;
    crate::lm::model::to_array2(&f.last.detach())
}

/// The token-mean EX-RM's representation of each sequence: the mean of `h` at its response tokens
/// (`(1/K) Σ_k h_k`, so that `u·` of it is the mean reward), f64 `[n, D]`.
pub fn response_hidden_mean(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
) -> Result<ndarray::Array2<f64>> {
    let refs: Vec<&ScoredSequence> = seqs.iter().collect();
    let f = live_features(lm, &refs, Need::of(Reward::ExrmTokenMean))?;
    let rows = crate::lm::model::to_array2(&f.response.detach())?;
    let mut out = ndarray::Array2::zeros((seqs.len(), lm.dim));
    for (row, &i) in rows.rows().into_iter().zip(&f.owner) {
        let k = (seqs[i].response_end - seqs[i].response_start) as f64;
        out.row_mut(i).scaled_add(1.0 / k, &row);
    }
    Ok(out)
}
