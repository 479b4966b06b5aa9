//! One entry point for every optimizer: the flow, or GD / Adam / AdamW, observed at the
//! configured times, with a NaN stopping the run with the time and quantity.

use super::discrete::discrete;
use super::flow::gradient_flow;
use super::screening::{Screening, ScreeningStats};
use super::time::{format_time, observation_log10_times, observation_times, ObsTime};
use crate::config::{Optimizer, TrainConfig};
use crate::problem::reward::MarginModel;
use crate::solve::ode::OdeStats;
use anyhow::{bail, Result};

/// `observe(time, step, θ)` is called at every observation time, `t = 0` first.
pub type Observe<'a> = dyn FnMut(ObsTime, u64, &[f64]) -> Result<()> + 'a;

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

/// Errors naming the first non-finite margin or field entry, at time `10^log10_t`.
pub(super) fn check_finite(
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
