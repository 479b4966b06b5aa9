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
    pub export: ExportConfig,
}

/// What `simulate` writes besides the always-present arrays (experiments/README.md).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Also write the full `[V, D]` matrices `init/unembedding.npy` and
    /// `final/unembedding.npy` (`O(V·D)`: 4 GiB each at V = 131 072, D = 4 096). By default only
    /// the rows of the tokens that occur in some pair are written, with their token ids.
    pub full_unembedding: bool,
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
    /// Flow only: the horizon as `log10 t_max`, for horizons past f64 (up to `t = 10^100000`;
    /// the flow runs in `s = ln t` and never forms `t`). Overrides `t_max` when set.
    pub t_max_log10: Option<f64>,
    /// Log-spaced observation times per decade of `t` (may be below 1: `0.01` observes every
    /// 100 decades).
    pub observations_per_decade: f64,
    /// First observation time after `t = 0` (which is always observed).
    pub first_observation: f64,
    /// Flow: relative tolerance of the Dormand–Prince error control.
    pub rtol: f64,
    /// Flow: absolute tolerance of the Dormand–Prince error control.
    pub atol: f64,
    /// Flow: observe between steps through the integrator's 4th-order continuous extension
    /// (`ode::integrate`, dense output) instead of landing a step on every observation time.
    /// The step count then follows `rtol`/`atol` alone; the horizon is still landed exactly.
    pub dense_output: bool,
    /// Upper bound on integrator or optimizer steps; exceeding it is an error.
    pub max_steps: u64,
    /// IM-RM gradient: `full` (log-softmax over the whole vocabulary) or `sparse` (cancelled form).
    pub imrm_gradient: GradientPath,
    /// Screen the log-time flow field of models with affine margins (EX-RM, seen-row IM-RM) on
    /// separable data: pairs whose weight is provably below `1e-3 · atol` are left out between
    /// full evaluations (`training::Screening`).
    pub flow_screening: bool,
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
    /// Report the rewards of single responses (the official evaluator's normalised absolute
    /// margin and mean rewards). The IM-RM's reward needs the log-normaliser over the whole
    /// vocabulary for every prompt (`O(V·D)` each, streamed); margins and accuracies never do.
    pub single_response_rewards: bool,
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
            t_max_log10: None,
            observations_per_decade: 4.0,
            first_observation: 1e-2,
            rtol: 1e-8,
            atol: 1e-10,
            dense_output: false,
            max_steps: 1_000_000,
            imrm_gradient: GradientPath::Full,
            flow_screening: true,
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
            single_response_rewards: true,
        }
    }
}

/// A configuration error: which field, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config{}: field `{field}` {expected} (got {got})", origin.as_ref().map(|o| format!(" {o}")).unwrap_or_default())]
    Field {
        field: &'static str,
        expected: &'static str,
        got: String,
        /// The file (or other source) the config came from, when known.
        origin: Option<String>,
    },
}

impl ConfigError {
    /// Names `origin` (a file path) in a field error.
    pub fn in_origin(self, origin: &str) -> ConfigError {
        match self {
            ConfigError::Field {
                field,
                expected,
                got,
                origin: None,
            } => ConfigError::Field {
                field,
                expected,
                got,
                origin: Some(origin.to_string()),
            },
            other => other,
        }
    }
}

/// Longest flow horizon accepted, as `log10 t`.
pub const MAX_HORIZON_LOG10: f64 = 1e5;

impl TrainConfig {
    /// `log10` of the horizon: `t_max_log10` when set, else `log10(t_max)`.
    pub fn horizon_log10(&self) -> f64 {
        self.t_max_log10.unwrap_or_else(|| self.t_max.log10())
    }
}

/// Largest hidden dimension `D` accepted.
pub const MAX_DIM: usize = 4096;
/// Largest vocabulary `V` accepted (and largest token count of each kind).
pub const MAX_VOCAB: usize = 1 << 20;
/// Largest `N` (training pairs) and evaluation split size accepted.
pub const MAX_PAIRS: usize = 1_000_000;
/// Largest response length `K` accepted.
pub const MAX_RESPONSE_LENGTH: usize = 256;
/// Upper end of the domain of the scale fields (`alpha`, `kappa`, gains, init scales).
pub const MAX_SCALE: f64 = 1e6;
/// Domain of `β`: `[MIN_BETA, MAX_BETA]`.
pub const MIN_BETA: f64 = 1e-12;
/// Upper end of the domain of `β`.
pub const MAX_BETA: f64 = 1e12;

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
            origin: None,
        })
    }
}

