//! `experiments/ham_cycle.toml`: the task (`[data]`, the official values by default), the model,
//! its pretraining, the reward models' training and the evaluation; validated on load, every
//! error naming the file and the field.

use crate::lm::recipe::{RecipeData, RecipeEval, RecipeFile, ResponseSpec};
use crate::lm::train::config::RecipeTrain;
use crate::problem::hamiltonian::{CycleSpec, MAX_ENUMERATED_VERTICES};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The committed default config (`experiments/ham_cycle.toml`).
pub const DEFAULT_CYCLE_TOML: &str = include_str!("../../../experiments/ham_cycle.toml");

/// `[model]`: the Llama trained from scratch (intermediate size `3·dim`, rotary θ = 10 000,
/// RMSNorm ε = 1e-6, tied embeddings, weights `N(0, 0.02²)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleModel {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
}

impl Default for CycleModel {
    fn default() -> Self {
        CycleModel {
            dim: 128,
            layers: 2,
            heads: 8,
        }
    }
}

/// `[pretrain]`: AdamW (no weight decay) on the next-token loss of the response tokens
/// (eos included) of prompts with random vertex orders as responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CyclePretrain {
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    pub lr: f64,
    /// Distinct graphs the prompts are drawn from (each step draws fresh orders).
    pub graphs: usize,
    /// Steps of linear learning-rate warm-up (`lr · min(1, step / warmup_steps)`; 0: none).
    pub warmup_steps: usize,
    /// Global gradient-norm clipping before each AdamW step (as `torch.nn.utils.clip_grad_norm_`;
    /// 0: none).
    pub clip_norm: f64,
    /// Share of the pretraining responses that are random walks along the graph's edges
    /// (`n` vertices, repeats allowed) instead of random vertex orders: they teach the model
    /// which vertex pairs are edges, the lookup a pretrained LM brings and verification needs,
    /// at the cost of a `π_ref` that follows edges more often (0: orders only, as before).
    pub walk_fraction: f64,
}

impl Default for CyclePretrain {
    fn default() -> Self {
        CyclePretrain {
            steps: 1500,
            batch: 32,
            lr: 1e-3,
            graphs: 4096,
            warmup_steps: 200,
            clip_norm: 1.0,
            walk_fraction: 0.0,
        }
    }
}

/// `[train]`: the reward models (the official plan's recipe, with an lr for a small model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleTrain {
    /// IM-RM `β` (official: 0.01).
    pub beta: f64,
    /// Adam learning rate (official: 1e-6 for Pythia-1B; a 4·10⁵-parameter model needs more).
    pub lr: f64,
    /// Official: 15.
    pub epochs: usize,
    /// Official: 32 (16 × 2 accumulation).
    pub pairs_per_step: usize,
    pub micro_batch: usize,
    /// EX-RM head `u(0) ~ N(0, head_init_std²)`.
    pub head_init_std: f64,
    /// Evaluate (verification, generation, exact masses) every this many epochs.
    pub eval_every_epochs: usize,
    /// Sequences per forward when scoring.
    pub eval_batch: usize,
}

