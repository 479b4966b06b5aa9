//! Numerically stable scalar and row primitives (MATH.md §1: stable log-sigmoid / log-softmax).

/// `softplus(x) = ln(1 + e^x)`, never overflowing: `max(x,0) + ln1p(e^{-|x|})`.
#[inline]
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Bradley–Terry loss `ℓ(m) = ln(1 + e^{-m}) = -ln σ(m)` (MATH.md §1).
#[inline]
pub fn bt_loss(margin: f64) -> f64 {
    softplus(-margin)
}

/// `ln σ(x) = -softplus(-x)`.
#[inline]
pub fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

/// Logistic `σ(x) = 1/(1+e^{-x})`, evaluated on the side that cannot overflow.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `Σ v` with four interleaved accumulators combined in a fixed order: faster than a serial
/// sum and, unlike a parallel reduction, the same bits on every run and thread count.
#[inline]
pub fn sum_fixed_order(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..4 {
            acc[j] += c[j];
        }
    }
    let mut tail = 0.0;
    for x in rest {
        tail += x;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
}

fn row_max(row: &[f64]) -> f64 {
    row.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `logsumexp(row) = max + ln Σ exp(v − max)` (no allocation: exponentials summed in blocks).
pub fn logsumexp(row: &[f64]) -> f64 {
    let max = row_max(row);
    let mut buf = [0.0f64; 256];
    let mut sum = 0.0;
    for chunk in row.chunks(256) {
        let b = &mut buf[..chunk.len()];
        b.iter_mut()
            .zip(chunk)
            .for_each(|(e, &v)| *e = (v - max).exp());
        sum += sum_fixed_order(b);
    }
    max + sum.ln()
}

/// In place: `row ← softmax(row)` (max-shifted, one `exp` per entry). Returns `logsumexp(row)`.
pub fn softmax_in_place(row: &mut [f64]) -> f64 {
    let max = row_max(row);
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum = sum_fixed_order(row);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
    max + sum.ln()
}

/// `n` points `a … b` equally spaced, endpoints included (n ≥ 2).
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
        .collect()
}

/// Euclidean norm of a slice.
#[inline]
pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Dot product of two slices of equal length.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Lanes of [`row_dot`]: element `j` goes to lane `j mod 16`, lanes are summed in a fixed tree.
const LANES: usize = 16;

/// `⟨a, b⟩` for the hot loops of the flow field (EX-RM and seen-row IM-RM margins): 16 lane
/// accumulators in a fixed order, so the value depends only on the inputs (not on threads).
/// Where the CPU has AVX2 and FMA (detected at run time) the lanes use fused multiply-adds,
/// so results are bit-identical on one machine, not across CPUs of different features.
pub fn row_dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "row_dot: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features the function is compiled for were detected.
        return unsafe { row_dot_fma(a, b) };
    }
    lane_dot(a, b, |x, y, acc| acc + x * y)
}

/// `y ← y + α x` (elementwise; fused multiply-adds where [`row_dot`] uses them).
pub fn row_axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    assert_eq!(x.len(), y.len(), "row_axpy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features the function is compiled for were detected.
        return unsafe { row_axpy_fma(alpha, x, y) };
    }
    y.iter_mut().zip(x).for_each(|(b, a)| *b += alpha * a);
}

/// `(⟨a, h⟩, ⟨b, h⟩)` in one pass over `h`, each the same bits as [`row_dot`].
pub fn row_dot2(a: &[f64], b: &[f64], h: &[f64]) -> (f64, f64) {
    assert!(
        a.len() == h.len() && b.len() == h.len(),
        "row_dot2: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features the function is compiled for were detected.
        return unsafe { row_dot2_fma(a, b, h) };
    }
    lane_dot2(a, b, h, |x, y, acc| acc + x * y)
}

/// `y ← y + α h`, `z ← z − α h` in one pass over `h` (each the same bits as [`row_axpy`]).
pub fn row_axpy2(alpha: f64, h: &[f64], y: &mut [f64], z: &mut [f64]) {
    assert!(
        y.len() == h.len() && z.len() == h.len(),
        "row_axpy2: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features the function is compiled for were detected.
        return unsafe { row_axpy2_fma(alpha, h, y, z) };
    }
    for ((b, c), a) in y.iter_mut().zip(z.iter_mut()).zip(h) {
        *b += alpha * a;
        *c += -alpha * a;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot2_fma(a: &[f64], b: &[f64], h: &[f64]) -> (f64, f64) {
    lane_dot2(a, b, h, f64::mul_add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_axpy2_fma(alpha: f64, h: &[f64], y: &mut [f64], z: &mut [f64]) {
    for ((b, c), &a) in y.iter_mut().zip(z.iter_mut()).zip(h) {
        *b = a.mul_add(alpha, *b);
        *c = a.mul_add(-alpha, *c);
    }
}

/// The CPU has AVX2 and FMA (run-time detection, cached by `std`).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_fma(a: &[f64], b: &[f64]) -> f64 {
    lane_dot(a, b, f64::mul_add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_axpy_fma(alpha: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut()
        .zip(x)
        .for_each(|(b, &a)| *b = a.mul_add(alpha, *b));
}

#[inline(always)]
fn lane_dot(a: &[f64], b: &[f64], madd: impl Fn(f64, f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] = madd(x[j], y[j], acc[j]);
        }
    }
    for (j, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[j] = madd(x, y, acc[j]);
    }
    lane_sum(acc)
}

#[inline(always)]
fn lane_dot2(a: &[f64], b: &[f64], h: &[f64], madd: impl Fn(f64, f64, f64) -> f64) -> (f64, f64) {
    let (mut acc_a, mut acc_b) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ca, cb, ch) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        h.chunks_exact(LANES),
    );
    let (ra, rb, rh) = (ca.remainder(), cb.remainder(), ch.remainder());
    for ((x, y), z) in ca.zip(cb).zip(ch) {
        for j in 0..LANES {
            acc_a[j] = madd(x[j], z[j], acc_a[j]);
            acc_b[j] = madd(y[j], z[j], acc_b[j]);
        }
    }
    for (j, ((&x, &y), &z)) in ra.iter().zip(rb).zip(rh).enumerate() {
        acc_a[j] = madd(x, z, acc_a[j]);
        acc_b[j] = madd(y, z, acc_b[j]);
    }
    (lane_sum(acc_a), lane_sum(acc_b))
}

#[inline(always)]
fn lane_sum(mut acc: [f64; LANES]) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            acc[j] += acc[j + width];
        }
    }
    acc[0]
}

