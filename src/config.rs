//! Run configuration: serde structs with documented defaults (see `experiments/README.md`).
//!
//! Every field has a default, unknown fields are rejected, and [`Config::validate`] names the
//! offending field (`setup.dim`, `train.t_max`, …) in its error.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The configuration embedded in the binary: `experiments/theorem2.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../experiments/theorem2.toml");

/// A whole run: seed, synthetic setup, training and evaluation settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seed of every random draw (ChaCha8); same seed and config ⇒ bit-identical outputs.
    pub seed: u64,
    pub setup: SetupConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub dynamics: DynamicsConfig,
}

/// `rmflow dynamics` settings (MATH.md §3).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicsConfig {
    /// Times at which the full `ρ` tensors and velocity contributions are written (the nearest
    /// observation time is used); empty means `[0, 1, t_max]`.
    pub snapshot_times: Vec<f64>,
}

/// Synthetic language model of MATH.md §5 (single-token responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SetupConfig {
    /// Hidden dimension `D`.
    pub dim: usize,
    /// "Good" (label +1) tokens that appear in training responses.
    pub good_seen: usize,
    /// "Good" tokens kept out of training (token-level shift, Theorem 2).
    pub good_unseen: usize,
    /// "Bad" (label −1) tokens that appear in training responses.
    pub bad_seen: usize,
    /// "Bad" tokens kept out of training.
    pub bad_unseen: usize,
    /// Neutral filler tokens (label 0, never a response here); `V` = sum of the five counts.
    pub filler_tokens: usize,
    /// Semantic strength `α` in `e_y = α s_y μ + g_y`.
    pub alpha: f64,
    /// Common component `κ` in `h_x = κ ν_c + N(0, I/D)` (anisotropy of hidden states).
    pub kappa: f64,
    /// Recurrent map `A ~ N(0, gain²/D)` entries.
    pub recurrent_gain: f64,
    /// Input map `B ~ N(0, gain²/D)` entries.
    pub input_gain: f64,
    /// `U(0)`: `tied` (scale × input embeddings) or `independent` (scale × N(0, I/D) rows).
    pub unembedding_init: UnembeddingInit,
    /// Multiplier applied to `U(0)`.
    pub unembedding_scale: f64,
    /// EX-RM head `u(0) ~ scale × N(0, I/D)`; 0 gives `u(0) = 0`.
    pub head_scale: f64,
    /// IM-RM temperature `β > 0` in `r_U = β ln(π_U/π_ref)`.
    pub beta: f64,
    /// Number of training preference pairs `N`.
    pub train_pairs: usize,
    /// Pairs in each evaluation split (`seen`, `unseen`, `domain`, `overlapP`).
    pub eval_pairs: usize,
    /// Response length `K` (tokens per response); `K = 1` is Theorem 2's setting.
    pub response_length: usize,
    /// `⟨ν_1, ν_0⟩` of the domain cluster's direction with the training cluster's; absent: both
    /// drawn independently (near-orthogonal, random sign).
    pub domain_alignment: Option<f64>,
    /// Extra evaluation splits `overlapP`: responses with a fraction `f` of their `K` tokens
    /// (rounded, random positions) from the seen set, the rest unseen, same labels.
    pub eval_overlap: Vec<f64>,
}

/// How `U(0)` is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnembeddingInit {
    Tied,
    Independent,
}

/// Training: gradient flow or one of its discretisations (MATH.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    /// Final time. Flow: ODE time `t`. Discrete optimizers: `t = steps × lr`.
    pub t_max: f64,
    /// Log-spaced observation times per decade of `t`.
    pub observations_per_decade: usize,
    /// First observation time after `t = 0` (which is always observed).
    pub first_observation: f64,
    /// Flow: relative tolerance of the Dormand–Prince error control.
    pub rtol: f64,
    /// Flow: absolute tolerance of the Dormand–Prince error control.
    pub atol: f64,
    /// Upper bound on integrator or optimizer steps; exceeding it is an error.
    pub max_steps: u64,
    /// IM-RM gradient: `full` (log-softmax over the whole vocabulary) or `sparse` (cancelled form).
    pub imrm_gradient: GradientPath,
    /// Step size `η` of GD, Adam and AdamW.
    pub lr: f64,
    /// Adam/AdamW first-moment decay.
    pub adam_beta1: f64,
    /// Adam/AdamW second-moment decay.
    pub adam_beta2: f64,
    /// Adam/AdamW denominator offset.
    pub adam_eps: f64,
    /// AdamW decoupled weight decay (ignored by the other optimizers).
    pub weight_decay: f64,
}

