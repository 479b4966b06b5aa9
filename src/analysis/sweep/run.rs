//! Running a sweep's units, and aggregating them: mean and 95 % interval (Student t) over
//! seeds per value and model; `sweep.csv`.

use super::file::{SweepFile, Unit};
use crate::config::Config;
use crate::experiment::simulation::simulate;
use crate::io::atomic::AtomicDir;
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

/// Accuracies of one unit at `t_max`: per value index, `[exrm, imrm]` × (tie-aware, strict).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitResult {
    pub id: usize,
    pub values: Vec<(usize, [(f64, f64); 2])>,
}

/// Relative cost of one unit (arbitrary units, used only to balance shards): the floating-point
/// work of drawing the representations, the observations and the training steps.
pub fn estimated_cost(c: &Config) -> f64 {
    let s = &c.setup;
    let f = |x: usize| x as f64;
    let pairs = f(s.train_pairs) + f(s.eval_pairs) * (3.0 + f(s.eval_overlap.len()));
    let observations = crate::solve::training::observation_times(&c.train).len() as f64;
    let path =
        if c.train.imrm_gradient == crate::config::GradientPath::Full || s.response_length > 1 {
            f(c.vocab_size())
        } else {
            1.0
        };
    pairs * f(s.response_length) * f(s.dim) * (f(s.dim) + observations * path)
        + f(c.vocab_size()) * f(s.dim)
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

/// Runs one unit: trains both models and reads the accuracies the sweep reports.
pub fn run_unit(file: &SweepFile, id: usize, unit: Unit) -> Result<UnitResult> {
    let c = file.unit_config(unit)?;
    let sim = simulate(&c, &mut |_| {})?;
    let read = |run: &crate::experiment::simulation::ModelRun, split: &str| -> Result<(f64, f64)> {
        let o = run.trajectory.last().expect("observed");
        let m = o
            .splits
            .iter()
            .find(|m| m.split == split)
            .ok_or_else(|| anyhow::anyhow!("split {split} not observed"))?;
        Ok((m.tie_aware_accuracy, m.strict_accuracy))
    };
    let values = match unit.value {
        Some(vi) => vec![(
            vi,
            [
                read(&sim.explicit, "unseen")?,
                read(&sim.implicit, "unseen")?,
            ],
        )],
        None => file
            .sweep
            .values
            .iter()
            .enumerate()
            .map(|(vi, &f)| {
                let name = crate::config::overlap_split_name(f);
                Ok((
                    vi,
                    [read(&sim.explicit, &name)?, read(&sim.implicit, &name)?],
                ))
            })
            .collect::<Result<_>>()?,
    };
    Ok(UnitResult { id, values })
}

/// Runs the units `ids` in parallel (results in the order of `ids`, independent of the thread
/// count), calling `on_unit_done` after each.
pub fn run_units(
    file: &SweepFile,
    ids: &[usize],
    on_unit_done: &(dyn Fn() + Sync),
) -> Result<Vec<UnitResult>> {
    file.validate()?;
    let units = file.units();
    ids.par_iter()
        .map(|&id| {
            let r = run_unit(file, id, units[id]);
            on_unit_done();
            r
        })
        .collect()
}

/// The table from the results of every unit (in any order): per value and model, mean and 95 %
/// interval over seeds in seed order. Errors if a unit is missing or present twice.
pub fn aggregate(file: &SweepFile, results: &[UnitResult]) -> Result<Vec<SweepRow>> {
    let spec = &file.sweep;
    let units = file.units();
    let mut by_id: Vec<Option<&UnitResult>> = vec![None; units.len()];
    for r in results {
        let slot = by_id
            .get_mut(r.id)
            .ok_or_else(|| anyhow::anyhow!("unit {} is not part of this sweep", r.id))?;
        if slot.is_some() {
            anyhow::bail!("unit {} appears twice", r.id);
        }
        *slot = Some(r);
    }
    if let Some(missing) = by_id.iter().position(Option::is_none) {
        anyhow::bail!(
            "unit {missing} (seed {}) has no result",
            units[missing].seed
        );
    }
    // per seed: per value: [(exrm tie, exrm strict), (imrm tie, imrm strict)]
    let mut per_seed: Vec<Vec<[(f64, f64); 2]>> =
        vec![vec![[(f64::NAN, f64::NAN); 2]; spec.values.len()]; spec.seeds];
    for (unit, r) in units.iter().zip(by_id) {
        for &(vi, acc) in &r.expect("checked above").values {
            per_seed[unit.seed][vi] = acc;
        }
    }
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

/// Runs the whole sweep (units in parallel) and returns one row per value and model.
pub fn run_sweep(file: &SweepFile, on_unit_done: &(dyn Fn() + Sync)) -> Result<Vec<SweepRow>> {
    let ids: Vec<usize> = (0..file.units().len()).collect();
    let results = run_units(file, &ids, on_unit_done)?;
    aggregate(file, &results)
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
    source: &str,
    rows: &[SweepRow],
) -> Result<()> {
    dir.write_text(
        "sweep.toml",
        &format!(
            "# rmflow {}: resolved sweep of {source}\n{}",
            crate::io::layout::RMFLOW_VERSION,
            toml::to_string(file)?
        ),
    )?;
    dir.write_text("sweep.csv", &sweep_csv(rows))
}
