//! Incremental decoding of the Llama / Qwen2 forward: each layer's keys and values kept, so a
//! new token costs one position, not the whole sequence (inference kernels, no gradient).
//! Prompts of several lengths are left-padded to one; padding is masked as a key, and rotary
//! attention depends on relative positions only, so the states equal [`Llama::forward`]'s of
//! each unpadded sequence up to f32 rounding (checked in `tests/lm_cycle.rs`).

use super::kernels::Kernels;
use super::layers::rotary_tables;
use super::llama::{prefix_mask, Llama};
use candle_core::{Result, Tensor};
use candle_nn::Module;

/// The keys and values of every layer so far (`[B, Hkv, L, hd]` each), the padding before each
/// row and the length `L`. A clone shares the tensors it holds (a step appends by concatenating,
/// never in place), so one prefill can start two decodings.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    pad: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// Positions held (the padded prompt length plus the tokens decoded).
    pub fn positions(&self) -> usize {
        self.len
    }

    /// The additive key mask `[B, 1, 1, L]` of a query at the next position: each row's
    /// padding hidden.
    fn mask(&self, dev: &candle_core::Device) -> Result<Tensor> {
        let l = self.len + 1;
        let mut m = vec![0f32; self.pad.len() * l];
        for (r, &lead) in self.pad.iter().enumerate() {
            m[r * l..r * l + lead].fill(f32::NEG_INFINITY);
        }
        Tensor::from_vec(m, (self.pad.len(), 1, 1, l), dev)
    }
}

impl Llama {
    /// The prompts `prefix` [B, P] (left-padded, `pad[b]` padding positions before row `b`):
    /// the final hidden state at each row's last position [B, D] and the cache.
    pub fn prefill(&self, prefix: &Tensor, pad: &[usize]) -> Result<(Tensor, KvCache)> {
        let (_, p) = prefix.dims2()?;
        let dev = prefix.device();
        let k = Kernels::Inference;
        let (cos, sin) = rotary_tables(p, &self.inv_freq, dev)?;
        let mask = prefix_mask(pad, p, dev)?;
        let mut x = self.embed.forward(prefix)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (q, kk, v) = self.qkv(layer, &x, &cos, &sin, k)?;
            let ctx = k.attention(&q, &kk, &v, &mask)?;
            x = self.output_and_mlp(layer, &ctx, &x, k)?;
            layers.push((kk, v));
        }
        let h = k
            .norm(&self.norm, &x.narrow(1, p - 1, 1)?.contiguous()?)?
            .squeeze(1)?;
        let cache = KvCache {
            layers,
            pad: pad.to_vec(),
            len: p,
        };
        Ok((h, cache))
    }

    /// One new token per row, `next` `[B]`: the final hidden states at its position `[B, D]`; its
    /// keys and values join `cache`.
    pub fn decode_step(&self, next: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let dev = next.device();
        let k = Kernels::Inference;
        let pos = cache.len;
        let (cos, sin) = rotary_tables(pos + 1, &self.inv_freq, dev)?;
        let row = |t: &Tensor| t.narrow(0, pos, 1)?.contiguous();
        let (cos, sin) = (row(&cos)?, row(&sin)?);
        let mask = cache.mask(dev)?;
        let mut x = self.embed.forward(&next.unsqueeze(1)?)?;
        for (layer, (kc, vc)) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let (q, kk, v) = self.qkv(layer, &x, &cos, &sin, k)?;
            let k_all = Tensor::cat(&[&*kc, &kk], 2)?.contiguous()?;
            let v_all = Tensor::cat(&[&*vc, &v], 2)?.contiguous()?;
            let ctx = k.attention(&q, &k_all, &v_all, &mask)?;
            x = self.output_and_mlp(layer, &ctx, &x, k)?;
            (*kc, *vc) = (k_all, v_all);
        }
        cache.len += 1;
        k.norm(&self.norm, &x)?.squeeze(1)
    }
}
