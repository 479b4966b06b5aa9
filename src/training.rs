//! Gradient flow and its discretisations (MATH.md §2).
//!
//! Flow: `dθ/dt = −∇L(θ)` on `t ∈ [0, 1]`, then in log-time `s = ln t`,
//! `dθ/ds = t·(−∇L) = (1/N) Σ_i exp(s − softplus(m_i)) ∂m_i/∂θ`, so `t σ(−m)` never over- or
//! underflows and `t = 1e100` costs a few hundred steps. GD, Adam and AdamW use `t = k·η`.

use crate::config::{Optimizer, TrainConfig};
use crate::numerics::{sigmoid, softplus};
use crate::ode::{integrate, OdeOptions, OdeStats};
use crate::reward::{loss_and_gradient, MarginModel};
use anyhow::{bail, Result};

/// Observation times: `0`, then `observations_per_decade` log-spaced points per decade from
/// `first_observation` to `t_max` (both included).
pub fn observation_times(cfg: &TrainConfig) -> Vec<f64> {
    let (a, b) = (cfg.first_observation.log10(), cfg.t_max.log10());
    let n = ((b - a) * cfg.observations_per_decade as f64).ceil() as usize + 1;
    let mut times = vec![0.0];
    if n <= 1 || b <= a {
        times.push(cfg.t_max);
    } else {
        times.extend(crate::numerics::logspace(a, b, n));
        *times.last_mut().expect("non-empty") = cfg.t_max;
    }
    times
}

/// Where training ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub theta: Vec<f64>,
    /// Accepted integrator steps (flow) or optimizer steps.
    pub steps: u64,
    pub ode: Option<OdeStats>,
}

/// `observe(t, step, θ)` is called at every observation time, `t = 0` first.
pub type Observe<'a> = dyn FnMut(f64, u64, &[f64]) -> Result<()> + 'a;

fn check_finite(label: &str, t: f64, margins: &[f64], field: &[f64], what: &str) -> Result<()> {
    if let Some(i) = margins.iter().position(|m| !m.is_finite()) {
        bail!(
            "{label}: training margin m_{i} = {} is not finite at t = {t:.6e}",
            margins[i]
        );
    }
    if let Some(j) = field.iter().position(|g| !g.is_finite()) {
        bail!(
            "{label}: {what} entry {j} = {} is not finite at t = {t:.6e}",
            field[j]
        );
    }
    Ok(())
}

/// Trains `θ` from `theta0` with `cfg.optimizer` up to `cfg.t_max`; `label` names the model in errors.
pub fn train(
    model: &dyn MarginModel,
    theta0: &[f64],
    cfg: &TrainConfig,
    label: &str,
    observe: &mut Observe,
) -> Result<TrainOutcome> {
    if theta0.len() != model.n_params() {
        bail!(
            "{label}: initial parameters have {} entries, the model expects {}",
            theta0.len(),
            model.n_params()
        );
    }
    if theta0.iter().any(|v| !v.is_finite()) {
        bail!("{label}: initial parameters contain a non-finite value");
    }
    let times = observation_times(cfg);
    observe(0.0, 0, theta0)?;
    match cfg.optimizer {
        Optimizer::Flow => gradient_flow(model, theta0, cfg, &times[1..], label, observe),
        _ => discrete(model, theta0, cfg, &times[1..], label, observe),
    }
}

