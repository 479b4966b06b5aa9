//! GPT-2: learned positions, `Conv1D` weights (stored transposed), LayerNorm, GELU.

use super::layers::*;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

/// GPT-2 config.json fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "gpt2_eps")]
    pub layer_norm_epsilon: f64,
}

pub(crate) fn gpt2_eps() -> f64 {
    1e-5
}

/// Hugging Face `Conv1D`: `y = x W + b` with `W` stored `[in, out]`.
pub(crate) struct Conv1D {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Conv1D {
    pub(crate) fn load(i: usize, o: usize, vb: VarBuilder) -> Result<Conv1D> {
        Ok(Conv1D {
            weight: vb.get((i, o), "weight")?,
            bias: vb.get(o, "bias")?,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

pub(crate) struct Gpt2Block {
    pub(crate) ln_1: Norm,
    pub(crate) c_attn: Conv1D,
    pub(crate) attn_proj: Conv1D,
    pub(crate) ln_2: Norm,
    pub(crate) c_fc: Conv1D,
    pub(crate) mlp_proj: Conv1D,
}

/// GPT-2 (`GPT2Model` weight names; `transformer.` prefix accepted), final `ln_f` states `[B, L, D]`.
pub struct Gpt2 {
    pub(crate) wte: Embedding,
    pub(crate) wpe: Embedding,
    pub(crate) blocks: Vec<Gpt2Block>,
    pub(crate) ln_f: Norm,
    pub(crate) heads: usize,
}

impl Gpt2 {
    pub fn load(vb: VarBuilder, c: &Gpt2Config) -> Result<Gpt2> {
        let (d, eps) = (c.n_embd, c.layer_norm_epsilon);
        let blocks = (0..c.n_layer)
            .map(|n| {
                let b = vb.pp(format!("h.{n}"));
                Ok(Gpt2Block {
                    ln_1: Norm::layer(d, eps, b.pp("ln_1"))?,
                    c_attn: Conv1D::load(d, 3 * d, b.pp("attn.c_attn"))?,
                    attn_proj: Conv1D::load(d, d, b.pp("attn.c_proj"))?,
                    ln_2: Norm::layer(d, eps, b.pp("ln_2"))?,
                    c_fc: Conv1D::load(d, 4 * d, b.pp("mlp.c_fc"))?,
                    mlp_proj: Conv1D::load(4 * d, d, b.pp("mlp.c_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpt2 {
            wte: embedding(c.vocab_size, d, vb.pp("wte"))?,
            wpe: embedding(c.n_positions, d, vb.pp("wpe"))?,
            blocks,
            ln_f: Norm::layer(d, eps, vb.pp("ln_f"))?,
            heads: c.n_head,
        })
    }

    /// `ids` [B, L]; right padding needs no mask (causal attention never looks ahead).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let dev = ids.device();
        let pos = Tensor::arange(0u32, l as u32, dev)?;
        let mut x = self
            .wte
            .forward(ids)?
            .broadcast_add(&self.wpe.forward(&pos)?)?;
        let mask = causal_mask(l, dev)?;
        for b in &self.blocks {
            let qkv = b.c_attn.forward(&b.ln_1.forward(&x)?)?;
            // [B, L, 3 · D] as [B, L, 3, H, hd]: query, key and value rows viewed in place.
            let (bs, l, d) = (qkv.dim(0)?, qkv.dim(1)?, qkv.dim(2)? / 3);
            let qkv = qkv.reshape((bs, l, 3, self.heads, d / self.heads))?;
            let part = |k: usize| qkv.narrow(2, k, 1)?.squeeze(2);
            let ctx = attention(&part(0)?, &part(1)?, &part(2)?, &mask)?;
            x = (b.attn_proj.forward(&ctx)? + x)?;
            // GPT-2's "gelu_new" is the tanh approximation.
            let m = b.c_fc.forward(&b.ln_2.forward(&x)?)?.gelu()?;
            x = (b.mlp_proj.forward(&m)? + x)?;
        }
        self.ln_f.forward(&x)
    }
}
