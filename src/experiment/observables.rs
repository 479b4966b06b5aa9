//! What is measured along training (MATH.md §1 accuracy, §4 convergence to max margin).

use serde::Serialize;

/// Accuracy and margin statistics of one split.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SplitMetrics {
    pub split: String,
    /// `mean 1{m_j > 0}`.
    pub strict_accuracy: f64,
    /// `mean(1{m_j > 0} + ½·1{m_j = 0})`: exact ties count ½ (τ = 0, the paper's accuracy).
    pub exact_tie_accuracy: f64,
    /// `mean(1{m_j > τ} + ½·1{|m_j| ≤ τ})`.
    pub tie_aware_accuracy: f64,
    /// Number of pairs with `|m_j| ≤ τ`.
    pub ties: usize,
    pub mean_margin: f64,
    pub min_margin: f64,
    pub max_abs_margin: f64,
}

/// Split statistics from margins with tie tolerance `tau`.
pub fn split_metrics(split: &str, margins: &[f64], tau: f64) -> SplitMetrics {
    let n = margins.len() as f64;
    let strict = margins.iter().filter(|&&m| m > 0.0).count() as f64;
    let ties = margins.iter().filter(|&&m| m.abs() <= tau).count();
    let wins = margins.iter().filter(|&&m| m > tau).count() as f64;
    let exact_ties = margins.iter().filter(|&&m| m == 0.0).count() as f64;
    SplitMetrics {
        split: split.to_string(),
        strict_accuracy: strict / n,
        exact_tie_accuracy: (strict + 0.5 * exact_ties) / n,
        tie_aware_accuracy: (wins + 0.5 * ties as f64) / n,
        ties,
        mean_margin: margins.iter().sum::<f64>() / n,
        min_margin: margins.iter().copied().fold(f64::INFINITY, f64::min),
        max_abs_margin: margins.iter().fold(0.0, |a, m| a.max(m.abs())),
    }
}

/// How far `θ(t)` (EX-RM: `u(t)`; IM-RM: `ΔU(t)`) is from the max-margin ray `θ* ln t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Convergence {
    /// `cos(θ(t), θ*)`.
    pub cosine: f64,
    /// `1 − cos(θ(t), θ*)`, computed as `‖θ_⊥‖²/(‖θ‖(‖θ‖ + ⟨θ,θ̂*⟩))` to avoid cancellation.
    pub direction_gap: f64,
    /// `‖θ(t) − θ* ln t‖` (NaN for `t ≤ 1`).
    pub residual_norm: f64,
    /// `‖θ(t) − ⟨θ(t), θ̂*⟩ θ̂*‖`.
    pub orthogonal_norm: f64,
    /// `⟨θ(t), θ̂*⟩ / ln t` → `‖θ*‖` (NaN for `t ≤ 1`).
    pub projected_rate: f64,
}

/// Convergence observables of `theta` against the max-margin solution `reference` at time
/// `t = e^{ln_t}` (`ln t` is passed so that horizons past f64's `t` work).
pub fn convergence(theta: &[f64], reference: &[f64], ln_t: f64) -> Convergence {
    let rn = crate::numerics::norm(reference);
    let tn = crate::numerics::norm(theta);
    let proj = crate::numerics::dot(theta, reference) / rn;
    let orth2 = theta
        .iter()
        .zip(reference)
        .map(|(a, b)| {
            let o = a - proj * b / rn;
            o * o
        })
        .sum::<f64>();
    let (residual_norm, projected_rate) = if ln_t > 0.0 {
        let r = theta
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b * ln_t).powi(2))
            .sum::<f64>()
            .sqrt();
        (r, proj / ln_t)
    } else {
        (f64::NAN, f64::NAN)
    };
    let direction_gap = if tn == 0.0 {
        1.0
    } else if proj > 0.0 {
        orth2 / (tn * (tn + proj))
    } else {
        1.0 - proj / tn
    };
    Convergence {
        cosine: if tn > 0.0 { proj / tn } else { 0.0 },
        direction_gap,
        residual_norm,
        orthogonal_norm: orth2.sqrt(),
        projected_rate,
    }
}

/// One row of the trajectory: a model observed at time `t`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// `exrm` or `imrm`.
    pub model: &'static str,
    /// `t` (`inf` past f64's range: see `log10_t`).
    pub t: f64,
    /// `log10 t` (`−inf` at `t = 0`).
    pub log10_t: f64,
    /// Accepted integrator steps or optimizer steps so far.
    pub step: u64,
    /// Training loss `L`.
    pub loss: f64,
    /// `train` first, then the evaluation splits.
    pub splits: Vec<SplitMetrics>,
    /// `‖θ(t) − θ(0)‖` (Frobenius for `U`).
    pub param_distance: f64,
    /// IM-RM only: `max_{z∉T} ‖U_z(t) − U_z(0)‖`.
    pub unseen_row_drift: Option<f64>,
    /// Against the max-margin separator, when the training pairs are separable.
    pub convergence: Option<Convergence>,
}

/// A table of accuracies, one row per named model, one `strict / exact-tie / tie-aware` column
/// per split (the split names of the first row head the columns).
pub fn accuracy_table(rows: &[(&str, &[SplitMetrics])]) -> String {
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(5).max(5) + 2;
    let mut out = format!("{:<width$}", "model");
    for s in rows.first().map(|r| r.1).unwrap_or_default() {
        out.push_str(&format!("{:>24}", s.split));
    }
    out.push('\n');
    for (name, splits) in rows {
        out.push_str(&format!("{name:<width$}"));
        for s in *splits {
            let cell = format!(
                "{:.3} / {:.3} / {:.3}",
                s.strict_accuracy, s.exact_tie_accuracy, s.tie_aware_accuracy
            );
            out.push_str(&format!("{cell:>24}"));
        }
        out.push('\n');
    }
    out
}

/// Rewards of one split's responses, summarised as the paper's official evaluator does
/// (MATH.md §6).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RewardSummary {
    pub split: String,
    /// `mean_i |r_i⁺ − r_i⁻| / (std of all r⁺ and r⁻ + 1e-8)`, the std with Bessel's correction
    /// (n − 1, as `torch.std`) over the `2n` rewards.
    pub normalised_abs_margin: f64,
    /// `mean_i r_i⁺`.
    pub mean_chosen_reward: f64,
    /// `mean_i r_i⁻`.
    pub mean_rejected_reward: f64,
}

/// [`RewardSummary`] of the rewards `chosen[i] = r(x_i, y_i⁺)`, `rejected[i] = r(x_i, y_i⁻)`.
pub fn reward_summary(split: &str, chosen: &[f64], rejected: &[f64]) -> RewardSummary {
    let n = chosen.len() as f64;
    let all: Vec<f64> = chosen.iter().chain(rejected).copied().collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let var = all.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>()
        / (all.len() as f64 - 1.0).max(1.0);
    let std = var.sqrt();
    RewardSummary {
        split: split.to_string(),
        normalised_abs_margin: chosen
            .iter()
            .zip(rejected)
            .map(|(a, b)| (a - b).abs() / (std + 1e-8))
            .sum::<f64>()
            / n,
        mean_chosen_reward: chosen.iter().sum::<f64>() / n,
        mean_rejected_reward: rejected.iter().sum::<f64>() / n,
    }
}

/// The metrics of split `id` among `metrics`.
pub fn metrics_of(
    metrics: &[SplitMetrics],
    id: crate::problem::synthetic::SplitId,
) -> Option<&SplitMetrics> {
    metrics.iter().find(|m| id.is(&m.split))
}
