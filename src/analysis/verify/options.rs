//! Settings of the verification runs besides the config, and their preconditions.

use super::residual::RESIDUAL_HORIZON_LOG10;
use crate::config::Config;
use anyhow::Result;

/// A deliberately broken variant, to show that `verify` can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Check claim 2a for "gradient descent" on a run that is really AdamW (weight decay moves
    /// unseen rows): 2a must FAIL.
    AdamwAsGd,
}

/// Settings of the verification runs besides the config.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Horizon of the faithful full-vocabulary flow (capped at `train.t_max`).
    pub faithful_t_max: f64,
    /// Steps of the GD, Adam and AdamW runs.
    pub discrete_steps: u64,
    /// Step size of the GD run (the Adam runs use `adam_lr`).
    pub gd_lr: f64,
    pub adam_lr: f64,
    pub fault: Option<Fault>,
    /// Horizon (`log10 t`) of the EX-RM residual check; `None` skips it.
    pub residual_horizon_log10: Option<f64>,
    /// Run the checks that hold the full `V × D` unembedding (faithful full-softmax flow, GD,
    /// Adam, AdamW, full-vs-seen-row agreement, the §3 dynamics checks). `false`: only the checks
    /// whose cost does not grow with `V` (the seen-row IM-RM flow, the EX-RM flow, the QPs, the
    /// residual flow); the others are SKIP with the reason. Needs `train.imrm_gradient = "sparse"`.
    pub full_vocabulary: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            faithful_t_max: 1e8,
            discrete_steps: 200,
            gd_lr: 0.5,
            adam_lr: 1e-2,
            fault: None,
            residual_horizon_log10: Some(RESIDUAL_HORIZON_LOG10),
            full_vocabulary: true,
        }
    }
}

impl VerifyOptions {
    /// The options' preconditions on `config`: without the full vocabulary, the IM-RM must be
    /// the seen-row one (an input error, exit code 2).
    pub fn check(&self, config: &Config) -> Result<()> {
        if !self.full_vocabulary && !config.trains_seen_rows() {
            return Err(crate::error::InputError(
                "--without-full-vocabulary needs the seen-row IM-RM: train.imrm_gradient = \"sparse\", setup.response_length = 1 and train.optimizer other than \"adamw\"".into(),
            )
            .into());
        }
        Ok(())
    }

    /// The workload whose memory these options need.
    pub fn workload(&self) -> crate::io::resources::Workload {
        if self.full_vocabulary {
            crate::io::resources::Workload::Verify
        } else {
            crate::io::resources::Workload::VerifySeenRows
        }
    }

    /// Lighter settings for the random trials: faithful flow to `1e6`, 100 discrete steps, no
    /// residual check to `1e10000` (the trials also observe one time per decade).
    pub fn for_trials(&self) -> VerifyOptions {
        VerifyOptions {
            faithful_t_max: self.faithful_t_max.min(1e6),
            discrete_steps: self.discrete_steps.min(100),
            residual_horizon_log10: None,
            ..self.clone()
        }
    }
}
