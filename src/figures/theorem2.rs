//! Theorem 2's figures (MATH.md §4): accuracy per split along training, convergence to the
//! max-margin separators, the unseen margins, and the optimizers compared.

use super::figure::{after_zero, caption, split_series, FigureData, SPLITS};
use crate::analysis::verify::residual::{residual_to_horizon, RESIDUAL_HORIZON_LOG10};
use crate::config::{Config, GradientPath, Optimizer};
use crate::experiment::observables::{Convergence, Observation, SplitMetrics};
use crate::experiment::simulation::{max_margin_for, run_model, simulate, ModelKind, Simulation};
use crate::figures::plot::{Figure, Legend, Panel, Series};
use crate::problem::synthetic::Setup;
use crate::problem::synthetic::SplitId;
use anyhow::Result;
use std::fmt::Write as _;

/// Figure 1: tie-aware accuracy vs t for both models on every split (MATH.md §4).
pub fn theorem2_accuracy(config: &Config) -> Result<FigureData> {
    let sim = simulate(config, &mut |_| {})?;
    let tau = config.eval.tie_tolerance;
    let mut csv = String::from("model,t,split,strict_accuracy,tie_aware_accuracy\n");
    let mut panels = Vec::new();
    for run in sim.runs() {
        for o in &run.trajectory {
            for s in &o.splits {
                writeln!(
                    csv,
                    "{},{:e},{},{},{}",
                    o.model, o.t, s.split, s.strict_accuracy, s.tie_aware_accuracy
                )?;
            }
        }
        let series = SPLITS
            .iter()
            .enumerate()
            .map(|(i, sp)| Series {
                width: [8, 6, 4, 2][i],
                ..split_series(&run.trajectory, sp, i + 1, |m| m.tie_aware_accuracy)
            })
            .collect();
        let mut p = Panel::lines(
            &format!("{} (gradient flow)", run.kind.label()),
            "time t",
            "tie-aware accuracy",
            true,
            false,
            series,
        );
        p.y_range = Some((0.0, 1.05));
        p.notes = vec![format!(
            "ties: |margin| ≤ τ = {tau:.0e} count ½; coinciding curves drawn nested"
        )];
        panels.push(p);
    }
    Ok(FigureData {
        figure: Figure {
            panels,
            columns: 2,
            caption: caption(config, "experiments/theorem2.toml", ", 1 run"),
            panel_size: (560, 400),
        },
        csv,
    })
}

/// Figure 2: convergence in direction to the max-margin separators, with 1/ln t and 1/ln² t references.
pub fn max_margin_convergence(config: &Config) -> Result<FigureData> {
    let sim = simulate(config, &mut |_| {})?;
    let mut csv = String::from("model,t,direction_gap,residual_norm,projected_rate\n");
    let mut gap_series = Vec::new();
    let mut res_series = Vec::new();
    for (i, run) in sim.runs().iter().enumerate() {
        let conv: Vec<(f64, Convergence)> = run
            .trajectory
            .iter()
            .filter_map(|o| o.convergence.map(|c| (o.t, c)))
            .collect();
        for (t, c) in &conv {
            writeln!(
                csv,
                "{},{:e},{:e},{:e},{:e}",
                run.kind.name(),
                t,
                c.direction_gap,
                c.residual_norm,
                c.projected_rate
            )?;
        }
        let (gap, residual) = convergence_series(run.kind, &conv, 1 + 4 * i);
        gap_series.push(gap);
        res_series.push(residual);
        if i == 0 {
            gap_series.extend(rate_references(&conv));
        }
    }
    let mut direction = Panel::lines(
        "Direction: 1 − cos to the max-margin separator",
        "time t",
        "1 − cos",
        true,
        true,
        gap_series,
    );
    direction.legend = Legend::UpperRight;
    let long = residual_panel(config, &sim, &mut csv)?;
    let panels = vec![
        direction,
        Panel::lines(
            "Residual from the max-margin ray",
            "time t",
            "‖θ(t) − θ* ln t‖",
            true,
            false,
            res_series,
        ),
        long,
    ];
    Ok(FigureData {
        figure: Figure {
            panels,
            columns: 3,
            caption: caption(
                config,
                "experiments/theorem2.toml",
                ", 1 run, flow to t = 1e100; EX-RM residual flow to t = 1e10000",
            ),
            panel_size: (560, 400),
        },
        csv,
    })
}

