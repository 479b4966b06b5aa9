//! The paper's recipe per epoch (MATH.md §6), from `lm-recipe` runs' `metrics.csv`.

use super::figure::FigureData;
use crate::figures::plot::{Figure, Legend, Panel, Series};
use anyhow::Result;
use std::fmt::Write as _;

/// The recipe's accuracy per epoch (MATH.md §6) from one or more `lm-recipe` `metrics.csv` files:
/// one panel per training mode found, the exact-tie accuracy (τ = 0, the paper's) of each reward
/// model on each split, EX-RM solid and IM-RM dashed, one colour per split. `source` names the
/// run in the caption. The CSV holds the rows drawn.
pub fn recipe_accuracy(metrics: &[String], source: &str) -> Result<FigureData> {
    let mut rows: Vec<MetricsRow> = Vec::new();
    let mut csv = String::from("mode,model,epoch,split,exact_tie_accuracy\n");
    for text in metrics {
        for row in parse_metrics(text)? {
            writeln!(csv, "{},{},{},{},{}", row.0, row.1, row.2, row.3, row.4)?;
            rows.push(row);
        }
    }
    let mut splits: Vec<String> = Vec::new();
    let mut modes: Vec<String> = Vec::new();
    for r in &rows {
        if !splits.contains(&r.3) {
            splits.push(r.3.clone());
        }
        if !modes.contains(&r.0) {
            modes.push(r.0.clone());
        }
    }
    let panels: Vec<Panel> = modes
        .iter()
        .map(|mode| mode_panel(&rows, mode, &splits))
        .collect();
    if panels.is_empty() {
        anyhow::bail!("no rows in the metrics.csv files given");
    }
    Ok(FigureData {
        figure: Figure {
            columns: panels.len(),
            panels,
            caption: format!("{source} · rmflow {}", crate::io::layout::RMFLOW_VERSION),
            panel_size: (640, 440),
        },
        csv,
    })
}

/// One row of a run's `metrics.csv`: mode, model, epoch, split, exact-tie accuracy.
pub(super) type MetricsRow = (String, String, f64, String, f64);

/// The rows of one `metrics.csv`, columns found by their header names.
fn parse_metrics(text: &str) -> Result<Vec<MetricsRow>> {
    let cols = ["mode", "model", "epoch", "split", "exact_tie_accuracy"];
    csv_rows(text, "metrics.csv", &cols, |_| true)
}

/// `(mode, model, epoch, split, value)` from the columns `cols` (in that order) of every row of
/// the CSV `text` (named `name` in errors) that `keep` accepts (given its cells and the header).
pub(super) fn csv_rows(
    text: &str,
    name: &str,
    cols: &[&str; 5],
    keep: impl Fn(&dyn Fn(&str) -> Option<String>) -> bool,
) -> Result<Vec<MetricsRow>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let at = |c: &str| {
        header
            .iter()
            .position(|h| *h == c)
            .ok_or_else(|| anyhow::anyhow!("{name} has no column {c:?}"))
    };
    let idx = cols.iter().map(|c| at(c)).collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let cell = |c: &str| at(c).ok().and_then(|i| f.get(i)).map(|x| x.to_string());
        if !keep(&cell) {
            continue;
        }
        let num = |i: usize| -> Result<f64> {
            f.get(i)
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{name}: bad row {line:?}"))
        };
        let text = |i: usize| f.get(i).map_or(String::new(), |x| x.to_string());
        rows.push((
            text(idx[0]),
            text(idx[1]),
            num(idx[2])?,
            text(idx[3]),
            num(idx[4])?,
        ));
    }
    Ok(rows)
}

/// Accuracy per epoch of both models on every split, for one training mode.
fn mode_panel(rows: &[MetricsRow], mode: &str, splits: &[String]) -> Panel {
    let mut series = Vec::new();
    for (model, label, dashed) in [("exrm", "EX-RM", false), ("imrm", "IM-RM", true)] {
        for (i, split) in splits.iter().enumerate() {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.0 == mode && r.1 == model && &r.3 == split)
                .map(|r| (r.2, r.4))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!("{label} {split}"),
                    points,
                    color: i + 1,
                    dashed,
                    markers: true,
                    ..Series::default()
                });
            }
        }
    }
    let mut p = Panel::lines(
        &format!("{mode} training"),
        "epoch",
        "accuracy (exact ties ½)",
        false,
        false,
        series,
    );
    p.y_range = Some((-0.02, 1.05));
    p.legend = Legend::LowerRight;
    p.notes = vec!["solid EX-RM, dashed IM-RM; ties (τ = 0) count ½".into()];
    p
}

/// One run of [`recipe_seeds`]: its label, its `metrics.csv` and, where it has one, its
/// `alignment.csv`.
pub struct SeedRun {
    pub label: String,
    pub metrics: String,
    pub alignment: Option<String>,
}

