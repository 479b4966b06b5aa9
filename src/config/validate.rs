//! [`Config::validate`]: every field's domain (sizes, finite floats in stated ranges,
//! combinations), table by table in a fixed order, so the first field reported is always the
//! same. The error names the field and the allowed range; derived sizes use checked arithmetic.

use super::error::{check, ConfigError};
use super::schema::*;

fn positive_finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl Config {
    /// Checks every field's domain; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        setup_sizes(self)?;
        setup_scales(&self.setup)?;
        setup_splits(&self.setup)?;
        train_horizon(&self.train)?;
        train_optimizer(&self.train)?;
        train_gradient_path(&self.train, &self.setup)?;
        dynamics(&self.dynamics)?;
        eval(&self.eval)
    }
}

/// `setup`: `D` and the token counts, and `V` as their checked sum.
fn setup_sizes(config: &Config) -> Result<(), ConfigError> {
    let s = &config.setup;
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
    match config.checked_vocab_size() {
        Some(v) if v <= MAX_VOCAB => {}
        v => {
            return Err(ConfigError::Field {
                field: "setup.filler_tokens".into(),
                expected: "plus good_seen, good_unseen, bad_seen and bad_unseen (the vocabulary size V) must be ≤ 2^20",
                got: v.map_or("a sum that overflows".to_string(), |v| format!("V = {v}")),
                origin: None,
            })
        }
    }
    Ok(())
}

/// `setup`: the scale fields and `β`.
fn setup_scales(s: &SetupConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `setup`: split sizes, `K`, the domain alignment and the overlap splits.
fn setup_splits(s: &SetupConfig) -> Result<(), ConfigError> {
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
        let name = overlap_split_name(f);
        check(
            !names.contains(&name),
            "setup.eval_overlap",
            "entries must name distinct splits (fractions equal to within 0.005 collide)",
            format!("{f} (split {name} twice)"),
        )?;
        names.push(name);
    }
    Ok(())
}

/// `train`: the horizon and the observation grid.
fn train_horizon(t: &TrainConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `train`: tolerances, step limits and the optimizers' hyper-parameters.
fn train_optimizer(t: &TrainConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `train.imrm_gradient` against `setup.response_length`.
fn train_gradient_path(t: &TrainConfig, s: &SetupConfig) -> Result<(), ConfigError> {
    check(
        t.imrm_gradient == GradientPath::Full || s.response_length == 1,
        "train.imrm_gradient",
        "must be \"full\" when setup.response_length > 1 (the cancelled \"sparse\" form holds for single-token responses only)",
        format!("\"sparse\" with response_length = {}", s.response_length),
    )?;
    Ok(())
}

/// `dynamics`: the snapshot times.
fn dynamics(d: &DynamicsConfig) -> Result<(), ConfigError> {
    check(
        d.snapshot_times.len() <= 1000,
        "dynamics.snapshot_times",
        "must have at most 1000 entries",
        d.snapshot_times.len(),
    )?;
    for &x in &d.snapshot_times {
        check(
            x.is_finite() && x >= 0.0,
            "dynamics.snapshot_times",
            "entries must be finite and ≥ 0",
            x,
        )?;
    }
    Ok(())
}

/// `eval`: the tie tolerance.
fn eval(e: &EvalConfig) -> Result<(), ConfigError> {
    check(
        e.tie_tolerance.is_finite() && e.tie_tolerance >= 0.0,
        "eval.tie_tolerance",
        "must be finite and ≥ 0",
        e.tie_tolerance,
    )?;
    Ok(())
}
