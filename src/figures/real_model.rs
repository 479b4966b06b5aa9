//! Real-model figure (MATH.md §6): Theorem 2's setting and full fine-tuning on a transformer.

use super::figure::FigureData;
use crate::experiment::observables::{Observation, SplitMetrics};
use crate::experiment::simulation::ModelKind;
use crate::figures::plot::{Bars, Figure, Legend, Panel, PanelContent, Series};
use crate::lm::single_token::finetune::FullRun;
use crate::lm::RealModelRun;
use anyhow::Result;
use std::fmt::Write as _;

/// Figure `real_model` (MATH.md §6): tie-aware accuracy by split (strict as black ticks) of the
/// EX-RM and IM-RM, head-only (body frozen, Theorem 2) vs full fine-tuning; and, over the full
/// fine-tuning steps, accuracy and mean margin on the unseen-token split.
pub fn real_model(run: &RealModelRun) -> Result<FigureData> {
    let mut csv =
        String::from("mode,model,step,split,strict_accuracy,tie_aware_accuracy,mean_margin\n");
    let mut panels = vec![accuracy_panel(run, &mut csv)];
    if !run.full.is_empty() {
        panels.extend(full_fine_tuning_panels(run));
    }
    let columns = panels.len();
    Ok(FigureData {
        figure: Figure {
            panels,
            columns,
            caption: caption(run),
            panel_size: (560, 430),
        },
        csv,
    })
}

fn color_of(k: ModelKind) -> usize {
    if k == ModelKind::Explicit {
        5
    } else {
        4
    }
}

/// Accuracy by split of every run, head-only and full, as bars; their rows go to `csv`.
fn accuracy_panel(run: &RealModelRun, csv: &mut String) -> Panel {
    let head: Vec<&Observation> = run
        .sim
        .runs()
        .iter()
        .map(|r| r.trajectory.last().expect("observed"))
        .collect();
    let categories: Vec<String> = head[0].splits.iter().map(|s| s.split.clone()).collect();
    let mut bars = Vec::new();
    for (o, color) in head.iter().zip([5, 4]) {
        for s in &o.splits {
            let _ = writeln!(
                csv,
                "head,{},,{},{:e},{:e},{:e}",
                o.model, s.split, s.strict_accuracy, s.tie_aware_accuracy, s.mean_margin
            );
        }
        bars.push(Bars {
            name: format!("{} head-only", o.model.to_uppercase()),
            values: o.splits.iter().map(|s| s.tie_aware_accuracy).collect(),
            marks: Some(o.splits.iter().map(|s| s.strict_accuracy).collect()),
            color,
            light: true,
        });
    }
    for f in &run.full {
        for c in &f.evaluations {
            for s in &c.splits {
                let _ = writeln!(
                    csv,
                    "full,{},{},{},{:e},{:e},{:e}",
                    f.kind.name(),
                    c.step,
                    s.split,
                    s.strict_accuracy,
                    s.tie_aware_accuracy,
                    s.mean_margin
                );
            }
        }
        bars.push(Bars {
            name: format!("{} full fine-tuning", f.kind.name().to_uppercase()),
            values: f.splits.iter().map(|s| s.tie_aware_accuracy).collect(),
            marks: Some(f.splits.iter().map(|s| s.strict_accuracy).collect()),
            color: color_of(f.kind),
            light: false,
        });
    }
    Panel {
        title: "accuracy by split (bars tie-aware, ticks strict)".into(),
        x_label: "evaluation split".into(),
        y_label: "accuracy".into(),
        x_log: false,
        y_log: false,
        y_range: Some((0.0, 1.45)),
        content: PanelContent::Bars {
            categories,
            bars,
            reference: Some(0.5),
        },
        notes: vec![
            format!("τ = {:e}; dashed: chance", run.file.eval.tie_tolerance),
            format!(
                "head-only: {} to t = {:e}",
                run.file.train.optimizer.name(),
                run.file.train.t_max
            ),
        ],
        legend: Legend::UpperRight,
    }
}

/// `(step, value)` of one split at every checkpoint of a full fine-tuning run.
fn curve(f: &FullRun, split: &str, value: fn(&SplitMetrics) -> f64) -> Vec<(f64, f64)> {
    f.evaluations
        .iter()
        .map(|c| {
            let s = c.splits.iter().find(|s| s.split == split).expect("split");
            (c.step as f64, value(s))
        })
        .collect()
}

/// Over the full fine-tuning steps: tie-aware accuracy on `unseen` and `seen`, and the unseen /
/// seen mean-margin ratio.
fn full_fine_tuning_panels(run: &RealModelRun) -> [Panel; 2] {
    let mut acc = Vec::new();
    let mut transfer = Vec::new();
    for f in &run.full {
        // Coinciding curves stay visible: the EX-RM drawn wider, under the IM-RM.
        let width = if f.kind == ModelKind::Explicit { 6 } else { 2 };
        for (split, dashed) in [("unseen", false), ("seen", true)] {
            acc.push(Series {
                name: format!(
                    "{} {split}{}",
                    f.kind.name(),
                    if dashed { " (dashed)" } else { "" }
                ),
                points: curve(f, split, |s| s.tie_aware_accuracy),
                color: color_of(f.kind),
                dashed,
                markers: true,
                width,
                ..Default::default()
            });
        }
        let unseen = curve(f, "unseen", |s| s.mean_margin);
        let seen = curve(f, "seen", |s| s.mean_margin);
        transfer.push(Series {
            name: f.kind.name().to_string(),
            points: unseen
                .iter()
                .zip(&seen)
                .map(|(&(x, u), &(_, s))| (x, if s != 0.0 { u / s } else { f64::NAN }))
                .collect(),
            color: color_of(f.kind),
            markers: true,
            width,
            ..Default::default()
        });
    }
    let mut a = Panel::lines(
        "full fine-tuning: tie-aware accuracy",
        "AdamW step",
        "accuracy",
        false,
        false,
        acc,
    );
    a.y_range = Some((0.0, 1.05));
    a.notes = run
        .full
        .iter()
        .filter_map(|f| {
            f.unseen_row_drift
                .map(|d| format!("IM-RM unseen-row drift {d:.1e}"))
        })
        .collect();
    let mut m = Panel::lines(
        "full fine-tuning: unseen / seen mean margin",
        "AdamW step",
        "mean margin ratio",
        false,
        false,
        transfer,
    );
    m.y_range = Some((0.0, 1.05));
    m.legend = Legend::LowerRight;
    [a, m]
}

fn caption(run: &RealModelRun) -> String {
    let ft = &run.file.finetune;
    format!(
        "{} ({:?}), {} train pairs, β = {}, seed {}{} · rmflow {}",
        run.model.display(),
        run.arch,
        run.sim.setup.train.len(),
        run.file.lm.beta,
        run.file.seed,
        if run.full.is_empty() {
            String::new()
        } else {
            format!(
                "; full: AdamW lr {:e} (EX-RM head {:e}), wd {}, {} steps of {} pairs",
                ft.adamw.lr,
                ft.adamw.head_lr.unwrap_or(ft.adamw.lr),
                ft.adamw.weight_decay,
                ft.steps,
                if ft.pairs_per_step == 0 {
                    run.sim.setup.train.len()
                } else {
                    ft.pairs_per_step
                }
            )
        },
        crate::io::layout::RMFLOW_VERSION
    )
}
