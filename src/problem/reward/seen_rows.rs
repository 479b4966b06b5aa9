//! The seen-row IM-RM (single-token responses): the state is the block of rows of `U` of the
//! training tokens; the log-normaliser is shared by a pair's two responses and cancels.

use super::implicit::ReferenceTerm;
use super::margin::MarginModel;
use crate::numerics::{row_axpy, row_axpy2, row_dot, row_dot2};
use crate::problem::rows::RowBlock;
use crate::problem::synthetic::{InitialUnembedding, PairSet};
use ndarray::Array2;
use rayon::prelude::*;

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
    pub(super) prompt_hidden: Array2<f64>,
    /// Per pair: indices into `rows` of `y_i⁺` and `y_i⁻` (`None`: not in `R`, fixed at `U(0)`).
    pub(super) pair_rows: Vec<(Option<usize>, Option<usize>)>,
    /// Per pair: `(⟨U(0)_{y⁺}, h⟩, ⟨U(0)_{y⁻}, h⟩)`, the reference logits; also the logits of
    /// the sides outside `R`.
    pub(super) ref_logits: Vec<(f64, f64)>,
    /// `U(0)_R`, flattened.
    pub(super) initial_rows: Vec<f64>,
    /// Whether `β ln π_ref` is subtracted ([`ReferenceTerm`]).
    pub(super) reference: ReferenceTerm,
}

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
            reference: ReferenceTerm::Subtracted,
        }
    }

    /// The same model with the reference term `reference` (MATH.md §1: the ablation without a
    /// reference, `r = β ln π_U`, trained on its own margins).
    pub fn with_reference(mut self, reference: ReferenceTerm) -> SeenRowsImplicitRm {
        self.reference = reference;
        self
    }

    pub(super) fn dim(&self) -> usize {
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
    pub(super) fn fused_pullback(
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

    /// `m_i = β[(⟨U_{y⁺}, h_{x_i}⟩ − ⟨U_{y⁻}, h_{x_i}⟩) − (⟨U(0)_{y⁺}, h_{x_i}⟩ − ⟨U(0)_{y⁻}, h_{x_i}⟩)]`;
    /// without the reference, `β(⟨U_{y⁺}, h_{x_i}⟩ − ⟨U_{y⁻}, h_{x_i}⟩)` (the normaliser cancels).
    pub(super) fn pair_margin(&self, theta: &[f64], i: usize) -> f64 {
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
        match self.reference {
            ReferenceTerm::Subtracted => self.beta * ((lp - lq) - (rp - rq)),
            ReferenceTerm::Omitted => self.beta * (lp - lq),
        }
    }

    /// The logit `⟨U_y, h_{x_i}⟩` of one side: from `θ_R` when `y ∈ R`, else `U(0)`'s.
    pub(super) fn logit(&self, theta: &[f64], i: usize, row: Option<usize>, fixed: f64) -> f64 {
        let d = self.dim();
        match row {
            Some(r) => row_dot(&theta[r * d..(r + 1) * d], self.hidden_row(i)),
            None => fixed,
        }
    }

    /// `h_{x_i}` as a slice (kept row-major).
    pub(super) fn hidden_row(&self, i: usize) -> &[f64] {
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

/// Rows `p ≠ q` of a flattened `[rows, d]` buffer, both mutable.
pub(super) fn two_rows(g: &mut [f64], p: usize, q: usize, d: usize) -> (&mut [f64], &mut [f64]) {
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
pub(super) const SEEN_ROWS_CHUNK: usize = 256;
