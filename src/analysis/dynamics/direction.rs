//! The IM-RM's unembedding velocity (MATH.md §3) for real vocabularies, through the training
//! direction instead of the `ρ` matrix.
//!
//! With `G(y) = ∇_U ln π(y|x) = Σ_k (e_{y_k} − π_k) h_kᵀ` (`h_k = h_{x,y<k}`, `π_k = π(·|h_k)`),
//! the kernel of §3 is `κ(x,y; x̄,ȳ) = ⟨G(y), G(ȳ)⟩_F = Σ_k Σ_l ρ_{k,l} ⟨h_k, h̄_l⟩`, and the
//! flow moves the reward of any `(x, y)` at
//!
//! `d r/dt = β² Σ_i c_i [κ(x,y; x_i,y_i⁺) − κ(x,y; x_i,y_i⁻)] = β² ⟨G(y), D⟩_F`,
//!
//! with the training direction `D = Σ_i c_i [G(y_i⁺) − G(y_i⁻)]` (`V × D`, accumulated once).
//! Its token-identity part — the terms of `ρ_{k,l}` with `y_k = ȳ_l`, i.e. `1{y_k = ȳ_l}` — is
//! `⟨Σ_k e_{y_k} h_kᵀ, I⟩_F` with `I = Σ_i c_i [Σ_l e_{ȳ_l} h̄_lᵀ]_{y_i⁺ − y_i⁻}`, whose row `v`
//! is what the training responses' occurrences of token `v` contribute. The rest (the softmax
//! cross terms `−π(ȳ_l|·) − π(y_k|·̄) + ⟨π, π̄⟩`) is the difference. Cost: two `[K, V] × [V, D]`
//! products per block of `K` positions, never an `R_e × R_t` matrix.
//!
//! Every product is split into fixed blocks, each entry summed in one order by one thread: the
//! results are the same bits whatever the thread count.

use crate::numerics::{mat_mul_bt, softmax_in_place};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

/// Positions per block (two `[block, V]` f64 matrices live at once).
const BLOCK: usize = 512;
/// Vocabulary rows per parallel block of the direction's accumulation.
const VOCAB_BLOCK: usize = 1024;

/// One response's positions: the token `y_k` each predicts and the state `h_{x,y<k}` it is
/// predicted from (row `k`).
#[derive(Debug, Clone, Copy)]
pub struct ResponseStates<'a> {
    pub tokens: &'a [usize],
    pub states: ArrayView2<'a, f64>,
}

/// One position's share of `⟨G(y), D⟩_F`: the whole term, its token-identity part, and
/// `ln π(y_k | h_k)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionVelocity {
    pub total: f64,
    pub identity: f64,
    pub log_prob: f64,
}

/// The training direction `D` and its token-identity part `I` (module doc), `V × D` each.
#[derive(Debug, Clone)]
pub struct TrainingDirection {
    pub full: Array2<f64>,
    pub identity: Array2<f64>,
}

impl TrainingDirection {
    /// Zero direction for a vocabulary of `v` tokens and states of dimension `d`.
    pub fn zeros(v: usize, d: usize) -> TrainingDirection {
        TrainingDirection {
            full: Array2::zeros((v, d)),
            identity: Array2::zeros((v, d)),
        }
    }

    /// Adds `weight · G(y)` of the response `r` under the unembedding `u` (`V × D`).
    pub fn add(&mut self, u: ArrayView2<f64>, r: ResponseStates, weight: f64) {
        self.add_all(u, &[(r, weight)]);
    }

    /// Adds `Σ weight · G(y)` of the responses under `u`, their positions taken together in
    /// blocks (each block reads and writes `D` once).
    pub fn add_all(&mut self, u: ArrayView2<f64>, responses: &[(ResponseStates, f64)]) {
        let rs: Vec<ResponseStates> = responses.iter().map(|r| r.0).collect();
        let weights: Vec<f64> = responses
            .iter()
            .flat_map(|(r, w)| std::iter::repeat(*w).take(r.tokens.len()))
            .collect();
        for block in blocks(&rs) {
            let mut p = mat_mul_bt(block.states.view(), u);
            for mut row in p.rows_mut() {
                softmax_in_place(row.as_slice_mut().expect("contiguous row"));
            }
            let mut weighted = block.states;
            for (k, mut row) in weighted.rows_mut().into_iter().enumerate() {
                row *= weights[block.start + k];
            }
            // D −= Σ_k w_k π_k h_kᵀ, by vocabulary blocks (one thread per block of rows of D).
            let parts: Vec<_> = self
                .full
                .axis_chunks_iter_mut(Axis(0), VOCAB_BLOCK)
                .zip(p.axis_chunks_iter(Axis(1), VOCAB_BLOCK))
                .collect();
            parts.into_par_iter().for_each(|(mut d, pb)| {
                ndarray::linalg::general_mat_mul(-1.0, &pb.t(), &weighted, 1.0, &mut d);
            });
            // D += Σ_k w_k e_{y_k} h_kᵀ and I likewise, in position order.
            for (k, &y) in block.tokens.iter().enumerate() {
                let h = weighted.row(k);
                self.full.row_mut(y).scaled_add(1.0, &h);
                self.identity.row_mut(y).scaled_add(1.0, &h);
            }
        }
    }