impl Default for CycleTrain {
    fn default() -> Self {
        CycleTrain {
            beta: 0.01,
            lr: 1e-4,
            epochs: 15,
            pairs_per_step: 32,
            micro_batch: 16,
            head_init_std: 0.02,
            eval_every_epochs: 1,
            eval_batch: 64,
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleEval {
    /// New tokens allowed beyond a cycle's `2n` (n vertices, n − 1 separators, eos); the
    /// official evaluator allows 300.
    pub extra_new_tokens: usize,
    /// Exact masses by enumerating every vertex order; absent: where `data.vertices ≤ 8`.
    pub exact: Option<bool>,
    /// Orders scored per forward in the enumeration.
    pub exact_batch: usize,
    /// Test prompts generated from and enumerated (0: all).
    pub prompts: usize,
}

impl Default for CycleEval {
    fn default() -> Self {
        CycleEval {
            extra_new_tokens: 8,
            exact: None,
            exact_batch: 2048,
            prompts: 0,
        }
    }
}

/// A Hamiltonian-cycle experiment config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleFile {
    /// Seeds the model's initial weights, the pretraining, the pairs' order and the sampling
    /// (the data has its own `data.seed`).
    pub seed: u64,
    pub data: CycleSpec,
    pub model: CycleModel,
    pub pretrain: CyclePretrain,
    pub train: CycleTrain,
    pub eval: CycleEval,
}

impl Default for CycleFile {
    fn default() -> Self {
        CycleFile {
            seed: 7,
            data: CycleSpec::default(),
            model: CycleModel::default(),
            pretrain: CyclePretrain::default(),
            train: CycleTrain::default(),
            eval: CycleEval::default(),
        }
    }
}

impl CycleFile {
    /// A low estimate of the run's peak memory, before anything is allocated (a refusal is
    /// then certain to be right): five f32 copies of the parameters (the policy, its gradient,
    /// Adam's two moments and the frozen `π_ref`), the autograd activations of one micro-batch
    /// (8 floats per token, layer and dimension) and every pair's two token sequences and edges.
    /// Sequence length: 3 tokens per expected edge (the planted cycle's `n` and `p` of the rest)
    /// plus the `2n` of a response.
    pub fn memory_estimate(&self) -> crate::io::resources::MemoryEstimate {
        let (n, p) = (self.data.vertices as f64, self.data.edge_probability);
        let (dim, layers) = (self.model.dim as f64, self.model.layers as f64);
        let edges = n + p * (n * (n - 1.0) / 2.0 - n).max(0.0);
        let tokens = 3.0 * edges + 2.0 * n;
        let vocab = n + 8.0;
        let parameters = vocab * dim + layers * (13.0 * dim * dim + 2.0 * dim) + dim;
        let pairs = (self.data.train_pairs + self.data.test_pairs) as f64;
        let micro = self.train.micro_batch.max(self.pretrain.batch) as f64;
        let terms = vec![
            (
                "parameters, gradients, Adam moments, π_ref",
                5.0 * 4.0 * parameters,
            ),
            (
                "activations",
                micro * 2.0 * tokens * layers * dim * 8.0 * 4.0,
            ),
            ("pairs", pairs * (2.0 * tokens * 4.0 + 16.0 * edges)),
            ("program", 64.0 * 1024.0 * 1024.0),
        ];
        crate::io::resources::MemoryEstimate {
            bytes: terms.iter().map(|(_, b)| b).sum(),
            terms,
        }
    }

    /// Reads and validates a config; every error is an input error (exit code 2).
    pub fn from_file(path: &Path) -> Result<CycleFile> {
        let text = crate::io::input::read_text(path, "ham-cycle config")?;
        Self::from_text(&text, &path.display().to_string())
    }

    /// Parses and validates `text` (`origin` names it in errors).
    pub fn from_text(text: &str, origin: &str) -> Result<CycleFile> {
        let parsed: CycleFile = toml::from_str(text).map_err(|e| {
            crate::error::InputError(format!(
                "invalid ham-cycle config {origin}: {}",
                crate::config::one_line_toml_error(text, &e)
            ))
        })?;
        parsed.validate().map_err(|e| {
            crate::error::InputError(format!("invalid ham-cycle config {origin}: {e:#}"))
        })?;
        Ok(parsed)
    }

    /// Whether the exact masses are computed.
    pub fn exact(&self) -> bool {
        self.eval
            .exact
            .unwrap_or(self.data.vertices <= MAX_ENUMERATED_VERTICES)
    }

    /// Domains of every field.
    pub fn validate(&self) -> Result<()> {
        self.data
            .validate()
            .map_err(|e| anyhow::anyhow!("{}", e.0))?;
        let m = &self.model;
        let (p, t, e) = (&self.pretrain, &self.train, &self.eval);
        for (name, v) in [
            ("model.dim", m.dim),
            ("model.layers", m.layers),
            ("model.heads", m.heads),
            ("pretrain.batch", p.batch),
            ("pretrain.graphs", p.graphs),
            ("train.epochs", t.epochs),
            ("train.pairs_per_step", t.pairs_per_step),
            ("train.micro_batch", t.micro_batch),
            ("train.eval_every_epochs", t.eval_every_epochs),
            ("train.eval_batch", t.eval_batch),
            ("eval.exact_batch", e.exact_batch),
        ] {
            if v == 0 {
                bail!("field `{name}` must be ≥ 1");
            }
        }
        if m.dim % m.heads != 0 || (m.dim / m.heads) % 2 != 0 {
            bail!(
                "field `model.heads` must divide `model.dim` into even head sizes (rotary pairs), got dim {} and {} heads",
                m.dim,
                m.heads
            );
        }
        if m.dim > 4096 || m.layers > 64 {
            bail!("fields `model.dim` ≤ 4096 and `model.layers` ≤ 64 (a model trained on 2 CPU cores), got {} and {}", m.dim, m.layers);
        }
        for (name, v) in [
            ("pretrain.lr", p.lr),
            ("train.lr", t.lr),
            ("train.beta", t.beta),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("field `{name}` must be a finite number > 0, got {v}");
            }
        }
        if !(p.clip_norm >= 0.0 && p.clip_norm.is_finite()) {
            bail!(
                "field `pretrain.clip_norm` must be finite and ≥ 0 (0: no clipping), got {}",
                p.clip_norm
            );
        }
        if !(0.0..=1.0).contains(&p.walk_fraction) {
            bail!(
                "field `pretrain.walk_fraction` must be in [0, 1], got {}",
                p.walk_fraction
            );
        }
        if !(t.head_init_std >= 0.0 && t.head_init_std.is_finite()) {
            bail!(
                "field `train.head_init_std` must be finite and ≥ 0, got {}",
                t.head_init_std
            );
        }
        if self.eval.exact == Some(true) && self.data.vertices > MAX_ENUMERATED_VERTICES {
            bail!(
                "field `eval.exact`: enumerating every vertex order needs data.vertices ≤ {MAX_ENUMERATED_VERTICES} ({}! orders per prompt), got {}",
                MAX_ENUMERATED_VERTICES,
                self.data.vertices
            );
        }
        if e.prompts > self.data.test_pairs {
            bail!(
                "field `eval.prompts` ({}) exceeds data.test_pairs ({})",
                e.prompts,
                self.data.test_pairs
            );
        }
        Ok(())
    }

    /// The recipe trainer's config for these reward models (Adam: no weight decay, the recipe's
    /// betas and eps; no statements file: the pairs come from [`super::cycle_problem`]).
    pub fn recipe_file(&self) -> RecipeFile {
        let t = &self.train;
        RecipeFile {
            seed: self.seed,
            data: RecipeData {
                statements: "(hamiltonian-cycle pairs)".into(),
                format: Default::default(),
                group_size: 1,
                train_prompts: self.data.train_pairs,
                test_prompts: self.data.test_pairs,
                question: String::new(),
            },
            responses: ResponseSpec {
                chosen_prefixes: vec![],
                rejected_prefixes: vec![],
                chosen_words: vec![],
                rejected_words: vec![],
                eval_chosen_prefixes: vec![],
                eval_rejected_prefixes: vec![],
                eval_chosen_words: vec![],
                eval_rejected_words: vec![],
                chat_template: true,
                template_date: crate::lm::checkpoint::chat_template::DEFAULT_TEMPLATE_DATE
                    .to_string(),
            },
            train: RecipeTrain {
                beta: t.beta,
                lr: t.lr,
                epochs: t.epochs,
                pairs_per_step: t.pairs_per_step,
                micro_batch: t.micro_batch,
                head_init_std: t.head_init_std,
                eval_every_epochs: t.eval_every_epochs,
                eval_batch: t.eval_batch,
                ..RecipeTrain::default()
            },
            eval: RecipeEval::default(),
        }
    }
}
