//! Reward models, their margins, the Bradley–Terry loss and its gradients (MATH.md §1–§2).
//!
//! Both models expose the training margins `m_i(θ)` and the pull-back `Σ_i w_i ∂m_i/∂θ`
//! ([`MarginModel`]); the loss gradient (`w_i = −σ(−m_i)/N`) and the log-time flow field
//! (`w_i = t σ(−m_i)/N`) are both pull-backs, so one code path serves GD, Adam and the flow.

use crate::config::GradientPath;
use crate::numerics::{
    bt_loss, logsumexp, row_axpy, row_axpy2, row_dot, row_dot2, sigmoid, softmax_in_place,
};
use crate::problem::rows::RowBlock;
use crate::problem::synthetic::{InitialUnembedding, PairSet};
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

/// A reward model seen through its margins on a fixed set of preference pairs.
pub trait MarginModel: Send + Sync {
    /// Number of trainable parameters (length of `θ`).
    fn n_params(&self) -> usize;
    /// Number of pairs `N`.
    fn n_pairs(&self) -> usize;
    /// Margins `m_i = r(x_i, y_i⁺) − r(x_i, y_i⁻)` into `margins`.
    fn margins(&self, theta: &[f64], margins: &mut [f64]);
    /// Margins, then `grad ← Σ_i weight(m_i) ∂m_i/∂θ` (overwritten, not accumulated).
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    );
    /// For a model whose margins are affine in `θ`, `m_i = ⟨θ, φ_i⟩ + b_i`: the norms `‖φ_i‖`
    /// (the Lipschitz constants of the margins). `None` (the default) for any other model.
    fn feature_norms(&self) -> Option<Vec<f64>> {
        None
    }
    /// The margins of the pairs `pairs` only (into `margins`, in that order), then
    /// `grad ← Σ_{i ∈ pairs} weight(m_i) ∂m_i/∂θ` (a screened flow field, see
    /// `training::Screening`). Used only when [`Self::feature_norms`] is `Some`; the default
    /// evaluates every pair (a superset: exact, no saving).
    fn margins_and_pullback_on(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        pairs: &[usize],
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let mut all = vec![0.0; self.n_pairs()];
        self.margins_and_pullback(theta, weight, &mut all, grad);
        for (o, &i) in margins.iter_mut().zip(pairs) {
            *o = all[i];
        }
    }
}

/// `L = (1/N) Σ ℓ(m_i)` and `∇L = −(1/N) Σ σ(−m_i) ∂m_i/∂θ` into `grad` (MATH.md §1–§2).
pub fn loss_and_gradient(model: &dyn MarginModel, theta: &[f64], grad: &mut [f64]) -> f64 {
    let n = model.n_pairs() as f64;
    let mut margins = vec![0.0; model.n_pairs()];
    model.margins_and_pullback(theta, &|m| -sigmoid(-m) / n, &mut margins, grad);
    mean_loss(&margins)
}

/// `(1/N) Σ ℓ(m_i)` with the stable `ℓ(m) = softplus(−m)`.
pub fn mean_loss(margins: &[f64]) -> f64 {
    margins.iter().map(|&m| bt_loss(m)).sum::<f64>() / margins.len() as f64
}

/// EX-RM `r_u(x,y) = ⟨u, h_{x,y}⟩`; margins `m_i = ⟨u, z_i⟩` (MATH.md §1). `θ = u ∈ R^D`.
#[derive(Debug, Clone)]
pub struct ExplicitRm {
    /// `z_i = h_{x_i,y_i⁺} − h_{x_i,y_i⁻}`, [N, D].
    pub features: Array2<f64>,
}

impl ExplicitRm {
    pub fn new(pairs: &PairSet) -> ExplicitRm {
        let z = pairs.hidden_differences();
        ExplicitRm {
            features: if z.is_standard_layout() {
                z
            } else {
                z.as_standard_layout().into_owned()
            },
        }
    }

    /// `z_i` as a slice (the features are kept row-major).
    fn feature_row(&self, i: usize) -> &[f64] {
        self.features
            .row(i)
            .to_slice()
            .expect("EX-RM features are row-major")
    }
}

/// Pairs per parallel chunk of the EX-RM's margins and pull-back: fixed, so the sums (chunk
/// partials added in chunk order) do not depend on the thread count.
const EXPLICIT_CHUNK: usize = 256;

impl MarginModel for ExplicitRm {
    fn n_params(&self) -> usize {
        self.features.ncols()
    }