/// Which training dynamics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Exact gradient flow, adaptive Dormand–Prince 5(4) in log-time.
    Flow,
    /// Gradient descent, `θ ← θ − η∇L`.
    Gd,
    /// Adam (no weight decay).
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
}

impl Optimizer {
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Flow => "flow",
            Optimizer::Gd => "gd",
            Optimizer::Adam => "adam",
            Optimizer::Adamw => "adamw",
        }
    }
}

/// IM-RM gradient computation (MATH.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradientPath {
    /// Full-vocabulary log-softmax, the `π_i` terms left to cancel numerically.
    Full,
    /// Cancelled form `(e_{y⁺} − e_{y⁻}) h_xᵀ`: touches only rows of seen tokens.
    Sparse,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Tie tolerance `τ`: `|m| ≤ τ` counts ½ in tie-aware accuracy (MATH.md §1).
    pub tie_tolerance: f64,
}

impl Default for SetupConfig {
    fn default() -> Self {
        SetupConfig {
            dim: 32,
            good_seen: 8,
            good_unseen: 8,
            bad_seen: 8,
            bad_unseen: 8,
            filler_tokens: 992,
            alpha: 2.0,
            kappa: 2.0,
            recurrent_gain: 1.0,
            input_gain: 1.0,
            unembedding_init: UnembeddingInit::Tied,
            unembedding_scale: 1.0,
            head_scale: 0.0,
            beta: 1.0,
            train_pairs: 200,
            eval_pairs: 100,
            response_length: 1,
            domain_alignment: None,
            eval_overlap: Vec::new(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::Flow,
            t_max: 1e8,
            observations_per_decade: 4,
            first_observation: 1e-2,
            rtol: 1e-8,
            atol: 1e-10,
            max_steps: 1_000_000,
            imrm_gradient: GradientPath::Full,
            lr: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            tie_tolerance: 1e-9,
        }
    }
}

/// A configuration error: which field, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: field `{field}` {expected} (got {got})")]
    Field {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
}

fn check(
    ok: bool,
    field: &'static str,
    expected: &'static str,
    got: impl ToString,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Field {
            field,
            expected,
            got: got.to_string(),
        })
    }
}

