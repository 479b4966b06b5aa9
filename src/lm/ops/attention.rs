//! Fused attention `softmax(q kᵀ/√hd + mask) v` with its own backward (CPU, f32): one task per
//! sequence, computing its heads' products serially (`ndarray::linalg::general_mat_mul`,
//! matrixmultiply's kernels) straight into the sequence's rows of the merged output, so no
//! attention-sized tensor is kept for the backward, which recomputes the probabilities from `q`
//! and `k`.
//!
//! Why: candle's batched matmul runs one thread-parallel GEMM per (sequence, head), each a
//! product of a few dozen rows, and its autograd keeps the scores and the probabilities
//! (`B · H · L²` each) of every layer until the backward returns. Grouped-query attention reads
//! each key/value head directly (no repeated copies); the output comes merged, `[·, H·hd]`.
//! The operands are read in place through their strides, so the projections' rows need no copy
//! into heads-major order.
//!
//! Two layouts: padded batches (`[B, L, heads, hd]` views and an additive mask, [`attention`])
//! and packed ones (every sequence's rows one after the other, `[T, heads, hd]`, each sequence
//! attending to its own keys only, [`attention_packed`]), which compute no padding rows at
//! all. A task's results depend only on its sequence's inputs, so they do not depend on the
//! thread count.

use super::slice;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

/// One sequence of a packed batch: its queries are rows `q0..q0 + lq` of the queries (and of
/// the output), its keys and values rows `k0..k0 + lk` of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub q0: usize,
    pub lq: usize,
    pub k0: usize,
    pub lk: usize,
}

/// The geometry of one attention: `h` query heads over `kv` key/value heads of width `hd`, the
/// sequences' rows, and how many query and key rows the outputs have.
#[derive(Debug, Clone)]
struct Sizes {
    h: usize,
    kv: usize,
    hd: usize,
    spans: Vec<Span>,
    /// Rows of the output (and of `∂q`) and of `∂k`, `∂v`.
    q_rows: usize,
    k_rows: usize,
    /// Rows sequence `s`'s output starts after: `s · per_seq.0` (padded; 0 when packed), keys
    /// `s · per_seq.1`.
    per_seq: (usize, usize),
    /// The output's shape: `[B, Lq, H·hd]` or `[Tq, H·hd]`.
    out: Shape,
}

impl Sizes {
    fn rep(&self) -> usize {
        self.h / self.kv
    }
    /// Sequence `s`'s first output row and first key-gradient row.
    fn out_rows(&self, s: usize) -> (usize, usize) {
        let sp = self.spans[s];
        (s * self.per_seq.0 + sp.q0, s * self.per_seq.1 + sp.k0)
    }
}

/// Where the rows of an operand lie in its storage: element `(s, i, h, c)` (sequence, row,
/// head, column) at `offset + s·seq + i·row + h·head + c`; `seq` is 0 for a packed operand,
/// whose rows are absolute.
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
    let (seq, row, head) = match *l.stride() {
        [seq, row, head, 1] => (seq, row, head),
        [row, head, 1] => (0, row, head),
        _ => candle_core::bail!(
            "attention {what}: [B, L, H, hd] or [T, H, hd] with contiguous hd expected"
        ),
    };
    let offset = l.start_offset();
    Ok((
        v.as_slice(),
        Strides {
            offset,
            seq,
            row,
            head,
        },
    ))
}

type View<'a> = ArrayView2<'a, f32>;

/// Rows `first..first + rows` of head `h` of sequence `s` of an operand, `[rows, hd]`.
fn head(
    x: (&[f32], Strides),
    s: usize,
    first: usize,
    h: usize,
    rows: usize,
    hd: usize,
) -> View<'_> {
    let (v, at) = x;
    let start = at.offset + s * at.seq + first * at.row + h * at.head;
    ArrayView2::from_shape((rows, hd).strides((at.row, 1)), &v[start..]).expect("attention head")
}

/// Columns `h·hd..(h + 1)·hd` of `rows` rows of width `width`, writable.
fn columns(
    v: &mut [f32],
    rows: usize,
    width: usize,
    h: usize,
    hd: usize,
) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, hd).strides((width, 1)), &mut v[h * hd..])
        .expect("attention output head")
}