    fn n_pairs(&self) -> usize {
        self.features.nrows()
    }

    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        margins
            .par_chunks_mut(EXPLICIT_CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                for (k, m) in out.iter_mut().enumerate() {
                    *m = row_dot(self.feature_row(c * EXPLICIT_CHUNK + k), theta);
                }
            });
    }

    /// `∂m_i/∂u = z_i`, so the pull-back is `Zᵀ w`: one pass over `Z`, each row's margin, weight
    /// and contribution together (the screened form over every pair).
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let all: Vec<usize> = (0..self.n_pairs()).collect();
        self.margins_and_pullback_on(theta, weight, &all, margins, grad);
    }

    /// `‖z_i‖`.
    fn feature_norms(&self) -> Option<Vec<f64>> {
        Some(
            self.features
                .rows()
                .into_iter()
                .map(|z| z.dot(&z).sqrt())
                .collect(),
        )
    }

    fn margins_and_pullback_on(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        pairs: &[usize],
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let partials: Vec<Vec<f64>> = margins
            .par_chunks_mut(EXPLICIT_CHUNK)
            .zip(pairs.par_chunks(EXPLICIT_CHUNK))
            .map(|(out, idx)| {
                let mut g = vec![0.0; theta.len()];
                for (m, &i) in out.iter_mut().zip(idx) {
                    let z = self.feature_row(i);
                    *m = row_dot(z, theta);
                    row_axpy(weight(*m), z, &mut g);
                }
                g
            })
            .collect();
        grad.fill(0.0);
        for g in partials {
            grad.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += b);
        }
    }
}

