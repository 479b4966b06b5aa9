//! Parameter sweeps over seeds: accuracy of both reward models as a function of one parameter,
//! mean and 95 % interval (Student t) over seeds. One code path for the CLI and the figures.

use crate::config::Config;
use crate::error::InputError;
use crate::experiment::simulation::simulate;
use crate::io::atomic::AtomicDir;
use anyhow::Result;
use rayon::prelude::*;
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

/// Splits the units into `n` shards balanced by [`estimated_cost`]: longest first, each to the
/// shard with the least cost so far (ties: lowest unit id, lowest shard). Deterministic; every
/// shard's ids are sorted.
pub fn shard_assignment(file: &SweepFile, n: usize) -> Result<Vec<Vec<usize>>> {
    let units = file.units();
    let mut order: Vec<(f64, usize)> = units
        .iter()
        .enumerate()
        .map(|(id, &u)| Ok((estimated_cost(&file.unit_config(u)?), id)))
        .collect::<Result<_>>()?;
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut shards: Vec<(f64, Vec<usize>)> = vec![(0.0, Vec::new()); n];
    for (cost, id) in order {
        let k = (0..n)
            .min_by(|&a, &b| shards[a].0.total_cmp(&shards[b].0).then(a.cmp(&b)))
            .expect("n ≥ 1");
        shards[k].0 += cost;
        shards[k].1.push(id);
    }
    Ok(shards
        .into_iter()
        .map(|(_, mut ids)| {
            ids.sort_unstable();
            ids
        })
        .collect())
}

/// `I/N` of `--shard` (0-based `I < N`, `1 ≤ N ≤ 10000`).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        InputError(format!(
            "--shard takes I/N with 0 ≤ I < N ≤ 10000 (got {s:?})"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || n > 10_000 || i >= n {
        return Err(bad().into());
    }
    Ok((i, n))
}

/// A Slurm array task's shard: `SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN` of
/// `SLURM_ARRAY_TASK_COUNT`, with the variables it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmShard {
    pub shard: (usize, usize),
    pub task_id: usize,
    pub task_count: String,
    pub task_min: usize,
}

/// The shard of a Slurm array task, from the environment `var` reads; `None` unless both
/// `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT` are set.
pub fn slurm_shard(var: impl Fn(&str) -> Option<String>) -> Result<Option<SlurmShard>> {
    let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
    else {
        return Ok(None);
    };
    let task_min: usize = match var("SLURM_ARRAY_TASK_MIN") {
        Some(m) => m
            .parse()
            .map_err(|_| InputError(format!("SLURM_ARRAY_TASK_MIN is not a number: {m:?}")))?,
        None => 0,
    };
    let task_id: usize = id
        .parse()
        .map_err(|_| InputError(format!("SLURM_ARRAY_TASK_ID is not a number: {id:?}")))?;
    let shard = parse_shard(&format!("{}/{count}", task_id.saturating_sub(task_min)))?;
    Ok(Some(SlurmShard {
        shard,
        task_id,
        task_count: count,
        task_min,
    }))
}

/// File name of shard `i` of `n`: `shard-0003-of-0016.json`.
pub fn shard_file_name(i: usize, n: usize) -> String {
    format!("shard-{i:04}-of-{n:04}.json")
}

/// Format tag of shard files.
pub const SHARD_FORMAT: &str = "rmflow-sweep-shard/1";

/// One shard's results as written by `rmflow sweep --shard I/N` (JSON). Accuracies are stored
/// as IEEE-754 bit patterns (`accuracy_bits`) so that a merge reproduces the unsharded table to
/// the bit; `accuracy` repeats them as numbers for reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub format: String,
    pub rmflow_version: String,
    /// [`SweepFile::digest`] of the sweep this shard belongs to.
    pub config_digest: String,
    /// The sweep file's path as given to `--config`.
    pub source: String,
    pub shard: usize,
    pub shards: usize,
    /// The resolved sweep file (TOML).
    pub sweep: String,
    /// Unit ids of this shard (see `experiments/README.md`).
    pub units: Vec<usize>,
    pub results: Vec<ShardUnit>,
}

/// One unit's accuracies in a shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardUnit {
    pub unit: usize,
    pub seed: usize,
    /// Per value index: `[exrm tie-aware, exrm strict, imrm tie-aware, imrm strict]`.
    pub accuracy: Vec<(usize, [f64; 4])>,
    /// The same as `f64::to_bits`.
    pub accuracy_bits: Vec<(usize, [u64; 4])>,
}

