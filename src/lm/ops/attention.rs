//! Fused attention `softmax(q kᵀ/√hd + mask) v` with its own backward (CPU, f32): one task per
//! (sequence, key/value head), each computing its heads' products serially
//! (`ndarray::linalg::general_mat_mul`, matrixmultiply's kernels), so no attention-sized tensor
//! is kept for the backward, which recomputes the probabilities from `q` and `k`.
//!
//! Why: candle's batched matmul runs one thread-parallel GEMM per (sequence, head), each a
//! product of a few dozen rows, and its autograd keeps the scores and the probabilities
//! (`B · H · L²` each) of every layer until the backward returns. Grouped-query attention reads
//! each key/value head directly (no repeated copies); the output comes merged, `[B, L, H·hd]`.
//! The operands are read in place through their strides (`[B, L, heads, hd]` views), so the
//! projections' rows need no copy into heads-major order. A task's results depend only on its
//! inputs, so they do not depend on the thread count.

use super::slice;
use candle_core::backend::BackendStorage;
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

/// Where the rows of a `[B, L, heads, hd]` operand lie in its storage: element `(s, i, h, c)`
/// at `offset + s·seq + i·row + h·head + c`.
#[derive(Debug, Clone, Copy)]
struct Strides {
    offset: usize,
    seq: usize,
    row: usize,
    head: usize,
}

/// An operand's storage and strides; its last dimension must be contiguous.
fn operand<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<(&'a [f32], Strides)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("attention {what}: f32 expected, got {:?}", s.dtype())
    };
    match *l.stride() {
        [seq, row, head, 1] => Ok((
            v.as_slice(),
            Strides {
                offset: l.start_offset(),
                seq,
                row,
                head,
            },
        )),
        _ => candle_core::bail!("attention {what}: [B, L, H, hd] with contiguous hd expected"),
    }
}

/// Head `h` of sequence `s` of an operand, `[rows, hd]`.
fn head<'a>(v: &'a [f32], at: Strides, s: usize, h: usize, rows: usize, hd: usize) -> View<'a> {
    let start = at.offset + s * at.seq + h * at.head;
    ArrayView2::from_shape((rows, hd).strides((at.row, 1)), &v[start..]).expect("attention head")
}

type View<'a> = ArrayView2<'a, f32>;

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

fn view_mut(v: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), v).expect("attention view")
}

fn contiguous(v: &[f32], rows: usize, cols: usize) -> View<'_> {
    ArrayView2::from_shape((rows, cols), v).expect("attention view")
}

