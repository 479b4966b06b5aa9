//! The IM-RM (MATH.md §1–§2): `r_U(x, y) = β Σ_k [ln π_U(y_k|·) − ln π_{U(0)}(y_k|·)]`, with the
//! full-vocabulary log-softmax (any `K`) or, for `K = 1`, the seen-row form.

use super::margin::MarginModel;
use super::seen_rows::SeenRowsImplicitRm;
use crate::config::GradientPath;
use crate::numerics::{logsumexp, softmax_in_place};
use crate::problem::synthetic::{InitialUnembedding, PairSet};
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

/// Pairs per block of the full-vocabulary path: bounds the `[rows, V]` logits buffer.
pub(super) const FULL_PATH_BLOCK: usize = 64;

/// One softmax of the IM-RM: the tokens predicted from one prefix state. At the first position
/// both responses share the state `h_x` (one row predicts `y⁺_1` and `y⁻_1`, so the `π` terms of
/// the two responses meet in one vector); later positions have one row per response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub pair: usize,
    /// Index `k` (0-based) of the predicted token in its response(s).
    pub index: usize,
    /// Token of `y⁺` predicted here, if any.
    pub plus: Option<usize>,
    /// Token of `y⁻` predicted here, if any.
    pub minus: Option<usize>,
}

/// Whether the IM-RM subtracts its reference (MATH.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceTerm {
    /// `r = β ln(π_U / π_ref)`, the IM-RM.
    #[default]
    Subtracted,
    /// `r = β ln π_U`: the paper's ablation without a reference model (the official
    /// `no_ref_model`), trained on its own margins.
    Omitted,
}

/// IM-RM `r_U(x,y) = β Σ_k [ln π_U(y_k|h_{x,y<k}) − ln π_ref(y_k|h_{x,y<k})]`,
/// `π_U(·|h) = softmax(U h)`, `π_ref = π_{U(0)}` (MATH.md §1). `θ = U ∈ R^{V×D}` flattened
/// row-major. For `K = 1` this is `β[ln π_U(y|x) − ln π_ref(y|x)]`.
#[derive(Debug, Clone)]
pub struct ImplicitRm {
    pub beta: f64,
    pub vocab_size: usize,
    pub path: GradientPath,
    /// Prefix states, one row per [`Position`], rows of a pair contiguous, [R, D].
    pub states: Array2<f64>,
    pub positions: Vec<Position>,
    /// Rows of pair `i` are `pair_rows[i]..pair_rows[i + 1]`.
    pub(super) pair_rows: Vec<usize>,
    /// Per row: `ln π_ref` of its `y⁺` and `y⁻` tokens (0 where absent).
    pub(super) ref_logprob: Vec<(f64, f64)>,
    /// `K = 1` only: the seen-row form on the rows of the training tokens (the seen-row path
    /// gathers those rows of `θ`, and scatters the gradient back).
    pub(super) seen_rows: Option<SeenRowsImplicitRm>,
}

