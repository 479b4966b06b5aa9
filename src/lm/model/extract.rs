//! Representations read from the transformer: the final hidden state `h` at chosen positions,
//! padded batches, shared-prompt continuations and logits (MATH.md §6).

use crate::lm::model::language_model::LanguageModel;
use crate::lm::model::language_model::Network;
use crate::lm::nets::kernels::Kernels;
use crate::lm::nets::KvCache;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_transformers::models::llama::Cache;
use ndarray::Array2;

/// Non-padding tokens encoded by extractions so far (reported as tokens/s by `rmflow lm`).
pub static LAST_EXTRACTION_TOKENS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The distinct sequences among `prompts`, in order of first appearance, and the index of each
/// prompt's among them: the grouping of the shared-prompt forward
/// ([`LanguageModel::prompt_group_hidden_states`]).
pub fn distinct_prompts<'a>(
    prompts: impl IntoIterator<Item = &'a [u32]>,
) -> (Vec<&'a [u32]>, Vec<usize>) {
    let mut index: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    let mut distinct = Vec::new();
    let group = prompts
        .into_iter()
        .map(|p| {
            *index.entry(p).or_insert_with(|| {
                distinct.push(p);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, group)
}

/// A 2-D f32 tensor as an f64 array.
pub fn to_array2(t: &Tensor) -> Result<Array2<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(Array2::from_shape_vec(
        (r, c),
        v.into_iter().map(f64::from).collect(),
    )?)
}

impl LanguageModel {
    /// Final hidden states `h` [n, D] at `pos[i]` of each sequence, in one batch (differentiable
    /// under [`crate::lm::Forward::Nets`]). Right-padded; padding is masked (BERT) or never looked
    /// at (causal). The differentiable BERT packs the sequences instead (no padding rows,
    /// [`crate::lm::nets::Bert::forward_packed`]; padded on other devices, [`crate::lm::nets::Bert::forward_at`]) and
    /// computes its last layer at the read rows only.
    pub fn hidden_states(&self, seqs: &[Vec<u32>], pos: &[usize]) -> Result<Tensor> {
        let n = seqs.len();
        if let Network::Llama(model, config) = &self.network {
            // candle's Llama returns the last position only: batch sequences of equal length.
            let mut cache = Cache::new(false, DType::F32, config, &self.device)?;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (seqs[i].len(), i));
            let mut parts = Vec::new();
            for group in order.chunk_by(|&a, &b| seqs[a].len() == seqs[b].len()) {
                let len = seqs[group[0]].len();
                for &i in group {
                    if pos[i] + 1 != len {
                        bail!("causal read-out must be at the last position");
                    }
                }
                let ids: Vec<u32> = group.iter().flat_map(|&i| seqs[i].clone()).collect();
                let ids = Tensor::from_vec(ids, (group.len(), len), &self.device)?;
                parts.push(model.forward(&ids, 0, &mut cache)?.narrow(1, 0, self.dim)?);
            }
            // One group (every sequence of one length) is a narrowed view: index_select needs
            // it contiguous.
            let sorted = Tensor::cat(&parts, 0)?.contiguous()?;
            let mut inverse = vec![0u32; n];
            for (k, &i) in order.iter().enumerate() {
                inverse[i] = k as u32;
            }
            return Ok(sorted.index_select(&Tensor::new(inverse, &self.device)?, 0)?);
        }
        if let Network::DiffBert(m) = &self.network {
            if m.packs() {
                let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
                let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
                let ids = Tensor::new(flat, &self.device)?;
                return Ok(m.forward_packed(&ids, &lens, Some(pos))?);
            }
            let (ids, mask) = self.padded(seqs)?;
            return Ok(m.forward_at(&ids, &mask, pos)?);
        }
        let h = self.padded_hidden_states(seqs)?;
        let len = h.dim(1)?;
        let index: Vec<u32> = pos
            .iter()
            .enumerate()
            .map(|(r, &p)| (r * len + p) as u32)
            .collect();
        Ok(h.reshape((n * len, self.dim))?
            .index_select(&Tensor::new(index, &self.device)?, 0)?)
    }

    /// Final hidden states of every position `[n, L, D]`, `L` the longest sequence, right-padded
    /// (padding masked for BERT, never looked at by the causal families). Not available for the
    /// candle-transformers Llama, which returns the last position only.
    pub fn padded_hidden_states(&self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        let (ids, mask) = self.padded(seqs)?;
        Ok(match &self.network {
            Network::Bert(m) => m.forward(&ids, &ids.zeros_like()?, Some(&mask))?,
            Network::DiffBert(m) => m.forward(&ids, &mask)?,
            Network::DiffLlama(m) => m.forward(&ids)?,
            Network::Gpt2(m) => m.forward(&ids)?,
            Network::GptNeox(m) => m.forward(&ids)?,
            Network::Llama(..) => {
                bail!("every-position hidden states need the differentiable Llama forward")
            }
        })
    }

    /// `seqs` right-padded with 0 to the longest, `[n, L]`, and the mask (1 on tokens), u32.
    fn padded(&self, seqs: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let n = seqs.len();
        let len = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let (mut ids, mut mask) = (vec![0u32; n * len], vec![0u32; n * len]);
        for (r, s) in seqs.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(1);
        }
        Ok((
            Tensor::from_vec(ids, (n, len), &self.device)?,
            Tensor::from_vec(mask, (n, len), &self.device)?,
        ))
    }

    /// Incremental decoding from `prompts` (left-padded into one batch): the final hidden state
    /// at each prompt's last token [B, D] and the cache [`decode_step`](Self::decode_step)
    /// extends; `None` where the network keeps no cache (every family but rmflow's Llama /
    /// Qwen2 forward).
    pub fn start_decoding(&self, prompts: &[Vec<u32>]) -> Result<Option<(Tensor, KvCache)>> {
        let Network::DiffLlama(m) = &self.network else {
            return Ok(None);
        };
        let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if p == 0 || prompts.iter().any(Vec::is_empty) {
            bail!("decoding needs non-empty prompts");
        }
        self.check_length(p, &|| "a prompt".into())?;
        let pad: Vec<usize> = prompts.iter().map(|s| p - s.len()).collect();
        let mut ids = vec![0u32; prompts.len() * p];
        for (g, s) in prompts.iter().enumerate() {
            ids[g * p + pad[g]..(g + 1) * p].copy_from_slice(s);
        }
        let prefix = Tensor::from_vec(ids, (prompts.len(), p), &self.device)?;
        Ok(Some(m.prefill(&prefix, &pad)?))
    }

    /// One token per row of a decoding started by [`start_decoding`](Self::start_decoding):
    /// the final hidden states at its position [B, D].
    pub fn decode_step(&self, cache: &mut KvCache, next: &[u32]) -> Result<Tensor> {
        let Network::DiffLlama(m) = &self.network else {
            bail!("incremental decoding needs rmflow's Llama / Qwen2 forward");
        };
        self.check_length(cache.positions() + 1, &|| {
            "a prompt and its decoded tokens".into()
        })?;
        Ok(m.decode_step(&Tensor::new(next, &self.device)?, cache)?)
    }

    /// Whether [`prompt_group_hidden_states`](Self::prompt_group_hidden_states) is available:
    /// the differentiable Llama / Qwen2 forward.
    pub fn shares_prefixes(&self) -> bool {
        matches!(self.network, Network::DiffLlama(_))
    }

    /// Final hidden states of `prefix ++ cont_b` for every continuation, the prefix computed
    /// once ([`prompt_group_hidden_states`](Self::prompt_group_hidden_states) with one prompt):
    /// `h` at the prefix's last position [D] and at every continuation position [B, C, D].
    /// rmflow's Llama / Qwen2 forwards only (inference kernels, no gradient); the continuations
    /// have equal length.
    pub fn continuation_hidden_states(
        &self,
        prefix: &[u32],
        conts: &[Vec<u32>],
    ) -> Result<(Tensor, Tensor)> {
        let (h_last, h) = self.prompt_group_hidden_states(
            &[prefix],
            conts,
            &vec![0; conts.len()],
            Kernels::Inference,
        )?;
        Ok((h_last.squeeze(0)?, h))
    }

    /// Final hidden states of several prompts' continuations in one batch, each prompt computed
    /// once ([`crate::lm::nets::Llama::forward_prompt_groups`], the prompts left-padded): `h` at each
    /// prompt's last position [G, D] and at every continuation position [N, C, D], where
    /// `group[n]` is continuation `n`'s prompt and the continuations have one length.
    /// `kernels`: autograd (training) or inference (scoring without a gradient).
    pub fn prompt_group_hidden_states(
        &self,
        prompts: &[&[u32]],
        conts: &[Vec<u32>],
        group: &[usize],
        kernels: Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let Network::DiffLlama(m) = &self.network else {
            bail!("shared-prompt hidden states need the differentiable Llama forward");
        };
        let p = prompts.iter().map(|s| s.len()).max().unwrap_or(0);
        let c = conts.first().map_or(0, Vec::len);
        if prompts.iter().any(|s| s.is_empty())
            || c == 0
            || conts.iter().any(|s| s.len() != c)
            || group.len() != conts.len()
            || group.iter().any(|&g| g >= prompts.len())
        {
            bail!("shared-prompt forward: non-empty prompts, continuations of one non-zero length and a prompt for each are needed");
        }
        self.check_length(p + c, &|| "a prompt with its continuations".into())?;
        let pad: Vec<usize> = prompts.iter().map(|s| p - s.len()).collect();
        let mut ids = vec![0u32; prompts.len() * p];
        for (g, s) in prompts.iter().enumerate() {
            ids[g * p + pad[g]..(g + 1) * p].copy_from_slice(s);
        }
        let prefix = Tensor::from_vec(ids, (prompts.len(), p), &self.device)?;
        let flat: Vec<u32> = conts.iter().flatten().copied().collect();
        let cont = Tensor::from_vec(flat, (conts.len(), c), &self.device)?;
        let group: Vec<u32> = group.iter().map(|&g| g as u32).collect();
        let (hp, hc) = m.forward_prompt_groups(&prefix, &pad, &cont, &group, kernels)?;
        Ok((hp.narrow(1, p - 1, 1)?.squeeze(1)?, hc))
    }

    /// Next-token logits `U h_t` of every position of each sequence, f64 `[len_i, V]` (one padded
    /// batch): what `tests/lm_reference.rs` compares with `transformers`.
    pub fn logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<Array2<f64>>> {
        let h = self.padded_hidden_states(seqs)?;
        let (n, len, d) = h.dims3()?;
        let all = h.reshape((n * len, d))?.matmul(&self.unembedding.t()?)?;
        let all = to_array2(&all)?;
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                all.slice(ndarray::s![i * len..i * len + s.len(), ..])
                    .to_owned()
            })
            .collect())
    }

    /// [`hidden_states`](Self::hidden_states) in batches of `batch`, detached, as f64 [n, D].
    pub fn hidden_at(&self, seqs: &[Vec<u32>], pos: &[usize], batch: usize) -> Result<Array2<f64>> {
        let mut out = Array2::zeros((seqs.len(), self.dim));
        LAST_EXTRACTION_TOKENS.fetch_add(
            seqs.iter().map(Vec::len).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        for (b, (s, p)) in seqs.chunks(batch).zip(pos.chunks(batch)).enumerate() {
            let h = to_array2(&self.hidden_states(s, p)?.detach())?;
            out.slice_mut(ndarray::s![b * batch..b * batch + s.len(), ..])
                .assign(&h);
        }
        Ok(out)
    }
}
