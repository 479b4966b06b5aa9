//! The problem trait: a reward model seen through its margins on a fixed set of preference
//! pairs, and the Bradley–Terry loss and gradient built on its pull-back (MATH.md §1–§2).

use crate::numerics::{bt_loss, sigmoid};

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
