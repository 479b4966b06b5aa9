//! The fused CPU kernels of `rmflow::lm::ops` against the candle compositions they replace in
//! the differentiable forwards: the same values and the same gradients (feature `lm`).
#![cfg(feature = "lm")]

use candle_core::{Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rmflow::lm::ops;

type Res<T> = candle_core::Result<T>;

fn random(shape: &[usize], seed: u64) -> Res<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Largest `|a − b| / max(1, |b|)` over the elements.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// The value and the gradients to `vars` of `Σ out ∘ w` for a fixed random `w`, for the fused
/// op and for the composition; both compared at `tol`.
fn check(
    name: &str,
    vars: &[&Var],
    fused: impl Fn() -> Res<Tensor>,
    slow: impl Fn() -> Res<Tensor>,
    tol: f32,
) -> Res<()> {
    let (f, s) = (fused()?, slow()?);
    assert_eq!(f.dims(), s.dims(), "{name}: shapes");
    let forward = rel(&f, &s);
    assert!(forward <= tol, "{name}: forward differs by {forward}");
    let w = random(f.dims(), 99)?;
    let gf = (&f * &w)?.sum_all()?.backward()?;
    let gs = (&s * &w)?.sum_all()?.backward()?;
    for (k, v) in vars.iter().enumerate() {
        let (a, b) = (gf.get(v).expect("fused gradient"), gs.get(v).expect("slow"));
        let d = rel(a, b);
        assert!(d <= tol, "{name}: gradient {k} differs by {d}");
    }
    Ok(())
}

/// Attention as the compositions compute it, from `[B, L, heads, hd]` operands: heads-major
/// copies, keys and values repeated to every query head, `softmax(q kᵀ/√hd + mask) v`, heads
/// merged.
fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Res<Tensor> {
    let (b, lq, h, hd) = q.dims4()?;
    let major = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    let (q, k, v) = (major(q)?, major(k)?, major(v)?);
    let rep = h / k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k, rep)?;
    let v = candle_transformers::utils::repeat_kv(v, rep)?;
    let s = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
    candle_nn::ops::softmax(&s, D::Minus1)?
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, lq, h * hd))
}

