//! BERT (masked encoder): padded or packed batches, the last layer computed at the read rows.

use super::layers::*;
use crate::lm::ops;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct BertShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

pub(crate) fn two() -> usize {
    2
}

pub(crate) fn bert_eps() -> f64 {
    1e-12
}

pub(crate) fn gelu() -> String {
    "gelu".into()
}

pub(crate) struct BertLayer {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: Norm,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) out_norm: Norm,
}

/// BERT encoder (`BertModel` without pooler), final hidden states `[B, L, D]`.
pub struct Bert {
    pub(crate) words: Embedding,
    pub(crate) positions: Embedding,
    pub(crate) types: Embedding,
    pub(crate) norm: Norm,
    pub(crate) layers: Vec<BertLayer>,
    pub(crate) heads: usize,
    pub(crate) act: String,
}

impl Bert {
    pub fn load(vb: VarBuilder, c: &BertShape) -> Result<Bert> {
        let (d, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        check_activation(&c.hidden_act)?;
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("encoder.layer.{n}"));
                let a = l.pp("attention");
                Ok(BertLayer {
                    q: linear(d, d, true, a.pp("self.query"))?,
                    k: linear(d, d, true, a.pp("self.key"))?,
                    v: linear(d, d, true, a.pp("self.value"))?,
                    attn_out: linear(d, d, true, a.pp("output.dense"))?,
                    attn_norm: Norm::layer(d, eps, a.pp("output.LayerNorm"))?,
                    up: linear(d, i, true, l.pp("intermediate.dense"))?,
                    down: linear(i, d, true, l.pp("output.dense"))?,
                    out_norm: Norm::layer(d, eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            words: embedding(c.vocab_size, d, e.pp("word_embeddings"))?,
            positions: embedding(c.max_position_embeddings, d, e.pp("position_embeddings"))?,
            types: embedding(c.type_vocab_size, d, e.pp("token_type_embeddings"))?,
            norm: Norm::layer(d, eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            act: c.hidden_act.clone(),
        })
    }

    /// `ids`, `mask` [B, L] (u32, mask 1 on real tokens); token types 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (mut x, mask) = self.embed(ids, mask)?;
        let batch = Batch::Padded(&mask);
        for layer in &self.layers {
            x = layer.forward(&x, &x, batch, self.heads, &self.act)?;
        }
        Ok(x)
    }

    /// Whether [`forward_packed`](Self::forward_packed) serves this model: the fused kernels'
    /// device and dtype (CPU, f32).
    pub fn packs(&self) -> bool {
        ops::fused(self.words.embeddings())
    }

    /// The final hidden states at position `at[b]` of each sequence, `[B, D]`: the rows of
    /// [`forward`](Self::forward) there, with the last layer's queries, attention output and MLP
    /// computed at those rows only (its keys and values at every row). The same formulas; the
    /// products over fewer rows may round differently in the last bits.
    pub fn forward_at(&self, ids: &Tensor, mask: &Tensor, at: &[usize]) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if at.len() != b || at.iter().any(|&p| p >= l) {
            candle_core::bail!("forward_at: positions {at:?} do not fit a batch of {b} × {l}");
        }
        let (x, mask) = self.embed(ids, mask)?;
        let rows: Vec<u32> = at
            .iter()
            .enumerate()
            .map(|(r, &p)| (r * l + p) as u32)
            .collect();
        let d = x.dim(2)?;
        let pick = |x: &Tensor| -> Result<Tensor> {
            x.reshape((b * l, d))?
                .index_select(&Tensor::new(rows.as_slice(), x.device())?, 0)?
                .reshape((b, 1, d))
        };
        let h = self.last_layer_at(x, Batch::Padded(&mask), Batch::Padded(&mask), pick)?;
        h.reshape((b, d))
    }

