//! Differentiable forwards of the model families for full fine-tuning (MATH.md §6): BERT,
//! Llama, Qwen2 (Llama with q/k/v biases), GPT-2 and GPT-NeoX (Pythia).
//!
//! candle-nn 0.11's fused `layer_norm`, `rms_norm`, `softmax_last_dim` and `rope` record no
//! backward op (candle issues #2168, #3011): the models of candle-transformers run forward
//! correctly but a loss's gradient stops at their first norm, so a "full" fine-tuning of them
//! would silently train only what sits after the last one. These re-implementations use only
//! differentiable ops (`layer_norm_slow`, `rms_norm_slow`, `softmax`, `rope_slow`) or, on the
//! CPU in f32, the fused kernels of [`super::ops`] that record their own backward (attention's
//! masked softmax, RMSNorm, LayerNorm, rotary, `silu(g)·u`, exact GELU: the same formulas, one
//! pass each, far fewer tensors kept for the backward). They read the same Hugging Face weight
//! names, and are checked against candle-transformers' forward in
//! `tests/lm.rs` and `tests/lm_tiny.rs`, and against `transformers`' logits on the fixtures of
//! `tests/fixtures/reference` (`tests/lm_reference.rs`). GPT-2, GPT-NeoX and Qwen2 are served by
//! these forwards in both modes.

use super::ops;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

/// `x wᵀ + b`: one fused op with its backward on the CPU in f32 ([`ops::affine`]), else
/// candle-nn's `Linear`.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::fused(x) {
            return ops::affine(x, &self.weight, self.bias.as_ref());
        }
        candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((o, i), "weight")?;
    let bias = if bias { Some(vb.get(o, "bias")?) } else { None };
    Ok(Linear { weight, bias })
}

fn embedding(n: usize, d: usize, vb: VarBuilder) -> Result<Embedding> {
    Ok(Embedding::new(vb.get((n, d), "weight")?, d))
}

/// `LayerNorm` with weight and bias, differentiable (`layer_norm_slow`).
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f32,
}

impl Norm {
    fn layer(d: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
        Ok(Norm {
            weight: vb.get(d, "weight")?,
            bias: Some(vb.get(d, "bias")?),
            eps: eps as f32,
        })
    }
    fn rms(d: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
        Ok(Norm {
            weight: vb.get(d, "weight")?,
            bias: None,
            eps: eps as f32,
        })
    }
    /// Differentiable: the fused kernels of [`ops`] on the CPU in f32, else candle's
    /// compositions.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.bias, ops::fused(x)) {
            (Some(b), true) => ops::layer_norm(x, &self.weight, b, self.eps),
            (Some(b), false) => candle_nn::ops::layer_norm_slow(x, &self.weight, b, self.eps),
            (None, true) => ops::rms_norm(x, &self.weight, self.eps),
            (None, false) => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps),
        }
    }
}

/// Which kernels a forward uses: the differentiable compositions (training), or candle's fused
/// norm, rotary and softmax kernels (no backward; equal up to f32 rounding), for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Differentiable,
    Fused,
}

impl Kernels {
    fn norm(self, n: &Norm, x: &Tensor) -> Result<Tensor> {
        match (self, &n.bias) {
            (Kernels::Differentiable, _) => n.forward(x),
            (Kernels::Fused, Some(b)) => candle_nn::ops::layer_norm(x, &n.weight, b, n.eps),
            (Kernels::Fused, None) => candle_nn::ops::rms_norm(x, &n.weight, n.eps),
        }
    }

