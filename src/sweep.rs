//! Parameter sweeps over seeds: accuracy of both reward models as a function of one parameter,
//! mean and 95 % interval (Student t) over seeds. One code path for the CLI and the figures.

use crate::config::Config;
use crate::error::InputError;
use crate::export::AtomicDir;
use crate::simulation::simulate;
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepParameter {
    /// `setup.alpha`; accuracy read on the `unseen` split (one run per value and seed).
    Alpha,
    /// `setup.eval_overlap`; all values become `overlapP` splits of one run per seed.
    EvalOverlap,
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| InputError(format!("cannot read sweep file {}: {e}", path.display())))?;
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
        for c in self.configs(0) {
            c.validate()
                .map_err(|e| InputError(format!("in `base` (with a swept value applied): {e}")))?;
        }
        Ok(())
    }

    /// The configs of seed index `s` (one per value for `alpha`, one in all for `eval_overlap`).
    pub fn configs(&self, s: usize) -> Vec<Config> {
        let mut c = self.base.clone();
        c.seed = self.base.seed.wrapping_add(s as u64);
        match self.sweep.parameter {
            SweepParameter::EvalOverlap => {
                c.setup.eval_overlap = self.sweep.values.clone();
                vec![c]
            }
            SweepParameter::Alpha => self
                .sweep
                .values
                .iter()
                .map(|&a| {
                    let mut ca = c.clone();
                    ca.setup.alpha = a;
                    ca
                })
                .collect(),
        }
    }
}

/// One row of a sweep table: a parameter value and a model, accuracy over seeds at `t_max`.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub value: f64,
    pub model: &'static str,
    pub seeds: usize,
    pub tie_aware_mean: f64,
    /// Half-width of the 95 % Student-t interval of the mean.
    pub tie_aware_ci95: f64,
    pub strict_mean: f64,
    pub strict_ci95: f64,
}

/// `t_{0.975, df}` (two-sided 95 %), tabulated for df ≤ 30, normal beyond.
pub fn student_t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else if df <= 30 {
        T[df - 1]
    } else {
        1.96
    }
}

/// Mean and 95 % half-width of `xs`.
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, student_t975(xs.len() - 1) * (var / n).sqrt())
}

/// Runs the sweep (seeds in parallel, results in seed order) and returns one row per value and model.
pub fn run_sweep(file: &SweepFile, on_seed_done: &(dyn Fn() + Sync)) -> Result<Vec<SweepRow>> {
    file.validate()?;
    let spec = &file.sweep;
    // per seed: per value: [(exrm tie, exrm strict), (imrm tie, imrm strict)]
    let per_seed: Vec<Vec<[(f64, f64); 2]>> = (0..spec.seeds)
        .into_par_iter()
        .map(|s| -> Result<Vec<[(f64, f64); 2]>> {
            let configs = file.configs(s);
            let mut out = Vec::new();
            for (vi, c) in configs.iter().enumerate() {
                let sim = simulate(c, &mut |_| {})?;
                let read = |run: &crate::simulation::ModelRun, split: &str| {
                    let o = run.trajectory.last().expect("observed");
                    let m = o
                        .splits
                        .iter()
                        .find(|m| m.split == split)
                        .expect("split observed");
                    (m.tie_aware_accuracy, m.strict_accuracy)
                };
                match spec.parameter {
                    SweepParameter::Alpha => {
                        out.push([read(&sim.explicit, "unseen"), read(&sim.implicit, "unseen")])
                    }
                    SweepParameter::EvalOverlap => {
                        debug_assert_eq!(vi, 0);
                        for &f in &spec.values {
                            let name = crate::synthetic::overlap_split_name(f);
                            out.push([read(&sim.explicit, &name), read(&sim.implicit, &name)]);
                        }
                    }
                }
            }
            on_seed_done();
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for (vi, &value) in spec.values.iter().enumerate() {
        for (mi, model) in ["exrm", "imrm"].into_iter().enumerate() {
            let tie: Vec<f64> = per_seed.iter().map(|r| r[vi][mi].0).collect();
            let strict: Vec<f64> = per_seed.iter().map(|r| r[vi][mi].1).collect();
            let (tm, tc) = mean_ci95(&tie);
            let (sm, sc) = mean_ci95(&strict);
            rows.push(SweepRow {
                value,
                model,
                seeds: spec.seeds,
                tie_aware_mean: tm,
                tie_aware_ci95: tc,
                strict_mean: sm,
                strict_ci95: sc,
            });
        }
    }
    Ok(rows)
}

/// The sweep table as CSV (`value,model,seeds,tie_aware_mean,tie_aware_ci95,strict_mean,strict_ci95`).
pub fn sweep_csv(rows: &[SweepRow]) -> String {
    let mut s =
        String::from("value,model,seeds,tie_aware_mean,tie_aware_ci95,strict_mean,strict_ci95\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.value,
            r.model,
            r.seeds,
            r.tie_aware_mean,
            r.tie_aware_ci95,
            r.strict_mean,
            r.strict_ci95
        ));
    }
    s
}

/// Writes `sweep.csv` and `sweep.toml` (the resolved sweep file, with the rmflow version and the
/// path it was read from) into an open output folder.
pub fn write_sweep_into(
    dir: &AtomicDir,
    file: &SweepFile,
    source: &Path,
    rows: &[SweepRow],
) -> Result<()> {
    dir.write_text(
        "sweep.toml",
        &format!(
            "# rmflow {}: resolved sweep of {}\n{}",
            crate::export::RMFLOW_VERSION,
            source.display(),
            toml::to_string(file)?
        ),
    )?;
    dir.write_text("sweep.csv", &sweep_csv(rows))
}
