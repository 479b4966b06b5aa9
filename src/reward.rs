//! Reward models, their margins, the Bradley–Terry loss and its gradients (MATH.md §1–§2).
//!
//! Both models expose the training margins `m_i(θ)` and the pull-back `Σ_i w_i ∂m_i/∂θ`
//! ([`MarginModel`]); the loss gradient (`w_i = −σ(−m_i)/N`) and the log-time flow field
//! (`w_i = t σ(−m_i)/N`) are both pull-backs, so one code path serves GD, Adam and the flow.

use crate::config::GradientPath;
use crate::numerics::{bt_loss, logsumexp, sigmoid, softmax_in_place};
use crate::synthetic::PairSet;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2};
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
        ExplicitRm {
            features: pairs.hidden_differences(),
        }
    }
}

impl MarginModel for ExplicitRm {
    fn n_params(&self) -> usize {
        self.features.ncols()
    }

    fn n_pairs(&self) -> usize {
        self.features.nrows()
    }

    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        let m = self.features.dot(&ArrayView1::from(theta));
        margins.copy_from_slice(m.as_slice().expect("contiguous"));
    }

    /// `∂m_i/∂u = z_i`, so the pull-back is `Zᵀ w`.
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        self.margins(theta, margins);
        let w: Array1<f64> = margins.iter().map(|&m| weight(m)).collect();
        let g = self.features.t().dot(&w);
        grad.copy_from_slice(g.as_slice().expect("contiguous"));
    }
}

/// Examples per block of the full-vocabulary path: bounds the `[block, V]` logits buffer.
const FULL_PATH_BLOCK: usize = 64;

/// IM-RM `r_U(x,y) = β[ln π_U(y|x) − ln π_ref(y|x)]`, `π_U = softmax(U h_x)`, `π_ref = π_{U(0)}`
/// (MATH.md §1). `θ = U ∈ R^{V×D}` flattened row-major.
#[derive(Debug, Clone)]
pub struct ImplicitRm {
    pub beta: f64,
    pub vocab_size: usize,
    pub path: GradientPath,
    /// `h_{x_i}`, [N, D].
    pub prompt_hidden: Array2<f64>,
    pub chosen_token: Vec<usize>,
    pub rejected_token: Vec<usize>,
    /// `ln π_ref(y_i⁺|x_i)` and `ln π_ref(y_i⁻|x_i)` from the full log-softmax of `U(0) h_{x_i}`.
    ref_logprob: Vec<(f64, f64)>,
    /// `⟨U(0)_{y_i⁺} − U(0)_{y_i⁻}, h_{x_i}⟩`: the reference term of the cancelled form.
    ref_logit_gap: Vec<f64>,
}

impl ImplicitRm {
    pub fn new(
        pairs: &PairSet,
        unembedding_init: ArrayView2<f64>,
        beta: f64,
        path: GradientPath,
    ) -> ImplicitRm {
        let mut model = ImplicitRm {
            beta,
            vocab_size: unembedding_init.nrows(),
            path,
            prompt_hidden: pairs.prompt_hidden.clone(),
            chosen_token: pairs.chosen_token.clone(),
            rejected_token: pairs.rejected_token.clone(),
            ref_logprob: vec![],
            ref_logit_gap: vec![],
        };
        let u0 = unembedding_init.as_standard_layout();
        let u0s = u0.as_slice().expect("standard layout");
        model.ref_logprob = model.chosen_rejected_logprobs(u0s);
        model.ref_logit_gap = model.logit_gaps(u0s);
        model
    }

    fn dim(&self) -> usize {
        self.prompt_hidden.ncols()
    }

