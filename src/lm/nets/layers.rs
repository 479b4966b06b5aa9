//! The layers the families share: affine maps, embeddings, the norms, activations, the causal
//! mask, rotary tables and attention (fused on the CPU in f32, candle's compositions elsewhere).

use crate::lm::ops;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

/// `x wᵀ + b`: one fused op with its backward on the CPU in f32 ([`ops::affine`]), else
/// candle-nn's `Linear`.
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::fused(x) {
            return ops::affine(x, &self.weight, self.bias.as_ref());
        }
        candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
    }
}

pub(crate) fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((o, i), "weight")?;
    let bias = if bias { Some(vb.get(o, "bias")?) } else { None };
    Ok(Linear { weight, bias })
}

pub(crate) fn embedding(n: usize, d: usize, vb: VarBuilder) -> Result<Embedding> {
    Ok(Embedding::new(vb.get((n, d), "weight")?, d))
}

/// `LayerNorm` with weight and bias, differentiable (`layer_norm_slow`).
pub(crate) struct Norm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) eps: f32,
}

impl Norm {
    pub(crate) fn layer(d: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
        Ok(Norm {
            weight: vb.get(d, "weight")?,
            bias: Some(vb.get(d, "bias")?),
            eps: eps as f32,
        })
    }
    pub(crate) fn rms(d: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
        Ok(Norm {
            weight: vb.get(d, "weight")?,
            bias: None,
            eps: eps as f32,
        })
    }
    /// Differentiable: the fused kernels of [`ops`] on the CPU in f32, else candle's
    /// compositions.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.bias, ops::fused(x)) {
            (Some(b), true) => ops::layer_norm(x, &self.weight, b, self.eps),
            (Some(b), false) => candle_nn::ops::layer_norm_slow(x, &self.weight, b, self.eps),
            (None, true) => ops::rms_norm(x, &self.weight, self.eps),
            (None, false) => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps),
        }
    }
}

/// The `hidden_act` values of config.json these forwards implement.
pub(crate) const ACTIVATIONS: [&str; 5] =
    ["gelu", "relu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"];

/// Refuses a `hidden_act` outside [`ACTIVATIONS`] at load time (never a silent substitute).
pub(crate) fn check_activation(act: &str) -> Result<()> {
    if !ACTIVATIONS.contains(&act) {
        candle_core::bail!("hidden_act {act:?} is not supported (expected one of {ACTIVATIONS:?})");
    }
    Ok(())
}

/// `hidden_act`: "gelu" is the exact (erf) GELU, "relu", the others the tanh approximation.
pub(crate) fn activation(u: &Tensor, act: &str) -> Result<Tensor> {
    match act {
        "gelu" if ops::fused(u) => ops::gelu_erf(u),
        "gelu" => u.gelu_erf(),
        "relu" => u.relu(),
        _ => u.gelu(),
    }
}

/// Additive causal mask [L, L]: 0 on and below the diagonal, −∞ above.
pub(crate) fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
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
pub(crate) fn rotary_tables(l: usize, inv_freq: &[f32], dev: &Device) -> Result<(Tensor, Tensor)> {
    let theta = Tensor::arange(0u32, l as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((l, 1))?
        .matmul(&Tensor::new(inv_freq, dev)?.reshape((1, ()))?)?;
    Ok((theta.cos()?, theta.sin()?))
}

/// `[B, L, H·hd] → [B, H, L, hd]`.
pub(crate) fn heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    x.reshape((b, l, h, d / h))?.transpose(1, 2)?.contiguous()
}

/// `[…, H·hd] → […, H, hd]`, a view of the same rows.
pub(crate) fn split_heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let d = dims.pop().unwrap_or(0);
    dims.extend([h, d / h.max(1)]);
    x.reshape(dims)
}

/// `softmax(q kᵀ/√hd + mask) v` as candle ops over heads-major `q` [B, H, L, hd], `k`, `v`
/// [B, Hkv, L, hd] (repeated to every query head), heads merged back to `[B, L, H·hd]`;
/// `differentiable`: candle's softmax composition, else its inference softmax (no backward).
pub(crate) fn composed_attention(
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
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if ops::fused(q) {
        return ops::attention(q, k, v, mask);
    }
    let major = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    composed_attention(&major(q)?, &major(k)?, &major(v)?, mask, true)
}