impl ShardFile {
    /// The shard file of `results` (shard `i` of `n`).
    pub fn new(
        file: &SweepFile,
        source: &Path,
        (i, n): (usize, usize),
        ids: Vec<usize>,
        results: &[UnitResult],
    ) -> Result<ShardFile> {
        let units = file.units();
        let flat = |a: &[(f64, f64); 2]| [a[0].0, a[0].1, a[1].0, a[1].1];
        Ok(ShardFile {
            format: SHARD_FORMAT.to_string(),
            rmflow_version: crate::io::layout::RMFLOW_VERSION.to_string(),
            config_digest: file.digest()?,
            source: source.display().to_string(),
            shard: i,
            shards: n,
            sweep: toml::to_string(file)?,
            units: ids,
            results: results
                .iter()
                .map(|r| ShardUnit {
                    unit: r.id,
                    seed: units[r.id].seed,
                    accuracy: r.values.iter().map(|(vi, a)| (*vi, flat(a))).collect(),
                    accuracy_bits: r
                        .values
                        .iter()
                        .map(|(vi, a)| (*vi, flat(a).map(f64::to_bits)))
                        .collect(),
                })
                .collect(),
        })
    }

    /// The unit results, from the bit patterns.
    pub fn unit_results(&self) -> Vec<UnitResult> {
        self.results
            .iter()
            .map(|u| UnitResult {
                id: u.unit,
                values: u
                    .accuracy_bits
                    .iter()
                    .map(|(vi, b)| {
                        let f = b.map(f64::from_bits);
                        (*vi, [(f[0], f[1]), (f[2], f[3])])
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A merged sweep: the sweep file, its source path and the table.
pub struct Merged {
    pub file: SweepFile,
    pub source: String,
    pub rows: Vec<SweepRow>,
    pub shards: usize,
}

/// Reads every `shard-*-of-*.json` in `dir` and merges them: all shards `0..N` present, one
/// sweep (same digest, version and `N`), every unit exactly once, each shard holding the units
/// the assignment gives it. Errors name the offending file or the missing shard.
pub fn merge_shards(dir: &Path) -> Result<Merged> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError(format!("cannot read shard folder {}: {e}", dir.display())))?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(InputError(format!(
            "no shard files (shard-*-of-*.json) in {}",
            dir.display()
        ))
        .into());
    }
    let mut shards = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p)
            .map_err(|e| InputError(format!("cannot read shard {}: {e}", p.display())))?;
        let s: ShardFile = serde_json::from_str(&text)
            .map_err(|e| InputError(format!("{} is not an rmflow shard file: {e}", p.display())))?;
        if s.format != SHARD_FORMAT {
            return Err(InputError(format!(
                "{} has format {:?}, expected {SHARD_FORMAT:?}",
                p.display(),
                s.format
            ))
            .into());
        }
        shards.push((p.clone(), s));
    }
    let (first_path, first) = &shards[0];
    for (p, s) in &shards[1..] {
        let what = if s.config_digest != first.config_digest {
            Some("a different sweep (config digest)")
        } else if s.rmflow_version != first.rmflow_version {
            Some("a different rmflow version")
        } else if s.shards != first.shards {
            Some("a different shard count")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(InputError(format!(
                "shard {} is from {what} than {}: foreign shard, remove it or merge it separately",
                p.display(),
                first_path.display()
            ))
            .into());
        }
    }
    let n = first.shards;
    let file: SweepFile = toml::from_str(&first.sweep).map_err(|e| {
        InputError(format!(
            "{}: the embedded sweep file does not parse: {e}",
            first_path.display()
        ))
    })?;
    if file.digest()? != first.config_digest {
        return Err(InputError(format!(
            "{}: the embedded sweep file does not match its digest",
            first_path.display()
        ))
        .into());
    }
    let assignment = shard_assignment(&file, n)?;
    let mut seen = vec![false; n];
    let mut results = Vec::new();
    for (p, s) in &shards {
        if s.shard >= n || seen[s.shard] {
            return Err(InputError(format!(
                "{} is shard {} of {n}, which is out of range or present twice",
                p.display(),
                s.shard
            ))
            .into());
        }
        seen[s.shard] = true;
        let ids: Vec<usize> = s.results.iter().map(|u| u.unit).collect();
        if ids != assignment[s.shard] || s.units != assignment[s.shard] {
            return Err(InputError(format!(
                "{} does not hold the units of shard {} of {n}",
                p.display(),
                s.shard
            ))
            .into());
        }
        results.extend(s.unit_results());
    }
    let missing: Vec<String> = (0..n)
        .filter(|&i| !seen[i])
        .map(|i| shard_file_name(i, n))
        .collect();
    if !missing.is_empty() {
        return Err(InputError(format!(
            "{} of {n} shards missing in {}: {} (rerun them with --shard I/{n})",
            missing.len(),
            dir.display(),
            missing.join(", ")
        ))
        .into());
    }
    let rows = aggregate(&file, &results)?;
    Ok(Merged {
        source: first.source.clone(),
        file,
        rows,
        shards: n,
    })
}