/// The recipe's accuracy per epoch across runs that differ only in their seeds: one panel per
/// reward model, each split of the first run thick with markers and of the others thin, one
/// colour per split (full training rows only); where the runs have `alignment.csv`, a third panel
/// with the EX-RM's mean `cos(u*, z)` per split (the paper's footnote 3). The CSV holds every
/// accuracy drawn, labelled by run.
pub fn recipe_seeds(runs: &[SeedRun], source: &str) -> Result<FigureData> {
    let mut csv = String::from("run,mode,model,epoch,split,exact_tie_accuracy\n");
    let mut parsed = Vec::new();
    for run in runs {
        let rows: Vec<MetricsRow> = parse_metrics(&run.metrics)?
            .into_iter()
            .filter(|r| r.0 == "full")
            .collect();
        for r in &rows {
            writeln!(csv, "{},{},{},{},{},{}", run.label, r.0, r.1, r.2, r.3, r.4)?;
        }
        parsed.push(rows);
    }
    if parsed.iter().all(Vec::is_empty) {
        anyhow::bail!("no full-training rows in the metrics.csv files given");
    }
    let mut splits: Vec<String> = Vec::new();
    for r in parsed.iter().flatten() {
        if !splits.contains(&r.3) {
            splits.push(r.3.clone());
        }
    }
    let mut panels: Vec<Panel> = [("exrm", "EX-RM"), ("imrm", "IM-RM")]
        .iter()
        .map(|&(model, label)| seeds_panel(&parsed, model, label, &splits))
        .collect();
    let alignments: Vec<Vec<MetricsRow>> = runs
        .iter()
        .map(|r| {
            r.alignment
                .as_deref()
                .map_or(Ok(Vec::new()), parse_alignment)
        })
        .collect::<Result<_>>()?;
    if alignments.iter().any(|a| !a.is_empty()) {
        panels.push(alignment_panel(&alignments, &splits));
    }
    Ok(FigureData {
        figure: Figure {
            columns: panels.len(),
            panels,
            caption: format!("{source} · rmflow {}", crate::io::layout::RMFLOW_VERSION),
            panel_size: (640, 440),
        },
        csv,
    })
}

/// The `max_margin_cosine` means of an `alignment.csv` as (mode, model, epoch, split, mean).
fn parse_alignment(text: &str) -> Result<Vec<MetricsRow>> {
    let cols = ["mode", "model", "epoch", "split", "mean"];
    csv_rows(text, "alignment.csv", &cols, |cell| {
        cell("statistic").as_deref() == Some("max_margin_cosine")
    })
}

/// The EX-RM's mean `cos(u*, z)` per epoch and split (colours as the accuracy panels'), the
/// first run thick.
fn alignment_panel(runs: &[Vec<MetricsRow>], splits: &[String]) -> Panel {
    let series = seed_series(runs, splits, |r| r.0 == "full" && r.1 == "exrm");
    let mut p = Panel::lines(
        "EX-RM: how u* ranks each split",
        "epoch",
        "mean cos(u*, z), z = h(x,y⁺) − h(x,y⁻)",
        false,
        false,
        series,
    );
    p.y_range = Some((-1.0, 1.0));
    p.legend = Legend::LowerRight;
    p.notes = vec!["u*: max-margin separator of the training z (footnote 3)".into()];
    p
}

/// One series per run and split of the rows `keep` selects (epoch, value), one colour per split,
/// the first run thick with markers and named, the others thin.
fn seed_series(
    runs: &[Vec<MetricsRow>],
    splits: &[String],
    keep: impl Fn(&MetricsRow) -> bool,
) -> Vec<Series> {
    let mut series = Vec::new();
    for (k, rows) in runs.iter().enumerate() {
        for (i, split) in splits.iter().enumerate() {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| keep(r) && &r.3 == split)
                .map(|r| (r.2, r.4))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: if k == 0 { split.clone() } else { String::new() },
                    points,
                    color: i + 1,
                    markers: k == 0,
                    width: if k == 0 { 3 } else { 1 },
                    ..Series::default()
                });
            }
        }
    }
    series
}

/// One reward model's accuracy per epoch on every split, the first run thick.
fn seeds_panel(runs: &[Vec<MetricsRow>], model: &str, label: &str, splits: &[String]) -> Panel {
    let series = seed_series(runs, splits, |r| r.1 == model);
    let mut p = Panel::lines(
        &format!("{label}, full fine-tuning"),
        "epoch",
        "accuracy (exact ties ½)",
        false,
        false,
        series,
    );
    p.y_range = Some((-0.02, 1.05));
    p.legend = Legend::MiddleRight;
    p.notes = vec!["thick: the 50-epoch run; thin: other seeds (data draw and head)".into()];
    p
}