/// `1 − cos(θ(t), θ*)` and `‖θ(t) − θ* ln t‖` of one model for `t > 1`.
fn convergence_series(
    kind: ModelKind,
    conv: &[(f64, Convergence)],
    color: usize,
) -> (Series, Series) {
    let theta = if kind == ModelKind::Explicit {
        "u"
    } else {
        "ΔU"
    };
    let points = |f: fn(&Convergence) -> f64| {
        conv.iter()
            .filter(|(t, _)| *t > 1.0)
            .map(|(t, c)| (*t, f(c)))
            .collect()
    };
    (
        Series {
            name: format!("{}: 1 − cos({theta}(t), {theta}*)", kind.label()),
            points: points(|c| c.direction_gap),
            color,
            ..Default::default()
        },
        Series {
            name: format!("{}: ‖{theta}(t) − {theta}* ln t‖", kind.label()),
            points: points(|c| c.residual_norm),
            color,
            ..Default::default()
        },
    )
}

/// References `∝ 1/ln t` and `∝ 1/ln² t` through the EX-RM's direction gap at `t = 1e10`.
fn rate_references(conv: &[(f64, Convergence)]) -> Vec<Series> {
    let Some((t0, c0)) = conv.iter().find(|(t, _)| *t >= 1e10) else {
        return vec![];
    };
    let ts: Vec<f64> = conv.iter().map(|(t, _)| *t).filter(|t| *t >= 1e3).collect();
    let l0 = t0.ln();
    vec![
        Series {
            name: "∝ 1/ln t".into(),
            points: ts
                .iter()
                .map(|t| (*t, c0.direction_gap * l0 / t.ln()))
                .collect(),
            color: 0,
            dashed: true,
            ..Default::default()
        },
        Series {
            name: "∝ 1/ln² t".into(),
            points: ts
                .iter()
                .map(|t| (*t, c0.direction_gap * (l0 / t.ln()).powi(2)))
                .collect(),
            color: 6,
            dashed: true,
            ..Default::default()
        },
    ]
}

