//! `experiments/ham_cycle.toml`: the task (`[data]`, the official values by default), the model,
//! its pretraining, the reward models' training and the evaluation; validated on load, every
//! error naming the file and the field.

use crate::config::{parse_toml, read_toml, ConfigError};
use crate::lm::train::config::{field, non_negative, positive, TrainConfig, DEFAULT_TIE_TOLERANCE};
use crate::lm::train::epochs::Settings;
use crate::problem::hamiltonian::{CycleSpec, MAX_ENUMERATED_VERTICES};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The committed default config (`experiments/ham_cycle.toml`).
pub const DEFAULT_CYCLE_TOML: &str = include_str!("../../../experiments/ham_cycle.toml");

/// `[model]`: the reference model. Without `path`, a Llama trained from scratch (intermediate
/// size `3·dim`, rotary θ = 10 000, RMSNorm ε = 1e-6, tied embeddings, weights `N(0, 0.02²)`)
/// and pretrained by `[pretrain]`; with `path`, a pretrained causal checkpoint used as it is, as
/// the official code uses Pythia-1B (`<sep>` and `<edge_sep>` added to its tokenizer, its
/// vocabulary matrices resized; its own chat template, or the official default one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleModel {
    /// A Hugging Face folder (config.json, safetensors, tokenizer.json): the pretrained
    /// reference model. `dim`, `layers`, `heads` and `[pretrain]` are then unused and must keep
    /// their defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
}

impl Default for CycleModel {
    fn default() -> Self {
        CycleModel {
            path: None,
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
    /// The reward models (the official plan's recipe, with an lr for a small model).
    #[serde(deserialize_with = "TrainConfig::cycle_table")]
    pub train: TrainConfig,
    pub eval: CycleEval,
}

impl Default for CycleFile {
    fn default() -> Self {
        CycleFile {
            seed: 7,
            data: CycleSpec::default(),
            model: CycleModel::default(),
            pretrain: CyclePretrain::default(),
            train: TrainConfig::cycle(),
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
    pub fn memory_estimate(&self) -> Result<crate::io::resources::MemoryEstimate> {
        let (n, p) = (self.data.vertices as f64, self.data.edge_probability);
        let edges = n + p * (n * (n - 1.0) / 2.0 - n).max(0.0);
        let tokens = 3.0 * edges + 2.0 * n;
        let (parameters, dim, layers) = self.model_size()?;
        let pairs = (self.data.train_pairs + self.data.test_pairs) as f64;
        let micro = match self.model.path {
            Some(_) => self.train.micro_batch,
            None => self.train.micro_batch.max(self.pretrain.batch),
        } as f64;
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
        Ok(crate::io::resources::MemoryEstimate {
            bytes: terms.iter().map(|(_, b)| b).sum(),
            terms,
        })
    }

    /// A low count of the model's parameters, its width and depth: from `[model]`, or from a
    /// pretrained checkpoint's `config.json` (the vocabulary and each layer's attention
    /// queries and outputs and MLP; keys and values left out).
    fn model_size(&self) -> Result<(f64, f64, f64)> {
        let Some(dir) = &self.model.path else {
            let (dim, layers) = (self.model.dim as f64, self.model.layers as f64);
            let vocab = self.data.vertices as f64 + 8.0;
            let parameters = vocab * dim + layers * (13.0 * dim * dim + 2.0 * dim) + dim;
            return Ok((parameters, dim, layers));
        };
        let path = dir.join("config.json");
        let cfg: serde_json::Value =
            serde_json::from_str(&crate::io::input::read_text(&path, "model config")?).map_err(
                |e| crate::error::InputError(format!("{}: not valid JSON: {e}", path.display())),
            )?;
        let get = |k: &str| cfg.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let (dim, layers, vocab) = (
            get("hidden_size"),
            get("num_hidden_layers"),
            get("vocab_size"),
        );
        let inter = get("intermediate_size");
        Ok((
            vocab * dim + layers * (2.0 * dim * dim + 3.0 * dim * inter),
            dim,
            layers,
        ))
    }

    /// A pretrained `model.path` must be a causal checkpoint, and one with the shared-prompt
    /// forward (Llama, Qwen2) where the exact masses are computed.
    pub fn check_model(&self) -> Result<()> {
        use crate::lm::Architecture;
        let Some(dir) = &self.model.path else {
            return Ok(());
        };
        let arch = crate::lm::model::architecture_of(dir)?;
        if !arch.is_causal() {
            return Err(crate::error::InputError(format!(
                "model.path = {}: a masked encoder ({arch:?}); the experiment generates, so it needs a causal language model",
                dir.display()
            ))
            .into());
        }
        if self.exact() && !matches!(arch, Architecture::Llama | Architecture::Qwen2) {
            return Err(crate::error::InputError(format!(
                "model.path = {}: the exact enumeration (eval.exact; on where data.vertices ≤ 8) shares each prompt's keys and values, which rmflow does for Llama and Qwen2 checkpoints, not {arch:?}; set eval.exact = false",
                dir.display()
            ))
            .into());
        }
        Ok(())
    }

    /// Reads and validates a config; every error a [`ConfigError`] (exit code 2) naming the
    /// file and the field.
    pub fn from_file(path: &Path) -> Result<CycleFile, ConfigError> {
        read_toml(path, "ham-cycle config", CycleFile::validate)
    }

    /// Parses and validates `text` (`origin` names it in errors).
    pub fn from_text(text: &str, origin: &str) -> Result<CycleFile, ConfigError> {
        parse_toml(text, origin, CycleFile::validate)
    }

    /// Whether the exact masses are computed.
    pub fn exact(&self) -> bool {
        self.eval
            .exact
            .unwrap_or(self.data.vertices <= MAX_ENUMERATED_VERTICES)
    }

    /// Domains of every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.validate()?;
        self.model.validate()?;
        self.pretrain.validate()?;
        self.pretrained_alone()?;
        self.train.validate()?;
        crate::lm::train::config::field(
            "train",
            "drop_last_token_of_longest",
            !self.train.drop_last_token_of_longest,
            "false: the cycle does not replicate the official flush's last-token drop",
            true,
        )?;
        self.eval.validate(&self.data)
    }

    /// With `model.path`, the from-scratch model's fields keep their defaults (a changed one
    /// would be silently unused).
    fn pretrained_alone(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.model.path else {
            return Ok(());
        };
        const WHY: &str =
            "must keep its default: it is for the model trained from scratch, not with model.path";
        let got = |v: &dyn std::fmt::Display| format!("{v} (model.path = {})", path.display());
        let scratch = CycleModel::default();
        for (name, v, d) in [
            ("dim", self.model.dim, scratch.dim),
            ("layers", self.model.layers, scratch.layers),
            ("heads", self.model.heads, scratch.heads),
        ] {
            field("model", name, v == d, WHY, got(&v))?;
        }
        let json = |p: &CyclePretrain| serde_json::to_value(p).expect("plain fields");
        let (now, default) = (json(&self.pretrain), json(&CyclePretrain::default()));
        for (name, d) in default.as_object().expect("a table") {
            let v = &now[name];
            field("pretrain", name, v == d, WHY, got(v))?;
        }
        Ok(())
    }

    /// What the trainer reads: the seed, `[train]` and the recipe's tie tolerance.
    pub fn settings(&self) -> Settings<'_> {
        Settings {
            seed: self.seed,
            train: &self.train,
            tie_tolerance: DEFAULT_TIE_TOLERANCE,
        }
    }
}

impl CycleModel {
    /// Domains of `[model]`.
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("dim", self.dim),
            ("layers", self.layers),
            ("heads", self.heads),
        ] {
            field("model", name, v >= 1, "must be ≥ 1", v)?;
        }
        let (dim, heads) = (self.dim, self.heads);
        field(
            "model",
            "heads",
            dim % heads == 0 && (dim / heads) % 2 == 0,
            "must divide `model.dim` into even head sizes (rotary pairs)",
            format!("{heads} heads for dim {dim}"),
        )?;
        field(
            "model",
            "dim",
            dim <= 4096,
            "must be ≤ 4096 (a model trained on 2 CPU cores)",
            dim,
        )?;
        field(
            "model",
            "layers",
            self.layers <= 64,
            "must be ≤ 64 (a model trained on 2 CPU cores)",
            self.layers,
        )
    }
}