impl ImplicitRm {
    /// `path = SeenRows` requires single-token responses (`train.imrm_gradient` is validated
    /// against `setup.response_length`; a caller that bypasses validation panics here).
    pub fn new(
        pairs: &PairSet,
        unembedding_init: ArrayView2<f64>,
        beta: f64,
        path: GradientPath,
    ) -> ImplicitRm {
        let (n, k_len, d) = (
            pairs.len(),
            pairs.response_length(),
            pairs.prompt_hidden.ncols(),
        );
        assert!(
            path == GradientPath::Full || k_len == 1,
            "the sparse IM-RM gradient needs K = 1"
        );
        let rows = n * (2 * k_len - 1);
        let mut states = Array2::zeros((rows, d));
        let mut positions = Vec::with_capacity(rows);
        let mut pair_rows = Vec::with_capacity(n + 1);
        for i in 0..n {
            pair_rows.push(positions.len());
            states
                .row_mut(positions.len())
                .assign(&pairs.prompt_hidden.row(i));
            positions.push(Position {
                pair: i,
                index: 0,
                plus: Some(pairs.chosen_tokens[[i, 0]]),
                minus: Some(pairs.rejected_tokens[[i, 0]]),
            });
            for k in 1..k_len {
                states
                    .row_mut(positions.len())
                    .assign(&pairs.chosen_prefix_hidden.slice(s![i, k, ..]));
                positions.push(Position {
                    pair: i,
                    index: k,
                    plus: Some(pairs.chosen_tokens[[i, k]]),
                    minus: None,
                });
            }
            for k in 1..k_len {
                states
                    .row_mut(positions.len())
                    .assign(&pairs.rejected_prefix_hidden.slice(s![i, k, ..]));
                positions.push(Position {
                    pair: i,
                    index: k,
                    plus: None,
                    minus: Some(pairs.rejected_tokens[[i, k]]),
                });
            }
        }
        pair_rows.push(positions.len());
        let mut model = ImplicitRm {
            beta,
            vocab_size: unembedding_init.nrows(),
            path,
            states,
            positions,
            pair_rows,
            ref_logprob: vec![],
            seen_rows: (path == GradientPath::SeenRows).then(|| {
                SeenRowsImplicitRm::new(
                    pairs,
                    &InitialUnembedding::Given(unembedding_init.to_owned()),
                    beta,
                )
            }),
        };
        let u0 = unembedding_init.as_standard_layout();
        let u0s = u0.as_slice().expect("standard layout");
        model.ref_logprob = model.position_logprobs(u0s);
        model
    }

    /// The same model with the reference term `reference`: [`ReferenceTerm::Omitted`] drops
    /// `β ln π_ref` from every reward (and so from the margins the loss weights see).
    pub fn with_reference(mut self, reference: ReferenceTerm) -> ImplicitRm {
        if reference == ReferenceTerm::Omitted {
            self.ref_logprob.iter_mut().for_each(|r| *r = (0.0, 0.0));
        }
        self.seen_rows = self.seen_rows.map(|s| s.with_reference(reference));
        self
    }

    pub(super) fn dim(&self) -> usize {
        self.states.ncols()
    }