/// `A Bᵀ` as a new row-major array (`[A rows, B rows]`), whatever the shapes: ndarray's `.dot`
/// may return a column-major result for degenerate shapes (e.g. `D = 1`), and the softmax rows
/// need contiguous slices.
pub fn mat_mul_bt(
    a: ndarray::ArrayView2<f64>,
    b: ndarray::ArrayView2<f64>,
) -> ndarray::Array2<f64> {
    use rayon::prelude::*;
    let mut out = ndarray::Array2::zeros((a.nrows(), b.nrows()));
    if a.nrows() < 2 * MAT_MUL_ROWS || b.nrows() == 0 {
        ndarray::linalg::general_mat_mul(1.0, &a, &b.t(), 0.0, &mut out);
        return out;
    }
    let blocks: Vec<_> = out
        .axis_chunks_iter_mut(ndarray::Axis(0), MAT_MUL_ROWS)
        .zip(a.axis_chunks_iter(ndarray::Axis(0), MAT_MUL_ROWS))
        .collect();
    blocks
        .into_par_iter()
        .for_each(|(mut o, a)| ndarray::linalg::general_mat_mul(1.0, &a, &b.t(), 0.0, &mut o));
    out
}

/// Rows of `A` per parallel block of [`mat_mul_bt`]: fixed, and each entry's sum over the inner
/// dimension is accumulated in the same order whatever the block, so the product is the same
/// bits as one serial call, with any thread count (tested).
const MAT_MUL_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_mat_mul_matches_one_serial_product_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = ndarray::Array2::from_shape_fn((1031, 301), |_| rng.random::<f64>() - 0.5);
        let b = ndarray::Array2::from_shape_fn((197, 301), |_| rng.random::<f64>() - 0.5);
        let mut serial = ndarray::Array2::zeros((1031, 197));
        ndarray::linalg::general_mat_mul(1.0, &a, &b.t(), 0.0, &mut serial);
        let parallel = mat_mul_bt(a.view(), b.view());
        assert!(serial
            .iter()
            .zip(&parallel)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn row_dot_and_axpy_match_plain_sums() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for n in [0usize, 1, 7, 16, 33, 4096] {
            let a: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            let b: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            // Summation-order error bound: n·ε·Σ|a_i b_i|.
            let got = row_dot(&a, &b);
            assert!(
                (got - exact).abs() <= n as f64 * f64::EPSILON * scale,
                "n = {n}"
            );
            // Lanes follow element indices, not memory alignment: a shifted copy gives the same bits.
            let shifted: Vec<f64> = std::iter::once(0.0).chain(a.iter().copied()).collect();
            assert_eq!(got.to_bits(), row_dot(&shifted[1..], &b).to_bits());
            let h: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            let (da, db) = row_dot2(&a, &b, &h);
            assert_eq!(da.to_bits(), row_dot(&a, &h).to_bits());
            assert_eq!(db.to_bits(), row_dot(&b, &h).to_bits());
            let mut y = b.clone();
            row_axpy(-0.25, &a, &mut y);
            for i in 0..n {
                assert!((y[i] - (b[i] - 0.25 * a[i])).abs() <= 2.0 * f64::EPSILON);
            }
            let (mut p, mut q) = (a.clone(), b.clone());
            row_axpy2(0.75, &h, &mut p, &mut q);
            let (mut p1, mut q1) = (a.clone(), b.clone());
            row_axpy(0.75, &h, &mut p1);
            row_axpy(-0.75, &h, &mut q1);
            assert!(p.iter().zip(&p1).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(q.iter().zip(&q1).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn softplus_is_stable_at_extremes() {
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0 && softplus(-1000.0) < 1e-300);
        assert!((softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-16);
        assert!((bt_loss(-800.0) - 800.0).abs() < 1e-12);
        assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) == 1.0);
    }

    #[test]
    fn softmax_normalises_and_matches_logsumexp() {
        let row = vec![1000.0, 0.0, -1000.0, 999.0, 998.5];
        let mut p = row.clone();
        let lse = softmax_in_place(&mut p);
        assert_eq!(lse, logsumexp(&row));
        let expect = 1000.0 + (1.0 + (-1.0f64).exp() + (-1.5f64).exp()).ln();
        assert!((lse - expect).abs() <= 2.0 * f64::EPSILON * expect);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 4.0 * f64::EPSILON);
        assert_eq!(p[2], 0.0);
    }
}
