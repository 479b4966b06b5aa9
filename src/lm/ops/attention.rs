//! Fused attention `softmax(q kᵀ/√hd + mask) v` with its own backward (CPU, f32): one task per
//! (sequence, key/value head), each computing its heads' products serially
//! (`ndarray::linalg::general_mat_mul`, matrixmultiply's kernels), so no attention-sized tensor
//! is kept for the backward, which recomputes the probabilities from `q` and `k`.
//!
//! Why: candle's batched matmul runs one thread-parallel GEMM per (sequence, head), each a
//! product of a few dozen rows, and its autograd keeps the scores and the probabilities
//! (`B · H · L²` each) of every layer until the backward returns. Grouped-query attention reads
//! each key/value head directly (no repeated copies); the output comes merged, `[B, L, H·hd]`.
//! A task's results depend only on its inputs, so they do not depend on the thread count.

use super::slice;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

/// The sizes of one attention: `b` sequences, `h` query heads over `kv` key/value heads, `lq`
/// queries and `lk` keys per sequence, head width `hd`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    b: usize,
    h: usize,
    kv: usize,
    lq: usize,
    lk: usize,
    hd: usize,
}

impl Sizes {
    fn rep(&self) -> usize {
        self.h / self.kv
    }
}

/// The additive mask, a contiguous copy of the caller's and the strides that broadcast it to
/// `[B, H, Lq, Lk]` (0 along broadcast dimensions).
struct Mask {
    values: Vec<f32>,
    strides: [usize; 4],
}

impl Mask {
    /// Start of row `i` of head `h` of sequence `b`, and the step along keys.
    fn row(&self, b: usize, h: usize, i: usize) -> (usize, usize) {
        let s = self.strides;
        (b * s[0] + h * s[1] + i * s[2], s[3])
    }
}

struct Attention {
    sizes: Sizes,
    mask: Mask,
    scale: f32,
}

fn view(v: &[f32], rows: usize, cols: usize, row_stride: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols).strides((row_stride, 1)), v).expect("attention view")
}

fn view_mut(v: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), v).expect("attention view")
}

impl Attention {
    /// Row-wise `p = softmax(s · scale + mask)` in place over `p` [Lq, Lk] (holding `q kᵀ`), as
    /// the fused masked softmax computes it.
    fn softmax(&self, p: &mut [f32], b: usize, h: usize) {
        let lk = self.sizes.lk;
        for (i, row) in p.chunks_mut(lk).enumerate() {
            let (m0, step) = self.mask.row(b, h, i);
            let mut max = f32::NEG_INFINITY;
            for (j, d) in row.iter_mut().enumerate() {
                *d = (*d * self.scale + 0.0) + self.mask.values[m0 + j * step];
                max = max.max(*d);
            }
            let mut sum = 0f32;
            for d in row.iter_mut() {
                *d = (*d - max).exp();
                sum += *d;
            }
            for d in row.iter_mut() {
                *d /= sum;
            }
        }
    }

    /// The probabilities [Lq, Lk] of head `h` of sequence `b`, from its queries and keys.
    fn probabilities(&self, qh: &[f32], kh: &[f32], b: usize, h: usize) -> Vec<f32> {
        let Sizes { lq, lk, hd, .. } = self.sizes;
        let mut p = vec![0f32; lq * lk];
        let k = view(kh, lk, hd, hd);
        general_mat_mul(
            1.0,
            &view(qh, lq, hd, hd),
            &k.t(),
            0.0,
            &mut view_mut(&mut p, lq, lk),
        );
        self.softmax(&mut p, b, h);
        p
    }