    pub(super) fn unembedding<'a>(&self, theta: &'a [f64]) -> ArrayView2<'a, f64> {
        ArrayView2::from_shape((self.vocab_size, self.dim()), theta).expect("θ has V×D entries")
    }

    /// Blocks of whole pairs: `(first pair, end pair)`.
    pub(super) fn blocks(&self) -> Vec<(usize, usize)> {
        let n = self.n_pairs();
        (0..n)
            .step_by(FULL_PATH_BLOCK)
            .map(|i0| (i0, (i0 + FULL_PATH_BLOCK).min(n)))
            .collect()
    }

    /// Logits `U h` for the rows of pairs `i0..i1`, [rows, V], in standard (row-major) layout
    /// whatever the shapes (a `.dot` of a `[rows, 1]` by a `[1, V]` may come back column-major).
    pub(super) fn block_logits(
        &self,
        u: &ArrayView2<f64>,
        (i0, i1): (usize, usize),
    ) -> Array2<f64> {
        crate::numerics::mat_mul_bt(
            self.states
                .slice(s![self.pair_rows[i0]..self.pair_rows[i1], ..]),
            u.view(),
        )
    }

    /// Per row: `(ln π_U(y⁺_k|·), ln π_U(y⁻_k|·))`, each `logit − logsumexp` over the whole
    /// vocabulary (0 where the row predicts no such token). Blocks run in parallel; results do not
    /// depend on the thread count.
    pub fn position_logprobs(&self, theta: &[f64]) -> Vec<(f64, f64)> {
        let u = self.unembedding(theta);
        let blocks: Vec<Vec<(f64, f64)>> = self
            .blocks()
            .par_iter()
            .map(|&b| {
                let r0 = self.pair_rows[b.0];
                let logits = self.block_logits(&u, b);
                logits
                    .rows()
                    .into_iter()
                    .enumerate()
                    .map(|(r, row)| {
                        let lse = logsumexp(row.as_slice().expect("contiguous row"));
                        let p = &self.positions[r0 + r];
                        (
                            p.plus.map_or(0.0, |y| row[y] - lse),
                            p.minus.map_or(0.0, |y| row[y] - lse),
                        )
                    })
                    .collect()
            })
            .collect();
        blocks.concat()
    }

    /// Rewards `(r_U(x_i, y_i⁺), r_U(x_i, y_i⁻))` of every pair, each `Σ_k β(ln π_U − ln π_ref)`
    /// through the full log-softmax.
    pub fn rewards(&self, theta: &[f64]) -> Vec<(f64, f64)> {
        let lp = self.position_logprobs(theta);
        (0..self.n_pairs())
            .map(|i| {
                let (mut rp, mut rm) = (0.0, 0.0);
                let rows = self.pair_rows[i]..self.pair_rows[i + 1];
                for ((p, l), rf) in self.positions[rows.clone()]
                    .iter()
                    .zip(&lp[rows.clone()])
                    .zip(&self.ref_logprob[rows])
                {
                    if p.plus.is_some() {
                        rp += self.beta * (l.0 - rf.0);
                    }
                    if p.minus.is_some() {
                        rm += self.beta * (l.1 - rf.1);
                    }
                }
                (rp, rm)
            })
            .collect()
    }

    /// Margins from per-row log-probabilities: `Σ_k β(ln π − ln π_ref)` for `y⁺` minus the same
    /// for `y⁻`, summed position by position.
    pub(super) fn margins_from(
        &self,
        logprobs: &[(f64, f64)],
        row0: usize,
        pairs: (usize, usize),
        margins: &mut [f64],
    ) {
        for i in pairs.0..pairs.1 {
            let (mut rp, mut rm) = (0.0, 0.0);
            for r in self.pair_rows[i]..self.pair_rows[i + 1] {
                let (lp, lq) = logprobs[r - row0];
                let (rfp, rfq) = self.ref_logprob[r];
                let p = &self.positions[r];
                if p.plus.is_some() {
                    rp += self.beta * (lp - rfp);
                }
                if p.minus.is_some() {
                    rm += self.beta * (lq - rfq);
                }
            }
            margins[i - pairs.0] = rp - rm;
        }
    }

    /// Faithful margins `r_U(x,y⁺) − r_U(x,y⁻)`, every log-probability from the full
    /// log-softmax, as a language model computes it.
    pub fn faithful_margins(&self, theta: &[f64], margins: &mut [f64]) {
        let lp = self.position_logprobs(theta);
        self.margins_from(&lp, 0, (0, self.n_pairs()), margins);
    }

    /// `β[Σ_k ln π_ref(y⁺_k|·) − Σ_k ln π_ref(y⁻_k|·)]` per pair: what the reference subtracts.
    /// Adding it to the margins gives those of the IM-RM *without* a reference,
    /// `r = β ln π_U(y|x)` (the paper's ablation, MATH.md §1).
    pub fn reference_margins(&self) -> Vec<f64> {
        (0..self.n_pairs())
            .map(|i| {
                (self.pair_rows[i]..self.pair_rows[i + 1])
                    .map(|r| {
                        let p = &self.positions[r];
                        let (rp, rm) = self.ref_logprob[r];
                        self.beta
                            * (if p.plus.is_some() { rp } else { 0.0 }
                                - if p.minus.is_some() { rm } else { 0.0 })
                    })
                    .sum()
            })
            .collect()
    }

    /// `K = 1` seen-row margins `β[⟨U_{y⁺} − U_{y⁻}, h_x⟩ − ⟨U(0)_{y⁺} − U(0)_{y⁻}, h_x⟩]`.
    pub fn seen_row_margins(&self, theta: &[f64], margins: &mut [f64]) {
        let c = self
            .seen_rows
            .as_ref()
            .expect("the cancelled form needs K = 1");
        c.margins(&c.gather(theta), margins);
    }
}

impl MarginModel for ImplicitRm {
    fn n_params(&self) -> usize {
        self.vocab_size * self.dim()
    }