    fn rope(self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self {
            Kernels::Differentiable if ops::fused(x) => ops::rope(x, cos, sin),
            Kernels::Differentiable => candle_nn::rotary_emb::rope_slow(x, cos, sin),
            Kernels::Fused => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }

    /// `softmax(q kᵀ/√hd + mask) v` of heads-major `q` [B, H, L, hd], `k`, `v` [B, Hkv, L, hd],
    /// heads merged back to `[B, L, H·hd]`.
    fn attention(self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if self == Kernels::Differentiable || ops::fused(q) {
            let rows = |t: &Tensor| t.transpose(1, 2);
            return attention(&rows(q)?, &rows(k)?, &rows(v)?, mask);
        }
        composed_attention(q, k, v, mask, false)
    }
}

/// The `hidden_act` values of config.json these forwards implement.
const ACTIVATIONS: [&str; 5] = ["gelu", "relu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"];

/// Refuses a `hidden_act` outside [`ACTIVATIONS`] at load time (never a silent substitute).
fn check_activation(act: &str) -> Result<()> {
    if !ACTIVATIONS.contains(&act) {
        candle_core::bail!("hidden_act {act:?} is not supported (expected one of {ACTIVATIONS:?})");
    }
    Ok(())
}

/// `hidden_act`: "gelu" is the exact (erf) GELU, "relu", the others the tanh approximation.
fn activation(u: &Tensor, act: &str) -> Result<Tensor> {
    match act {
        "gelu" if ops::fused(u) => ops::gelu_erf(u),
        "gelu" => u.gelu_erf(),
        "relu" => u.relu(),
        _ => u.gelu(),
    }
}

/// Additive causal mask [L, L]: 0 on and below the diagonal, −∞ above.
fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..l * l)
        .map(|k| {
            if k % l > k / l {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (l, l), device)
}

/// Rotary tables `cos θ`, `sin θ` [L, F] with `θ_{p,f} = p · inv_freq_f`, positions `0..L`.
fn rotary_tables(l: usize, inv_freq: &[f32], dev: &Device) -> Result<(Tensor, Tensor)> {
    let theta = Tensor::arange(0u32, l as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((l, 1))?
        .matmul(&Tensor::new(inv_freq, dev)?.reshape((1, ()))?)?;
    Ok((theta.cos()?, theta.sin()?))
}

/// `[B, L, H·hd] → [B, H, L, hd]`.
fn heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    x.reshape((b, l, h, d / h))?.transpose(1, 2)?.contiguous()
}

/// `[…, H·hd] → […, H, hd]`, a view of the same rows.
fn split_heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let d = dims.pop().unwrap_or(0);
    dims.extend([h, d / h.max(1)]);
    x.reshape(dims)
}

/// `softmax(q kᵀ/√hd + mask) v` as candle ops over heads-major `q` [B, H, L, hd], `k`, `v`
/// [B, Hkv, L, hd] (repeated to every query head), heads merged back to `[B, L, H·hd]`;
/// `differentiable`: candle's softmax composition, else its fused softmax (no backward).
fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    differentiable: bool,
) -> Result<Tensor> {
    let (b, h, l, hd) = q.dims4()?;
    let rep = h / k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k.contiguous()?, rep)?;
    let v = candle_transformers::utils::repeat_kv(v.contiguous()?, rep)?;
    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
    let att = if differentiable {
        candle_nn::ops::softmax(&att, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    att.matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, l, h * hd))
}

/// `softmax(q kᵀ/√hd + mask) v` of `q` [B, L, H, hd], `k`, `v` [B, L, Hkv, hd] (any views),
/// heads merged back to `[B, L, H·hd]`, differentiable: one fused op with its backward on the
/// CPU that reads the views in place ([`ops::attention`]), else candle's composition.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if ops::fused(q) {
        return ops::attention(q, k, v, mask);
    }
    let major = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    composed_attention(&major(q)?, &major(k)?, &major(v)?, mask, true)
}

// ---------------------------------------------------------------- BERT

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
fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

