//! The config's tables as serde structs with documented defaults (see `experiments/README.md`);
//! every field has a default and unknown fields are rejected.

use super::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The configuration embedded in the binary: `experiments/theorem2.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../experiments/theorem2.toml");

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
    /// IM-RM gradient: `full` (log-softmax over the whole vocabulary) or `sparse` (the seen-row
    /// form, single-token responses only).
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
    /// The seen-row form (single-token responses): the normaliser cancels within a pair, the
    /// gradient `(e_{y⁺} − e_{y⁻}) h_xᵀ` touches only the rows of the pairs' tokens. Written
    /// `"sparse"` in configs (also accepted: `"seen_rows"`).
    #[serde(rename = "sparse", alias = "seen_rows")]
    SeenRows,
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
    /// `"auto"` (default): the evaluation splits only, skipped with a note when their estimated
    /// cost is above [`crate::experiment::rewards::AUTO_MAX_SECONDS`] and above
    /// [`crate::experiment::rewards::AUTO_MAX_SHARE`] of the run; `true`: every split, always;
    /// `false`: none.
    pub single_response_rewards: SingleResponseRewards,
}

/// `eval.single_response_rewards`: `"auto"`, `true` or `false` (see [`EvalConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleResponseRewards {
    /// The evaluation splits, unless the estimate says they would dominate the run.
    Auto,
    /// Every split, the training split included, whatever the cost (`true`).
    All,
    /// None (`false`).
    Off,
}

impl Serialize for SingleResponseRewards {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SingleResponseRewards::Auto => s.serialize_str("auto"),
            SingleResponseRewards::All => s.serialize_bool(true),
            SingleResponseRewards::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for SingleResponseRewards {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Bool(true)) => Ok(SingleResponseRewards::All),
            Ok(Raw::Bool(false)) => Ok(SingleResponseRewards::Off),
            Ok(Raw::Text(t)) if t == "auto" => Ok(SingleResponseRewards::Auto),
            _ => Err(serde::de::Error::custom(
                "expected \"auto\", true (every split) or false (none)",
            )),
        }
    }
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
            dense_output: true,
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
            single_response_rewards: SingleResponseRewards::Auto,
        }
    }
}

/// Name of the evaluation split whose responses take a fraction `f` of their tokens from the seen
/// set: `overlap0`, `overlap25`, …, `overlap100`.
pub fn overlap_split_name(f: f64) -> String {
    format!("overlap{}", (f * 100.0).round() as i64)
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

impl Config {
    /// The IM-RM trains only the rows of its pairs' tokens (MATH.md §4, Theorem 2a): the seen-row
    /// gradient, single-token responses, and no decoupled weight decay (AdamW moves every row).
    pub fn trains_seen_rows(&self) -> bool {
        self.train.imrm_gradient == GradientPath::SeenRows
            && self.train.optimizer != Optimizer::Adamw
            && self.setup.response_length == 1
    }

    /// Parses TOML text (`origin` names it in errors) and validates the result.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        super::parse_toml(text, origin, Config::validate)
    }

    /// Reads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        super::read_toml(path, "config file", Config::validate)
    }

    /// The default of `rmflow dynamics`: the embedded default to `t = 1e8`.
    pub fn dynamics_default() -> Config {
        let mut c = Config::embedded_default();
        c.train.t_max = 1e8;
        c
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_row_path_is_written_sparse_and_read_under_both_names() {
        for name in ["sparse", "seen_rows"] {
            let c = Config::from_toml_str(&format!("[train]\nimrm_gradient = \"{name}\"\n"), "t")
                .unwrap();
            assert_eq!(c.train.imrm_gradient, GradientPath::SeenRows);
            assert!(c.to_toml().contains("imrm_gradient = \"sparse\""));
        }
        let e = Config::from_toml_str("[train]\nimrm_gradient = \"rows\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("imrm_gradient"), "{e}");
    }
}
