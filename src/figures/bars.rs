//! Bar panels of accuracy per split, shared by the real-model and ablation figures.

use crate::figures::plot::{Legend, Panel, PanelContent};
use anyhow::Result;
use std::fmt::Write as _;

/// One group of bars per split (tie-aware accuracy, exact-tie accuracy as ticks), one bar per
/// named model, and the CSV rows `setting,model,split,strict,exact_tie,tie_aware`.
pub(super) fn accuracy_bars(
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

pub(super) fn bars_panel(
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