struct BertLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// BERT encoder (`BertModel` without pooler), final hidden states `[B, L, D]`.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    norm: Norm,
    layers: Vec<BertLayer>,
    heads: usize,
    act: String,
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
    fn last_layer_at(
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
    fn embed(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
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
    fn embed_rows(&self, ids: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let x = ((self.words.forward(ids)? + self.positions.forward(pos)?)?
            .broadcast_add(&self.types.forward(&ids.zeros_like()?)?))?;
        self.norm.forward(&x)
    }
}

/// How a layer's rows form sequences: a padded batch `[B, L, ·]` under an additive key mask,
/// or a packed one `[T, ·]` with each sequence's query and key rows ([`ops::attention_packed`]).
#[derive(Clone, Copy)]
enum Batch<'a> {
    Padded(&'a Tensor),
    Packed(&'a [ops::Span]),
}

impl BertLayer {
    /// One encoder layer at the rows `xq` (queries and everything after the attention), its
    /// keys and values at every row of `x`; `xq = x` is the whole layer.
    fn forward(
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

// ---------------------------------------------------------------- Llama

struct LlamaLayer {
    norm1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm2: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Llama decoder (Hugging Face `LlamaModel` names), final normed hidden states `[B, L, D]`;
/// with `qkv_bias` the Qwen2 decoder (`Qwen2Model`: the same names, biases on q, k, v).
pub struct Llama {
    embed: Embedding,
    layers: Vec<LlamaLayer>,
    norm: Norm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Rotary inverse frequencies (with Llama-3 scaling when configured).
    inv_freq: Vec<f32>,
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
        let kernels = Kernels::Differentiable;
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
    fn qkv(
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
    fn output_and_mlp(
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
    /// of its continuations) or fused (scoring without a gradient; equal up to f32 rounding).
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
fn prompt_group_masks(
    pad: &[usize],
    p: usize,
    c: usize,
    group: &[u32],
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let hidden = f32::NEG_INFINITY;
    let mut mp = vec![0f32; pad.len() * p * p];
    for (g, &lead) in pad.iter().enumerate() {
        for i in 0..p {
            for j in 0..p {
                if j > i || (j < lead && j != i) {
                    mp[(g * p + i) * p + j] = hidden;
                }
            }
        }
    }
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
        Tensor::from_vec(mp, (pad.len(), 1, p, p), dev)?,
        Tensor::from_vec(mc, (group.len(), 1, c, w), dev)?,
    ))
}

// ---------------------------------------------------------------- GPT-2

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
fn gpt2_eps() -> f64 {
    1e-5
}

/// Hugging Face `Conv1D`: `y = x W + b` with `W` stored `[in, out]`.
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn load(i: usize, o: usize, vb: VarBuilder) -> Result<Conv1D> {
        Ok(Conv1D {
            weight: vb.get((i, o), "weight")?,
            bias: vb.get(o, "bias")?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct Gpt2Block {
    ln_1: Norm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: Norm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// GPT-2 (`GPT2Model` weight names; `transformer.` prefix accepted), final `ln_f` states `[B, L, D]`.
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Gpt2Block>,
    ln_f: Norm,
    heads: usize,
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

// ---------------------------------------------------------------- GPT-NeoX (Pythia)

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
fn quarter() -> f64 {
    0.25
}
fn rotary_base() -> f64 {
    10000.0
}
fn yes() -> bool {
    true
}

struct NeoxLayer {
    ln_1: Norm,
    ln_2: Norm,
    qkv: Linear,
    dense: Linear,
    up: Linear,
    down: Linear,
}

/// GPT-NeoX (`GPTNeoXModel` names under `gpt_neox.`), final `final_layer_norm` states `[B, L, D]`:
/// fused per-head `[q; k; v]` projection, rotary embedding on the first `rotary_pct` of each
/// head's dimensions (rotate-half form), parallel or sequential residual.
pub struct GptNeox {
    embed: Embedding,
    layers: Vec<NeoxLayer>,
    norm: Norm,
    heads: usize,
    rotary_dims: usize,
    inv_freq: Vec<f32>,
    parallel: bool,
    act: String,
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
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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