    /// Each position's term of `⟨G(y), D⟩_F` for the response `r` under `u`: `(D h_k)_{y_k} −
    /// π_k·(D h_k)`, its identity part `I_{y_k}·h_k`, and `ln π(y_k | h_k)`.
    pub fn velocities(&self, u: ArrayView2<f64>, r: ResponseStates) -> Vec<PositionVelocity> {
        self.velocities_all(u, &[r]).pop().expect("one response")
    }

    /// [`Self::velocities`] of every response, their positions taken together in blocks.
    pub fn velocities_all(
        &self,
        u: ArrayView2<f64>,
        responses: &[ResponseStates],
    ) -> Vec<Vec<PositionVelocity>> {
        let mut flat = Vec::new();
        for block in blocks(responses) {
            let mut p = mat_mul_bt(block.states.view(), u);
            let dh = mat_mul_bt(block.states.view(), self.full.view());
            for (k, &y) in block.tokens.iter().enumerate() {
                let mut row = p.row_mut(k);
                let logit = row[y];
                let lse = softmax_in_place(row.as_slice_mut().expect("contiguous row"));
                let dk = dh.row(k);
                flat.push(PositionVelocity {
                    total: dk[y]
                        - crate::numerics::dot(
                            row.as_slice().expect("contiguous row"),
                            dk.as_slice().expect("contiguous row"),
                        ),
                    identity: self.identity.row(y).dot(&block.states.row(k)),
                    log_prob: logit - lse,
                });
            }
        }
        let mut rest = flat.into_iter();
        responses
            .iter()
            .map(|r| rest.by_ref().take(r.tokens.len()).collect())
            .collect()
    }
}

/// A block of at most [`BLOCK`] positions of several responses, in order: their tokens and
/// states, and the index of its first position among all.
struct Block {
    start: usize,
    tokens: Vec<usize>,
    states: Array2<f64>,
}

/// The positions of `responses`, concatenated, cut into blocks of [`BLOCK`].
fn blocks(responses: &[ResponseStates]) -> Vec<Block> {
    let d = responses.first().map_or(0, |r| r.states.ncols());
    let tokens: Vec<usize> = responses
        .iter()
        .flat_map(|r| r.tokens.iter().copied())
        .collect();
    let rows: Vec<ArrayView1<f64>> = responses.iter().flat_map(|r| r.states.rows()).collect();
    (0..tokens.len())
        .step_by(BLOCK)
        .map(|start| {
            let end = (start + BLOCK).min(tokens.len());
            let mut states = Array2::zeros((end - start, d));
            for (mut row, h) in states.rows_mut().into_iter().zip(&rows[start..end]) {
                row.assign(h);
            }
            Block {
                start,
                tokens: tokens[start..end].to_vec(),
                states,
            }
        })
        .collect()
}

/// `ln π(y_k | h_k)` of every position of `r` under `u`.
pub fn response_log_probs(u: ArrayView2<f64>, r: ResponseStates) -> Vec<f64> {
    log_probs_all(u, &[r]).pop().expect("one response")
}

/// [`response_log_probs`] of every response, their positions taken together in blocks (each
/// block reads `U` once).
pub fn log_probs_all(u: ArrayView2<f64>, responses: &[ResponseStates]) -> Vec<Vec<f64>> {
    let mut flat = Vec::new();
    for block in blocks(responses) {
        let p = mat_mul_bt(block.states.view(), u);
        for (k, &y) in block.tokens.iter().enumerate() {
            let row = p.row(k);
            let lse = crate::numerics::logsumexp(row.as_slice().expect("contiguous row"));
            flat.push(row[y] - lse);
        }
    }
    let mut rest = flat.into_iter();
    responses
        .iter()
        .map(|r| rest.by_ref().take(r.tokens.len()).collect())
        .collect()
}

/// The kernel `κ(x,y; x̄,ȳ) = ⟨G(y), G(ȳ)⟩_F` of two responses and its token-identity part (a
/// direction of one response, weight 1).
pub fn kernel(u: ArrayView2<f64>, a: ResponseStates, b: ResponseStates) -> (f64, f64) {
    let mut d = TrainingDirection::zeros(u.nrows(), u.ncols());
    d.add(u, b, 1.0);
    d.velocities(u, a)
        .iter()
        .fold((0.0, 0.0), |(t, i), v| (t + v.total, i + v.identity))
}

/// The EX-RM's head direction `Σ_i c_i z_i` (`z_i = h⁺_i − h⁻_i`, rows of `z`): the head's
/// velocity, so that `d r_u(x,y)/dt = ⟨h_{x,y}, Σ_i c_i z_i⟩` (MATH.md §3).
pub fn head_direction(z: ArrayView2<f64>, c: &[f64]) -> Array1<f64> {
    z.t().dot(&ArrayView1::from(c))
}