/// An additive mask of `shape` [.., Lq, Lk], −∞ where `hide(matrix, row, col)`.
fn mask_of(shape: &[usize], hide: impl Fn(usize, usize, usize) -> bool) -> Res<Tensor> {
    let (lq, lk) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let n: usize = shape[..shape.len() - 2].iter().product();
    let m: Vec<f32> = (0..n * lq * lk)
        .map(|k| {
            let (b, i, j) = (k / (lq * lk), (k / lk) % lq, k % lk);
            if hide(b, i, j) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, shape, &Device::Cpu)
}

/// The fused attention against the composition on `q` [B, Lq, H, hd], `k`, `v` [B, Lk, Hkv,
/// hd]; `heads_major`: the operands are transposed views of heads-major tensors (strided rows).
fn check_attention(
    name: &str,
    q: &[usize],
    kv: &[usize],
    mask: &Tensor,
    heads_major: bool,
) -> Res<()> {
    let var = |dims: &[usize], seed| {
        let major = [dims[0], dims[2], dims[1], dims[3]];
        Var::from_tensor(&random(if heads_major { &major } else { dims }, seed)?)
    };
    let (q, k, v) = (var(q, 1)?, var(kv, 2)?, var(kv, 3)?);
    let rows = |t: &Var| -> Res<Tensor> {
        if heads_major {
            t.as_tensor().transpose(1, 2)
        } else {
            Ok(t.as_tensor().clone())
        }
    };
    let (qt, kt, vt) = (rows(&q)?, rows(&k)?, rows(&v)?);
    check(
        name,
        &[&q, &k, &v],
        || ops::attention(&qt, &kt, &vt, mask),
        || attention_composed(&qt, &kt, &vt, mask),
        1e-5,
    )
}

#[test]
fn attention_matches_the_composition_with_a_padding_key_mask() -> Res<()> {
    // BERT's [B, 1, 1, L] key mask: f32::MIN on padding keys (the last 3 of sequence 1).
    let m: Vec<f32> = (0..2 * 7)
        .map(|k| if k >= 11 { f32::MIN } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(m, (2, 1, 1, 7), &Device::Cpu)?;
    check_attention("padding mask", &[2, 7, 4, 8], &[2, 7, 4, 8], &mask, false)
}

#[test]
fn attention_matches_the_composition_with_grouped_queries_and_a_causal_mask() -> Res<()> {
    // Three query heads per key/value head, one [L, L] causal mask broadcast to all.
    let mask = mask_of(&[9, 9], |_, i, j| j > i)?;
    check_attention(
        "grouped causal",
        &[3, 9, 6, 16],
        &[3, 9, 2, 16],
        &mask,
        false,
    )?;
    check_attention(
        "grouped causal, heads-major",
        &[3, 9, 6, 16],
        &[3, 9, 2, 16],
        &mask,
        true,
    )
}

#[test]
fn attention_matches_the_composition_with_more_keys_than_queries() -> Res<()> {
    // The prompt-group continuations' [N, 1, C, P + C]: a prefix with padding, then causal.
    let mask = mask_of(&[2, 1, 5, 11], |b, i, j| j < b * 2 || j > 6 + i)?;
    check_attention("continuations", &[2, 5, 3, 4], &[2, 11, 1, 4], &mask, true)
}

/// A packed batch `[T, heads, hd]` of sequences of `lens` as a padded one `[B, L, heads, hd]`
/// (padding rows repeat row 0, hidden by the key mask), differentiably.
fn padded(x: &Tensor, lens: &[usize]) -> Res<Tensor> {
    let l = *lens.iter().max().unwrap();
    let mut rows = Vec::new();
    let mut start = 0;
    for &n in lens {
        rows.extend((0..l).map(|i| if i < n { (start + i) as u32 } else { 0 }));
        start += n;
    }
    let (_, h, hd) = x.dims3()?;
    x.index_select(&Tensor::new(rows, &Device::Cpu)?, 0)?
        .reshape((lens.len(), l, h, hd))
}

/// The rows `rows` of each padded sequence's `[B, L, W]` output, packed `[·, W]`.
fn unpadded(y: &Tensor, rows: &[Vec<usize>]) -> Res<Tensor> {
    let (_, l, w) = y.dims3()?;
    let idx: Vec<u32> = rows
        .iter()
        .enumerate()
        .flat_map(|(s, r)| r.iter().map(move |&i| (s * l + i) as u32))
        .collect();
    y.reshape(((), w))?
        .index_select(&Tensor::new(idx, &Device::Cpu)?, 0)
}

#[test]
fn packed_attention_matches_the_padded_composition() -> Res<()> {
    // Three sequences of 5, 3 and 7 tokens, 4 query heads on 2 key/value heads.
    let lens = [5usize, 3, 7];
    let (t, l) = (15, 7);
    let starts = [0usize, 5, 8];
    let k = Var::from_tensor(&random(&[t, 2, 8], 21)?)?;
    let v = Var::from_tensor(&random(&[t, 2, 8], 22)?)?;
    let m: Vec<f32> = (0..3 * l)
        .map(|j| if j % l >= lens[j / l] { f32::MIN } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(m, (3, 1, 1, l), &Device::Cpu)?;
    let whole: Vec<ops::Span> = (0..3)
        .map(|s| ops::Span {
            q0: starts[s],
            lq: lens[s],
            k0: starts[s],
            lk: lens[s],
        })
        .collect();
    // Every row attends.
    let q = Var::from_tensor(&random(&[t, 4, 8], 20)?)?;
    let all: Vec<Vec<usize>> = lens.iter().map(|&n| (0..n).collect()).collect();
    check(
        "packed, every row",
        &[&q, &k, &v],
        || ops::attention_packed(&q, &k, &v, &whole),
        || {
            let y = attention_composed(
                &padded(&q, &lens)?,
                &padded(&k, &lens)?,
                &padded(&v, &lens)?,
                &mask,
            )?;
            unpadded(&y, &all)
        },
        1e-5,
    )?;
    // One query row per sequence (the read-out rows of the last layer).
    let qr = Var::from_tensor(&random(&[3, 4, 8], 23)?)?;
    let spans: Vec<ops::Span> = whole
        .iter()
        .enumerate()
        .map(|(s, w)| ops::Span { q0: s, lq: 1, ..*w })
        .collect();
    check(
        "packed, one query each",
        &[&qr, &k, &v],
        || ops::attention_packed(&qr, &k, &v, &spans),
        || {
            let q1 = qr.as_tensor().unsqueeze(1)?;
            let y = attention_composed(&q1, &padded(&k, &lens)?, &padded(&v, &lens)?, &mask)?;
            y.squeeze(1)
        },
        1e-5,
    )?;
    // Spans out of order, past the rows, or without keys are refused.
    for bad in [
        vec![whole[1], whole[0]],
        vec![ops::Span { lk: 16, ..whole[0] }],
        vec![ops::Span { lk: 0, ..whole[0] }],
    ] {
        let e = ops::attention_packed(&q, &k, &v, &bad).unwrap_err();
        assert!(format!("{e}").contains("do not fit"), "{e}");
    }
    Ok(())
}

#[test]
fn affine_matches_candle_nn_linear_with_and_without_bias() -> Res<()> {
    use candle_nn::Module;
    let x = Var::from_tensor(&random(&[3, 70, 24], 4)?)?;
    let w = Var::from_tensor(&random(&[40, 24], 5)?)?;
    let b = Var::from_tensor(&random(&[40], 6)?)?;
    let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
    check(
        "affine with bias",
        &[&x, &w, &b],
        || ops::affine(xt, wt, Some(bt)),
        || candle_nn::Linear::new(wt.clone(), Some(bt.clone())).forward(xt),
        1e-5,
    )?;
    check(
        "affine",
        &[&x, &w],
        || ops::affine(xt, wt, None),
        || candle_nn::Linear::new(wt.clone(), None).forward(xt),
        1e-5,
    )
}

#[test]
fn rms_norm_matches_rms_norm_slow_with_both_gradients() -> Res<()> {
    // 3·70 rows: more than one block of the weight gradient's fixed-order sum.
    let x = Var::from_tensor(&random(&[3, 70, 24], 2)?)?;
    let w = Var::from_tensor(&random(&[24], 3)?)?;
    check(
        "rms norm",
        &[&x, &w],
        || ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5),
        || candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5),
        1e-5,
    )
}

#[test]
fn layer_norm_matches_layer_norm_slow_with_all_gradients() -> Res<()> {
    let x = Var::from_tensor(&(random(&[2, 90, 20], 14)? + 0.7)?)?;
    let w = Var::from_tensor(&random(&[20], 15)?)?;
    let b = Var::from_tensor(&random(&[20], 16)?)?;
    check(
        "layer norm",
        &[&x, &w, &b],
        || ops::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12),
        || candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12),
        1e-5,
    )
}

