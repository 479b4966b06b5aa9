//! The reference model's pretraining: next-token cross-entropy on the response tokens (eos
//! included) of prompts in the task's format whose responses are uniformly random vertex
//! orders, so that `π_ref` spreads its mass over orderings (a random order is a Hamiltonian
//! cycle of the graph with probability `|C(x)| / n!`, about 0.02 at the official `n = 10,
//! p = 0.2`). AdamW without weight decay on every parameter, with a linear learning-rate warm-up
//! and global gradient-norm clipping: without them a small model sits for thousands of steps on
//! the plateau `ln n` per vertex token (uniform over vertices, repeats included) before it learns
//! that an order never repeats a vertex (measured: experiments/results/ham_cycle/README.md).
//! With `pretrain.walk_fraction > 0` that share of the responses are random walks along the
//! graph's edges instead, so that the model also learns which vertex pairs are edges.

use super::config::CycleFile;
use super::problem::template_of;
use crate::lm::recipe::Side;
use crate::lm::train::sequences::SequenceBuilder;
use crate::lm::{Forward, LanguageModel};
use crate::problem::hamiltonian::{pretraining_graphs, random_walk, response, Graph};
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One pretraining step: the mean next-token loss of the batch's response tokens (nats).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainStep {
    pub step: usize,
    pub loss: f64,
}

/// Pretrains the checkpoint in `init` and writes it to `out` (created; the tokenizer and config
/// files copied); `on_step` sees each step.
pub fn pretrain(
    init: &Path,
    out: &Path,
    file: &CycleFile,
    device: &Device,
    on_step: &mut dyn FnMut(&PretrainStep),
) -> Result<Vec<PretrainStep>> {
    let p = &file.pretrain;
    let lm = LanguageModel::load(init, device, Forward::Nets)?;
    let builder = SequenceBuilder {
        lm: &lm,
        template: Some(template_of(&lm.dir)?),
    };
    let graphs = pretraining_graphs(&file.data, p.graphs, file.seed ^ 0x9e37_79b9);
    let prompts: Vec<String> = graphs.iter().map(|g| g.prompt()).collect();
    let vars: Vec<_> = lm.parameters().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: p.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(file.seed ^ 0x707e_7a11);
    let mut history = Vec::with_capacity(p.steps);
    for step in 1..=p.steps {
        let mut seqs = Vec::with_capacity(p.batch);
        for _ in 0..p.batch {
            let g = rng.random_range(0..graphs.len());
            let order = pretraining_response(&mut rng, &graphs[g], p.walk_fraction);
            seqs.push(builder.build(g, &prompts[g], Side::Chosen, "", &response(&order))?);
        }
        let loss = response_loss(&lm, &seqs)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            bail!("pretraining: loss is {value} at step {step} (lower pretrain.lr?)");
        }
        opt.set_learning_rate(p.lr * warmup(step, p.warmup_steps));
        let mut grads = loss.backward()?;
        if p.clip_norm > 0.0 {
            clip_grad_norm(&mut grads, &vars, p.clip_norm)?;
        }
        opt.step(&grads)?;
        let record = PretrainStep { step, loss: value };
        on_step(&record);
        history.push(record);
    }
    save(&lm, init, out)?;
    Ok(history)
}

/// One pretraining response for `graph`: a random walk along its edges with probability
/// `walk_fraction`, else a uniformly random vertex order. No Bernoulli draw when `walk_fraction`
/// is 0, so order-only runs keep the random stream they had before walks existed.
fn pretraining_response(rng: &mut ChaCha8Rng, graph: &Graph, walk_fraction: f64) -> Vec<usize> {
    if walk_fraction > 0.0 && rng.random::<f64>() < walk_fraction {
        return random_walk(rng, graph, graph.vertices);
    }
    let mut order: Vec<usize> = (0..graph.vertices).collect();
    order.shuffle(rng);
    order
}

/// The warm-up factor of `step` (1-based): `min(1, step / warmup_steps)`, 1 without warm-up.
fn warmup(step: usize, warmup_steps: usize) -> f64 {
    if warmup_steps == 0 {
        1.0
    } else {
        (step as f64 / warmup_steps as f64).min(1.0)
    }
}

/// Scales every gradient by `min(1, max_norm / ‖g‖)`, `‖g‖` the global L2 norm over `vars`
/// (`torch.nn.utils.clip_grad_norm_` without its 1e-6 guard, which only matters at `‖g‖ ≈ 0`).
fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<()> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    if !norm.is_finite() {
        bail!("pretraining: gradient norm is {norm} (lower pretrain.lr?)");
    }
    if norm > max_norm {
        let scale = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(())
}

/// Mean `−ln π(y_k | ·)` over every response token of `seqs` (differentiable).
fn response_loss(lm: &LanguageModel, seqs: &[crate::lm::recipe::ScoredSequence]) -> Result<Tensor> {
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    let h = lm.padded_hidden_states(&ids)?;
    let (n, len, d) = h.dims3()?;
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, s) in seqs.iter().enumerate() {
        for k in s.response_start..s.response_end {
            rows.push((r * len + k - 1) as u32);
            targets.push(s.ids[k]);
        }
    }
    let dev = &lm.device;
    let h = h
        .reshape((n * len, d))?
        .index_select(&Tensor::new(rows, dev)?, 0)?;
    let lp = candle_nn::ops::log_softmax(&h.matmul(&lm.unembedding().t()?)?, 1)?;
    let picked = lp.gather(&Tensor::new(targets, dev)?.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Writes `lm`'s parameters as `out/model.safetensors` beside copies of `init`'s other files.
fn save(lm: &LanguageModel, init: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tensors: std::collections::HashMap<String, Tensor> = lm
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(init.join(f), out.join(f)).with_context(|| {
            format!(
                "cannot copy {} to {}",
                init.join(f).display(),
                out.display()
            )
        })?;
    }
    Ok(())
}
