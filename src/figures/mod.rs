//! The data and layout of every figure in `figures/` (one function per figure; the examples,
//! tests and any other caller use the same code). Each returns the figure and the CSV of what it
//! draws; [`write`] renders `NAME.png`, `NAME.svg` and writes `NAME.csv`.

pub mod plot;

use crate::analysis::sweep::{run_sweep, SweepFile, SweepParameter, SweepRow, SweepSpec};
use crate::config::{Config, GradientPath, Optimizer};
use crate::experiment::observables::Observation;
use crate::experiment::simulation::{
    max_margin_for, run_model, run_model_with, simulate, ModelKind,
};
use crate::figures::plot::{render, Figure, Legend, Panel, PanelContent, Series};
use crate::problem::synthetic::Setup;
use anyhow::Result;
use std::fmt::Write as _;
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

const SPLITS: [&str; 4] = ["train", "seen", "unseen", "domain"];

fn caption(config: &Config, source: &str, extra: &str) -> String {
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

fn split_series(
    traj: &[Observation],
    split: &str,
    color: usize,
    f: impl Fn(&crate::experiment::observables::SplitMetrics) -> f64,
) -> Series {
    Series {
        name: split.to_string(),
        points: traj
            .iter()
            .filter(|o| o.t > 0.0)
            .map(|o| {
                (
                    o.t,
                    f(o.splits.iter().find(|s| s.split == split).expect("split")),
                )
            })
            .collect(),
        color,
        ..Default::default()
    }
}

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
        let conv: Vec<(f64, crate::experiment::observables::Convergence)> = run
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
        let theta = if run.kind == ModelKind::Explicit {
            "u"
        } else {
            "ΔU"
        };
        gap_series.push(Series {
            name: format!("{}: 1 − cos({theta}(t), {theta}*)", run.kind.label()),
            points: conv
                .iter()
                .filter(|(t, _)| *t > 1.0)
                .map(|(t, c)| (*t, c.direction_gap))
                .collect(),
            color: 1 + 4 * i,
            ..Default::default()
        });
        res_series.push(Series {
            name: format!("{}: ‖{theta}(t) − {theta}* ln t‖", run.kind.label()),
            points: conv
                .iter()
                .filter(|(t, _)| *t > 1.0)
                .map(|(t, c)| (*t, c.residual_norm))
                .collect(),
            color: 1 + 4 * i,
            ..Default::default()
        });
        if i == 0 {
            // References through the EX-RM's value at t = 1e10.
            if let Some((t0, c0)) = conv.iter().find(|(t, _)| *t >= 1e10) {
                let ts: Vec<f64> = conv.iter().map(|(t, _)| *t).filter(|t| *t >= 1e3).collect();
                let l0 = t0.ln();
                gap_series.push(Series {
                    name: "∝ 1/ln t".into(),
                    points: ts
                        .iter()
                        .map(|t| (*t, c0.direction_gap * l0 / t.ln()))
                        .collect(),
                    color: 0,
                    dashed: true,
                    ..Default::default()
                });
                gap_series.push(Series {
                    name: "∝ 1/ln² t".into(),
                    points: ts
                        .iter()
                        .map(|t| (*t, c0.direction_gap * (l0 / t.ln()).powi(2)))
                        .collect(),
                    color: 6,
                    dashed: true,
                    ..Default::default()
                });
            }
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
    // The EX-RM residual integrated directly to t = 1e10000 (the check `2b.residual_*`).
    let setup = &sim.setup;
    let trace = match &sim.explicit.max_margin {
        Ok(mm) => Some(crate::analysis::verify::residual::residual_to_horizon(
            config,
            setup,
            mm,
            crate::analysis::verify::residual::RESIDUAL_HORIZON_LOG10,
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
                    .find(|s| s.split == "unseen")
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
        let unseen = |o: &Observation| {
            o.splits
                .iter()
                .find(|s| s.split == "unseen")
                .expect("unseen")
                .clone()
        };
        for o in &run.trajectory {
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
        let pts = |f: &dyn Fn(&Observation) -> f64| {
            run.trajectory
                .iter()
                .filter(|o| o.t > 0.0)
                .map(|o| (o.t, f(o)))
                .collect::<Vec<_>>()
        };
        drift.push(Series {
            name: label.clone(),
            points: pts(&|o| o.unseen_row_drift.unwrap_or(f64::NAN)),
            color: i + 1,
            dashed: i == 2,
            markers: i == 1,
            ..Default::default()
        });
        acc.push(Series {
            name: label,
            points: pts(&|o| unseen(o).tie_aware_accuracy),
            color: i + 1,
            dashed: i == 2,
            markers: i == 1,
            ..Default::default()
        });
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

/// Verification without generation (MATH.md §4, last point), on held-out prompts over the whole
/// horizon: the IM-RM's accuracy on the `seen` split (new prompts, training tokens) against its
/// greedy generation on the same prompts (`argmax_y π_U(y|x)` over the whole vocabulary is a
/// "good" token) and the mean `π_U(y⁺|x)`; the notes state the horizon on which the IM-RM ranks
/// every held-out pair correctly while greedy generation is still wrong.
pub fn verification_without_generation(config: &Config) -> Result<FigureData> {
    let mut config = config.clone();
    config.train.t_max_log10 = None;
    config.train.first_observation = 1e-3;
    config.train.observations_per_decade = 4.0;
    let config = &config;
    let setup = Setup::try_generate(config)?;
    let held_out = setup
        .evals
        .iter()
        .find(|p| p.name == "seen")
        .ok_or_else(|| anyhow::anyhow!("no `seen` split"))?;
    let im = crate::problem::reward::ImplicitRm::new(
        held_out,
        setup.unembedding_init.full().view(),
        config.setup.beta,
        GradientPath::Full,
    );
    let good: Vec<bool> = setup
        .vocab
        .labels
        .iter()
        .map(|l| *l == crate::problem::synthetic::TokenLabel::Good)
        .collect();
    let (v, d) = (setup.vocab_size(), setup.dim());
    // per observation: t, held-out strict accuracy, greedy-good fraction, mean π(y⁺|x), mean π(y⁻|x)
    type Row = (f64, f64, f64, f64, f64);
    let mut rows: Vec<Row> = Vec::new();
    // per observation: the number of held-out pairs with r⁻ ≤ 0, and the largest
    // ln π_U(y⁺) − ln π_ref(y⁺) − δ/β among them (δ = r⁺ − r⁻). Since π_U = π_ref e^(r/β) by the
    // definition of r, the bound π_U(y⁺) ≤ e^(δ/β) π_ref(y⁺) holds exactly when r⁻ ≤ 0.
    let mut bound_rows: Vec<(usize, f64)> = Vec::new();
    let beta = config.setup.beta;
    let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
    let lp_ref = im.position_logprobs(&u0);
    let mm = max_margin_for(ModelKind::Implicit, &setup, config.eval.tie_tolerance);
    run_model_with(ModelKind::Implicit, config, &setup, mm, &mut |o, theta| {
        let lp = im.position_logprobs(theta);
        let n = lp.len() as f64;
        let rewards = im.rewards(theta);
        let (mut count, mut worst) = (0usize, f64::NEG_INFINITY);
        for (i, &(r_plus, r_minus)) in rewards.iter().enumerate() {
            let log_ratio = lp[i].0 - lp_ref[i].0;
            if r_minus <= 0.0 {
                count += 1;
                worst = worst.max(log_ratio - (r_plus - r_minus) / beta);
            }
        }
        bound_rows.push((count, worst));
        let u = ndarray::ArrayView2::from_shape((v, d), theta)?;
        let logits = crate::numerics::mat_mul_bt(held_out.prompt_hidden.view(), u);
        let greedy_good = logits
            .rows()
            .into_iter()
            .filter(|row| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                    );
                good[best.0]
            })
            .count() as f64
            / held_out.len() as f64;
        let acc = o
            .splits
            .iter()
            .find(|s| s.split == "seen")
            .map_or(f64::NAN, |s| s.strict_accuracy);
        rows.push((
            o.t,
            acc,
            greedy_good,
            lp.iter().map(|(a, _)| a.exp()).sum::<f64>() / n,
            lp.iter().map(|(_, b)| b.exp()).sum::<f64>() / n,
        ));
        Ok(())
    })?;
    let mut csv = String::from(
        "t,heldout_strict_accuracy,heldout_greedy_good_fraction,heldout_mean_pi_chosen,heldout_mean_pi_rejected,pairs_rejected_reward_nonpositive,max_log_ratio_minus_margin_over_beta\n",
    );
    for (r, b) in rows.iter().zip(&bound_rows) {
        writeln!(
            csv,
            "{:e},{},{},{:e},{:e},{},{:e}",
            r.0, r.1, r.2, r.3, r.4, b.0, b.1
        )?;
    }
    let bound_pairs: usize = bound_rows.iter().map(|b| b.0).sum();
    let bound_worst = bound_rows
        .iter()
        .map(|b| b.1)
        .fold(f64::NEG_INFINITY, f64::max);
    let pts = |f: fn(&Row) -> f64| {
        rows.iter()
            .filter(|r| r.0 > 0.0)
            .map(|r| (r.0, f(r)))
            .collect::<Vec<_>>()
    };
    // From when on held-out accuracy is 1 for good, and greedy generation all good.
    let from_on = |ok: &dyn Fn(&Row) -> bool| -> Option<f64> {
        let last_bad = rows.iter().rposition(|r| !ok(r));
        match last_bad {
            None => rows.first().map(|r| r.0),
            Some(i) if i + 1 < rows.len() => Some(rows[i + 1].0),
            Some(_) => None,
        }
    };
    let t_verify = from_on(&|r| r.1 == 1.0);
    let t_generate = from_on(&|r| r.2 == 1.0);
    let mut a = Panel::lines(
        "Held-out prompts: ranking vs greedy generation",
        "time t",
        "fraction",
        true,
        false,
        vec![
            Series {
                name: "IM-RM accuracy (strict)".into(),
                points: pts(|r| r.1),
                color: 5,
                ..Default::default()
            },
            Series {
                name: "greedy token is a good one".into(),
                points: pts(|r| r.2),
                color: 3,
                dashed: true,
                ..Default::default()
            },
        ],
    );
    a.y_range = Some((0.0, 1.05));
    a.legend = Legend::MiddleRight;
    let fmt = |t: Option<f64>| t.map_or("never (to t_max)".to_string(), |t| format!("{t:.2e}"));
    a.notes = vec![
        format!("accuracy 1 from t = {} on", fmt(t_verify)),
        format!("greedy generation all good from t = {} on", fmt(t_generate)),
    ];
    let mut b = Panel::lines(
        "Held-out prompts: probability of the responses under π_U",
        "time t",
        "mean π(y|x) (log scale)",
        true,
        true,
        vec![
            Series {
                name: "mean π(y⁺|x)".into(),
                points: pts(|r| r.3),
                color: 3,
                ..Default::default()
            },
            Series {
                name: "mean π(y⁻|x)".into(),
                points: pts(|r| r.4),
                color: 4,
                ..Default::default()
            },
        ],
    );
    if let Some(tv) = t_verify {
        if let Some(r) = rows.iter().find(|r| r.0 == tv) {
            b.notes = vec![format!(
                "at t = {tv:.2e}: mean π(y⁺|x) = {:.2e}, greedy good on {:.0} % of prompts",
                r.3,
                100.0 * r.2
            )];
        }
    }
    let pair_times = rows.len() * held_out.len();
    b.notes.push(format!(
        "r⁻ ≤ 0 on {bound_pairs} of {pair_times} pair-times; there π_U(y⁺|x) ≤ e^(δ/β) π_ref(y⁺|x),"
    ));
    b.notes.push(format!(
        "δ = r⁺ − r⁻ (from π_U = π_ref e^(r/β)); max log excess {bound_worst:.1e}"
    ));
    Ok(FigureData {
        figure: Figure {
            panels: vec![a, b],
            columns: 2,
            caption: caption(
                config,
                "experiments/theorem2.toml",
                &format!(
                    ", full-softmax IM-RM, held-out prompts (`seen` split, {} pairs), flow to t = {:e}",
                    held_out.len(),
                    config.train.t_max
                ),
            ),
            panel_size: (560, 400),
        },
        csv,
    })
}

fn sweep_panel(title: &str, x_label: &str, rows: &[SweepRow], y_label: &str) -> Panel {
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

/// Figure 4: `ρ(y_j⁺; y_i⁺)` (evaluation × training pairs, chosen responses) on the seen and unseen
/// splits at three times, and the token-identity share of the IM-RM velocities over time.
pub fn rho_heatmap(config: &Config) -> Result<FigureData> {
    let mut config = config.clone();
    config.train.t_max = 1e8;
    config.dynamics.snapshot_times = vec![0.0, 1.0, 1e8];
    let run = crate::analysis::dynamics::run(&config, &mut |_| {})?;
    let setup = &run.simulation.setup;
    let (ne, nt) = (
        40.min(config.setup.eval_pairs),
        60.min(config.setup.train_pairs),
    );
    let mut csv = String::from("t,split,eval_pair,train_pair,rho_chosen_chosen\n");
    let mut panels = Vec::new();
    for split in ["seen", "unseen"] {
        for snap in &run.snapshots {
            let si = setup
                .evals
                .iter()
                .position(|e| e.name == split)
                .expect("split");
            let sd = &snap.splits[si];
            let ep = crate::analysis::dynamics::ResponsePrefixes::new(&setup.evals[si]);
            let tp = crate::analysis::dynamics::ResponsePrefixes::new(&setup.train);
            let m = ndarray::Array2::from_shape_fn((ne, nt), |(j, i)| {
                sd.rho[[ep.row(j, 0, 0), tp.row(i, 0, 0)]]
            });
            for ((j, i), v) in m.indexed_iter() {
                writeln!(csv, "{:e},{split},{j},{i},{v:e}", snap.t)?;
            }
            let (lo, hi) = m
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            panels.push(Panel {
                title: format!("ρ(y⁺_j; y⁺_i), {split}, t = {:.0e}", snap.t),
                x_label: "training pair i".into(),
                y_label: "eval pair j".into(),
                x_log: false,
                y_log: false,
                y_range: None,
                content: PanelContent::Heatmap {
                    matrix: m,
                    limit: 1.0,
                },
                notes: vec![format!("range [{lo:.3}, {hi:.3}]; colour ±1")],
                legend: Legend::LowerRight,
            });
        }
    }
    let share = |f: fn(&crate::analysis::dynamics::DynamicsSummary) -> f64,
                 split: &str|
     -> Vec<(f64, f64)> {
        run.tracked
            .iter()
            .filter(|(t, _)| *t > 0.0)
            .filter_map(|(t, ss)| ss.iter().find(|s| s.split == split).map(|s| (*t, f(s))))
            .collect()
    };
    let mut lines = Vec::new();
    for (i, split) in ["seen", "unseen", "domain"].into_iter().enumerate() {
        lines.push(Series {
            name: format!("{split}: rewards (solid)"),
            points: share(|s| s.imrm_reward_identity_share, split),
            color: i + 1,
            ..Default::default()
        });
        lines.push(Series {
            name: format!("{split}: margins (dashed)"),
            points: share(|s| s.imrm_identity_share, split),
            color: i + 1,
            dashed: true,
            ..Default::default()
        });
    }
    let mut p = Panel::lines(
        "IM-RM velocity share from token identity",
        "time t",
        "share",
        true,
        false,
        lines,
    );
    p.y_range = Some((-0.05, 1.6));
    p.legend = Legend::UpperLeft;
    panels.push(p);
    Ok(FigureData {
        figure: Figure { panels, columns: 4, caption: caption(&config, "experiments/theorem2.toml", &format!(", 1 run; heatmaps: first {ne} eval × {nt} training pairs (blue −1, white 0, red +1)")), panel_size: (400, 330) },
        csv,
    })
}

/// `(value, model, split, mean tie-aware accuracy, 95 % half-width)`.
type ShiftRow = (f64, &'static str, &'static str, f64, f64);

/// Accuracy on the `seen` (in-distribution), `unseen` (token shift) and `domain` splits for both
/// models as `set(config, value)` varies, mean ± 95 % interval over `seeds`.
fn shift_sweep(
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
    let panel =
        |title: &str, x: &str, rows: &[(f64, &str, &str, f64, f64)], log: bool, legend: Legend| {
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
        };
    let panels = vec![
        panel(
            "vs the prompt's weight in h_{x,y} (recurrent gain)",
            "recurrent gain (A ~ N(0, gain²/D))",
            &by_gain,
            true,
            Legend::LowerLeft,
        ),
        panel(
            "vs the shared prompt component κ",
            "κ in h_x = κ ν_c + N(0, I/D)",
            &by_kappa,
            false,
            Legend::LowerRight,
        ),
        panel(
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

/// Figure `real_model` (MATH.md §6): tie-aware accuracy by split (strict as black ticks) of the
/// EX-RM and IM-RM, head-only (body frozen, Theorem 2) vs full fine-tuning; and, over the full
/// fine-tuning steps, accuracy and mean margin on the unseen-token split.
#[cfg(feature = "lm")]
pub fn real_model(run: &crate::lm::RealModelRun) -> Result<FigureData> {
    let mut csv =
        String::from("mode,model,step,split,strict_accuracy,tie_aware_accuracy,mean_margin\n");
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
        bars.push(crate::figures::plot::Bars {
            name: format!("{} head-only", o.model.to_uppercase()),
            values: o.splits.iter().map(|s| s.tie_aware_accuracy).collect(),
            marks: Some(o.splits.iter().map(|s| s.strict_accuracy).collect()),
            color,
            light: true,
        });
    }
    let color_of = |k: ModelKind| if k == ModelKind::Explicit { 5 } else { 4 };
    for f in &run.full {
        for c in &f.checkpoints {
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
        bars.push(crate::figures::plot::Bars {
            name: format!("{} full fine-tuning", f.kind.name().to_uppercase()),
            values: f.splits.iter().map(|s| s.tie_aware_accuracy).collect(),
            marks: Some(f.splits.iter().map(|s| s.strict_accuracy).collect()),
            color: color_of(f.kind),
            light: false,
        });
    }
    let mut accuracy = Panel {
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
        notes: vec![format!(
            "τ = {:e}; dashed: chance",
            run.file.eval.tie_tolerance
        )],
        legend: Legend::UpperRight,
    };
    accuracy.notes.push(format!(
        "head-only: {} to t = {:e}",
        run.file.train.optimizer.name(),
        run.file.train.t_max
    ));
    let mut panels = vec![accuracy];
    if !run.full.is_empty() {
        let curve =
            |f: &crate::lm::finetune::FullRun,
             split: &str,
             value: &dyn Fn(&crate::experiment::observables::SplitMetrics) -> f64| {
                f.checkpoints
                    .iter()
                    .map(|c| {
                        let s = c.splits.iter().find(|s| s.split == split).expect("split");
                        (c.step as f64, value(s))
                    })
                    .collect::<Vec<_>>()
            };
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
                    points: curve(f, split, &|s| s.tie_aware_accuracy),
                    color: color_of(f.kind),
                    dashed,
                    markers: true,
                    width,
                    ..Default::default()
                });
            }
            let unseen = curve(f, "unseen", &|s| s.mean_margin);
            let seen = curve(f, "seen", &|s| s.mean_margin);
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
        panels.extend([a, m]);
    }
    let columns = panels.len();
    let ft = &run.file.finetune;
    Ok(FigureData {
        figure: Figure {
            panels,
            columns,
            caption: format!(
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
                        ft.lr,
                        ft.head_lr.unwrap_or(ft.lr),
                        ft.weight_decay,
                        ft.steps,
                        if ft.batch_pairs == 0 {
                            run.sim.setup.train.len()
                        } else {
                            ft.batch_pairs
                        }
                    )
                },
                crate::io::layout::RMFLOW_VERSION
            ),
            panel_size: (560, 430),
        },
        csv,
    })
}

/// One group of bars per split (tie-aware accuracy, exact-tie accuracy as ticks), one bar per
/// named model, and the CSV rows `setting,model,split,strict,exact_tie,tie_aware`.
fn accuracy_bars(
    setting: &str,
    rows: &[(
        &str,
        &[crate::experiment::observables::SplitMetrics],
        usize,
        bool,
    )],
    csv: &mut String,
) -> Result<(Vec<String>, Vec<crate::figures::plot::Bars>)> {
    let categories: Vec<String> = rows[0].1.iter().map(|s| s.split.clone()).collect();
    let mut bars = Vec::new();
    for (name, splits, color, light) in rows {
        for s in *splits {
            // Labels such as "IM-RM no reference, U(0) tied" hold a comma: quoted (RFC 4180).
            writeln!(
                csv,
                "{setting},\"{}\",{},{},{},{}",
                name.replace('"', "\"\""),
                s.split,
                s.strict_accuracy,
                s.exact_tie_accuracy,
                s.tie_aware_accuracy
            )?;
        }
        bars.push(crate::figures::plot::Bars {
            name: name.to_string(),
            values: splits.iter().map(|s| s.tie_aware_accuracy).collect(),
            marks: Some(splits.iter().map(|s| s.exact_tie_accuracy).collect()),
            color: *color,
            light: *light,
        });
    }
    Ok((categories, bars))
}

fn bars_panel(
    title: &str,
    categories: Vec<String>,
    bars: Vec<crate::figures::plot::Bars>,
    tau: f64,
) -> Panel {
    Panel {
        title: title.into(),
        x_label: "evaluation split".into(),
        y_label: "accuracy at t_max".into(),
        x_log: false,
        y_log: false,
        y_range: Some((0.0, 1.55)),
        content: PanelContent::Bars {
            categories,
            bars,
            reference: Some(0.5),
        },
        notes: vec![format!(
            "bars: ties count ½ within τ = {tau:e}; ticks: exact ties only (τ = 0, the paper's); dashed: chance"
        )],
        legend: Legend::UpperRight,
    }
}

/// The paper's ablations on the synthetic model: the IM-RM without a reference model (`U(0)`
/// tied to the embeddings, and independent), and, for multi-token responses, the EX-RM on the
/// mean hidden state over response tokens against the last one.
pub fn ablations(single: &Config, multi: &Config) -> Result<FigureData> {
    let mut csv =
        String::from("setting,model,split,strict_accuracy,exact_tie_accuracy,tie_aware_accuracy\n");
    let sim = simulate(single, &mut |_| {})?;
    let mut independent = single.clone();
    independent.setup.unembedding_init = crate::config::UnembeddingInit::Independent;
    let sim_ind = simulate(&independent, &mut |_| {})?;
    let last = |r: &crate::experiment::simulation::ModelRun| {
        r.trajectory.last().expect("observed").splits.clone()
    };
    let (ex, im) = (last(&sim.explicit), last(&sim.implicit));
    let (categories, bars) = accuracy_bars(
        "single_token",
        &[
            ("EX-RM", &ex, 1, false),
            ("IM-RM", &im, 5, false),
            (
                "IM-RM no reference, U(0) tied",
                &sim.ablations.imrm_no_reference,
                5,
                true,
            ),
            (
                "IM-RM no reference, U(0) independent",
                &sim_ind.ablations.imrm_no_reference,
                3,
                true,
            ),
        ],
        &mut csv,
    )?;
    let tau = single.eval.tie_tolerance;
    let left = bars_panel(
        "K = 1: the IM-RM without its reference",
        categories,
        bars,
        tau,
    );

    let sim_m = simulate(multi, &mut |_| {})?;
    let (ex_m, im_m) = (last(&sim_m.explicit), last(&sim_m.implicit));
    let mean = sim_m
        .ablations
        .exrm_token_mean
        .as_ref()
        .map(last)
        .ok_or_else(|| anyhow::anyhow!("the multi-token config must have K > 1"))?;
    let (categories, bars) = accuracy_bars(
        "multi_token",
        &[
            ("EX-RM last token", &ex_m, 1, false),
            ("EX-RM mean over tokens", &mean, 1, true),
            ("IM-RM", &im_m, 5, false),
            (
                "IM-RM no reference",
                &sim_m.ablations.imrm_no_reference,
                5,
                true,
            ),
        ],
        &mut csv,
    )?;
    let right = bars_panel(
        &format!(
            "K = {}: EX-RM on the mean hidden state",
            multi.setup.response_length
        ),
        categories,
        bars,
        multi.eval.tie_tolerance,
    );
    Ok(FigureData {
        figure: Figure {
            panels: vec![left, right],
            columns: 2,
            caption: format!(
                "{}; right: experiments/multitoken.toml (K = {}, t = {:e})",
                caption(single, "experiments/theorem2.toml", ", flow to t = 1e100"),
                multi.setup.response_length,
                multi.train.t_max
            ),
            panel_size: (820, 440),
        },
        csv,
    })
}

/// The recipe's accuracy per epoch (MATH.md §6) from one or more `lm-recipe` `metrics.csv` files:
/// one panel per training mode found, the exact-tie accuracy (τ = 0, the paper's) of each reward
/// model on each split, EX-RM solid and IM-RM dashed, one colour per split. `source` names the
/// run in the caption. The CSV holds the rows drawn.
pub fn recipe_accuracy(metrics: &[String], source: &str) -> Result<FigureData> {
    let mut rows: Vec<(String, String, f64, String, f64)> = Vec::new();
    let mut csv = String::from("mode,model,epoch,split,exact_tie_accuracy\n");
    for text in metrics {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| anyhow::anyhow!("metrics.csv has no column {name:?}"))
        };
        let (m, k, e, s, a) = (
            col("mode")?,
            col("model")?,
            col("epoch")?,
            col("split")?,
            col("exact_tie_accuracy")?,
        );
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| -> Result<f64> {
                f.get(i)
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("metrics.csv: bad row {line:?}"))
            };
            let row = (
                f[m].to_string(),
                f[k].to_string(),
                num(e)?,
                f[s].to_string(),
                num(a)?,
            );
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
    let mut panels = Vec::new();
    for mode in &modes {
        let mut series = Vec::new();
        for (model, label, dashed) in [("exrm", "EX-RM", false), ("imrm", "IM-RM", true)] {
            for (i, split) in splits.iter().enumerate() {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| &r.0 == mode && r.1 == model && &r.3 == split)
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
        panels.push(p);
    }
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
