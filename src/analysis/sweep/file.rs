//! A sweep file: `[sweep]` (the parameter, its values, the seeds) and the `[base]` config, and
//! the units (one run each) it expands to.

use crate::config::Config;
use crate::error::InputError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a sweep varies. Every parameter but `eval_overlap` is one run per value and seed, read
/// on the `unseen` split; `eval_overlap` is one run per seed with one `overlapP` split per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepParameter {
    /// `setup.alpha` (semantic strength).
    Alpha,
    /// `setup.kappa` (common component of prompt representations).
    Kappa,
    /// `setup.beta` (IM-RM temperature).
    Beta,
    /// `setup.dim` (`D`; values must be whole numbers).
    Dim,
    /// `setup.train_pairs` (`N`; whole numbers).
    TrainPairs,
    /// `setup.filler_tokens` (sets `V`; whole numbers).
    FillerTokens,
    /// `setup.eval_overlap`.
    EvalOverlap,
}

impl SweepParameter {
    /// One run per value (all but `eval_overlap`).
    pub fn per_value(self) -> bool {
        self != SweepParameter::EvalOverlap
    }

    /// Sets the parameter to `v` in `c`; whole-number parameters need a whole `v` in range.
    pub fn apply(self, c: &mut Config, v: f64) -> Result<()> {
        let whole = || -> Result<usize> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9.007_199_254_740_992e15 {
                Ok(v as usize)
            } else {
                Err(InputError(format!(
                    "field `sweep.values`: {self:?} takes whole numbers ≥ 0 (got {v})"
                ))
                .into())
            }
        };
        match self {
            SweepParameter::Alpha => c.setup.alpha = v,
            SweepParameter::Kappa => c.setup.kappa = v,
            SweepParameter::Beta => c.setup.beta = v,
            SweepParameter::Dim => c.setup.dim = whole()?,
            SweepParameter::TrainPairs => c.setup.train_pairs = whole()?,
            SweepParameter::FillerTokens => c.setup.filler_tokens = whole()?,
            SweepParameter::EvalOverlap => {}
        }
        Ok(())
    }
}

/// `[sweep]` table of a sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub parameter: SweepParameter,
    pub values: Vec<f64>,
    /// Seeds `base.seed, base.seed + 1, …`.
    pub seeds: usize,
}

/// A sweep file: `[sweep]` plus the base config under `[base]` (`[base.setup]`, `[base.train]`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub sweep: SweepSpec,
    #[serde(default)]
    pub base: Config,
}

impl SweepFile {
    /// Reads and validates a sweep file; errors name the file and the field (exit code 2).
    pub fn from_file(path: &Path) -> Result<SweepFile> {
        let text = crate::io::input::read_text(path, "sweep file")?;
        let file: SweepFile = toml::from_str(&text).map_err(|e| {
            InputError(format!(
                "invalid sweep file {}: {}",
                path.display(),
                crate::config::one_line_toml_error(&text, &e)
            ))
        })?;
        file.validate()
            .map_err(|e| InputError(format!("invalid sweep file {}: {e:#}", path.display())))?;
        Ok(file)
    }

    /// Checks `[sweep]` and every config the sweep would run (seed index 0; the others differ
    /// only in the seed).
    pub fn validate(&self) -> Result<()> {
        if self.sweep.values.is_empty() {
            return Err(InputError("field `sweep.values` must not be empty".into()).into());
        }
        if self.sweep.values.len() > 1000 {
            return Err(InputError(format!(
                "field `sweep.values` must have at most 1000 entries (got {})",
                self.sweep.values.len()
            ))
            .into());
        }
        if let Some(v) = self.sweep.values.iter().find(|v| !v.is_finite()) {
            return Err(InputError(format!(
                "field `sweep.values` entries must be finite (got {v})"
            ))
            .into());
        }
        if !(2..=10_000).contains(&self.sweep.seeds) {
            return Err(InputError(format!(
                "field `sweep.seeds` must be in 2..=10000 (got {}): an interval needs two seeds",
                self.sweep.seeds
            ))
            .into());
        }
        for c in self.configs(0)? {
            c.validate()
                .map_err(|e| InputError(format!("in `base` (with a swept value applied): {e}")))?;
        }
        Ok(())
    }

    /// The units of work: one per (seed, value) for per-value parameters, one per seed for
    /// `eval_overlap`; unit `id` is its index here (seed-major).
    pub fn units(&self) -> Vec<Unit> {
        let spec = &self.sweep;
        (0..spec.seeds)
            .flat_map(|seed| {
                let values: Vec<Option<usize>> = if spec.parameter.per_value() {
                    (0..spec.values.len()).map(Some).collect()
                } else {
                    vec![None]
                };
                values.into_iter().map(move |value| Unit { seed, value })
            })
            .collect()
    }

    /// The config of one unit: seed `base.seed + seed`, the swept value applied.
    pub fn unit_config(&self, unit: Unit) -> Result<Config> {
        let mut c = self.base.clone();
        c.seed = self.base.seed.wrapping_add(unit.seed as u64);
        match unit.value {
            Some(vi) => self.sweep.parameter.apply(&mut c, self.sweep.values[vi])?,
            None => c.setup.eval_overlap = self.sweep.values.clone(),
        }
        Ok(c)
    }

    /// The configs of seed index `s` (one per value, or one in all for `eval_overlap`).
    pub fn configs(&self, s: usize) -> Result<Vec<Config>> {
        self.units()
            .into_iter()
            .filter(|u| u.seed == s)
            .map(|u| self.unit_config(u))
            .collect()
    }

    /// SHA-256 of the resolved sweep file (its TOML), hex: shards of one sweep share it.
    pub fn digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let text = toml::to_string(self)?;
        Ok(Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// One unit of a sweep: a seed index and, for per-value parameters, a value index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub seed: usize,
    pub value: Option<usize>,
}