/// Pairs per block of the full-vocabulary path: bounds the `[rows, V]` logits buffer.
const FULL_PATH_BLOCK: usize = 64;

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
    pair_rows: Vec<usize>,
    /// Per row: `ln π_ref` of its `y⁺` and `y⁻` tokens (0 where absent).
    ref_logprob: Vec<(f64, f64)>,
    /// `K = 1` only: the seen-row form on the rows of the training tokens (the seen-row path
    /// gathers those rows of `θ`, and scatters the gradient back).
    seen_rows: Option<SeenRowsImplicitRm>,
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

    fn dim(&self) -> usize {
        self.states.ncols()
    }

    fn unembedding<'a>(&self, theta: &'a [f64]) -> ArrayView2<'a, f64> {
        ArrayView2::from_shape((self.vocab_size, self.dim()), theta).expect("θ has V×D entries")
    }

    /// Blocks of whole pairs: `(first pair, end pair)`.
    fn blocks(&self) -> Vec<(usize, usize)> {
        let n = self.n_pairs();
        (0..n)
            .step_by(FULL_PATH_BLOCK)
            .map(|i0| (i0, (i0 + FULL_PATH_BLOCK).min(n)))
            .collect()
    }

    /// Logits `U h` for the rows of pairs `i0..i1`, [rows, V], in standard (row-major) layout
    /// whatever the shapes (a `.dot` of a `[rows, 1]` by a `[1, V]` may come back column-major).
    fn block_logits(&self, u: &ArrayView2<f64>, (i0, i1): (usize, usize)) -> Array2<f64> {
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
    fn margins_from(
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

/// The IM-RM restricted to a block of rows `R` of `U` (single-token responses, seen-row form,
/// MATH.md §2 and Theorem 2(a)): `θ_R = U_R ∈ R^{|R|×D}`, every other row fixed at `U(0)`. With
/// `R = T` (the training tokens) this is the training objective: rows outside `T` have zero
/// gradient, so gradient flow, GD and Adam leave them at `U(0)`, and a step costs `O(N·D)`
/// whatever `V`. On an evaluation split a token outside `R` enters through its fixed logit
/// `⟨U(0)_y, h_x⟩`. The log-normaliser is shared by the two responses of a pair and cancels, so
/// no margin touches the other `V − |R|` rows.
#[derive(Debug, Clone)]
pub struct SeenRowsImplicitRm {
    pub beta: f64,
    /// `R`, sorted: row `r` of `θ_R` is `U_{rows[r]}`.
    pub rows: Vec<usize>,
    /// `h_{x_i}`, [N, D].
    prompt_hidden: Array2<f64>,
    /// Per pair: indices into `rows` of `y_i⁺` and `y_i⁻` (`None`: not in `R`, fixed at `U(0)`).
    pair_rows: Vec<(Option<usize>, Option<usize>)>,
    /// Per pair: `(⟨U(0)_{y⁺}, h⟩, ⟨U(0)_{y⁻}, h⟩)`, the reference logits; also the logits of
    /// the sides outside `R`.
    ref_logits: Vec<(f64, f64)>,
    /// `U(0)_R`, flattened.
    initial_rows: Vec<f64>,
}

/// Rows `p ≠ q` of a flattened `[rows, d]` buffer, both mutable.
fn two_rows(g: &mut [f64], p: usize, q: usize, d: usize) -> (&mut [f64], &mut [f64]) {
    if p < q {
        let (lo, hi) = g.split_at_mut(q * d);
        (&mut lo[p * d..(p + 1) * d], &mut hi[..d])
    } else {
        let (lo, hi) = g.split_at_mut(p * d);
        let (gq, gp) = (&mut lo[q * d..(q + 1) * d], &mut hi[..d]);
        (gp, gq)
    }
}

/// Pairs per parallel chunk of the seen-row margins: fixed, so results do not depend on the
/// thread count.
const SEEN_ROWS_CHUNK: usize = 256;

impl SeenRowsImplicitRm {
    /// The training objective: `R = T`, the tokens of `pairs`. Needs `K = 1`.
    pub fn new(
        pairs: &PairSet,
        unembedding_init: &InitialUnembedding,
        beta: f64,
    ) -> SeenRowsImplicitRm {
        SeenRowsImplicitRm::on_rows(pairs, &pairs.tokens(), unembedding_init, beta)
    }

    /// The model on `pairs` with trainable rows `rows` (sorted); tokens of `pairs` outside
    /// `rows` stay at `U(0)`. Needs `K = 1`.
    pub fn on_rows(
        pairs: &PairSet,
        rows: &[usize],
        unembedding_init: &InitialUnembedding,
        beta: f64,
    ) -> SeenRowsImplicitRm {
        assert_eq!(
            pairs.response_length(),
            1,
            "the reduced IM-RM state needs single-token responses"
        );
        let index = |t: usize| rows.binary_search(&t).ok();
        let pair_rows: Vec<(Option<usize>, Option<usize>)> = (0..pairs.len())
            .map(|i| {
                let (p, q) = pairs.token_pair(i);
                (index(p), index(q))
            })
            .collect();
        let tokens = pairs.tokens();
        let u0_tokens = unembedding_init.rows(&tokens);
        let u0 = |t: usize| u0_tokens.row(tokens.binary_search(&t).expect("token of the pairs"));
        let ref_logits = (0..pairs.len())
            .map(|i| {
                let (p, q) = pairs.token_pair(i);
                let h = pairs.prompt_hidden.row(i);
                let h = h.as_standard_layout();
                let h = h.as_slice().expect("contiguous");
                (
                    row_dot(u0(p).as_slice().expect("row"), h),
                    row_dot(u0(q).as_slice().expect("row"), h),
                )
            })
            .collect();
        SeenRowsImplicitRm {
            beta,
            rows: rows.to_vec(),
            prompt_hidden: pairs.prompt_hidden.as_standard_layout().into_owned(),
            pair_rows,
            ref_logits,
            initial_rows: unembedding_init.rows(rows).into_raw_vec_and_offset().0,
        }
    }

    fn dim(&self) -> usize {
        self.prompt_hidden.ncols()
    }

    /// `θ_R(0) = U(0)_R`.
    pub fn initial(&self) -> Vec<f64> {
        self.initial_rows.clone()
    }

    /// The rows of `R` of a full `U` (flattened `[V, D]`).
    pub fn gather(&self, u: &[f64]) -> Vec<f64> {
        RowBlock::new(None, u, self.dim()).select(&self.rows)
    }

    /// The full `U`: `U(0)` with the rows of `R` replaced by `θ_R` (`O(V·D)`: for the
    /// full-vocabulary paths and exports that ask for it).
    pub fn embed(&self, theta: &[f64], unembedding_init: &InitialUnembedding) -> Vec<f64> {
        let mut u = unembedding_init.full().into_raw_vec_and_offset().0;
        RowBlock::new(Some(&self.rows), theta, self.dim()).scatter_into(&mut u, None);
        u
    }

    /// Margins of `pairs` (into `margins`, in order) and `grad ← Σ_{i∈pairs} w_i β (e_{y⁺} − e_{y⁻}) h_{x_i}ᵀ`
    /// on the rows of `R`, in one pass (see [`MarginModel::margins_and_pullback`]).
    fn fused_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        pairs: &[usize],
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let d = self.dim();
        let partials: Vec<Vec<f64>> = margins
            .par_chunks_mut(SEEN_ROWS_CHUNK)
            .zip(pairs.par_chunks(SEEN_ROWS_CHUNK))
            .map(|(out, idx)| {
                let mut g = vec![0.0; grad.len()];
                for (m, &i) in out.iter_mut().zip(idx) {
                    let (p, q) = self.pair_rows[i];
                    *m = self.pair_margin(theta, i);
                    let c = weight(*m) * self.beta;
                    let h = self.hidden_row(i);
                    match (p, q) {
                        (Some(p), Some(q)) if p != q => {
                            let (gp, gq) = two_rows(&mut g, p, q, d);
                            row_axpy2(c, h, gp, gq);
                        }
                        _ => {
                            if let Some(p) = p {
                                row_axpy(c, h, &mut g[p * d..(p + 1) * d]);
                            }
                            if let Some(q) = q {
                                row_axpy(-c, h, &mut g[q * d..(q + 1) * d]);
                            }
                        }
                    }
                }
                g
            })
            .collect();
        grad.fill(0.0);
        for g in partials {
            grad.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += b);
        }
    }

    /// `m_i = β[(⟨U_{y⁺}, h_{x_i}⟩ − ⟨U_{y⁻}, h_{x_i}⟩) − (⟨U(0)_{y⁺}, h_{x_i}⟩ − ⟨U(0)_{y⁻}, h_{x_i}⟩)]`.
    fn pair_margin(&self, theta: &[f64], i: usize) -> f64 {
        let (p, q) = self.pair_rows[i];
        let (rp, rq) = self.ref_logits[i];
        let (lp, lq) = match (p, q) {
            (Some(p), Some(q)) => {
                let d = self.dim();
                row_dot2(
                    &theta[p * d..(p + 1) * d],
                    &theta[q * d..(q + 1) * d],
                    self.hidden_row(i),
                )
            }
            _ => (self.logit(theta, i, p, rp), self.logit(theta, i, q, rq)),
        };
        self.beta * ((lp - lq) - (rp - rq))
    }

    /// The logit `⟨U_y, h_{x_i}⟩` of one side: from `θ_R` when `y ∈ R`, else `U(0)`'s.
    fn logit(&self, theta: &[f64], i: usize, row: Option<usize>, fixed: f64) -> f64 {
        let d = self.dim();
        match row {
            Some(r) => row_dot(&theta[r * d..(r + 1) * d], self.hidden_row(i)),
            None => fixed,
        }
    }

    /// `h_{x_i}` as a slice (kept row-major).
    fn hidden_row(&self, i: usize) -> &[f64] {
        self.prompt_hidden
            .row(i)
            .to_slice()
            .expect("prompt states are row-major")
    }
}

