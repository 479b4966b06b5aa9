//! AdamW ([`super::adamw::Adam`], one pass) on the trained tensors and, at its own learning rate, on
//! the EX-RM head; gradients accumulated over micro-batches.

use crate::lm::train::adamw::{Adam, AdamState};
use anyhow::Result;
use candle_core::Var;
use candle_nn::ParamsAdamW;

/// Adds `new`'s gradients of `vars` into `acc` (gradient accumulation over micro-batches).
pub(crate) fn accumulate(
    acc: &mut Option<candle_core::backprop::GradStore>,
    new: candle_core::backprop::GradStore,
    vars: &[Var],
) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(a) => {
            for v in vars {
                if let Some(g) = new.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// AdamW ([`Adam`], one pass) on the trained tensors and, at its own learning rate, on the EX-RM
/// head: the optimizers of full fine-tuning and of the paper's recipe.
pub(crate) struct Optimizers {
    body: Adam,
    head: Option<Adam>,
    /// Every trained variable, the head last (for gradient accumulation).
    pub(crate) vars: Vec<Var>,
}

impl Optimizers {
    /// `params` for the body (`vars`); the head, when trained, at `head_lr` (default: the same).
    pub(crate) fn new(
        vars: Vec<Var>,
        head: Option<&Var>,
        params: ParamsAdamW,
        head_lr: Option<f64>,
    ) -> Result<Optimizers> {
        let body = Adam::new(vars.clone(), params.clone())?;
        let mut all = vars;
        let head = match head {
            Some(h) => {
                all.push(h.clone());
                let lr = head_lr.unwrap_or(params.lr);
                Some(Adam::new(vec![h.clone()], ParamsAdamW { lr, ..params })?)
            }
            None => None,
        };
        Ok(Optimizers {
            body,
            head,
            vars: all,
        })
    }

    pub(crate) fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.body.step(grads)?;
        if let Some(h) = self.head.as_mut() {
            h.step(grads)?;
        }
        Ok(())
    }

    /// The trained parameters' count (the head's included).
    pub(crate) fn parameters(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// How many variables each optimizer updates (the body's, then the head's).
    pub(crate) fn var_counts(&self) -> Vec<usize> {
        let head = usize::from(self.head.is_some());
        let mut out = vec![self.vars.len() - head];
        if head == 1 {
            out.push(1);
        }
        out
    }

    /// The optimizers' states: the body's, then the head's (if trained).
    pub(crate) fn states(&self) -> anyhow::Result<Vec<AdamState>> {
        let mut out = vec![self.body.state()?];
        if let Some(h) = &self.head {
            out.push(h.state()?);
        }
        Ok(out)
    }

    /// Restores [`Optimizers::states`].
    pub(crate) fn restore(&mut self, states: Vec<AdamState>) -> anyhow::Result<()> {
        let expected = 1 + usize::from(self.head.is_some());
        if states.len() != expected {
            anyhow::bail!(
                "the checkpoint has {} optimizers, this run {expected}",
                states.len()
            );
        }
        let mut it = states.into_iter();
        self.body.restore(it.next().expect("counted"))?;
        if let (Some(h), Some(s)) = (self.head.as_mut(), it.next()) {
            h.restore(s)?;
        }
        Ok(())
    }
}
