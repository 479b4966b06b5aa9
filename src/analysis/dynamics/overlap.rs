//! Token-overlap coefficients (MATH.md §3): `ρ_{k,l} = 1{y_k = ȳ_l} − π(ȳ_l|·) − π(y_k|·) +
//! ⟨π(·|h_{x,y<k}), π(·|h_{x̄,ȳ<l})⟩`, through this expanded formula (one softmax per prefix,
//! never a V-vector per pair of pairs).

use crate::numerics::softmax_in_place;
use crate::problem::synthetic::PairSet;
use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Rows per parallel block of the prefix computations.
pub(super) const BLOCK: usize = 128;

/// Every prefix of every response of a pair set: row `r = (2i + side)·K + k` holds
/// `h_{x_i, y<k}` and the token `y_k` of response `side` (0: `y⁺`, 1: `y⁻`) of pair `i`.
#[derive(Debug, Clone)]
pub struct ResponsePrefixes {
    pub states: Array2<f64>,
    pub tokens: Vec<usize>,
    pub pairs: usize,
    pub k: usize,
}

impl ResponsePrefixes {
    pub fn new(p: &PairSet) -> ResponsePrefixes {
        let (n, k, d) = (p.len(), p.response_length(), p.prompt_hidden.ncols());
        let mut states = Array2::zeros((2 * n * k, d));
        let mut tokens = Vec::with_capacity(2 * n * k);
        for i in 0..n {
            for (side, (pre, tok)) in [
                (&p.chosen_prefix_hidden, &p.chosen_tokens),
                (&p.rejected_prefix_hidden, &p.rejected_tokens),
            ]
            .into_iter()
            .enumerate()
            {
                for kk in 0..k {
                    states
                        .row_mut((2 * i + side) * k + kk)
                        .assign(&pre.slice(s![i, kk, ..]));
                    tokens.push(tok[[i, kk]]);
                }
            }
        }
        ResponsePrefixes {
            states,
            tokens,
            pairs: n,
            k,
        }
    }

    /// Row of prefix `k` of response `side` of pair `i`.
    pub fn row(&self, i: usize, side: usize, k: usize) -> usize {
        (2 * i + side) * self.k + k
    }
}

/// `softmax(U h)` for every row of `states` ([R, V]), in parallel row blocks.
pub fn prefix_distributions(u: ArrayView2<f64>, states: &Array2<f64>) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..states.nrows())
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            let r1 = (r0 + BLOCK).min(states.nrows());
            let mut p = crate::numerics::mat_mul_bt(states.slice(s![r0..r1, ..]), u);
            for mut row in p.rows_mut() {
                softmax_in_place(row.as_slice_mut().expect("contiguous row"));
            }
            p
        })
        .collect();
    ndarray::concatenate(
        Axis(0),
        &blocks.iter().map(|b| b.view()).collect::<Vec<_>>(),
    )
    .expect("same width")
}

/// `A Bᵀ` in parallel row blocks of `A` (each entry computed by one thread: thread-count independent).
pub(super) fn gram(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..a.nrows())
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| a.slice(s![r0..(r0 + BLOCK).min(a.nrows()), ..]).dot(&b.t()))
        .collect();
    ndarray::concatenate(
        Axis(0),
        &blocks.iter().map(|b| b.view()).collect::<Vec<_>>(),
    )
    .expect("same width")
}

/// `ρ` between every prefix of `eval` (rows) and every prefix of `train` (columns), [R_e, R_t],
/// by the expanded formula `1{y = ȳ} − π(ȳ|·) − π(y|·̄) + ⟨π, π̄⟩`.
pub fn token_overlap(
    u: ArrayView2<f64>,
    eval: &ResponsePrefixes,
    train: &ResponsePrefixes,
) -> Array2<f64> {
    let pe = prefix_distributions(u, &eval.states);
    let pt = prefix_distributions(u, &train.states);
    let mut rho = gram(&pe, &pt);
    for (r, mut row) in rho.rows_mut().into_iter().enumerate() {
        let y = eval.tokens[r];
        for (c, v) in row.iter_mut().enumerate() {
            let yb = train.tokens[c];
            let same = if y == yb { 1.0 } else { 0.0 };
            *v += (same - pe[[r, yb]]) - pt[[c, y]];
        }
    }
    rho
}

/// `ρ` from its definition `⟨e_y − π(·|h), e_ȳ − π(·|h̄)⟩` with explicit V-vectors (reference for tests).
pub fn token_overlap_explicit(
    u: ArrayView2<f64>,
    h: ndarray::ArrayView1<f64>,
    y: usize,
    hb: ndarray::ArrayView1<f64>,
    yb: usize,
) -> f64 {
    let mut p = u.dot(&h).to_vec();
    let mut q = u.dot(&hb).to_vec();
    softmax_in_place(&mut p);
    softmax_in_place(&mut q);
    (0..p.len())
        .map(|v| {
            ((if v == y { 1.0 } else { 0.0 }) - p[v]) * ((if v == yb { 1.0 } else { 0.0 }) - q[v])
        })
        .sum()
}

/// `ρ` reshaped for export: [n_e, 2, K_e, n_t, 2, K_t].
pub fn rho_tensor(
    rho: &Array2<f64>,
    eval_pairs: usize,
    ke: usize,
    train_pairs: usize,
    kt: usize,
) -> ndarray::Array6<f64> {
    ndarray::Array6::from_shape_vec(
        (eval_pairs, 2, ke, train_pairs, 2, kt),
        rho.iter().copied().collect(),
    )
    .expect("ρ has (2·ke·eval_pairs) × (2·kt·train_pairs) entries, row order (pair, side, k)")
}