/// Columns `h·hd..(h + 1)·hd` of `rows` rows of width `width`.
fn columns_of(v: &[f32], rows: usize, width: usize, h: usize, hd: usize) -> View<'_> {
    ArrayView2::from_shape((rows, hd).strides((width, 1)), &v[h * hd..])
        .expect("attention gradient head")
}

fn view_mut(v: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), v).expect("attention view")
}

fn contiguous(v: &[f32], rows: usize, cols: usize) -> View<'_> {
    ArrayView2::from_shape((rows, cols), v).expect("attention view")
}

/// `dst` (rows of `width`) cut into each sequence's rows `[start, start + len)`, given in
/// ascending, non-overlapping order; the rows between them are left out.
fn per_sequence(
    mut dst: &mut [f32],
    rows: impl Iterator<Item = (usize, usize)>,
    width: usize,
) -> Vec<&mut [f32]> {
    let (mut out, mut at) = (Vec::new(), 0);
    for (start, len) in rows {
        let rest = std::mem::take(&mut dst);
        let (mine, rest) = rest[(start - at) * width..].split_at_mut(len * width);
        out.push(mine);
        dst = rest;
        at = start + len;
    }
    out
}

/// The additive mask of a padded batch, a contiguous copy of the caller's and the strides that
/// broadcast it to `[B, H, Lq, Lk]` (0 along broadcast dimensions).
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
    /// The padded batch's mask; none for a packed batch (each sequence sees its own keys).
    mask: Option<Mask>,
    scale: f32,
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
    /// Row-wise `p = softmax(s · scale + mask) in place over `p` [Lq, Lk] (holding `q kᵀ`), as
    /// candle's `softmax(s / √hd + mask)` computes it (a packed batch's mask is 0).
    fn softmax(&self, p: &mut [f32], lk: usize, b: usize, h: usize) {
        for (i, row) in p.chunks_mut(lk).enumerate() {
            let mut max = f32::NEG_INFINITY;
            match &self.mask {
                Some(mask) => {
                    let (m0, step) = mask.row(b, h, i);
                    for (j, d) in row.iter_mut().enumerate() {
                        *d = (*d * self.scale + 0.0) + mask.values[m0 + j * step];
                        max = max.max(*d);
                    }
                }
                None => {
                    for d in row.iter_mut() {
                        *d = (*d * self.scale + 0.0) + 0.0;
                        max = max.max(*d);
                    }
                }
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

    /// Query head `h` of sequence `s`, its key and value heads, `[Lq, hd]`, `[Lk, hd]`.
    fn heads<'a>(&self, x: Operands<'a>, s: usize, h: usize) -> [View<'a>; 3] {
        let z = &self.sizes;
        let (sp, g) = (z.spans[s], h / z.rep());
        [
            head(x.q, s, sp.q0, h, sp.lq, z.hd),
            head(x.k, s, sp.k0, g, sp.lk, z.hd),
            head(x.v, s, sp.k0, g, sp.lk, z.hd),
        ]
    }

    /// The probabilities [Lq, Lk] of head `h` of sequence `s`, from its queries and keys.
    fn probabilities(&self, q: &View, k: &View, s: usize, h: usize) -> Vec<f32> {
        let (lq, lk) = (q.nrows(), k.nrows());
        let mut p = vec![0f32; lq * lk];
        general_mat_mul(1.0, q, &k.t(), 0.0, &mut view_mut(&mut p, lq, lk));
        self.softmax(&mut p, lk, s, h);
        p
    }

    /// Sequence `s`'s output rows `[Lq, H·hd]`, every head.
    fn sequence(&self, x: Operands, s: usize, out: &mut [f32]) {
        let z = &self.sizes;
        let lq = z.spans[s].lq;
        if lq == 0 {
            return;
        }
        for h in 0..z.h {
            let [q, k, v] = self.heads(x, s, h);
            let p = self.probabilities(&q, &k, s, h);
            let out = &mut columns(out, lq, z.h * z.hd, h, z.hd);
            general_mat_mul(1.0, &contiguous(&p, lq, k.nrows()), &v, 0.0, out);
        }
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
        let z = &self.sizes;
        let width = z.h * z.hd;
        let mut dst = vec![0f32; z.q_rows * width];
        let rows = (0..z.spans.len()).map(|s| (z.out_rows(s).0, z.spans[s].lq));
        per_sequence(&mut dst, rows, width)
            .into_par_iter()
            .enumerate()
            .for_each(|(s, out)| self.sequence(x, s, out));
        Ok((CpuStorage::F32(dst), z.out.clone()))
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
        let z = &self.sizes;
        let (nq, nk) = (z.q_rows * z.h * z.hd, z.k_rows * z.kv * z.hd);
        let part = |start, len, shape: &Shape| grads.narrow(0, start, len)?.reshape(shape);
        Ok((
            Some(part(0, nq, q.shape())?),
            Some(part(nq, nk, k.shape())?),
            Some(part(nq + nk, nk, v.shape())?),
        ))
    }
}

/// The backward of [`Attention`]: from `q`, `k`, `v` and the output's gradient, the gradients
/// `[∂q, ∂k, ∂v]`, each in its operand's shape, contiguous, flattened into one vector (split by
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
        let z = &self.forward.sizes;
        let (qw, kw) = (z.h * z.hd, z.kv * z.hd);
        let (nq, nk) = (z.q_rows * qw, z.k_rows * kw);
        let mut dst = vec![0f32; nq + 2 * nk];
        let (dq, dkv) = dst.split_at_mut(nq);
        let (dk, dv) = dkv.split_at_mut(nk);
        let n = z.spans.len();
        let q_rows = (0..n).map(|s| (z.out_rows(s).0, z.spans[s].lq));
        let k_rows = || (0..n).map(|s| (z.out_rows(s).1, z.spans[s].lk));
        per_sequence(dq, q_rows, qw)
            .into_par_iter()
            .zip(per_sequence(dk, k_rows(), kw).into_par_iter())
            .zip(per_sequence(dv, k_rows(), kw).into_par_iter())
            .enumerate()
            .for_each(|(s, ((dq, dk), dv))| {
                let at = z.out_rows(s).0 * qw;
                let go = &g[at..at + z.spans[s].lq * qw];
                for h in (0..z.h).filter(|_| !go.is_empty()) {
                    self.head(x, go, (s, h), [&mut *dq, &mut *dk, &mut *dv]);
                }
            });
        let len = dst.len();
        Ok((CpuStorage::F32(dst), Shape::from(len)))
    }
}

