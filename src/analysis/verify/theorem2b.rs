//! Theorem 2(b) rows (MATH.md §4): the EX-RM's loss, direction and rate of convergence to the
//! max-margin separator `u*`, the IM-RM's direction to `ΔU*`, and the QP certificates.

use super::claim::{Bound, Claim};
use crate::experiment::observables::Convergence;
use crate::experiment::simulation::{MaxMarginResult, ModelRun};
use crate::solve::max_margin::{MaxMarginError, CERTIFICATE_TOLERANCE};

/// Threshold on `1 − cos(θ(t_max), θ*)` for both models (stated a priori; see proofs/theorem2.md).
pub const DIRECTION_GAP_BOUND: f64 = 1e-2;

/// Threshold on `|⟨u(t), û*⟩/ln t − ‖u*‖| / ‖u*‖` at `t_max`.
pub const RATE_BOUND: f64 = 5e-2;

/// EX-RM loss at `t_max`.
pub const FINAL_LOSS_BOUND: f64 = 1e-6;

/// Shortest horizon for which the 2(b) bounds above were set (loss, direction, rate, residual,
/// accuracy of the max-margin separator): 2(b) is a statement about `t → ∞` and the direction
/// error decays like `1/ln t` (MATH.md §4), so at shorter horizons those rows are reported, not
/// judged (only the monotone loss, true at every horizon, is judged there).
pub const CONVERGENCE_HORIZON: f64 = 1e50;

pub(super) fn claims_2b(
    ex: &ModelRun,
    im: &ModelRun,
    ex_features: &ndarray::Array2<f64>,
    t_max: f64,
) -> Vec<Claim> {
    let judge = Judge::new(t_max);
    let mut out = vec![loss_monotone_claim(ex)];
    let Ok(mm) = &ex.max_margin else {
        for id in [
            "2b.loss",
            "2b.direction",
            "2b.direction_decreasing",
            "2b.rate",
            "2b.residual_sublinear",
            "2b.accuracy",
        ] {
            out.push(Claim::skipped(
                id,
                "EX-RM data not separable: 2b does not apply",
            ));
        }
        return out;
    };
    let conv: Vec<(f64, Convergence)> = ex
        .trajectory
        .iter()
        .filter_map(|o| o.convergence.map(|c| (o.t, c)))
        .collect();
    out.extend(convergence_claims(&judge, ex, mm, &conv, t_max));
    out.extend(residual_claims(&judge, mm, &conv, ex_features, t_max));
    out.push(accuracy_claim(&judge, ex, mm));
    out.push(imrm_direction_claim(&judge, im));
    out
}

/// 2(b) is asymptotic: its bounds are judged from [`CONVERGENCE_HORIZON`] on, and reported
/// (INFO, with the bound and a note) below it.
struct Judge {
    long: bool,
    horizon_note: String,
}

impl Judge {
    fn new(t_max: f64) -> Judge {
        let long = t_max >= CONVERGENCE_HORIZON;
        let horizon_note = if long {
            String::new()
        } else {
            format!(
                " [reported: t_max < {CONVERGENCE_HORIZON:.0e}, the horizon the bound is set for]"
            )
        };
        Judge { long, horizon_note }
    }

    fn claim(&self, id: &str, d: &str, x: f64, b: Bound) -> Claim {
        if self.long {
            Claim::judged(id, d, x, b)
        } else {
            Claim {
                bound: b,
                ..Claim::info(id, &format!("{d}{}", self.horizon_note), x)
            }
        }
    }
}

/// `2b.loss_monotone`: the EX-RM loss never increases between observations (any horizon).
fn loss_monotone_claim(ex: &ModelRun) -> Claim {
    let increase = ex
        .trajectory
        .windows(2)
        .map(|w| (w[1].loss - w[0].loss) / w[0].loss)
        .fold(f64::NEG_INFINITY, f64::max);
    Claim::judged(
        "2b.loss_monotone",
        "EX-RM largest relative loss increase between observations",
        increase,
        Bound::AtMost(0.0),
    )
}

/// `2b.loss`, `2b.direction`, `2b.direction_decreasing`, `2b.rate`.
fn convergence_claims(
    judge: &Judge,
    ex: &ModelRun,
    mm: &MaxMarginResult,
    conv: &[(f64, Convergence)],
    t_max: f64,
) -> Vec<Claim> {
    let last = ex.trajectory.last().expect("observed");
    let c_last = conv.last().expect("observed").1;
    let late: Vec<&(f64, Convergence)> = conv.iter().filter(|(t, _)| *t >= 1e2).collect();
    let ratio = late
        .windows(2)
        .map(|w| w[1].1.direction_gap / w[0].1.direction_gap)
        .fold(0.0, f64::max);
    let rate_err = (c_last.projected_rate - mm.solution.norm).abs() / mm.solution.norm;
    vec![
        judge.claim(
            "2b.loss",
            &format!("EX-RM loss L(t_max = {t_max:.0e})"),
            last.loss,
            Bound::AtMost(FINAL_LOSS_BOUND),
        ),
        judge.claim(
            "2b.direction",
            "EX-RM 1 − cos(u(t_max), u*)",
            c_last.direction_gap,
            Bound::AtMost(DIRECTION_GAP_BOUND),
        ),
        judge.claim(
            "2b.direction_decreasing",
            "EX-RM max ratio of successive 1 − cos for t ≥ 1e2",
            ratio,
            Bound::AtMost(1.0),
        ),
        judge.claim(
            "2b.rate",
            "EX-RM |⟨u, û*⟩/ln t − ‖u*‖| / ‖u*‖ at t_max",
            rate_err,
            Bound::AtMost(RATE_BOUND),
        ),
    ]
}