    /// The (sequence, key/value head) task's queries and keys/values: `q` [rep, Lq, hd] of its
    /// query heads, `k`, `v` [Lk, hd].
    fn task<'a>(&self, t: usize, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> [&'a [f32]; 3] {
        let Sizes { lq, lk, hd, .. } = self.sizes;
        let (qn, kn) = (self.sizes.rep() * lq * hd, lk * hd);
        [
            &q[t * qn..(t + 1) * qn],
            &k[t * kn..(t + 1) * kn],
            &v[t * kn..(t + 1) * kn],
        ]
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            slice(s1, l1, "attention queries")?,
            slice(s2, l2, "attention keys")?,
            slice(s3, l3, "attention values")?,
        );
        let z = self.sizes;
        let (rep, hn) = (z.rep(), z.lq * z.hd);
        // Heads' outputs [B, H, Lq, hd], one chunk of `rep` heads per task.
        let mut heads = vec![0f32; z.b * z.h * hn];
        heads
            .par_chunks_mut(rep * hn)
            .enumerate()
            .for_each(|(t, out)| {
                let [qt, kt, vt] = self.task(t, q, k, v);
                let (b, g) = (t / z.kv, t % z.kv);
                for (r, out) in out.chunks_mut(hn).enumerate() {
                    let p = self.probabilities(&qt[r * hn..(r + 1) * hn], kt, b, g * rep + r);
                    general_mat_mul(
                        1.0,
                        &view(&p, z.lq, z.lk, z.lk),
                        &view(vt, z.lk, z.hd, z.hd),
                        0.0,
                        &mut view_mut(out, z.lq, z.hd),
                    );
                }
            });
        Ok((
            CpuStorage::F32(merge_heads(&heads, z)),
            Shape::from((z.b, z.lq, z.h * z.hd)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let grads = q.apply_op3_no_bwd(
            k,
            v,
            &AttentionBackward {
                forward: self,
                grad: &g,
            },
        )?;
        let z = self.sizes;
        let (nq, nk) = (z.b * z.h * z.lq * z.hd, z.b * z.kv * z.lk * z.hd);
        let part = |start, len, shape: &Shape| grads.narrow(0, start, len)?.reshape(shape);
        Ok((
            Some(part(0, nq, q.shape())?),
            Some(part(nq, nk, k.shape())?),
            Some(part(nq + nk, nk, v.shape())?),
        ))
    }
}

/// `[B, H, Lq, hd] → [B, Lq, H·hd]`, one task per sequence.
fn merge_heads(heads: &[f32], z: Sizes) -> Vec<f32> {
    let w = z.h * z.hd;
    let mut out = vec![0f32; heads.len()];
    out.par_chunks_mut(z.lq * w)
        .zip(heads.par_chunks(z.lq * w))
        .for_each(|(out, src)| {
            for (h, head) in src.chunks(z.lq * z.hd).enumerate() {
                for (i, row) in head.chunks(z.hd).enumerate() {
                    out[i * w + h * z.hd..i * w + (h + 1) * z.hd].copy_from_slice(row);
                }
            }
        });
    out
}

/// The backward of [`Attention`]: from `q`, `k`, `v` and the output's gradient, the gradients
/// `[∂q, ∂k, ∂v]` flattened into one vector (split by [`Attention::bwd`]).
struct AttentionBackward<'a> {
    forward: &'a Attention,
    grad: &'a Tensor,
}

impl CustomOp3 for AttentionBackward<'_> {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            slice(s1, l1, "attention queries")?,
            slice(s2, l2, "attention keys")?,
            slice(s3, l3, "attention values")?,
        );
        let (gs, gl) = self.grad.storage_and_layout();
        let candle_core::Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("attention backward: gradient not on the CPU")
        };
        let g = slice(gs, gl, "attention output gradient")?;
        let z = self.forward.sizes;
        let (rep, qn, kn) = (z.rep(), z.rep() * z.lq * z.hd, z.lk * z.hd);
        let mut dst = vec![0f32; z.b * z.h * z.lq * z.hd + 2 * z.b * z.kv * kn];
        let (dq, dkv) = dst.split_at_mut(z.b * z.h * z.lq * z.hd);
        let (dk, dv) = dkv.split_at_mut(z.b * z.kv * kn);
        dq.par_chunks_mut(qn)
            .zip(dk.par_chunks_mut(kn).zip(dv.par_chunks_mut(kn)))
            .enumerate()
            .for_each(|(t, (dq, (dk, dv)))| {
                let (b, grp) = (t / z.kv, t % z.kv);
                let [qt, kt, vt] = self.forward.task(t, q, k, v);
                for r in 0..rep {
                    let h = grp * rep + r;
                    let at = b * z.lq * z.h * z.hd + h * z.hd;
                    let go = view(&g[at..], z.lq, z.hd, z.h * z.hd);
                    let rows = r * z.lq * z.hd..(r + 1) * z.lq * z.hd;
                    let heads = Head {
                        q: &qt[rows.clone()],
                        k: kt,
                        v: vt,
                    };
                    self.head(heads, go, b, h, &mut dq[rows], dk, dv);
                }
            });
        Ok((CpuStorage::F32(dst), Shape::from(dst_len(z))))
    }
}

