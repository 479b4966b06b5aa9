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

/// `A Bᵀ` as a new row-major array (`[A rows, B rows]`), whatever the shapes: ndarray's `.dot`
/// may return a column-major result for degenerate shapes (e.g. `D = 1`), and the softmax rows
/// need contiguous slices.
pub fn mat_mul_bt(
    a: ndarray::ArrayView2<f64>,
    b: ndarray::ArrayView2<f64>,
) -> ndarray::Array2<f64> {
    let mut out = ndarray::Array2::zeros((a.nrows(), b.nrows()));
    ndarray::linalg::general_mat_mul(1.0, &a, &b.t(), 0.0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
