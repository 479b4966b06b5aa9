//! The discretisations: GD, Adam and AdamW at `t = k·η`.

use super::time::ObsTime;
use super::train::{check_finite, Observe, TrainOutcome};
use crate::config::{Optimizer, TrainConfig};
use crate::problem::reward::{loss_and_gradient, MarginModel};
use anyhow::{bail, Result};

/// GD, Adam or AdamW for `⌈t_max/η⌉` steps, observing at the steps nearest to `times/η`.
pub(super) fn discrete(
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