impl MarginModel for SeenRowsImplicitRm {
    fn n_params(&self) -> usize {
        self.rows.len() * self.dim()
    }

    fn n_pairs(&self) -> usize {
        self.pair_rows.len()
    }

    /// `m_i = β[(⟨U_{y⁺}, h_{x_i}⟩ − ⟨U_{y⁻}, h_{x_i}⟩) − (⟨U(0)_{y⁺}, h_{x_i}⟩ − ⟨U(0)_{y⁻}, h_{x_i}⟩)]`:
    /// exactly 0 (same operations on the same numbers) while both rows are at `U(0)`.
    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        margins
            .par_chunks_mut(SEEN_ROWS_CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                for (k, m) in out.iter_mut().enumerate() {
                    *m = self.pair_margin(theta, c * SEEN_ROWS_CHUNK + k);
                }
            });
    }

    /// `Σ_i w_i β (e_{y⁺} − e_{y⁻}) h_{x_i}ᵀ` on the rows of `R`: one pass over the pairs in
    /// fixed chunks (each pair's margin, weight and contribution together, into a chunk-local
    /// `|R| × D` partial), partials added in chunk order.
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let all: Vec<usize> = (0..self.n_pairs()).collect();
        self.fused_pullback(theta, weight, &all, margins, grad);
    }

    /// `β √(n_i) ‖h_{x_i}‖`, `n_i` the number of the pair's sides in `R` (margins are affine in `θ_R`).
    fn feature_norms(&self) -> Option<Vec<f64>> {
        Some(
            self.pair_rows
                .iter()
                .enumerate()
                .map(|(i, &(p, q))| {
                    let h = self.prompt_hidden.row(i);
                    let sides = match (p, q) {
                        (Some(a), Some(b)) if a == b => 0.0,
                        _ => (p.is_some() as u8 + q.is_some() as u8) as f64,
                    };
                    self.beta * (sides * h.dot(&h)).sqrt()
                })
                .collect(),
        )
    }

    fn margins_and_pullback_on(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        pairs: &[usize],
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        self.fused_pullback(theta, weight, pairs, margins, grad);
    }
}
