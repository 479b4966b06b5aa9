//! Screening of the flow field: pairs whose weight is provably below a budget are skipped
//! between full evaluations.

use crate::problem::reward::MarginModel;

/// Safe screening of the log-time flow field (MATH.md §2, §4) for a model whose margins are
/// affine in `θ` (`m_i = ⟨θ, φ_i⟩ + b_i`), given a max-margin direction `d` (`u*`, or `ΔU*` on the
/// trained rows) with `c_i = ⟨d, φ_i⟩ ≥ 1`.
///
/// At a full evaluation at `(s_0, θ_0)` with margins `m_i^0`, write any later state as
/// `θ = θ_0 + (s − s_0) d + r`. Then `m_i ≥ m_i^0 + (s − s_0) c_i − ‖φ_i‖ ‖r‖`, so for `s ≥ s_0`
/// and `‖r‖ ≤ r_max = 1/max_i ‖φ_i‖` a pair with `c_i ≥ 1` has weight
/// `exp(s − softplus(m_i))/N ≤ exp(s_0 − m_i^0 + ‖φ_i‖ r_max)/N`. Pairs whose bound times `‖φ_i‖`
/// is at most `budget = 1e-3 · atol` are left out of the field until the next full evaluation
/// (any step with `s < s_0` or `‖r‖ > r_max` makes one); together they change the field by at most
/// `budget` in norm, a thousandth of the integrator's absolute tolerance per unit of `ln t`.
pub struct Screening<'a> {
    /// `d` in `θ`'s layout.
    pub direction: &'a [f64],
}

/// Counters of a screened flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ScreeningStats {
    /// Field evaluations over every pair (each one also refreshes the active set).
    pub full_evaluations: u64,
    /// Field evaluations over the active pairs only.
    pub screened_evaluations: u64,
    /// Mean fraction of the pairs evaluated per field evaluation.
    pub mean_active_fraction: f64,
}

/// Factor of `atol` that the screened-out pairs may contribute to the field, in norm.
pub(super) const SCREENING_BUDGET: f64 = 1e-3;

/// The state of a screened field ([`Screening`]).
pub(super) struct Screener<'a> {
    pub(super) direction: &'a [f64],
    /// `c_i = ⟨d, φ_i⟩`.
    pub(super) direction_margins: Vec<f64>,
    pub(super) feature_norms: Vec<f64>,
    pub(super) r_max: f64,
    pub(super) ln_budget: f64,
    /// `(s_0, θ_0)` of the last full evaluation and the pairs active since.
    pub(super) reference: Option<(f64, Vec<f64>, Vec<usize>)>,
    pub(super) active_margins: Vec<f64>,
    pub(super) stats: ScreeningStats,
    pub(super) active_sum: f64,
}

impl<'a> Screener<'a> {
    /// `None` when the model's margins are not affine or `d` does not fit `θ`.
    pub(super) fn new(
        model: &dyn MarginModel,
        screening: Screening<'a>,
        theta: &[f64],
        atol: f64,
    ) -> Option<Screener<'a>> {
        let feature_norms = model.feature_norms()?;
        if screening.direction.len() != theta.len() {
            return None;
        }
        let n = model.n_pairs();
        let (mut at, mut moved) = (vec![0.0; n], vec![0.0; n]);
        model.margins(theta, &mut at);
        let shifted: Vec<f64> = theta
            .iter()
            .zip(screening.direction)
            .map(|(a, b)| a + b)
            .collect();
        model.margins(&shifted, &mut moved);
        let largest = feature_norms.iter().copied().fold(0.0, f64::max);
        if largest <= 0.0 || !largest.is_finite() {
            return None;
        }
        Some(Screener {
            direction: screening.direction,
            direction_margins: moved.iter().zip(&at).map(|(a, b)| a - b).collect(),
            feature_norms,
            r_max: 1.0 / largest,
            ln_budget: (SCREENING_BUDGET * atol).ln(),
            reference: None,
            active_margins: Vec::new(),
            stats: ScreeningStats::default(),
            active_sum: 0.0,
        })
    }

    /// The field at `(s, θ)` into `field`: over the active pairs when the last reference still
    /// bounds the others, else over every pair (then a new reference). Returns the margins it
    /// computed (for the finiteness check).
    pub(super) fn field<'m>(
        &'m mut self,
        model: &dyn MarginModel,
        s: f64,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &'m mut [f64],
        field: &mut [f64],
    ) -> &'m [f64] {
        let n = margins.len();
        if let Some((s0, theta0, active)) = &self.reference {
            if s >= *s0 {
                let r2: f64 = theta
                    .iter()
                    .zip(theta0)
                    .zip(self.direction)
                    .map(|((a, b), d)| {
                        let r = a - b - (s - s0) * d;
                        r * r
                    })
                    .sum();
                if r2.sqrt() <= self.r_max {
                    self.active_margins.resize(active.len(), 0.0);
                    model.margins_and_pullback_on(
                        theta,
                        weight,
                        active,
                        &mut self.active_margins,
                        field,
                    );
                    self.stats.screened_evaluations += 1;
                    self.active_sum += active.len() as f64 / n as f64;
                    return &self.active_margins;
                }
            }
        }
        model.margins_and_pullback(theta, weight, margins, field);
        let active: Vec<usize> = (0..n)
            .filter(|&i| {
                let norm = self.feature_norms[i];
                let droppable = self.direction_margins[i] >= 1.0
                    && norm > 0.0
                    && s - margins[i] + norm * self.r_max + norm.ln() <= self.ln_budget;
                !droppable
            })
            .collect();
        self.reference = Some((s, theta.to_vec(), active));
        self.stats.full_evaluations += 1;
        self.active_sum += 1.0;
        margins
    }

    pub(super) fn stats(&self) -> ScreeningStats {
        let total = self.stats.full_evaluations + self.stats.screened_evaluations;
        ScreeningStats {
            mean_active_fraction: if total > 0 {
                self.active_sum / total as f64
            } else {
                1.0
            },
            ..self.stats
        }
    }
}