/// Gradient flow through `times` (all > 0): linear time up to `t = 1`, log-time after.
fn gradient_flow(
    model: &dyn MarginModel,
    theta0: &[f64],
    cfg: &TrainConfig,
    times: &[f64],
    label: &str,
    observe: &mut Observe,
) -> Result<TrainOutcome> {
    let n = model.n_pairs() as f64;
    let opts = OdeOptions {
        rtol: cfg.rtol,
        atol: cfg.atol,
        max_steps: cfg.max_steps,
        fixed_step: None,
        min_step: 1e-10,
    };
    let mut margins = vec![0.0; model.n_pairs()];
    let mut theta = theta0.to_vec();
    let mut total = OdeStats::default();
    let t_switch = 1.0f64.min(cfg.t_max);
    let mut early: Vec<f64> = times.iter().copied().filter(|&t| t <= t_switch).collect();
    if early.last() != Some(&t_switch) {
        early.push(t_switch);
    }
    let late: Vec<f64> = times
        .iter()
        .copied()
        .filter(|&t| t > t_switch)
        .map(f64::ln)
        .collect();
    let observed = |t: f64| times.contains(&t);

    let mut steps_before = 0;
    let stats = integrate(
        |t, th, dth| {
            model.margins_and_pullback(th, &|m| sigmoid(-m) / n, &mut margins, dth);
            check_finite(label, t, &margins, dth, "gradient −∇L")
        },
        0.0,
        theta0,
        &early,
        &opts,
        |t, th, st| {
            theta.copy_from_slice(th);
            if observed(t) {
                observe(t, st.accepted_steps, th)?;
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
        let stats = integrate(
            |s, th, dth| {
                model.margins_and_pullback(th, &|m| (s - softplus(m)).exp() / n, &mut margins, dth);
                check_finite(label, s.exp(), &margins, dth, "log-time flow field t·(−∇L)")
            },
            0.0,
            &start,
            &late,
            &opts,
            |s, th, st| {
                theta.copy_from_slice(th);
                let t = if s == *late.last().expect("non-empty") {
                    cfg.t_max
                } else {
                    s.exp()
                };
                observe(t, steps_before + st.accepted_steps, th)
            },
        )
        .map_err(|e| {
            e.context(format!(
                "{label}: gradient flow in log-time stopped before t_max = {:e}. If the training pairs are not \
                 linearly separable for this model, the loss has a finite minimiser and the log-time flow turns stiff: \
                 use a smaller train.t_max or a discrete optimizer",
                cfg.t_max
            ))
        })?;
        total.accepted_steps += stats.accepted_steps;
        total.rejected_steps += stats.rejected_steps;
        total.rhs_evaluations += stats.rhs_evaluations;
    }
    Ok(TrainOutcome {
        theta,
        steps: total.accepted_steps,
        ode: Some(total),
    })
}

/// GD, Adam or AdamW for `⌈t_max/η⌉` steps, observing at the steps nearest to `times/η`.
fn discrete(
    model: &dyn MarginModel,
    theta0: &[f64],
    cfg: &TrainConfig,
    times: &[f64],
    label: &str,
    observe: &mut Observe,
) -> Result<TrainOutcome> {
    let total = (cfg.t_max / cfg.lr).ceil() as u64;
    let mut obs_steps: Vec<u64> = times
        .iter()
        .map(|t| ((t / cfg.lr).round() as u64).clamp(1, total.max(1)))
        .collect();
    obs_steps.push(total);
    obs_steps.sort_unstable();
    obs_steps.dedup();
    let p = theta0.len();
    let mut theta = theta0.to_vec();
    let mut grad = vec![0.0; p];
    let mut m1 = vec![0.0; p];
    let mut m2 = vec![0.0; p];
    let (b1, b2, eps, lr) = (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.lr);
    let mut next = 0;
    for k in 1..=total {
        let t = (k - 1) as f64 * lr;
        loss_and_gradient(model, &theta, &mut grad);
        check_finite(label, t, &[], &grad, "gradient ∇L")?;
        match cfg.optimizer {
            Optimizer::Gd => theta
                .iter_mut()
                .zip(&grad)
                .for_each(|(th, g)| *th -= lr * g),
            Optimizer::Adam | Optimizer::Adamw => {
                if cfg.optimizer == Optimizer::Adamw {
                    let decay = 1.0 - lr * cfg.weight_decay;
                    theta.iter_mut().for_each(|th| *th *= decay);
                }
                let (c1, c2) = (
                    1.0 - b1.powi(k.min(i32::MAX as u64) as i32),
                    1.0 - b2.powi(k.min(i32::MAX as u64) as i32),
                );
                for j in 0..p {
                    m1[j] = b1 * m1[j] + (1.0 - b1) * grad[j];
                    m2[j] = b2 * m2[j] + (1.0 - b2) * grad[j] * grad[j];
                    theta[j] -= lr * (m1[j] / c1) / ((m2[j] / c2).sqrt() + eps);
                }
            }
            Optimizer::Flow => unreachable!("flow is integrated, not stepped"),
        }
        if let Some(j) = theta.iter().position(|v| !v.is_finite()) {
            bail!("{label}: parameter entry {j} became non-finite at step {k} (t = {:.6e}); lower train.lr", k as f64 * lr);
        }
        if next < obs_steps.len() && obs_steps[next] == k {
            observe(k as f64 * lr, k, &theta)?;
            next += 1;
        }
    }
    Ok(TrainOutcome {
        theta,
        steps: total,
        ode: None,
    })
}
