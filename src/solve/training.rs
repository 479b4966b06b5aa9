//! Gradient flow and its discretisations (MATH.md §2).
//!
//! Flow: `dθ/dt = −∇L(θ)` on `t ∈ [0, 1]`, then in log-time `s = ln t`,
//! `dθ/ds = t·(−∇L) = (1/N) Σ_i exp(s − softplus(m_i)) ∂m_i/∂θ`, so `t σ(−m)` never over- or
//! underflows and `t = 1e100` costs a few hundred steps. GD, Adam and AdamW use `t = k·η`.

use crate::config::{Optimizer, TrainConfig};
use crate::numerics::{sigmoid, softplus};
use crate::problem::reward::{loss_and_gradient, MarginModel};
use crate::solve::ode::{integrate, OdeOptions, OdeStats};
use anyhow::{bail, Result};

/// A time of the flow: `t` and `log10 t` (the latter exact past f64's range, where `t` is `inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObsTime {
    pub t: f64,
    pub log10_t: f64,
}

impl ObsTime {
    /// `t = 0`.
    pub const ZERO: ObsTime = ObsTime {
        t: 0.0,
        log10_t: f64::NEG_INFINITY,
    };

    /// From `t`.
    pub fn from_t(t: f64) -> ObsTime {
        ObsTime {
            t,
            log10_t: t.log10(),
        }
    }

    /// `ln t`.
    pub fn ln_t(self) -> f64 {
        self.log10_t * std::f64::consts::LN_10
    }
}

/// Observation times as `log10 t`: `−inf` (`t = 0`), then `observations_per_decade` log-spaced
/// points per decade from `first_observation` to the horizon (both included).
pub fn observation_log10_times(cfg: &TrainConfig) -> Vec<f64> {
    let (a, b) = (cfg.first_observation.log10(), cfg.horizon_log10());
    let n = ((b - a) * cfg.observations_per_decade).ceil() as usize + 1;
    let mut times = vec![f64::NEG_INFINITY];
    if n <= 1 || b <= a {
        times.push(b);
    } else {
        times.extend(crate::numerics::linspace(a, b, n));
        *times.last_mut().expect("non-empty") = b;
    }
    times
}

