//! Gradient flow (MATH.md §2): `dθ/dt = −∇L(θ)` on `t ∈ [0, 1]`, then in log-time `s = ln t`,
//! `dθ/ds = t·(−∇L) = (1/N) Σ_i exp(s − softplus(m_i)) ∂m_i/∂θ`, so `t σ(−m)` never over- or
//! underflows and `t = 1e100` costs a few hundred steps.

use super::screening::{Screener, Screening};
use super::time::ObsTime;
use super::train::{check_finite, Observe, TrainOutcome};
use crate::config::TrainConfig;
use crate::numerics::{sigmoid, softplus};
use crate::problem::reward::MarginModel;
use crate::solve::ode::{integrate, OdeOptions, OdeStats};
use anyhow::Result;

/// Gradient flow through `times` (all > 0): linear time up to `t = 1`, log-time `s = ln t`
/// after (`s` from `log10 t`, so horizons past f64's `t` are reached without forming `t`).
pub(super) fn gradient_flow(
    model: &dyn MarginModel,
    theta0: &[f64],
    cfg: &TrainConfig,
    times: &[ObsTime],
    label: &str,
    screening: Option<Screening>,
    observe: &mut Observe,
) -> Result<TrainOutcome> {
    let n = model.n_pairs() as f64;
    let opts = OdeOptions {
        rtol: cfg.rtol,
        atol: cfg.atol,
        max_steps: cfg.max_steps,
        fixed_step: None,
        min_step: 1e-10,
        dense_output: cfg.dense_output,
    };
    let mut margins = vec![0.0; model.n_pairs()];
    let mut theta = theta0.to_vec();
    let mut total = OdeStats::default();
    let horizon = times.last().expect("the horizon is observed");
    let t_switch = if horizon.log10_t >= 0.0 {
        1.0
    } else {
        horizon.t
    };
    let mut early: Vec<f64> = times
        .iter()
        .filter(|o| o.t <= t_switch)
        .map(|o| o.t)
        .collect();
    if early.last() != Some(&t_switch) {
        early.push(t_switch);
    }
    let late_times: Vec<ObsTime> = times.iter().copied().filter(|o| o.t > t_switch).collect();
    let late: Vec<f64> = late_times.iter().map(|o| o.ln_t()).collect();
    let observed = |t: f64| times.iter().find(|o| o.t == t).copied();

    let mut steps_before = 0;
    let mut screening_stats = None;
    let stats = integrate(
        |t, th, dth| {
            model.margins_and_pullback(th, &|m| sigmoid(-m) / n, &mut margins, dth);
            check_finite(label, t.log10(), &margins, dth, "gradient −∇L")
        },
        0.0,
        theta0,
        &early,
        &opts,
        |t, th, st| {
            theta.copy_from_slice(th);
            if let Some(time) = observed(t) {
                observe(time, st.accepted_steps, th)?;
            }
            Ok(())
        },
    )?;
    total.accepted_steps += stats.accepted_steps;
    total.rejected_steps += stats.rejected_steps;
    total.rhs_evaluations += stats.rhs_evaluations;
    steps_before += stats.accepted_steps;

    if !late.is_empty() {
        let opts = OdeOptions {
            max_steps: cfg
                .max_steps
                .saturating_sub(stats.accepted_steps + stats.rejected_steps)
                .max(1),
            // In log-time a separable problem settles to steps of a constant size (the default:
            // ~0.4; ill-conditioned ones smaller); steps that keep shrinking mean the flow relaxes
            // to a finite minimiser on a time scale ≪ t (stiffness). 1e-8 is the backstop;
            // `simulation::run_model` refuses certified non-separable long flows up front.
            min_step: 1e-8,
            ..opts
        };
        let start = theta.clone();
        let mut next_late = 0;
        let mut screen = screening.and_then(|sc| Screener::new(model, sc, &start, cfg.atol));
        let stats = integrate(
            |s, th, dth| {
                let weight = |m: f64| (s - softplus(m)).exp() / n;
                let evaluated: &[f64] = match screen.as_mut() {
                    Some(sc) => sc.field(model, s, th, &weight, &mut margins, dth),
                    None => {
                        model.margins_and_pullback(th, &weight, &mut margins, dth);
                        &margins
                    }
                };
                check_finite(
                    label,
                    s / std::f64::consts::LN_10,
                    evaluated,
                    dth,
                    "log-time flow field t·(−∇L)",
                )
            },
            0.0,
            &start,
            &late,
            &opts,
            |_, th, st| {
                theta.copy_from_slice(th);
                let time = late_times[next_late];
                next_late += 1;
                observe(time, steps_before + st.accepted_steps, th)
            },
        )
        .map_err(|e| {
            e.context(format!(
                "{label}: gradient flow in log-time stopped before t_max = 1e{}. If the training pairs are not \
                 linearly separable for this model, the loss has a finite minimiser and the log-time flow turns stiff: \
                 use a smaller train.t_max or a discrete optimizer",
                horizon.log10_t
            ))
        })?;
        total.accepted_steps += stats.accepted_steps;
        total.rejected_steps += stats.rejected_steps;
        total.rhs_evaluations += stats.rhs_evaluations;
        screening_stats = screen.map(|sc| sc.stats());
    }
    Ok(TrainOutcome {
        theta,
        steps: total.accepted_steps,
        ode: Some(total),
        screening: screening_stats,
    })
}
