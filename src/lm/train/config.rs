//! The `[train]` table every real-model experiment shares: AdamW, batching and the evaluation
//! schedule.

use serde::{Deserialize, Serialize};

/// `[train]`: the optimisation (defaults: the paper's recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeTrain {
    /// IM-RM `β` (the paper: 0.01).
    pub beta: f64,
    /// Adam learning rate (the paper: 1e-6).
    pub lr: f64,
    /// Learning rate of the EX-RM head; `None`: `lr`.
    pub head_lr: Option<f64>,
    /// Decoupled weight decay (the paper: 0, i.e. Adam).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Passes over the training pairs (the paper: 50).
    pub epochs: usize,
    /// Pairs per optimizer step (the paper: 32 = 8 × 4 accumulation); the last step of an epoch
    /// takes what is left.
    pub pairs_per_step: usize,
    /// Pairs per forward/backward pass; gradients are accumulated over a step.
    pub micro_batch: usize,
    /// Standard deviation of the EX-RM head's initial entries (Hugging Face's
    /// `initializer_range`, 0.02; 0 starts at the zero head).
    pub head_init_std: f64,
    /// Evaluate every split every this many epochs (and before the first, after the last).
    pub eval_every_epochs: usize,
    /// Sequences per forward pass when scoring (evaluation, reference log-probabilities).
    pub eval_batch: usize,
}

impl Default for RecipeTrain {
    fn default() -> Self {
        RecipeTrain {
            beta: 0.01,
            lr: 1e-6,
            head_lr: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            epochs: 50,
            pairs_per_step: 32,
            micro_batch: 8,
            head_init_std: 0.02,
            eval_every_epochs: 10,
            eval_batch: 32,
        }
    }
}