    fn unembedding<'a>(&self, theta: &'a [f64]) -> ArrayView2<'a, f64> {
        ArrayView2::from_shape((self.vocab_size, self.dim()), theta).expect("θ has V×D entries")
    }

    /// Logits `U h_{x_i}` for the examples of one block, [b, V].
    fn block_logits(&self, u: &ArrayView2<f64>, i0: usize) -> Array2<f64> {
        let i1 = (i0 + FULL_PATH_BLOCK).min(self.n_pairs());
        self.prompt_hidden.slice(s![i0..i1, ..]).dot(&u.t())
    }

    fn block_starts(&self) -> Vec<usize> {
        (0..self.n_pairs()).step_by(FULL_PATH_BLOCK).collect()
    }

    /// `(ln π_U(y_i⁺|x_i), ln π_U(y_i⁻|x_i))`, each `logit − logsumexp` over the full vocabulary.
    /// Blocks of examples run in parallel; the result does not depend on the thread count.
    pub fn chosen_rejected_logprobs(&self, theta: &[f64]) -> Vec<(f64, f64)> {
        let u = self.unembedding(theta);
        let blocks: Vec<Vec<(f64, f64)>> = self
            .block_starts()
            .par_iter()
            .map(|&i0| {
                let logits = self.block_logits(&u, i0);
                logits
                    .rows()
                    .into_iter()
                    .enumerate()
                    .map(|(r, row)| {
                        let lse = logsumexp(row.as_slice().expect("contiguous row"));
                        (
                            row[self.chosen_token[i0 + r]] - lse,
                            row[self.rejected_token[i0 + r]] - lse,
                        )
                    })
                    .collect()
            })
            .collect();
        blocks.concat()
    }

    /// `⟨U_{y_i⁺} − U_{y_i⁻}, h_{x_i}⟩` (rows of seen tokens only).
    fn logit_gaps(&self, theta: &[f64]) -> Vec<f64> {
        let d = self.dim();
        (0..self.n_pairs())
            .map(|i| {
                let h = self.prompt_hidden.row(i);
                let (p, q) = (self.chosen_token[i] * d, self.rejected_token[i] * d);
                (0..d).map(|j| (theta[p + j] - theta[q + j]) * h[j]).sum()
            })
            .collect()
    }

    /// Faithful margins `r_U(x,y⁺) − r_U(x,y⁻)`, each reward `β(ln π_U − ln π_ref)` from the full
    /// log-softmax, as a language model computes it.
    pub fn faithful_margins(&self, theta: &[f64], margins: &mut [f64]) {
        for (i, (lp, lq)) in self.chosen_rejected_logprobs(theta).into_iter().enumerate() {
            let (rp, rq) = self.ref_logprob[i];
            margins[i] = self.beta * (lp - rp) - self.beta * (lq - rq);
        }
    }

    /// Cancelled-form margins `β[⟨U_{y⁺} − U_{y⁻}, h_x⟩ − ⟨U(0)_{y⁺} − U(0)_{y⁻}, h_x⟩]`.
    pub fn cancelled_margins(&self, theta: &[f64], margins: &mut [f64]) {
        for (i, g) in self.logit_gaps(theta).into_iter().enumerate() {
            margins[i] = self.beta * (g - self.ref_logit_gap[i]);
        }
    }
}

impl MarginModel for ImplicitRm {
    fn n_params(&self) -> usize {
        self.vocab_size * self.dim()
    }

    fn n_pairs(&self) -> usize {
        self.chosen_token.len()
    }

    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        match self.path {
            GradientPath::Full => self.faithful_margins(theta, margins),
            GradientPath::Sparse => self.cancelled_margins(theta, margins),
        }
    }

    /// Full: `Σ_i w_i β[(e_{y⁺} − π_i) − (e_{y⁻} − π_i)] h_{x_i}ᵀ` with the V-vectors formed
    /// explicitly (the `π_i` terms cancel in floating point, not by assumption).
    /// Sparse: `Σ_i w_i β (e_{y⁺} − e_{y⁻}) h_{x_i}ᵀ`, writing only rows of seen tokens.
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
                let blocks: Vec<(Vec<f64>, Array2<f64>)> = self
                    .block_starts()
                    .par_iter()
                    .map(|&i0| {
                        let mut coeff = self.block_logits(&u, i0);
                        let mut block_margins = Vec::with_capacity(coeff.nrows());
                        for (r, mut row) in coeff.rows_mut().into_iter().enumerate() {
                            let i = i0 + r;
                            let (yp, ym) = (self.chosen_token[i], self.rejected_token[i]);
                            let (lp, lq) = (row[yp], row[ym]);
                            let row = row.as_slice_mut().expect("contiguous row");
                            let lse = softmax_in_place(row);
                            let (rp, rq) = self.ref_logprob[i];
                            let m = self.beta * (lp - lse - rp) - self.beta * (lq - lse - rq);
                            block_margins.push(m);
                            let scale = weight(m) * self.beta;
                            for (v, p) in row.iter_mut().enumerate() {
                                let plus = if v == yp { 1.0 } else { 0.0 } - *p;
                                let minus = if v == ym { 1.0 } else { 0.0 } - *p;
                                *p = scale * (plus - minus);
                            }
                        }
                        let h = self.prompt_hidden.slice(s![i0..i0 + coeff.nrows(), ..]);
                        (block_margins, coeff.t().dot(&h))
                    })
                    .collect();
                let mut g = ArrayViewMut2::from_shape((self.vocab_size, d), grad)
                    .expect("grad has V×D entries");
                g.fill(0.0);
                let mut i = 0;
                for (block_margins, block_grad) in blocks {
                    for m in block_margins {
                        margins[i] = m;
                        i += 1;
                    }
                    g += &block_grad;
                }
            }
            GradientPath::Sparse => {
                self.cancelled_margins(theta, margins);
                grad.fill(0.0);
                for (i, &m) in margins.iter().enumerate() {
                    let c = weight(m) * self.beta;
                    let h = self.prompt_hidden.row(i);
                    let (p, q) = (self.chosen_token[i] * d, self.rejected_token[i] * d);
                    for j in 0..d {
                        grad[p + j] += c * h[j];
                        grad[q + j] -= c * h[j];
                    }
                }
            }
        }
    }
}
