//! What the rewards read from the transformer: response-token log-probabilities (IM-RM) and the
//! last response token's hidden state (EX-RM), live (full fine-tuning) or frozen (head-only).

use super::evaluate::Scorer;
use super::problem::ScoredSequence;
use crate::experiment::simulation::ModelKind;
use crate::lm::LanguageModel;
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// Representations a batch of sequences is scored from.
pub(super) struct Features {
    /// Hidden states that predict each scored response token `[M, D]`.
    pub(super) predict: Tensor,
    /// The scored tokens, `[M]`.
    pub(super) targets: Vec<u32>,
    /// Which sequence of the batch each scored token belongs to.
    pub(super) owner: Vec<usize>,
    /// Hidden state at the last response token `[n, D]`.
    pub(super) last: Tensor,
}

/// The body's representations of `seqs` (differentiable): causal — `h` at the position before
/// each response token and at the last one, one forward per sequence; masked — each response
/// token masked in turn (one forward per token) and the unmasked sequence for the EX-RM.
pub(super) fn live_features(
    lm: &LanguageModel,
    seqs: &[&ScoredSequence],
    need: Need,
) -> Result<Features> {
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
pub(super) struct Need {
    pub(super) implicit: bool,
    pub(super) explicit: bool,
}

impl Need {
    pub(super) fn of(kind: ModelKind) -> Need {
        Need {
            implicit: kind == ModelKind::Implicit,
            explicit: kind == ModelKind::Explicit,
        }
    }
}

/// `ln π(y_k | ·)` of every scored token, `[M]`: `log_softmax(h Uᵀ)` gathered at the targets.
pub(super) fn token_logprobs(f: &Features, u: &Tensor) -> Result<Tensor> {
    let dev = u.device();
    let lp = candle_nn::ops::log_softmax(&f.predict.matmul(&u.t()?)?, D::Minus1)?;
    let idx = Tensor::new(f.targets.as_slice(), dev)?.unsqueeze(1)?;
    Ok(lp.gather(&idx, 1)?.squeeze(1)?)
}

/// Per-sequence sums of per-token values `[M] → [n]` (a 0/1 matrix product, differentiable).
pub(super) fn per_sequence_sum(values: &Tensor, owner: &[usize], n: usize) -> Result<Tensor> {
    let m = owner.len();
    let mut seg = vec![0f32; n * m];
    for (j, &i) in owner.iter().enumerate() {
        seg[i * m + j] = 1.0;
    }
    let seg = Tensor::from_vec(seg, (n, m), values.device())?;
    Ok(seg.matmul(&values.unsqueeze(1)?)?.squeeze(1)?)
}

/// Representations of every sequence under the initial (frozen) body, for head-only training.
pub(super) struct FrozenFeatures {
    pub(super) predict: Tensor,
    /// Range of each sequence's scored tokens in `predict`.
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) targets: Vec<u32>,
    pub(super) last: Tensor,
}

impl FrozenFeatures {
    pub(super) fn extract(
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

    pub(super) fn features(&self, idx: &[usize], need: Need) -> Result<Features> {
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
    crate::lm::model::to_array2(&f.last.detach())
}
