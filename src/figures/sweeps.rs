//! Accuracy across parameter sweeps over seeds: semantic similarity α, token overlap, and
//! token-level vs domain shift (MATH.md §5).

use super::figure::{caption, FigureData};
use crate::analysis::sweep::{run_sweep, SweepFile, SweepParameter, SweepRow, SweepSpec};
use crate::config::Config;
use crate::experiment::simulation::simulate;
use crate::figures::plot::{Figure, Legend, Panel, Series};
use anyhow::Result;
use std::fmt::Write as _;

pub(super) fn sweep_panel(title: &str, x_label: &str, rows: &[SweepRow], y_label: &str) -> Panel {
    let series = ["exrm", "imrm"]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let r: Vec<&SweepRow> = rows.iter().filter(|r| r.model == *m).collect();
            Series {
                name: if *m == "exrm" {
                    "EX-RM".into()
                } else {
                    "IM-RM".into()
                },
                points: r.iter().map(|r| (r.value, r.tie_aware_mean)).collect(),
                band: Some(
                    r.iter()
                        .map(|r| {
                            (
                                r.value,
                                r.tie_aware_mean - r.tie_aware_ci95,
                                r.tie_aware_mean + r.tie_aware_ci95,
                            )
                        })
                        .collect(),
                ),
                color: 1 + 4 * i,
                markers: true,
                ..Default::default()
            }
        })
        .collect();
    let mut p = Panel::lines(title, x_label, y_label, false, false, series);
    p.y_range = Some((-0.05, 1.05));
    p.notes = vec!["mean over seeds, band: 95 % Student-t interval".into()];
    p
}

/// Figure 5: unseen-token accuracy vs semantic strength α (mean ± 95 % interval over seeds).
pub fn semantic_sweep(base: &Config, alphas: &[f64], seeds: usize) -> Result<FigureData> {
    let file = SweepFile {
        sweep: SweepSpec {
            parameter: SweepParameter::Alpha,
            values: alphas.to_vec(),
            seeds,
        },
        base: base.clone(),
    };
    let rows = run_sweep(&file, &|| {})?;
    let p = sweep_panel(
        "Accuracy on unseen tokens vs semantic strength",
        "semantic strength α",
        &rows,
        "tie-aware accuracy (unseen split)",
    );
    Ok(FigureData {
        figure: Figure {
            panels: vec![p],
            columns: 1,
            caption: caption(
                base,
                "experiments/theorem2.toml",
                &format!(
                    ", {seeds} seeds per α, flow to t = {:.0e}",
                    base.train.t_max
                ),
            ),
            panel_size: (760, 440),
        },
        csv: crate::analysis::sweep::sweep_csv(&rows),
    })
}

/// Figure 8: accuracy vs token overlap between evaluation and training responses (K tokens).
pub fn overlap_sweep(file: &SweepFile) -> Result<FigureData> {
    let rows = run_sweep(file, &|| {})?;
    let p = sweep_panel(
        &format!(
            "Accuracy vs token overlap (K = {} tokens per response)",
            file.base.setup.response_length
        ),
        "fraction of each evaluation response's tokens seen in training",
        &rows,
        "tie-aware accuracy",
    );
    Ok(FigureData {
        figure: Figure {
            panels: vec![p],
            columns: 1,
            caption: caption(
                &file.base,
                "experiments/overlap_sweep.toml",
                &format!(
                    ", {} seeds, flow to t = {:.0e}",
                    file.sweep.seeds, file.base.train.t_max
                ),
            ),
            panel_size: (760, 440),
        },
        csv: crate::analysis::sweep::sweep_csv(&rows),
    })
}

/// `(value, model, split, mean tie-aware accuracy, 95 % half-width)`.
pub(super) type ShiftRow = (f64, &'static str, &'static str, f64, f64);

