//! What every figure shares: [`FigureData`] (the figure and the CSV of what it draws), writing
//! it, the examples' entry point, captions and per-split series.

use crate::config::Config;
use crate::experiment::observables::Observation;
use crate::figures::plot::{render, Figure, Series};
use anyhow::Result;
use std::path::Path;

/// A figure and the data it draws.
pub struct FigureData {
    pub figure: Figure,
    /// CSV with a header row.
    pub csv: String,
}

/// Writes `dir/NAME.png`, `dir/NAME.svg` and `dir/NAME.csv`.
pub fn write(data: &FigureData, dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    render(&data.figure, &dir.join(name))?;
    crate::io::atomic::write_text_atomically(&dir.join(format!("{name}.csv")), &data.csv)
}

/// What every `examples/NAME.rs` does: build the figure, write it to `figures/`, report the time.
pub fn run_example(name: &str, make: impl FnOnce() -> Result<FigureData>) -> Result<()> {
    let start = std::time::Instant::now();
    let data = make()?;
    write(&data, Path::new("figures"), name)?;
    eprintln!(
        "figures/{name}.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) const SPLITS: [&str; 4] = ["train", "seen", "unseen", "domain"];

pub(super) fn caption(config: &Config, source: &str, extra: &str) -> String {
    let s = &config.setup;
    format!(
        "{source}: V = {}, D = {}, N = {}, K = {}, α = {}, κ = {}, β = {}, seed {}{extra} · rmflow {}",
        config.vocab_size(),
        s.dim,
        s.train_pairs,
        s.response_length,
        s.alpha,
        s.kappa,
        s.beta,
        config.seed,
        crate::io::layout::RMFLOW_VERSION
    )
}

pub(super) fn split_series(
    traj: &[Observation],
    split: &str,
    color: usize,
    f: impl Fn(&crate::experiment::observables::SplitMetrics) -> f64,
) -> Series {
    Series {
        name: split.to_string(),
        points: after_zero(
            traj,
            |o| o.t,
            |o| f(o.splits.iter().find(|s| s.split == split).expect("split")),
        ),
        color,
        ..Default::default()
    }
}

/// `(t(row), f(row))` for every row at `t > 0` (the points of a curve on a log time axis).
pub(super) fn after_zero<T>(
    rows: &[T],
    t: impl Fn(&T) -> f64,
    f: impl Fn(&T) -> f64,
) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| t(r) > 0.0)
        .map(|r| (t(r), f(r)))
        .collect()
}