/// A TOML error on one line: `line L, column C (`the line`): message`.
pub fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            let line = text[line_start..].lines().next().unwrap_or("").trim();
            format!("line {line_no}, column {column} (`{line}`): {message}")
        }
        None => message,
    }
}

fn positive_finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl Config {
    /// The IM-RM trains only the rows of its pairs' tokens (MATH.md §4, Theorem 2a): sparse
    /// gradient, single-token responses, and no decoupled weight decay (AdamW moves every row).
    pub fn trains_seen_rows(&self) -> bool {
        self.train.imrm_gradient == GradientPath::Sparse
            && self.train.optimizer != Optimizer::Adamw
            && self.setup.response_length == 1
    }

    /// Parses TOML text (`origin` names it in errors) and validates the result.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: one_line_toml_error(text, &e),
        })?;
        config.validate().map_err(|e| e.in_origin(origin))?;
        Ok(config)
    }

    /// Reads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
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

    /// Checks every field's domain (sizes, finite floats in stated ranges, combinations); the
    /// error names the field and the allowed range. Derived sizes use checked arithmetic.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.setup;
        check(
            (1..=MAX_DIM).contains(&s.dim),
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
                (1..=MAX_VOCAB).contains(&n),
                field,
                "must be in 1..=1048576 (every split needs good and bad tokens)",
                n,
            )?;
        }
        check(
            s.filler_tokens <= MAX_VOCAB,
            "setup.filler_tokens",
            "must be in 0..=1048576",
            s.filler_tokens,
        )?;
        match self.checked_vocab_size() {
            Some(v) if v <= MAX_VOCAB => {}
            v => {
                return Err(ConfigError::Field {
                    field: "setup.filler_tokens",
                    expected: "plus good_seen, good_unseen, bad_seen and bad_unseen (the vocabulary size V) must be ≤ 2^20",
                    got: v.map_or("a sum that overflows".to_string(), |v| format!("V = {v}")),
                    origin: None,
                })
            }
        }
        for (field, x) in [
            ("setup.alpha", s.alpha),
            ("setup.kappa", s.kappa),
            ("setup.recurrent_gain", s.recurrent_gain),
            ("setup.unembedding_scale", s.unembedding_scale),
            ("setup.head_scale", s.head_scale),
        ] {
            check(
                x.is_finite() && (0.0..=MAX_SCALE).contains(&x),
                field,
                "must be finite and in [0, 1e6]",
                x,
            )?;
        }
        check(
            s.input_gain.is_finite() && s.input_gain > 0.0 && s.input_gain <= MAX_SCALE,
            "setup.input_gain",
            "must be finite and in (0, 1e6]",
            s.input_gain,
        )?;
        check(
            s.beta.is_finite() && (MIN_BETA..=MAX_BETA).contains(&s.beta),
            "setup.beta",
            "must be finite and in [1e-12, 1e12]",
            s.beta,
        )?;
        check(
            (1..=MAX_PAIRS).contains(&s.train_pairs),
            "setup.train_pairs",
            "must be in 1..=1000000",
            s.train_pairs,
        )?;
        check(
            (1..=MAX_PAIRS).contains(&s.eval_pairs),
            "setup.eval_pairs",
            "must be in 1..=1000000",
            s.eval_pairs,
        )?;
        check(
            (1..=MAX_RESPONSE_LENGTH).contains(&s.response_length),
            "setup.response_length",
            "must be in 1..=256 (K tokens per response)",
            s.response_length,
        )?;
        if let Some(a) = s.domain_alignment {
            check(
                a.is_finite() && (-1.0..=1.0).contains(&a),
                "setup.domain_alignment",
                "must be a cosine: finite and in [-1, 1]",
                a,
            )?;
        }
        check(
            s.eval_overlap.len() <= 101,
            "setup.eval_overlap",
            "must have at most 101 entries",
            s.eval_overlap.len(),
        )?;
        let mut names = Vec::new();
        for &f in &s.eval_overlap {
            check(
                f.is_finite() && (0.0..=1.0).contains(&f),
                "setup.eval_overlap",
                "entries must be fractions: finite and in [0, 1]",
                f,
            )?;
            let name = crate::problem::synthetic::overlap_split_name(f);
            check(
                !names.contains(&name),
                "setup.eval_overlap",
                "entries must name distinct splits (fractions equal to within 0.005 collide)",
                format!("{f} (split {name} twice)"),
            )?;
            names.push(name);
        }

        let t = &self.train;
        check(
            t.t_max.is_finite() && t.t_max > 0.0 && t.t_max <= 1e300,
            "train.t_max",
            "must be finite and in (0, 1e300]",
            t.t_max,
        )?;
        check(
            t.first_observation.is_finite()
                && t.first_observation > 0.0
                && (t.first_observation <= t.t_max || t.t_max_log10.is_some()),
            "train.first_observation",
            "must be finite and in (0, train.t_max]",
            t.first_observation,
        )?;
        if let Some(l) = t.t_max_log10 {
            check(
                l.is_finite() && l > -300.0 && l <= MAX_HORIZON_LOG10,
                "train.t_max_log10",
                "must be finite and in (-300, 100000]",
                l,
            )?;
            check(
                t.optimizer == Optimizer::Flow || l <= 300.0,
                "train.t_max_log10",
                "must be ≤ 300 for a discrete optimizer (t = steps × lr is formed)",
                l,
            )?;
            check(
                t.first_observation.log10() <= l,
                "train.first_observation",
                "must be ≤ 10^train.t_max_log10",
                t.first_observation,
            )?;
        }
        check(
            t.observations_per_decade.is_finite()
                && (1e-3..=1000.0).contains(&t.observations_per_decade),
            "train.observations_per_decade",
            "must be in [0.001, 1000]",
            t.observations_per_decade,
        )?;
        let decades = t.horizon_log10() - t.first_observation.log10();
        check(
            decades * t.observations_per_decade <= 1e6,
            "train.observations_per_decade",
            "times the decades from train.first_observation to the horizon must be ≤ 10^6 observations",
            format!("{:.3e} observations", decades * t.observations_per_decade),
        )?;
        check(
            t.rtol.is_finite() && (1e-14..1.0).contains(&t.rtol),
            "train.rtol",
            "must be in [1e-14, 1)",
            t.rtol,
        )?;
        check(
            t.atol.is_finite() && t.atol > 0.0 && t.atol <= 1.0,
            "train.atol",
            "must be finite and in (0, 1]",
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
        if t.optimizer == Optimizer::Adamw {
            check(
                t.weight_decay * t.lr < 1.0,
                "train.weight_decay",
                "times train.lr must be < 1 for AdamW (the decay factor 1 − lr·wd must stay positive)",
                t.weight_decay,
            )?;
        }
        if t.optimizer != Optimizer::Flow {
            let steps = (t.t_max / t.lr).ceil();
            check(
                steps <= t.max_steps as f64,
                "train.t_max",
                "divided by train.lr must not exceed train.max_steps for a discrete optimizer",
                format!("{steps:e} steps"),
            )?;
        }
        check(
            t.imrm_gradient == GradientPath::Full || s.response_length == 1,
            "train.imrm_gradient",
            "must be \"full\" when setup.response_length > 1 (the cancelled \"sparse\" form holds for single-token responses only)",
            format!("\"sparse\" with response_length = {}", s.response_length),
        )?;
        check(
            self.dynamics.snapshot_times.len() <= 1000,
            "dynamics.snapshot_times",
            "must have at most 1000 entries",
            self.dynamics.snapshot_times.len(),
        )?;
        for &x in &self.dynamics.snapshot_times {
            check(
                x.is_finite() && x >= 0.0,
                "dynamics.snapshot_times",
                "entries must be finite and ≥ 0",
                x,
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

    /// `V` as the checked sum of the five token counts (`None` on overflow).
    pub fn checked_vocab_size(&self) -> Option<usize> {
        let s = &self.setup;
        s.good_seen
            .checked_add(s.good_unseen)?
            .checked_add(s.bad_seen)?
            .checked_add(s.bad_unseen)?
            .checked_add(s.filler_tokens)
    }

    /// Vocabulary size `V` (saturating; validated configs keep it ≤ 2^20).
    pub fn vocab_size(&self) -> usize {
        self.checked_vocab_size().unwrap_or(usize::MAX)
    }
}
