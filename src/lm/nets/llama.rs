//! Llama and Qwen2 (Llama with q/k/v biases): RMSNorm, rotary embedding, grouped-query
//! attention, the gated MLP; prompt-group forwards share a prompt's keys and values.

use super::kernels::Kernels;
use super::layers::*;
use crate::lm::ops;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

pub(crate) struct LlamaLayer {
    pub(crate) norm1: Norm,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) norm2: Norm,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// Llama decoder (Hugging Face `LlamaModel` names), final normed hidden states `[B, L, D]`;
/// with `qkv_bias` the Qwen2 decoder (`Qwen2Model`: the same names, biases on q, k, v).
pub struct Llama {
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<LlamaLayer>,
    pub(crate) norm: Norm,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Rotary inverse frequencies (with Llama-3 scaling when configured).
    pub(crate) inv_freq: Vec<f32>,
}

impl Llama {
    pub fn load(
        vb: VarBuilder,
        c: &candle_transformers::models::llama::Config,
        qkv_bias: bool,
    ) -> Result<Llama> {
        let (d, i, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps);
        let hd = d / c.num_attention_heads;
        let kv = c.num_key_value_heads * hd;
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("model.layers.{n}"));
                Ok(LlamaLayer {
                    norm1: Norm::rms(d, eps, l.pp("input_layernorm"))?,
                    q: linear(d, d, qkv_bias, l.pp("self_attn.q_proj"))?,
                    k: linear(d, kv, qkv_bias, l.pp("self_attn.k_proj"))?,
                    v: linear(d, kv, qkv_bias, l.pp("self_attn.v_proj"))?,
                    o: linear(d, d, false, l.pp("self_attn.o_proj"))?,
                    norm2: Norm::rms(d, eps, l.pp("post_attention_layernorm"))?,
                    gate: linear(d, i, false, l.pp("mlp.gate_proj"))?,
                    up: linear(d, i, false, l.pp("mlp.up_proj"))?,
                    down: linear(i, d, false, l.pp("mlp.down_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let base: Vec<f32> = (0..hd)
            .step_by(2)
            .map(|k| 1.0 / c.rope_theta.powf(k as f32 / hd as f32))
            .collect();
        let inv_freq = match &c.rope_scaling {
            Some(s)
                if !matches!(
                    s.rope_type,
                    candle_transformers::models::llama::Llama3RopeType::Default
                ) =>
            {
                let orig = s.original_max_position_embeddings as f32;
                let (low, high) = (orig / s.low_freq_factor, orig / s.high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high {
                            f
                        } else if wavelen > low {
                            f / s.factor
                        } else {
                            let smooth = (orig / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        };
        Ok(Llama {
            embed: embedding(c.vocab_size, d, vb.pp("model.embed_tokens"))?,
            layers,
            norm: Norm::rms(d, eps, vb.pp("model.norm"))?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
            inv_freq,
        })
    }

    /// `ids` [B, L]; right padding needs no mask (causal attention never looks ahead).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let (cos, sin) = rotary_tables(l, &self.inv_freq, dev)?;
        let mask = causal_mask(l, dev)?;
        let kernels = Kernels::Autograd;
        let mut x = self.embed.forward(ids)?;
        for layer in &self.layers {
            let (q, k, v) = self.qkv(layer, &x, &cos, &sin, kernels)?;
            let ctx = kernels.attention(&q, &k, &v, &mask)?;
            debug_assert_eq!(ctx.dims3()?, (b, l, self.heads * self.head_dim));
            x = self.output_and_mlp(layer, &ctx, &x, kernels)?;
        }
        kernels.norm(&self.norm, &x)
    }

    /// A layer's queries, keys and values of `x` (rotated; `kv_heads` key/value heads).
    pub(crate) fn qkv(
        &self,
        layer: &LlamaLayer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kernels: Kernels,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h = kernels.norm(&layer.norm1, x)?;
        let q = heads(&layer.q.forward(&h)?, self.heads)?;
        let k = heads(&layer.k.forward(&h)?, self.kv_heads)?;
        let v = heads(&layer.v.forward(&h)?, self.kv_heads)?;
        Ok((kernels.rope(&q, cos, sin)?, kernels.rope(&k, cos, sin)?, v))
    }

    /// The rest of a layer after attention: output projection and residual, then the gated MLP
    /// and its residual.
    pub(crate) fn output_and_mlp(
        &self,
        layer: &LlamaLayer,
        ctx: &Tensor,
        x: &Tensor,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let x = (layer.o.forward(ctx)? + x)?;
        let h = kernels.norm(&layer.norm2, &x)?;
        let (gate, up) = (layer.gate.forward(&h)?, layer.up.forward(&h)?);
        let m = if ops::fused(&gate) {
            ops::silu_gate(&gate, &up)?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        layer.down.forward(&m)? + x
    }

    /// Final hidden states of sequences that share prefixes, each prefix computed once and its
    /// keys and values given to all of its continuations. `prefix` [G, P] holds the prefixes
    /// left-padded to one length, `pad[g]` padding positions before prefix `g`; `cont` [N, C] the
    /// continuations and `group[n]` the prefix of each. Padding is masked as a key (a padding
    /// query sees only itself, so no row is all `−∞`). Rotary attention depends on relative
    /// positions only, so a prefix shifted right by its padding gives the same states up to f32
    /// rounding; every prefix ends at `P − 1` and every continuation starts at `P`. The
    /// prefixes' states [G, P, D] and the continuations' [N, C, D], equal to [`Llama::forward`]
    /// of each `prefix ++ cont` (checked in `tests/lm_cycle.rs` and `tests/lm_recipe.rs`).
    /// `kernels`: differentiable (a training step: the gradient reaches each prefix through all
    /// of its continuations) or inference kernels (scoring without a gradient; equal up to f32 rounding).
    pub fn forward_prompt_groups(
        &self,
        prefix: &Tensor,
        pad: &[usize],
        cont: &Tensor,
        group: &[u32],
        kernels: Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let (g, p) = prefix.dims2()?;
        let (n, c) = cont.dims2()?;
        let dev = cont.device();
        let (cos, sin) = rotary_tables(p + c, &self.inv_freq, dev)?;
        let part = |t: &Tensor, start, len| t.narrow(0, start, len)?.contiguous();
        let (cos_p, sin_p) = (part(&cos, 0, p)?, part(&sin, 0, p)?);
        let (cos_c, sin_c) = (part(&cos, p, c)?, part(&sin, p, c)?);
        let (mask_p, mask_c) = prompt_group_masks(pad, p, c, group, dev)?;
        let group = Tensor::new(group, dev)?;
        let (mut xp, mut xc) = (self.embed.forward(prefix)?, self.embed.forward(cont)?);
        for layer in &self.layers {
            let (qp, kp, vp) = self.qkv(layer, &xp, &cos_p, &sin_p, kernels)?;
            let (qc, kc, vc) = self.qkv(layer, &xc, &cos_c, &sin_c, kernels)?;
            let ctx_p = kernels.attention(&qp, &kp, &vp, &mask_p)?;
            let own = |t: &Tensor| -> Result<Tensor> {
                if g == 1 {
                    t.broadcast_as((n, self.kv_heads, p, self.head_dim))
                } else {
                    t.index_select(&group, 0)
                }
            };
            // `cat` along a later dimension leaves a layout the batched matmul refuses.
            let k_all = Tensor::cat(&[&own(&kp)?, &kc], 2)?.contiguous()?;
            let v_all = Tensor::cat(&[&own(&vp)?, &vc], 2)?.contiguous()?;
            let ctx_c = kernels.attention(&qc, &k_all, &v_all, &mask_c)?;
            xp = self.output_and_mlp(layer, &ctx_p, &xp, kernels)?;
            xc = self.output_and_mlp(layer, &ctx_c, &xc, kernels)?;
        }
        Ok((
            kernels.norm(&self.norm, &xp)?,
            kernels.norm(&self.norm, &xc)?,
        ))
    }
}

/// The additive masks of [`Llama::forward_prompt_groups`]: the prefixes' [G, 1, P, P] (causal;
/// padding keys hidden from real queries) and the continuations' [N, 1, C, P + C] (their
/// prefix's real positions, then causal among themselves).
pub(crate) fn prompt_group_masks(
    pad: &[usize],
    p: usize,
    c: usize,
    group: &[u32],
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let hidden = f32::NEG_INFINITY;
    let w = p + c;
    let mut mc = vec![0f32; group.len() * c * w];
    for (r, &g) in group.iter().enumerate() {
        let lead = pad[g as usize];
        for i in 0..c {
            for j in 0..w {
                if j < lead || j > p + i {
                    mc[(r * c + i) * w + j] = hidden;
                }
            }
        }
    }
    Ok((
        prefix_mask(pad, p, dev)?,
        Tensor::from_vec(mc, (group.len(), 1, c, w), dev)?,
    ))
}

/// The additive mask [G, 1, P, P] of left-padded prefixes (`pad[g]` padding positions before
/// prefix `g`): causal, padding keys hidden from real queries (a padding query sees only itself,
/// so no row is all `−∞`).
pub(crate) fn prefix_mask(pad: &[usize], p: usize, dev: &Device) -> Result<Tensor> {
    let mut mp = vec![0f32; pad.len() * p * p];
    for (g, &lead) in pad.iter().enumerate() {
        for i in 0..p {
            for j in 0..p {
                if j > i || (j < lead && j != i) {
                    mp[(g * p + i) * p + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_vec(mp, (pad.len(), 1, p, p), dev)
}