    /// The final hidden states of a packed batch: `ids` [T] holds the sequences of `lens` one
    /// after the other (no padding), and each sequence attends to its own tokens only
    /// ([`ops::attention_packed`]). Every row `[T, D]`, or with `at` (a position in each
    /// sequence) those rows `[B, D]`, the last layer computed at them only, as
    /// [`forward_at`](Self::forward_at). The same formulas as the padded forward's real rows
    /// (whose padding keys get probability 0 exactly), with no padding rows computed. CPU, f32
    /// ([`packs`](Self::packs)).
    pub fn forward_packed(
        &self,
        ids: &Tensor,
        lens: &[usize],
        at: Option<&[usize]>,
    ) -> Result<Tensor> {
        let t = ids.dims1()?;
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &n| {
                *acc += n;
                Some(*acc - n)
            })
            .collect();
        if lens.iter().sum::<usize>() != t || lens.contains(&0) {
            candle_core::bail!("forward_packed: lengths {lens:?} do not tile {t} tokens");
        }
        let whole: Vec<ops::Span> = starts
            .iter()
            .zip(lens)
            .map(|(&s, &n)| ops::Span {
                q0: s,
                lq: n,
                k0: s,
                lk: n,
            })
            .collect();
        let pos: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        let pos = Tensor::new(pos, ids.device())?;
        let x = self.embed_rows(ids, &pos)?;
        let Some(at) = at else {
            let mut x = x;
            for layer in &self.layers {
                x = layer.forward(&x, &x, Batch::Packed(&whole), self.heads, &self.act)?;
            }
            return Ok(x);
        };
        if at.len() != lens.len() || at.iter().zip(lens).any(|(&p, &n)| p >= n) {
            candle_core::bail!("forward_packed: positions {at:?} do not fit lengths {lens:?}");
        }
        let rows: Vec<u32> = at
            .iter()
            .zip(&starts)
            .map(|(&p, &s)| (s + p) as u32)
            .collect();
        let read: Vec<ops::Span> = whole
            .iter()
            .enumerate()
            .map(|(r, w)| ops::Span { q0: r, lq: 1, ..*w })
            .collect();
        let pick = |x: &Tensor| x.index_select(&Tensor::new(rows.as_slice(), x.device())?, 0);
        self.last_layer_at(x, Batch::Packed(&whole), Batch::Packed(&read), pick)
    }

    /// Every layer but the last over `x`, then the last at the rows `pick` selects (`last`: the
    /// batch those queries form).
    pub(crate) fn last_layer_at(
        &self,
        mut x: Tensor,
        batch: Batch,
        last: Batch,
        pick: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let Some((final_layer, first)) = self.layers.split_last() else {
            candle_core::bail!("a BERT without layers has no read-out rows");
        };
        for layer in first {
            x = layer.forward(&x, &x, batch, self.heads, &self.act)?;
        }
        final_layer.forward(&x, &pick(&x)?, last, self.heads, &self.act)
    }

    /// The embeddings' normed sum `[B, L, D]` and the additive key mask `[B, 1, 1, L]`: 0 on
    /// tokens, f32::MIN on padding (as Hugging Face).
    pub(crate) fn embed(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, l) = ids.dims2()?;
        let pos = Tensor::arange(0u32, l as u32, ids.device())?;
        let x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&pos)?)?
            .broadcast_add(&self.types.forward(&ids.zeros_like()?)?)?;
        let mask = ((mask.to_dtype(DType::F32)? - 1.0)? * f64::from(-f32::MIN))?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        Ok((self.norm.forward(&x)?, mask))
    }

    /// The embeddings' normed sum of tokens `ids` at positions `pos` (both [T]), `[T, D]`.
    pub(crate) fn embed_rows(&self, ids: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let x = ((self.words.forward(ids)? + self.positions.forward(pos)?)?
            .broadcast_add(&self.types.forward(&ids.zeros_like()?)?))?;
        self.norm.forward(&x)
    }
}

/// How a layer's rows form sequences: a padded batch `[B, L, ·]` under an additive key mask,
/// or a packed one `[T, ·]` with each sequence's query and key rows ([`ops::attention_packed`]).
#[derive(Clone, Copy)]
pub(crate) enum Batch<'a> {
    Padded(&'a Tensor),
    Packed(&'a [ops::Span]),
}

impl BertLayer {
    /// One encoder layer at the rows `xq` (queries and everything after the attention), its
    /// keys and values at every row of `x`; `xq = x` is the whole layer.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        xq: &Tensor,
        batch: Batch,
        heads: usize,
        act: &str,
    ) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(xq)?, heads)?;
        let k = split_heads(&self.k.forward(x)?, heads)?;
        let v = split_heads(&self.v.forward(x)?, heads)?;
        let ctx = match batch {
            Batch::Padded(mask) => attention(&q, &k, &v, mask)?,
            Batch::Packed(spans) => ops::attention_packed(&q, &k, &v, spans)?,
        };
        let x1 = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + xq)?)?;
        let u = activation(&self.up.forward(&x1)?, act)?;
        self.out_norm.forward(&(self.down.forward(&u)? + &x1)?)
    }
}