impl CyclePretrain {
    /// Domains of `[pretrain]`.
    fn validate(&self) -> Result<(), ConfigError> {
        field(
            "pretrain",
            "batch",
            self.batch >= 1,
            "must be ≥ 1",
            self.batch,
        )?;
        field(
            "pretrain",
            "graphs",
            self.graphs >= 1,
            "must be ≥ 1",
            self.graphs,
        )?;
        positive("pretrain", "lr", self.lr)?;
        non_negative("pretrain", "clip_norm", self.clip_norm)?;
        let w = self.walk_fraction;
        field(
            "pretrain",
            "walk_fraction",
            (0.0..=1.0).contains(&w),
            "must be in [0, 1]",
            w,
        )
    }
}

impl CycleEval {
    /// Domains of `[eval]`, given the task `data`.
    fn validate(&self, data: &CycleSpec) -> Result<(), ConfigError> {
        field(
            "eval",
            "exact_batch",
            self.exact_batch >= 1,
            "must be ≥ 1",
            self.exact_batch,
        )?;
        let n = data.vertices;
        field(
            "eval",
            "exact",
            self.exact != Some(true) || n <= MAX_ENUMERATED_VERTICES,
            "needs data.vertices ≤ 8 (enumerating every vertex order: n! orders per prompt)",
            format!("data.vertices = {n}"),
        )?;
        field(
            "eval",
            "prompts",
            self.prompts <= data.test_pairs,
            "must not exceed data.test_pairs",
            format!("{} > {}", self.prompts, data.test_pairs),
        )
    }
}