/// Observation times `t` (see [`observation_log10_times`]; `inf` past f64's range), with the
/// horizon exactly `t_max` when no `t_max_log10` is set.
pub fn observation_times(cfg: &TrainConfig) -> Vec<f64> {
    let mut times: Vec<f64> = observation_log10_times(cfg)
        .into_iter()
        .map(|l| {
            if l == f64::NEG_INFINITY {
                0.0
            } else {
                10f64.powf(l)
            }
        })
        .collect();
    if cfg.t_max_log10.is_none() {
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
    /// How the log-time flow field was screened, when it was ([`Screening`]).
    pub screening: Option<ScreeningStats>,
}

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
const SCREENING_BUDGET: f64 = 1e-3;

/// `observe(time, step, θ)` is called at every observation time, `t = 0` first.
pub type Observe<'a> = dyn FnMut(ObsTime, u64, &[f64]) -> Result<()> + 'a;

/// `6.000000e2`, or `10^1234.500` past f64's range.
pub fn format_time(log10_t: f64) -> String {
    if log10_t == f64::NEG_INFINITY {
        "0".to_string()
    } else if log10_t < 300.0 {
        format!("{:.6e}", 10f64.powf(log10_t))
    } else {
        format!("10^{log10_t:.3}")
    }
}

/// Errors naming the first non-finite margin or field entry, at time `10^log10_t`.
fn check_finite(
    label: &str,
    log10_t: f64,
    margins: &[f64],
    field: &[f64],
    what: &str,
) -> Result<()> {
    if let Some(i) = margins.iter().position(|m| !m.is_finite()) {
        bail!(
            "{label}: training margin m_{i} = {} is not finite at t = {}",
            margins[i],
            format_time(log10_t)
        );
    }
    if let Some(j) = field.iter().position(|g| !g.is_finite()) {
        bail!(
            "{label}: {what} entry {j} = {} is not finite at t = {}",
            field[j],
            format_time(log10_t)
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
    train_screened(model, theta0, cfg, label, None, observe)
}

/// [`train`], with the flow's log-time field screened by `screening` when the model's margins
/// are affine ([`MarginModel::feature_norms`]) and `cfg.flow_screening` is on.
pub fn train_screened(
    model: &dyn MarginModel,
    theta0: &[f64],
    cfg: &TrainConfig,
    label: &str,
    screening: Option<Screening>,
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
    observe(ObsTime::ZERO, 0, theta0)?;
    match cfg.optimizer {
        Optimizer::Flow => {
            let times: Vec<ObsTime> = observation_log10_times(cfg)[1..]
                .iter()
                .zip(&observation_times(cfg)[1..])
                .map(|(&log10_t, &t)| ObsTime { t, log10_t })
                .collect();
            let screening = screening.filter(|_| cfg.flow_screening);
            gradient_flow(model, theta0, cfg, &times, label, screening, observe)
        }
        _ => discrete(
            model,
            theta0,
            cfg,
            &observation_times(cfg)[1..],
            label,
            observe,
        ),
    }
}

/// Gradient flow through `times` (all > 0): linear time up to `t = 1`, log-time `s = ln t`
/// after (`s` from `log10 t`, so horizons past f64's `t` are reached without forming `t`).
fn gradient_flow(
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

/// The state of a screened field ([`Screening`]).
struct Screener<'a> {
    direction: &'a [f64],
    /// `c_i = ⟨d, φ_i⟩`.
    direction_margins: Vec<f64>,
    feature_norms: Vec<f64>,
    r_max: f64,
    ln_budget: f64,
    /// `(s_0, θ_0)` of the last full evaluation and the pairs active since.
    reference: Option<(f64, Vec<f64>, Vec<usize>)>,
    active_margins: Vec<f64>,
    stats: ScreeningStats,
    active_sum: f64,
}

impl<'a> Screener<'a> {
    /// `None` when the model's margins are not affine or `d` does not fit `θ`.
    fn new(
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
    fn field<'m>(
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

    fn stats(&self) -> ScreeningStats {
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
        check_finite(label, t.log10(), &[], &grad, "gradient ∇L")?;
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
            observe(ObsTime::from_t(k as f64 * lr), k, &theta)?;
            next += 1;
        }
    }
    Ok(TrainOutcome {
        theta,
        steps: total,
        ode: None,
        screening: None,
    })
}

/// The EX-RM flow written for its residual `ρ = u − u* ln t` (MATH.md §4, Theorem 2(b)): in
/// `s = ln t`, `dρ/ds = (1/N) Σ_i exp(s − softplus(m_i)) z_i − u*`, with
/// `m_i = s⟨u*, z_i⟩ + ⟨ρ, z_i⟩`. Since `u = u* s + ρ` exactly for any fixed `u*`, this is the
/// same flow as [`train`]'s; but the state stays bounded, so `ρ` is integrated to the integrator's
/// relative accuracy instead of being the difference of two vectors of size `‖u*‖ ln t`, and the
/// horizon is limited only by `s` (`t = 10^100000` and beyond). Starts from `u(1)` (the flow's
/// linear-time phase, [`train`] to `t = 1`); returns `ρ` at each `log10 t` of `log10_times`
/// (all > 0, increasing) and the integrator's counters.
pub fn residual_flow(
    features: &ndarray::Array2<f64>,
    u_star: &[f64],
    u_at_1: &[f64],
    log10_times: &[f64],
    cfg: &TrainConfig,
) -> Result<(Vec<Vec<f64>>, OdeStats)> {
    let (n, d) = features.dim();
    let star_margin: Vec<f64> = features
        .rows()
        .into_iter()
        .map(|z| z.iter().zip(u_star).map(|(a, b)| a * b).sum())
        .collect();
    let outputs: Vec<f64> = log10_times
        .iter()
        .map(|l| l * std::f64::consts::LN_10)
        .collect();
    let opts = OdeOptions {
        rtol: cfg.rtol,
        atol: cfg.atol,
        max_steps: cfg.max_steps,
        fixed_step: None,
        min_step: 1e-8,
        dense_output: cfg.dense_output,
    };
    let mut rho_margin = vec![0.0; n];
    let mut out = Vec::with_capacity(outputs.len());
    let stats = integrate(
        |s, rho, drho| {
            for (i, z) in features.rows().into_iter().enumerate() {
                rho_margin[i] = z.iter().zip(rho).map(|(a, b)| a * b).sum::<f64>();
            }
            drho.iter_mut().zip(u_star).for_each(|(g, u)| *g = -u);
            for (i, z) in features.rows().into_iter().enumerate() {
                let m = s * star_margin[i] + rho_margin[i];
                let w = (s - softplus(m)).exp() / n as f64;
                for j in 0..d {
                    drho[j] += w * z[j];
                }
            }
            check_finite(
                "EX-RM residual flow",
                s / std::f64::consts::LN_10,
                &rho_margin,
                drho,
                "dρ/ds",
            )
        },
        0.0,
        u_at_1,
        &outputs,
        &opts,
        |_, rho, _| {
            out.push(rho.to_vec());
            Ok(())
        },
    )?;
    Ok((out, stats))
}