/// `2b.residual_sublinear` and its INFO rows: `‖ρ(t)‖/ln t`, `ρ = u(t) − u* ln t`, at the ends of
/// five equal log-windows covering the last half of the decades; a bounded `ρ` makes it
/// decrease (the judged, finite-horizon consequence).
fn residual_claims(
    judge: &Judge,
    mm: &MaxMarginResult,
    conv: &[(f64, Convergence)],
    ex_features: &ndarray::Array2<f64>,
    t_max: f64,
) -> Vec<Claim> {
    let ln_max = t_max.ln();
    if ln_max <= 2.0 * std::f64::consts::LN_10 {
        return vec![Claim::skipped(
            "2b.residual_sublinear",
            "t_max below 1e2: no late decades to compare",
        )];
    }
    let c_last = conv.last().expect("observed").1;
    let at = |frac: f64| -> (f64, f64) {
        let target = ln_max * frac;
        let (t, c) = conv
            .iter()
            .min_by(|a, b| {
                (a.0.ln() - target)
                    .abs()
                    .total_cmp(&(b.0.ln() - target).abs())
            })
            .expect("observed");
        (c.residual_norm, t.ln())
    };
    let r: Vec<(f64, f64)> = (0..=5).map(|k| at(0.5 + 0.1 * k as f64)).collect();
    let ratio = r
        .windows(2)
        .map(|w| (w[1].0 / w[1].1) / (w[0].0 / w[0].1))
        .fold(0.0, f64::max);
    let mut out = vec![
        judge.claim(
            "2b.residual_sublinear",
            "EX-RM ‖u(t) − u* ln t‖/ln t at 6 log-spaced times of the last half: max ratio of successive values",
            ratio,
            Bound::AtMost(1.0),
        ),
        Claim::info(
            "2b.residual_growth",
            "EX-RM ‖u(t_max) − u* ln t_max‖ − ‖u(√t_max) − u* ln √t_max‖ (0 once bounded; see proofs/theorem2.md)",
            r[5].0 - r[0].0,
        ),
        Claim::info(
            "2b.residual",
            "EX-RM ‖u(t_max) − u* ln t_max‖",
            c_last.residual_norm,
        ),
    ];
    let margins = ex_features.dot(&ndarray::ArrayView1::from(&mm.params));
    let gap = (0..margins.len())
        .filter(|i| !mm.solution.support.contains(i))
        .map(|i| margins[i] - 1.0)
        .fold(f64::INFINITY, f64::min);
    if gap.is_finite() {
        out.push(Claim::info(
            "2b.near_support_weight",
            &format!("t_max^(−δ): weight the nearest non-support pair (margin 1 + δ, δ = {gap:.2e}) still carries at t_max"),
            (-gap * ln_max).exp(),
        ));
    }
    out
}

/// `2b.accuracy`: the EX-RM's accuracy equals its max-margin separator's on every split.
fn accuracy_claim(judge: &Judge, ex: &ModelRun, mm: &MaxMarginResult) -> Claim {
    let last = ex.trajectory.last().expect("observed");
    let worst_acc = last
        .splits
        .iter()
        .zip(&mm.accuracy)
        .map(|(a, b)| (a.tie_aware_accuracy - b.tie_aware_accuracy).abs())
        .fold(0.0, f64::max);
    judge.claim(
        "2b.accuracy",
        "EX-RM accuracy minus u*'s, max over splits (tie-aware)",
        worst_acc,
        Bound::Exactly(0.0),
    )
}

/// `companion.imrm_direction`: the IM-RM's `ΔU(t)` turns toward its max-margin `ΔU*`.
fn imrm_direction_claim(judge: &Judge, im: &ModelRun) -> Claim {
    match (
        &im.max_margin,
        im.trajectory.last().and_then(|o| o.convergence),
    ) {
        (Ok(_), Some(c)) => judge.claim(
            "companion.imrm_direction",
            "IM-RM 1 − cos(ΔU(t_max), ΔU*)",
            c.direction_gap,
            Bound::AtMost(DIRECTION_GAP_BOUND),
        ),
        _ => Claim::skipped("companion.imrm_direction", "IM-RM features not separable"),
    }
}

/// `qp.exrm`, `qp.imrm`: the QP certificates.
pub(super) fn qp_claims(
    mm_ex: &std::result::Result<MaxMarginResult, MaxMarginError>,
    mm_im: &std::result::Result<MaxMarginResult, MaxMarginError>,
) -> Vec<Claim> {
    vec![
        qp_claim("qp.exrm", "EX-RM", mm_ex),
        qp_claim("qp.imrm", "IM-RM", mm_im),
    ]
}

/// One model's QP certificate row (`what`: the model's label), SKIP without a separator.
pub(super) fn qp_claim(
    id: &str,
    what: &str,
    mm: &std::result::Result<MaxMarginResult, MaxMarginError>,
) -> Claim {
    match mm {
        Ok(MaxMarginResult { solution, .. }) => Claim::judged(
            id,
            &format!("{what} max-margin QP certificate: worst violation (margin, dual sign, slackness, gap, stationarity)"),
            solution.certificate.worst_violation(),
            Bound::AtMost(CERTIFICATE_TOLERANCE),
        ),
        Err(e) => Claim::skipped(id, &format!("{what}: {e}")),
    }
}