/// A task's operands: the queries, keys and values with their strides.
#[derive(Clone, Copy)]
struct Operands<'a> {
    q: (&'a [f32], Strides),
    k: (&'a [f32], Strides),
    v: (&'a [f32], Strides),
}

impl<'a> Operands<'a> {
    fn of(
        (s1, l1): (&'a CpuStorage, &Layout),
        (s2, l2): (&'a CpuStorage, &Layout),
        (s3, l3): (&'a CpuStorage, &Layout),
    ) -> Result<Operands<'a>> {
        Ok(Operands {
            q: operand(s1, l1, "queries")?,
            k: operand(s2, l2, "keys")?,
            v: operand(s3, l3, "values")?,
        })
    }
}

impl Attention {
    /// Row-wise `p = softmax(s · scale + mask)` in place over `p` [Lq, Lk] (holding `q kᵀ`), as
    /// candle's `softmax(s / √hd + mask)` computes it.
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

    /// Query head `h` of sequence `b`, its key and value heads, `[L, hd]` each.
    fn heads<'a>(&self, x: Operands<'a>, b: usize, h: usize) -> [View<'a>; 3] {
        let Sizes { lq, lk, hd, .. } = self.sizes;
        let g = h / self.sizes.rep();
        [
            head(x.q.0, x.q.1, b, h, lq, hd),
            head(x.k.0, x.k.1, b, g, lk, hd),
            head(x.v.0, x.v.1, b, g, lk, hd),
        ]
    }

    /// The probabilities [Lq, Lk] of head `h` of sequence `b`, from its queries and keys.
    fn probabilities(&self, q: &View, k: &View, b: usize, h: usize) -> Vec<f32> {
        let Sizes { lq, lk, .. } = self.sizes;
        let mut p = vec![0f32; lq * lk];
        general_mat_mul(1.0, q, &k.t(), 0.0, &mut view_mut(&mut p, lq, lk));
        self.softmax(&mut p, b, h);
        p
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
        let x = Operands::of((s1, l1), (s2, l2), (s3, l3))?;
        let z = self.sizes;
        let (rep, hn) = (z.rep(), z.lq * z.hd);
        // Heads' outputs [B, H, Lq, hd], one chunk of `rep` heads per task.
        let mut heads = vec![0f32; z.b * z.h * hn];
        heads
            .par_chunks_mut(rep * hn)
            .enumerate()
            .for_each(|(t, out)| {
                let (b, g) = (t / z.kv, t % z.kv);
                for (r, out) in out.chunks_mut(hn).enumerate() {
                    let h = g * rep + r;
                    let [q, k, v] = self.heads(x, b, h);
                    let p = self.probabilities(&q, &k, b, h);
                    let out = &mut view_mut(out, z.lq, z.hd);
                    general_mat_mul(1.0, &contiguous(&p, z.lq, z.lk), &v, 0.0, out);
                }
            });
        Ok((
            CpuStorage::F32(merge_heads(&heads, z.h, z.lq, z.hd)),
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

/// `[B, n, L, hd] → [B, L, n, hd]` (heads merged: `[B, L, n·hd]`), one task per sequence.
fn merge_heads(heads: &[f32], n: usize, l: usize, hd: usize) -> Vec<f32> {
    let w = n * hd;
    let mut out = vec![0f32; heads.len()];
    out.par_chunks_mut(l * w)
        .zip(heads.par_chunks(l * w))
        .for_each(|(out, src)| {
            for (h, head) in src.chunks(l * hd).enumerate() {
                for (i, row) in head.chunks(hd).enumerate() {
                    out[i * w + h * hd..i * w + (h + 1) * hd].copy_from_slice(row);
                }
            }
        });
    out
}

/// The backward of [`Attention`]: from `q`, `k`, `v` and the output's gradient, the gradients
/// `[∂q, ∂k, ∂v]`, each `[B, L, heads, hd]` contiguous, flattened into one vector (split by
/// [`Attention::bwd`]).
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
        let x = Operands::of((s1, l1), (s2, l2), (s3, l3))?;
        let (gs, gl) = self.grad.storage_and_layout();
        let candle_core::Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("attention backward: gradient not on the CPU")
        };
        let g = slice(gs, gl, "attention output gradient")?;
        let z = self.forward.sizes;
        let (rep, hn, kn) = (z.rep(), z.lq * z.hd, z.lk * z.hd);
        // Heads-major [B, H, Lq, hd] and [B, Hkv, Lk, hd], one chunk per task.
        let mut dq = vec![0f32; z.b * z.h * hn];
        let (mut dk, mut dv) = (vec![0f32; z.b * z.kv * kn], vec![0f32; z.b * z.kv * kn]);
        dq.par_chunks_mut(rep * hn)
            .zip(dk.par_chunks_mut(kn).zip(dv.par_chunks_mut(kn)))
            .enumerate()
            .for_each(|(t, (dq, (dk, dv)))| {
                let (b, grp) = (t / z.kv, t % z.kv);
                for (r, dq) in dq.chunks_mut(hn).enumerate() {
                    let h = grp * rep + r;
                    let at = b * z.lq * z.h * z.hd + h * z.hd;
                    let go =
                        ArrayView2::from_shape((z.lq, z.hd).strides((z.h * z.hd, 1)), &g[at..])
                            .expect("attention gradient head");
                    self.head(self.forward.heads(x, b, h), go, (b, h), [dq, dk, dv]);
                }
            });
        let mut dst = merge_heads(&dq, z.h, z.lq, z.hd);
        dst.extend(merge_heads(&dk, z.kv, z.lk, z.hd));
        dst.extend(merge_heads(&dv, z.kv, z.lk, z.hd));
        let n = dst.len();
        Ok((CpuStorage::F32(dst), Shape::from(n)))
    }
}

impl AttentionBackward<'_> {
    /// One head's backward: `∂v += pᵀ g`, `∂p = g vᵀ`, `∂s = p ∘ (∂p − Σ_j ∂p_j p_j) · scale`
    /// (candle's softmax backward), `∂q = ∂s k`, `∂k += ∂sᵀ q`.
    fn head(&self, [q, k, v]: [View; 3], go: View, (b, h): (usize, usize), out: [&mut [f32]; 3]) {
        let z = self.forward.sizes;
        let [dq, dk, dv] = out;
        let p = self.forward.probabilities(&q, &k, b, h);
        let pv = contiguous(&p, z.lq, z.lk);
        general_mat_mul(1.0, &pv.t(), &go, 1.0, &mut view_mut(dv, z.lk, z.hd));
        let mut ds = vec![0f32; z.lq * z.lk];
        general_mat_mul(1.0, &go, &v.t(), 0.0, &mut view_mut(&mut ds, z.lq, z.lk));
        for (d, y) in ds.chunks_mut(z.lk).zip(p.chunks(z.lk)) {
            let dot: f32 = y.iter().zip(d.iter()).map(|(y, g)| y * g).sum();
            for (d, y) in d.iter_mut().zip(y) {
                *d = y * (*d - dot) * self.forward.scale;
            }
        }
        let dsv = contiguous(&ds, z.lq, z.lk);
        general_mat_mul(1.0, &dsv, &k, 0.0, &mut view_mut(dq, z.lq, z.hd));
        general_mat_mul(1.0, &dsv.t(), &q, 1.0, &mut view_mut(dk, z.lk, z.hd));
    }
}

/// `softmax(q kᵀ/√hd + mask) v` with heads merged, `[B, Lq, H·hd]`: `q` [B, Lq, H, hd], `k`
/// and `v` [B, Lk, Hkv, hd] with `Hkv` dividing `H` (query head `h` reads key/value head
/// `h / (H/Hkv)`), `mask` broadcastable to [B, H, Lq, Lk]. The operands may be any views whose
/// last dimension is contiguous (the rows of a projection reshaped to heads, or heads-major
/// tensors transposed): they are read in place. Gradients to `q`, `k`, `v`. The scale is
/// `(1/√hd) as f32`, the factor of candle's `s / √hd`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, lq, h, hd) = q.dims4()?;
    let (bk, lk, kv, hdk) = k.dims4()?;
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
    let mask = mask.contiguous()?;
    let values = mask.flatten_all()?.to_vec1::<f32>()?;
    let wide = mask.broadcast_as((b, h, lq, lk))?;
    let s = wide.stride();
    let op = Attention {
        sizes,
        mask: Mask {
            values,
            strides: [s[0], s[1], s[2], s[3]],
        },
        scale: (1.0 / (hd as f64).sqrt()) as f32,
    };
    let rows = |t: &Tensor| -> Result<Tensor> {
        match t.stride().last() {
            Some(1) => Ok(t.clone()),
            _ => t.contiguous(),
        }
    };
    rows(q)?.apply_op3(&rows(k)?, &rows(v)?, op)
}