#[test]
fn rope_matches_rope_slow() -> Res<()> {
    let x = Var::from_tensor(&random(&[2, 3, 6, 8], 4)?)?;
    let theta = random(&[6, 4], 5)?;
    let (cos, sin) = (theta.cos()?, theta.sin()?);
    check(
        "rope",
        &[&x],
        || ops::rope(x.as_tensor(), &cos, &sin),
        || candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin),
        1e-6,
    )
}

#[test]
fn silu_gate_matches_silu_times_up() -> Res<()> {
    let g = Var::from_tensor(&(random(&[4, 5000], 6)? * 3.0)?)?;
    let u = Var::from_tensor(&random(&[4, 5000], 7)?)?;
    check(
        "silu gate",
        &[&g, &u],
        || ops::silu_gate(g.as_tensor(), u.as_tensor()),
        || candle_nn::ops::silu(g.as_tensor())? * u.as_tensor(),
        1e-5,
    )
}

#[test]
fn gelu_erf_matches_candles_gelu_erf() -> Res<()> {
    let x = Var::from_tensor(&(random(&[3, 7000], 17)? * 2.5)?)?;
    check(
        "gelu erf",
        &[&x],
        || ops::gelu_erf(x.as_tensor()),
        || x.as_tensor().gelu_erf(),
        1e-5,
    )
}