fn dst_len(z: Sizes) -> usize {
    z.b * z.h * z.lq * z.hd + 2 * z.b * z.kv * z.lk * z.hd
}

/// One query head's inputs: `q` [Lq, hd], its key/value head's `k`, `v` [Lk, hd].
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl AttentionBackward<'_> {
    /// One head's backward: `∂v += pᵀ g`, `∂p = g vᵀ`, `∂s = p ∘ (∂p − Σ_j ∂p_j p_j) · scale`
    /// (as the fused softmax's backward), `∂q = ∂s k`, `∂k += ∂sᵀ q`.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        x: Head,
        go: ArrayView2<f32>,
        b: usize,
        h: usize,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let z = self.forward.sizes;
        let p = self.forward.probabilities(x.q, x.k, b, h);
        let pv = view(&p, z.lq, z.lk, z.lk);
        general_mat_mul(1.0, &pv.t(), &go, 1.0, &mut view_mut(dv, z.lk, z.hd));
        let mut ds = vec![0f32; z.lq * z.lk];
        let vv = view(x.v, z.lk, z.hd, z.hd);
        general_mat_mul(1.0, &go, &vv.t(), 0.0, &mut view_mut(&mut ds, z.lq, z.lk));
        for (d, y) in ds.chunks_mut(z.lk).zip(p.chunks(z.lk)) {
            let dot: f32 = y.iter().zip(d.iter()).map(|(y, g)| y * g).sum();
            for (d, y) in d.iter_mut().zip(y) {
                *d = y * (*d - dot) * self.forward.scale;
            }
        }
        let dsv = view(&ds, z.lq, z.lk, z.lk);
        let (kv, qv) = (view(x.k, z.lk, z.hd, z.hd), view(x.q, z.lq, z.hd, z.hd));
        general_mat_mul(1.0, &dsv, &kv, 0.0, &mut view_mut(dq, z.lq, z.hd));
        general_mat_mul(1.0, &dsv.t(), &qv, 1.0, &mut view_mut(dk, z.lk, z.hd));
    }
}

/// `softmax(q kᵀ/√hd + mask) v` with heads merged, `[B, Lq, H·hd]`: `q` [B, H, Lq, hd], `k`
/// and `v` [B, Hkv, Lk, hd] with `Hkv` dividing `H` (query head `h` reads key/value head
/// `h / (H/Hkv)`), `mask` broadcastable to [B, H, Lq, Lk]. Gradients to `q`, `k`, `v`. The
/// scale is `(1/√hd) as f32`, as [`super::masked_softmax`]'s.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, h, lq, hd) = q.dims4()?;
    let (bk, kv, lk, hdk) = k.dims4()?;
    if bk != b || hdk != hd || kv == 0 || h % kv != 0 || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let sizes = Sizes {
        b,
        h,
        kv,
        lq,
        lk,
        hd,
    };
    let values = mask.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let wide = mask.contiguous()?.broadcast_as((b, h, lq, lk))?;
    let s = wide.stride();
    let op = Attention {
        sizes,
        mask: Mask {
            values,
            strides: [s[0], s[1], s[2], s[3]],
        },
        scale: (1.0 / (hd as f64).sqrt()) as f32,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
