//! GPT-NeoX (Pythia): partial rotary embedding, parallel residual, LayerNorm.

use super::layers::*;
use crate::lm::nets::bert::gelu;
use crate::lm::nets::gpt2::gpt2_eps;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

/// GPT-NeoX config.json fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Fraction of each head's dimensions that are rotated (Pythia: 0.25).
    #[serde(default = "quarter")]
    pub rotary_pct: f64,
    #[serde(default = "rotary_base")]
    pub rotary_emb_base: f64,
    #[serde(default = "gpt2_eps")]
    pub layer_norm_eps: f64,
    /// `x + attn(ln₁ x) + mlp(ln₂ x)` (Pythia) instead of two sequential residual blocks.
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

pub(crate) fn quarter() -> f64 {
    0.25
}

pub(crate) fn rotary_base() -> f64 {
    10000.0
}

pub(crate) fn yes() -> bool {
    true
}

pub(crate) struct NeoxLayer {
    pub(crate) ln_1: Norm,
    pub(crate) ln_2: Norm,
    pub(crate) qkv: Linear,
    pub(crate) dense: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// GPT-NeoX (`GPTNeoXModel` names under `gpt_neox.`), final `final_layer_norm` states `[B, L, D]`:
/// fused per-head `[q; k; v]` projection, rotary embedding on the first `rotary_pct` of each
/// head's dimensions (rotate-half form), parallel or sequential residual.
pub struct GptNeox {
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<NeoxLayer>,
    pub(crate) norm: Norm,
    pub(crate) heads: usize,
    pub(crate) rotary_dims: usize,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) parallel: bool,
    pub(crate) act: String,
}

impl GptNeox {
    pub fn load(vb: VarBuilder, c: &GptNeoxConfig) -> Result<GptNeox> {
        let (d, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let hd = d / c.num_attention_heads;
        check_activation(&c.hidden_act)?;
        let rotary_dims = ((hd as f64) * c.rotary_pct) as usize;
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("layers.{n}"));
                Ok(NeoxLayer {
                    ln_1: Norm::layer(d, eps, l.pp("input_layernorm"))?,
                    ln_2: Norm::layer(d, eps, l.pp("post_attention_layernorm"))?,
                    qkv: linear(d, 3 * d, true, l.pp("attention.query_key_value"))?,
                    dense: linear(d, d, true, l.pp("attention.dense"))?,
                    up: linear(d, i, true, l.pp("mlp.dense_h_to_4h"))?,
                    down: linear(i, d, true, l.pp("mlp.dense_4h_to_h"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let inv_freq = (0..rotary_dims)
            .step_by(2)
            .map(|k| (1.0 / c.rotary_emb_base.powf(k as f64 / rotary_dims as f64)) as f32)
            .collect();
        Ok(GptNeox {
            embed: embedding(c.vocab_size, d, vb.pp("embed_in"))?,
            layers,
            norm: Norm::layer(d, eps, vb.pp("final_layer_norm"))?,
            heads: c.num_attention_heads,
            rotary_dims,
            inv_freq,
            parallel: c.use_parallel_residual,
            act: c.hidden_act.clone(),
        })
    }

    /// Rotary embedding on the first `rotary_dims` of `x` [B, H, L, hd].
    pub(crate) fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.rotary_dims == 0 {
            return Ok(x.clone());
        }
        let hd = x.dim(3)?;
        let rot = candle_nn::rotary_emb::rope_slow(
            &x.narrow(3, 0, self.rotary_dims)?.contiguous()?,
            cos,
            sin,
        )?;
        if self.rotary_dims == hd {
            return Ok(rot);
        }
        Tensor::cat(
            &[&rot, &x.narrow(3, self.rotary_dims, hd - self.rotary_dims)?],
            3,
        )
    }

    /// `ids` [B, L]; right padding needs no mask (causal attention never looks ahead).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let (cos, sin) = if self.rotary_dims > 0 {
            rotary_tables(l, &self.inv_freq, dev)?
        } else {
            let z = Tensor::zeros((l, 1), DType::F32, dev)?;
            (z.clone(), z)
        };
        let mask = causal_mask(l, dev)?;
        let mut x = self.embed.forward(ids)?;
        for layer in &self.layers {
            let d = x.dim(2)?;
            let hd = d / self.heads;
            // Per head [q | k | v] (Hugging Face's view(B, L, H, 3·hd)).
            let qkv = layer
                .qkv
                .forward(&layer.ln_1.forward(&x)?)?
                .reshape((b, l, self.heads, 3 * hd))?
                .transpose(1, 2)?;
            let part = |k: usize| qkv.narrow(3, k * hd, hd)?.contiguous();
            let q = self.rotate(&part(0)?, &cos, &sin)?;
            let k = self.rotate(&part(1)?, &cos, &sin)?;
            let rows = |t: &Tensor| t.transpose(1, 2);
            let ctx = attention(&rows(&q)?, &rows(&k)?, &rows(&part(2)?)?, &mask)?;
            let attn = layer.dense.forward(&ctx)?;
            let mlp = |h: &Tensor| -> Result<Tensor> {
                layer
                    .down
                    .forward(&activation(&layer.up.forward(h)?, &self.act)?)
            };
            x = if self.parallel {
                ((mlp(&layer.ln_2.forward(&x)?)? + attn)? + x)?
            } else {
                let x1 = (attn + x)?;
                (mlp(&layer.ln_2.forward(&x1)?)? + x1)?
            };
        }
        self.norm.forward(&x)
    }
}