impl AttentionBackward<'_> {
    /// One head's backward: `∂v += pᵀ g`, `∂p = g vᵀ`, `∂s = p ∘ (∂p − Σ_j ∂p_j p_j) · scale`
    /// (candle's softmax backward), `∂q = ∂s k`, `∂k += ∂sᵀ q`; `go` is the sequence's output
    /// gradient rows, `out` its rows of `∂q`, `∂k`, `∂v`.
    fn head(&self, x: Operands, go: &[f32], (s, h): (usize, usize), out: [&mut [f32]; 3]) {
        let f = self.forward;
        let z = &f.sizes;
        let (g, [dq, dk, dv]) = (h / z.rep(), out);
        let [q, k, v] = f.heads(x, s, h);
        let (lq, lk, hd) = (q.nrows(), k.nrows(), z.hd);
        let (qw, kw) = (z.h * hd, z.kv * hd);
        let go = columns_of(go, lq, qw, h, hd);
        let p = f.probabilities(&q, &k, s, h);
        let pv = contiguous(&p, lq, lk);
        general_mat_mul(1.0, &pv.t(), &go, 1.0, &mut columns(dv, lk, kw, g, hd));
        let mut ds = vec![0f32; lq * lk];
        general_mat_mul(1.0, &go, &v.t(), 0.0, &mut view_mut(&mut ds, lq, lk));
        for (d, y) in ds.chunks_mut(lk).zip(p.chunks(lk)) {
            let dot: f32 = y.iter().zip(d.iter()).map(|(y, g)| y * g).sum();
            for (d, y) in d.iter_mut().zip(y) {
                *d = y * (*d - dot) * f.scale;
            }
        }
        let dsv = contiguous(&ds, lq, lk);
        general_mat_mul(1.0, &dsv, &k, 0.0, &mut columns(dq, lq, qw, h, hd));
        general_mat_mul(1.0, &dsv.t(), &q, 1.0, &mut columns(dk, lk, kw, g, hd));
    }
}