fn positive_finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) and validates the result.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// The embedded default, `experiments/theorem2.toml`.
    pub fn embedded_default() -> Config {
        Config::from_toml_str(DEFAULT_CONFIG_TOML, "experiments/theorem2.toml (embedded)")
            .expect("the embedded default config is valid (checked by a test)")
    }

    /// The resolved config as TOML, as written next to every run's results.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Checks ranges and sizes; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.setup;
        check(
            s.dim >= 1 && s.dim <= 4096,
            "setup.dim",
            "must be in 1..=4096",
            s.dim,
        )?;
        for (field, n) in [
            ("setup.good_seen", s.good_seen),
            ("setup.bad_seen", s.bad_seen),
            ("setup.good_unseen", s.good_unseen),
            ("setup.bad_unseen", s.bad_unseen),
        ] {
            check(
                n >= 1,
                field,
                "must be ≥ 1 (every split needs good and bad tokens)",
                n,
            )?;
        }
        let v = s.good_seen + s.good_unseen + s.bad_seen + s.bad_unseen + s.filler_tokens;
        check(
            v <= 1 << 20,
            "setup.filler_tokens",
            "must keep the vocabulary size V ≤ 2^20",
            v,
        )?;
        check(
            s.alpha.is_finite() && s.alpha >= 0.0,
            "setup.alpha",
            "must be finite and ≥ 0",
            s.alpha,
        )?;
        check(
            s.kappa.is_finite() && s.kappa >= 0.0,
            "setup.kappa",
            "must be finite and ≥ 0",
            s.kappa,
        )?;
        check(
            s.recurrent_gain.is_finite() && s.recurrent_gain >= 0.0,
            "setup.recurrent_gain",
            "must be finite and ≥ 0",
            s.recurrent_gain,
        )?;
        check(
            positive_finite(s.input_gain),
            "setup.input_gain",
            "must be finite and > 0",
            s.input_gain,
        )?;
        check(
            s.unembedding_scale.is_finite() && s.unembedding_scale >= 0.0,
            "setup.unembedding_scale",
            "must be finite and ≥ 0",
            s.unembedding_scale,
        )?;
        check(
            s.head_scale.is_finite() && s.head_scale >= 0.0,
            "setup.head_scale",
            "must be finite and ≥ 0",
            s.head_scale,
        )?;
        check(
            positive_finite(s.beta),
            "setup.beta",
            "must be finite and > 0",
            s.beta,
        )?;
        check(
            s.train_pairs >= 1 && s.train_pairs <= 1_000_000,
            "setup.train_pairs",
            "must be in 1..=1000000",
            s.train_pairs,
        )?;
        check(
            s.eval_pairs >= 1 && s.eval_pairs <= 1_000_000,
            "setup.eval_pairs",
            "must be in 1..=1000000",
            s.eval_pairs,
        )?;

        let t = &self.train;
        check(
            positive_finite(t.t_max),
            "train.t_max",
            "must be finite and > 0",
            t.t_max,
        )?;
        check(t.t_max <= 1e300, "train.t_max", "must be ≤ 1e300", t.t_max)?;
        check(
            positive_finite(t.first_observation) && t.first_observation <= t.t_max,
            "train.first_observation",
            "must be finite, > 0 and ≤ train.t_max",
            t.first_observation,
        )?;
        check(
            (1..=1000).contains(&t.observations_per_decade),
            "train.observations_per_decade",
            "must be in 1..=1000",
            t.observations_per_decade,
        )?;
        check(
            positive_finite(t.rtol) && t.rtol < 1.0,
            "train.rtol",
            "must be in (0, 1)",
            t.rtol,
        )?;
        check(
            positive_finite(t.atol),
            "train.atol",
            "must be finite and > 0",
            t.atol,
        )?;
        check(
            t.max_steps >= 1,
            "train.max_steps",
            "must be ≥ 1",
            t.max_steps,
        )?;
        check(
            positive_finite(t.lr),
            "train.lr",
            "must be finite and > 0",
            t.lr,
        )?;
        check(
            (0.0..1.0).contains(&t.adam_beta1),
            "train.adam_beta1",
            "must be in [0, 1)",
            t.adam_beta1,
        )?;
        check(
            (0.0..1.0).contains(&t.adam_beta2),
            "train.adam_beta2",
            "must be in [0, 1)",
            t.adam_beta2,
        )?;
        check(
            positive_finite(t.adam_eps),
            "train.adam_eps",
            "must be finite and > 0",
            t.adam_eps,
        )?;
        check(
            t.weight_decay.is_finite() && t.weight_decay >= 0.0,
            "train.weight_decay",
            "must be finite and ≥ 0",
            t.weight_decay,
        )?;
        if t.optimizer != Optimizer::Flow {
            let steps = (t.t_max / t.lr).ceil();
            check(
                steps <= t.max_steps as f64,
                "train.t_max",
                "divided by train.lr must not exceed train.max_steps for a discrete optimizer",
                format!("{steps:e} steps"),
            )?;
        }
        for &t in &self.dynamics.snapshot_times {
            check(
                t.is_finite() && t >= 0.0,
                "dynamics.snapshot_times",
                "entries must be finite and ≥ 0",
                t,
            )?;
        }
        let e = &self.eval;
        check(
            e.tie_tolerance.is_finite() && e.tie_tolerance >= 0.0,
            "eval.tie_tolerance",
            "must be finite and ≥ 0",
            e.tie_tolerance,
        )?;
        Ok(())
    }

    /// Vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        let s = &self.setup;
        s.good_seen + s.good_unseen + s.bad_seen + s.bad_unseen + s.filler_tokens
    }
}