/// The EX-RM residual integrated directly to `t = 1e10000` (the check `2b.residual_*`): its
/// distance to the final value, against `t^(−δ)`; its rows are appended to `csv`.
fn residual_panel(config: &Config, sim: &Simulation, csv: &mut String) -> Result<Panel> {
    let trace = match &sim.explicit.max_margin {
        Ok(mm) => Some(residual_to_horizon(
            config,
            &sim.setup,
            mm,
            RESIDUAL_HORIZON_LOG10,
        )?),
        Err(_) => None,
    };
    let mut long_series = Vec::new();
    let mut long_notes = Vec::new();
    if let Some(tr) = &trace {
        let limit = *tr.rho_norm.last().expect("observed");
        for (l, r) in tr.log10_t.iter().zip(&tr.rho_norm) {
            writeln!(csv, "exrm_residual_flow,1e{l},nan,{r:e},nan")?;
        }
        long_series.push(Series {
            name: "EX-RM: |‖ρ(t)‖ − ‖ρ(1e10000)‖|".into(),
            points: tr
                .log10_t
                .iter()
                .zip(&tr.rho_norm)
                .map(|(l, r)| (*l, (r - limit).abs()))
                .filter(|(_, d)| *d > 0.0)
                .collect(),
            color: 1,
            ..Default::default()
        });
        if tr.delta.is_finite() {
            let at = tr
                .log10_t
                .iter()
                .zip(&tr.rho_norm)
                .find(|(l, _)| **l >= 100.0)
                .map(|(l, r)| (*l, (r - limit).abs()))
                .unwrap_or((100.0, 1.0));
            long_series.push(Series {
                name: format!("∝ t^(−δ), δ = {:.2e} (nearest non-support pair)", tr.delta),
                points: tr
                    .log10_t
                    .iter()
                    .filter(|l| **l >= 10.0)
                    .map(|l| (*l, at.1 * 10f64.powf(-tr.delta * (l - at.0))))
                    .collect(),
                color: 0,
                dashed: true,
                ..Default::default()
            });
        }
        let worst = tr
            .limit
            .iter()
            .map(|(_, a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        long_notes.push(format!(
            "‖ρ(1e10000)‖ = {limit:.4}; support: max |⟨ρ, z_i⟩ + ln Nα_i| = {worst:.1e}"
        ));
    }
    let mut long = Panel::lines(
        "EX-RM residual to t = 1e10000 (integrated in s = ln t)",
        "log10 t",
        "distance of ‖ρ(t)‖ to its final value",
        false,
        true,
        long_series,
    );
    long.notes = long_notes;
    Ok(long)
}

/// Figure 3: |margin| on unseen pairs vs t: EX-RM growing like ln t, IM-RM at rounding level.
pub fn unseen_margins(config: &Config) -> Result<FigureData> {
    let sim = simulate(config, &mut |_| {})?;
    let mut csv =
        String::from("model,t,unseen_max_abs_margin,unseen_mean_margin,unseen_min_margin\n");
    let mut series = Vec::new();
    for (i, run) in sim.runs().iter().enumerate() {
        let pts: Vec<(f64, f64, f64, f64)> = run
            .trajectory
            .iter()
            .map(|o| {
                let s = o
                    .splits
                    .iter()
                    .find(|s| SplitId::Unseen.is(&s.split))
                    .expect("unseen");
                (o.t, s.max_abs_margin, s.mean_margin, s.min_margin)
            })
            .collect();
        for (t, a, m, lo) in &pts {
            writeln!(csv, "{},{:e},{:e},{:e},{:e}", run.kind.name(), t, a, m, lo)?;
        }
        series.push(Series {
            name: format!("{}: max |margin|", run.kind.label()),
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
            color: 1 + 4 * i,
            ..Default::default()
        });
        if run.kind == ModelKind::Explicit {
            series.push(Series {
                name: "EX-RM: min margin".into(),
                points: pts.iter().map(|p| (p.0, p.3)).collect(),
                color: 1,
                dashed: true,
                ..Default::default()
            });
        }
    }
    let ts: Vec<f64> = sim
        .explicit
        .trajectory
        .iter()
        .map(|o| o.t)
        .filter(|t| *t > 0.0)
        .collect();
    series.push(Series {
        name: "tie tolerance τ".into(),
        points: vec![
            (ts[0], config.eval.tie_tolerance),
            (*ts.last().expect("observed"), config.eval.tie_tolerance),
        ],
        color: 0,
        dashed: true,
        width: 1,
        ..Default::default()
    });
    let mut p = Panel::lines(
        "Margins on pairs of unseen tokens",
        "time t",
        "|margin| (log scale)",
        true,
        true,
        series,
    );
    p.legend = Legend::MiddleRight;
    p.notes = vec![format!(
        "IM-RM: rounding of the log-normalisers only; tie tolerance τ = {:.0e}",
        config.eval.tie_tolerance
    )];
    Ok(FigureData {
        figure: Figure {
            panels: vec![p],
            columns: 1,
            caption: caption(config, "experiments/theorem2.toml", ", 1 run"),
            panel_size: (820, 460),
        },
        csv,
    })
}

/// Figure 7: IM-RM unseen-row drift and unseen accuracy under flow, GD, Adam and AdamW.
pub fn optimizers(config: &Config) -> Result<FigureData> {
    let setup = Setup::try_generate(config)?;
    let mm = max_margin_for(ModelKind::Implicit, &setup, config.eval.tie_tolerance);
    let runs: [(Optimizer, f64, f64); 4] = [
        (Optimizer::Flow, 1e3, 1.0),
        (Optimizer::Gd, 1e3, 0.5),
        (Optimizer::Adam, 20.0, 1e-2),
        (Optimizer::Adamw, 20.0, 1e-2),
    ];
    let mut csv = String::from("optimizer,t,step,unseen_row_drift,unseen_tie_aware_accuracy,unseen_strict_accuracy,train_tie_aware_accuracy\n");
    let (mut drift, mut acc) = (Vec::new(), Vec::new());
    for (i, (opt, t_max, lr)) in runs.into_iter().enumerate() {
        let mut c = config.clone();
        c.train.optimizer = opt;
        c.train.t_max = t_max;
        c.train.lr = lr;
        c.train.imrm_gradient = GradientPath::Full;
        c.train.observations_per_decade = 8.0;
        let run = run_model(ModelKind::Implicit, &c, &setup, mm.clone(), &mut |_| {})?;
        let label = match opt {
            Optimizer::Flow => "flow".to_string(),
            Optimizer::Gd => format!("GD η = {lr}"),
            Optimizer::Adam => format!("Adam lr = {lr}"),
            Optimizer::Adamw => format!("AdamW lr = {lr}, wd = {}", c.train.weight_decay),
        };
        optimizer_rows(&mut csv, opt, &run.trajectory)?;
        let series = |name: String, points| Series {
            name,
            points,
            color: i + 1,
            dashed: i == 2,
            markers: i == 1,
            ..Default::default()
        };
        drift.push(series(
            label.clone(),
            after_zero(
                &run.trajectory,
                |o| o.t,
                |o| o.unseen_row_drift.unwrap_or(f64::NAN),
            ),
        ));
        acc.push(series(
            label,
            after_zero(&run.trajectory, |o| o.t, |o| unseen(o).tie_aware_accuracy),
        ));
    }
    let mut a = Panel::lines(
        "Unseen-row drift max_z∉T ‖U_z(t) − U_z(0)‖",
        "time t (steps × lr)",
        "drift",
        true,
        false,
        drift,
    );
    a.notes = vec!["flow, GD, Adam: exactly 0 (bit-identical rows)".into()];
    a.legend = Legend::UpperRight;
    let mut b = Panel::lines(
        "IM-RM tie-aware accuracy on unseen tokens",
        "time t (steps × lr)",
        "tie-aware accuracy",
        true,
        false,
        acc,
    );
    b.y_range = Some((-0.05, 1.05));
    b.legend = Legend::UpperRight;
    Ok(FigureData {
        figure: Figure {
            panels: vec![a, b],
            columns: 2,
            caption: caption(
                config,
                "experiments/theorem2.toml",
                ", full-softmax gradient, 1 run per optimizer",
            ),
            panel_size: (560, 400),
        },
        csv,
    })
}

/// The `unseen` split's metrics of an observation.
fn unseen(o: &Observation) -> SplitMetrics {
    o.splits
        .iter()
        .find(|s| SplitId::Unseen.is(&s.split))
        .expect("unseen")
        .clone()
}

/// One CSV row per observation of an optimizer's run.
fn optimizer_rows(csv: &mut String, opt: Optimizer, trajectory: &[Observation]) -> Result<()> {
    for o in trajectory {
        let u = unseen(o);
        let tr = &o.splits[0];
        writeln!(
            csv,
            "{},{:e},{},{:e},{},{},{}",
            opt.name(),
            o.t,
            o.step,
            o.unseen_row_drift.unwrap_or(f64::NAN),
            u.tie_aware_accuracy,
            u.strict_accuracy,
            tr.tie_aware_accuracy
        )?;
    }
    Ok(())
}
