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

#[test]
fn masked_softmax_matches_the_composition_with_a_broadcast_mask() -> Res<()> {
    let s = Var::from_tensor(&random(&[2, 3, 5, 9], 1)?)?;
    // [2, 1, 5, 9] additive mask, −∞ on a causal-like pattern, never a whole row.
    let m: Vec<f32> = (0..2 * 5 * 9)
        .map(|k| {
            if (k % 9) > (k / 9) % 5 + 4 * (k / 45) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(m, (2, 1, 5, 9), &Device::Cpu)?;
    check(
        "masked softmax",
        &[&s],
        || ops::masked_softmax(s.as_tensor(), &mask, 16),
        || candle_nn::ops::softmax(&(s.as_tensor() / 4.0)?.broadcast_add(&mask)?, D::Minus1),
        1e-6,
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
    let run = |threads: usize| -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
            let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
            let mut out = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            out.extend(g.get(&w).unwrap().to_vec1::<f32>().unwrap());
            out.extend(
                g.get(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
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
    Ok(())
}