    fn n_pairs(&self) -> usize {
        self.pair_rows.len() - 1
    }

    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        match self.path {
            GradientPath::Full => self.faithful_margins(theta, margins),
            GradientPath::SeenRows => self.seen_row_margins(theta, margins),
        }
    }

    /// Full: `Σ_i w_i β Σ_rows [(e_{y⁺} − π) − (e_{y⁻} − π)] hᵀ` (absent tokens' terms omitted)
    /// with the V-vectors formed explicitly: at a shared first position the `π` terms cancel in
    /// floating point, not by assumption. Seen rows (`K = 1`): `Σ_i w_i β (e_{y⁺} − e_{y⁻}) h_{x_i}ᵀ`,
    /// writing only rows of seen tokens.
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let d = self.dim();
        match self.path {
            GradientPath::Full => {
                let u = self.unembedding(theta);
                let mut g = ArrayViewMut2::from_shape((self.vocab_size, d), grad)
                    .expect("grad has V×D entries");
                g.fill(0.0);
                let mut i = 0;
                // Blocks run in parallel a round of `threads` at a time (so at most that many
                // [V, D] block gradients exist at once) and are summed in block order: the result
                // does not depend on the thread count.
                let all_blocks = self.blocks();
                let round = rayon::current_num_threads().max(1);
                for chunk in all_blocks.chunks(round) {
                    let blocks: Vec<(Vec<f64>, Array2<f64>)> = chunk
                        .par_iter()
                        .map(|&b| {
                            let r0 = self.pair_rows[b.0];
                            let mut coeff = self.block_logits(&u, b);
                            let mut logprobs = Vec::with_capacity(coeff.nrows());
                            for (r, mut row) in coeff.rows_mut().into_iter().enumerate() {
                                let p = &self.positions[r0 + r];
                                let (lp, lq) = (
                                    p.plus.map_or(0.0, |y| row[y]),
                                    p.minus.map_or(0.0, |y| row[y]),
                                );
                                let lse =
                                    softmax_in_place(row.as_slice_mut().expect("contiguous row"));
                                logprobs.push((lp - lse, lq - lse));
                            }
                            let mut block_margins = vec![0.0; b.1 - b.0];
                            self.margins_from(&logprobs, r0, b, &mut block_margins);
                            for (r, mut row) in coeff.rows_mut().into_iter().enumerate() {
                                let p = &self.positions[r0 + r];
                                let scale = weight(block_margins[p.pair - b.0]) * self.beta;
                                let (yp, ym) =
                                    (p.plus.unwrap_or(usize::MAX), p.minus.unwrap_or(usize::MAX));
                                let (has_p, has_m) = (p.plus.is_some(), p.minus.is_some());
                                for (v, q) in row.iter_mut().enumerate() {
                                    let plus = if has_p {
                                        (if v == yp { 1.0 } else { 0.0 }) - *q
                                    } else {
                                        0.0
                                    };
                                    let minus = if has_m {
                                        (if v == ym { 1.0 } else { 0.0 }) - *q
                                    } else {
                                        0.0
                                    };
                                    *q = scale * (plus - minus);
                                }
                            }
                            let h = self.states.slice(s![r0..self.pair_rows[b.1], ..]);
                            (block_margins, coeff.t().dot(&h))
                        })
                        .collect();
                    for (block_margins, block_grad) in blocks {
                        for m in block_margins {
                            margins[i] = m;
                            i += 1;
                        }
                        g += &block_grad;
                    }
                }
            }
            GradientPath::SeenRows => {
                let c = self
                    .seen_rows
                    .as_ref()
                    .expect("the sparse IM-RM gradient needs K = 1");
                let mut g = vec![0.0; c.n_params()];
                c.margins_and_pullback(&c.gather(theta), weight, margins, &mut g);
                grad.fill(0.0);
                for (r, &t) in c.rows.iter().enumerate() {
                    grad[t * d..(t + 1) * d].copy_from_slice(&g[r * d..(r + 1) * d]);
                }
            }
        }
    }
}