/// Accuracy on the `seen` (in-distribution), `unseen` (token shift) and `domain` splits for both
/// models as `set(config, value)` varies, mean ± 95 % interval over `seeds`.
pub(super) fn shift_sweep(
    base: &Config,
    values: &[f64],
    seeds: usize,
    set: fn(&mut Config, f64),
) -> Result<Vec<ShiftRow>> {
    use rayon::prelude::*;
    let runs: Vec<Vec<[[f64; 3]; 2]>> = (0..seeds)
        .into_par_iter()
        .map(|s| -> Result<Vec<[[f64; 3]; 2]>> {
            values
                .iter()
                .map(|&v| {
                    let mut c = base.clone();
                    c.seed = base.seed.wrapping_add(s as u64);
                    set(&mut c, v);
                    let sim = simulate(&c, &mut |_| {})?;
                    let acc = |r: &crate::experiment::simulation::ModelRun| {
                        let o = r.trajectory.last().expect("observed");
                        let get = |n: &str| {
                            o.splits
                                .iter()
                                .find(|m| m.split == n)
                                .expect("split")
                                .tie_aware_accuracy
                        };
                        [get("seen"), get("unseen"), get("domain")]
                    };
                    Ok([acc(&sim.explicit), acc(&sim.implicit)])
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (vi, &v) in values.iter().enumerate() {
        for (mi, model) in ["exrm", "imrm"].into_iter().enumerate() {
            for (si, split) in ["seen", "unseen", "domain"].into_iter().enumerate() {
                let xs: Vec<f64> = runs.iter().map(|r| r[vi][mi][si]).collect();
                let (m, ci) = crate::analysis::sweep::mean_ci95(&xs);
                out.push((v, model, split, m, ci));
            }
        }
    }
    Ok(out)
}

/// Figure 6: in-distribution, token-level shift and domain shift for both models, as the
/// representation geometry varies: the prompt's weight in `h_{x,y}` (recurrent gain) and the
/// common component `κ` shared across prompt clusters.
pub fn domain_vs_token_shift(base: &Config, seeds: usize) -> Result<FigureData> {
    let mut base = base.clone();
    base.train.t_max = 1e4;
    base.train.observations_per_decade = 1.0;
    let gains = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0];
    let kappas = [0.0, 0.5, 1.0, 2.0, 4.0];
    let by_gain = shift_sweep(&base, &gains, seeds, |c, v| c.setup.recurrent_gain = v)?;
    let by_kappa = shift_sweep(&base, &kappas, seeds, |c, v| c.setup.kappa = v)?;
    let alignments = [-0.5, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0];
    let by_alignment = shift_sweep(&base, &alignments, seeds, |c, v| {
        c.setup.domain_alignment = Some(v)
    })?;
    let mut csv = String::from("parameter,value,model,split,tie_aware_mean,tie_aware_ci95\n");
    for (name, rows) in [
        ("recurrent_gain", &by_gain),
        ("kappa", &by_kappa),
        ("domain_alignment", &by_alignment),
    ] {
        for r in rows.iter() {
            writeln!(csv, "{name},{},{},{},{},{}", r.0, r.1, r.2, r.3, r.4)?;
        }
    }
    let panels = vec![
        shift_panel(
            "vs the prompt's weight in h_{x,y} (recurrent gain)",
            "recurrent gain (A ~ N(0, gain²/D))",
            &by_gain,
            true,
            Legend::LowerLeft,
        ),
        shift_panel(
            "vs the shared prompt component κ",
            "κ in h_x = κ ν_c + N(0, I/D)",
            &by_kappa,
            false,
            Legend::LowerRight,
        ),
        shift_panel(
            "vs the domain cluster's alignment",
            "⟨ν_1, ν_0⟩ (domain vs training cluster)",
            &by_alignment,
            false,
            Legend::LowerRight,
        ),
    ];
    Ok(FigureData {
        figure: Figure {
            panels,
            columns: 3,
            caption: caption(
                &base,
                "experiments/theorem2.toml",
                &format!(", {seeds} seeds per point, flow to t = 1e4; solid EX-RM, dashed IM-RM"),
            ),
            panel_size: (520, 440),
        },
        csv,
    })
}

/// Tie-aware accuracy of both models on the in-distribution, token-shift and domain-shift
/// splits against one swept parameter, with 95 % bands.
fn shift_panel(title: &str, x: &str, rows: &[ShiftRow], log: bool, legend: Legend) -> Panel {
    let mut series = Vec::new();
    for (mi, model) in ["exrm", "imrm"].into_iter().enumerate() {
        for (si, split) in ["seen", "unseen", "domain"].into_iter().enumerate() {
            let r: Vec<_> = rows
                .iter()
                .filter(|r| r.1 == model && r.2 == split)
                .collect();
            series.push(Series {
                name: format!(
                    "{} {}",
                    if mi == 0 { "EX-RM" } else { "IM-RM (dashed)" },
                    match split {
                        "seen" => "in-distribution",
                        "unseen" => "token shift",
                        _ => "domain shift",
                    }
                ),
                points: r.iter().map(|r| (r.0, r.3)).collect(),
                band: Some(r.iter().map(|r| (r.0, r.3 - r.4, r.3 + r.4)).collect()),
                color: [1, 3, 5][si],
                dashed: mi == 1,
                markers: true,
                ..Default::default()
            });
        }
    }
    let mut p = Panel::lines(title, x, "tie-aware accuracy", log, false, series);
    p.y_range = Some((-0.05, 1.05));
    p.legend = legend;
    p
}