/// The operands `t` with a contiguous last dimension (read in place when they have one).
fn rows(t: &Tensor) -> Result<Tensor> {
    match t.stride().last() {
        Some(1) => Ok(t.clone()),
        _ => t.contiguous(),
    }
}

/// Checks that `h` query heads can read `kv` key/value heads of one width.
fn check_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (h, kv): (usize, usize),
    fits: bool,
) -> Result<()> {
    if !fits || kv == 0 || h % kv != 0 || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    Ok(())
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
    check_heads(q, k, v, (h, kv), bk == b && hdk == hd && lk > 0)?;
    let span = Span {
        q0: 0,
        lq,
        k0: 0,
        lk,
    };
    let sizes = Sizes {
        h,
        kv,
        hd,
        spans: vec![span; b],
        q_rows: b * lq,
        k_rows: b * lk,
        per_seq: (lq, lk),
        out: Shape::from((b, lq, h * hd)),
    };
    let mask = mask.contiguous()?;
    let values = mask.flatten_all()?.to_vec1::<f32>()?;
    let wide = mask.broadcast_as((b, h, lq, lk))?;
    let s = wide.stride();
    let mask = Mask {
        values,
        strides: [s[0], s[1], s[2], s[3]],
    };
    let op = Attention {
        sizes,
        mask: Some(mask),
        scale: (1.0 / (hd as f64).sqrt()) as f32,
    };
    rows(q)?.apply_op3(&rows(k)?, &rows(v)?, op)
}

/// Whether the row ranges `(start, len)` ascend without overlapping and end by `total`.
fn ascending(mut ranges: impl Iterator<Item = (usize, usize)>, total: usize) -> bool {
    let mut at = 0;
    ranges.all(|(start, len)| {
        let ok = start >= at && start + len <= total;
        at = start + len;
        ok
    })
}

/// Attention over a packed batch: `q` [Tq, H, hd], `k` and `v` [Tk, Hkv, hd] hold every
/// sequence's rows one after the other, and sequence `s`'s queries (rows `q0..q0 + lq` of
/// `spans[s]`) attend to its own keys (rows `k0..k0 + lk`) with no mask, as a padded batch's
/// real rows do under a key mask (whose padding gets probability 0 exactly). The spans ascend
/// without overlapping, each with at least one key; query rows outside every span get 0. The
/// output `[Tq, H·hd]`; views read in place and gradients as [`attention`].
pub fn attention_packed(q: &Tensor, k: &Tensor, v: &Tensor, spans: &[Span]) -> Result<Tensor> {
    let (tq, h, hd) = q.dims3()?;
    let (tk, kv, hdk) = k.dims3()?;
    check_heads(q, k, v, (h, kv), hdk == hd)?;
    let fit = ascending(spans.iter().map(|s| (s.q0, s.lq)), tq)
        && ascending(spans.iter().map(|s| (s.k0, s.lk)), tk)
        && spans.iter().all(|s| s.lk > 0);
    if !fit {
        candle_core::bail!(
            "attention_packed: spans {spans:?} do not fit {tq} query and {tk} key rows (ascending, disjoint, each with a key)"
        );
    }
    let sizes = Sizes {
        h,
        kv,
        hd,
        spans: spans.to_vec(),
        q_rows: tq,
        k_rows: tk,
        per_seq: (0, 0),
        out: Shape::from((tq, h * hd)),
    };
    let op = Attention {
        sizes,
        mask: None,
        scale: (1.0 / (hd as f64).sqrt()) as f32,
    };
    rows(q)?.apply_op3(&rows(k)?, &rows(v)?, op)
}
