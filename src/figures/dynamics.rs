//! Learning dynamics (MATH.md §3): the token-overlap coefficients `ρ_{k,l}`.

use super::figure::{caption, FigureData};
use crate::analysis::dynamics::{DynamicsRun, DynamicsSummary, ResponsePrefixes, Snapshot};
use crate::config::Config;
use crate::figures::plot::{Figure, Legend, Panel, PanelContent, Series};
use anyhow::Result;
use std::fmt::Write as _;

/// Figure 4: `ρ(y_j⁺; y_i⁺)` (evaluation × training pairs, chosen responses) on the seen and unseen
/// splits at three times, and the token-identity share of the IM-RM velocities over time.
pub fn rho_heatmap(config: &Config) -> Result<FigureData> {
    let mut config = config.clone();
    config.train.t_max = 1e8;
    config.dynamics.snapshot_times = vec![0.0, 1.0, 1e8];
    let run = crate::analysis::dynamics::run(&config, &mut |_| {})?;
    let (ne, nt) = (
        40.min(config.setup.eval_pairs),
        60.min(config.setup.train_pairs),
    );
    let mut csv = String::from("t,split,eval_pair,train_pair,rho_chosen_chosen\n");
    let mut panels = Vec::new();
    for split in ["seen", "unseen"] {
        for snap in &run.snapshots {
            panels.push(rho_panel(&run, snap, split, (ne, nt), &mut csv)?);
        }
    }
    panels.push(identity_share_panel(&run));
    Ok(FigureData {
        figure: Figure { panels, columns: 4, caption: caption(&config, "experiments/theorem2.toml", &format!(", 1 run; heatmaps: first {ne} eval × {nt} training pairs (blue −1, white 0, red +1)")), panel_size: (400, 330) },
        csv,
    })
}

/// The heatmap of `ρ(y_j⁺; y_i⁺)` over the first `ne × nt` pairs of `split` at one snapshot; its
/// values go to `csv`.
fn rho_panel(
    run: &DynamicsRun,
    snap: &Snapshot,
    split: &str,
    (ne, nt): (usize, usize),
    csv: &mut String,
) -> Result<Panel> {
    let setup = &run.simulation.setup;
    let si = setup
        .evals
        .iter()
        .position(|e| e.name == split)
        .expect("split");
    let sd = &snap.splits[si];
    let ep = ResponsePrefixes::new(&setup.evals[si]);
    let tp = ResponsePrefixes::new(&setup.train);
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
    Ok(Panel {
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
    })
}

/// The share of the IM-RM's reward and margin velocities from token identity, per split.
fn identity_share_panel(run: &DynamicsRun) -> Panel {
    let share = |f: fn(&DynamicsSummary) -> f64, split: &str| -> Vec<(f64, f64)> {
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
    p
}