#[test]
fn fused_ops_are_bit_identical_across_thread_counts() -> Res<()> {
    let x = Var::from_tensor(&random(&[5, 200, 32], 8)?)?;
    let w = Var::from_tensor(&random(&[32], 9)?)?;
    let causal = mask_of(&[200, 200], |_, i, j| j > i)?;
    let wa = random(&[12, 32], 16)?;
    let run = |threads: usize| -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
            // Attention over the normed rows: 5 sequences, 4 query heads on 2 key/value heads.
            let q = y.reshape((5, 200, 4, 8)).unwrap();
            let kv = y.narrow(2, 0, 16).unwrap().reshape((5, 200, 2, 8)).unwrap();
            let a = ops::attention(&q, &kv, &kv.sin().unwrap(), &causal).unwrap();
            // An affine map of the attention's output (rows: 5 · 200).
            let a = ops::affine(&a, &wa, Some(&w.narrow(0, 0, 12).unwrap())).unwrap();
            // The same rows packed as sequences of 100, 350, 50 and 500 tokens.
            let spans: Vec<ops::Span> = [(0, 100), (100, 350), (450, 50), (500, 500)]
                .map(|(s, n)| ops::Span {
                    q0: s,
                    lq: n,
                    k0: s,
                    lk: n,
                })
                .to_vec();
            let flat = |t: &Tensor, h: usize| t.reshape((1000, h, 8)).unwrap();
            let p =
                ops::attention_packed(&flat(&q, 4), &flat(&kv, 2), &flat(&kv, 2), &spans).unwrap();
            let loss = (y.sqr().unwrap().sum_all().unwrap() + a.sqr().unwrap().sum_all().unwrap())
                .unwrap();
            let loss = (loss + p.sum_all().unwrap()).unwrap();
            let g = loss.backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut out = flat(&y);
            out.extend(flat(&a));
            out.extend(flat(&p));
            out.extend(flat(g.get(&w).unwrap()));
            out.extend(flat(g.get(&x).unwrap()));
            out
        })
    };
    let one = run(1);
    for threads in [2, 3, 7] {
        assert!(one
            .iter()
            .zip(run(threads))
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    Ok(())
}

#[test]
fn fused_ops_refuse_what_they_cannot_compute() -> Res<()> {
    let x = random(&[2, 3, 5], 10)?;
    let e = ops::rope(&x, &random(&[5, 2], 11)?, &random(&[5, 2], 12)?).unwrap_err();
    assert!(format!("{e}").contains("[B, H, L, even hd]"), "{e}");
    let e = ops::rms_norm(&x, &random(&[4], 13)?, 1e-6).unwrap_err();
    assert!(format!("{e}").contains("weight of 4"), "{e}");
    let (q, kv) = (random(&[2, 5, 3, 4], 14)?, random(&[2, 5, 2, 4], 15)?);
    let mask = Tensor::zeros((5, 5), candle_core::DType::F32, &Device::Cpu)?;
    let e = ops::attention(&q, &kv, &kv, &mask).unwrap_err();
    assert!(format!("{e}").contains("do not fit"), "{e}");
    let e = ops::affine(&x, &random(&[4, 6], 17)?, None).unwrap_err();
    assert!(format!("{e}").contains("do not fit"), "{e}");
    let e = ops::affine(&x, &random(&[4, 5], 18)?, Some(&random(&[3], 19)?)).unwrap_err();
    assert!(format!("{e}").contains("do not fit"), "{e}");
    Ok(())
}
