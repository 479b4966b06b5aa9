//! AdamW ([`super::adamw::Adam`], one pass) on the trained tensors and, at its own learning rate, on
//! the EX-RM head; gradients accumulated over micro-batches.

use crate::lm::train::adamw::Adam;
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
}
