//! The paper's Section 5.2 bar chart from a run of `rmflow lm-recipe` on preference data
//! (`experiments/uf_shift.toml`): accuracy and normalised margin per evaluation set, EX-RM beside
//! IM-RM, the sets grouped as in distribution, token-level shift and domain shift; and each
//! group's mean accuracy along training.

use crate::figures::figure::FigureData;
use crate::figures::plot::{Bars, Figure, Legend, Panel, PanelContent, Series};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The group of an evaluation set, from its name: `train` and `test` are in distribution; a
/// paraphrase or translation is a token-level shift; anything else a domain shift.
pub fn shift_group(split: &str) -> &'static str {
    let s = split.to_ascii_lowercase();
    if s == "train" || s == "test" {
        "in distribution"
    } else if ["paraphrase", "translate", "french", "spanish"]
        .iter()
        .any(|k| s.contains(k))
    {
        "token-level shift"
    } else {
        "domain shift"
    }
}

const GROUPS: [&str; 3] = ["in distribution", "token-level shift", "domain shift"];
const MODELS: [(&str, &str, usize); 2] = [("exrm", "EX-RM", 1), ("imrm", "IM-RM", 5)];

/// One row of `metrics.csv` (full-mode runs).
struct Row {
    model: String,
    epoch: usize,
    split: String,
    accuracy: f64,
    margin: f64,
}

/// The full-mode rows of `metrics.csv` ([`super::recipe::csv_rows`], read once per value).
fn rows(metrics: &str) -> Result<Vec<Row>> {
    let full = |cell: &dyn Fn(&str) -> Option<String>| cell("mode").as_deref() == Some("full");
    let read = |value: &str| {
        let cols = ["mode", "model", "epoch", "split", value];
        super::recipe::csv_rows(metrics, "metrics.csv", &cols, full)
    };
    let accuracy = read("exact_tie_accuracy")?;
    let margin = read("normalised_abs_margin")?;
    Ok(accuracy
        .into_iter()
        .zip(margin)
        .map(|((_, model, epoch, split, accuracy), m)| Row {
            model,
            epoch: epoch as usize,
            split,
            accuracy,
            margin: m.4,
        })
        .collect())
}

/// The figure from a run's `metrics.csv`: bars at the last evaluation every model it holds
/// reached (a run read before it ends, `lm-progress`, may hold the EX-RM only), and each group's
/// mean accuracy by epoch.
pub fn preference_shift(metrics: &str, source: &str) -> Result<FigureData> {
    let rows = rows(metrics)?;
    let last = MODELS
        .iter()
        .filter_map(|(m, ..)| rows.iter().filter(|r| r.model == *m).map(|r| r.epoch).max())
        .min();
    let Some(epoch) = last else {
        bail!("metrics.csv holds no full-mode exrm or imrm rows");
    };
    let mut splits: Vec<&str> = Vec::new();
    for r in &rows {
        if !splits.contains(&r.split.as_str()) {
            splits.push(&r.split);
        }
    }
    splits.sort_by_key(|s| GROUPS.iter().position(|g| *g == shift_group(s)));
    let mut csv =
        String::from("model,epoch,split,group,exact_tie_accuracy,normalised_abs_margin\n");
    for r in &rows {
        let g = shift_group(&r.split);
        writeln!(
            csv,
            "{},{},{},{g},{},{}",
            r.model, r.epoch, r.split, r.accuracy, r.margin
        )?;
    }
    let value = |model: &str, split: &str, f: fn(&Row) -> f64| {
        rows.iter()
            .find(|r| r.model == model && r.split == split && r.epoch == epoch)
            .map_or(f64::NAN, f)
    };
    // The models the run reached (a run read before it ends may hold only the EX-RM).
    let present: Vec<_> = MODELS
        .iter()
        .filter(|(m, ..)| rows.iter().any(|r| r.model == *m))
        .collect();
    let bars = |f: fn(&Row) -> f64| -> Vec<Bars> {
        present
            .iter()
            .map(|(m, label, color)| Bars {
                name: label.to_string(),
                values: splits.iter().map(|s| value(m, s, f)).collect(),
                marks: None,
                color: *color,
                light: false,
            })
            .collect()
    };
    let categories: Vec<String> = splits.iter().map(|s| short_label(s)).collect();
    let panel = |title: &str, y: &str, b: Vec<Bars>, reference: Option<f64>| Panel {
        title: title.into(),
        x_label: "evaluation set (in distribution | token-level shift | domain shift)".into(),
        y_label: y.into(),
        x_log: false,
        y_log: false,
        y_range: None,
        content: PanelContent::Bars {
            categories: categories.clone(),
            bars: b,
            reference,
        },
        notes: vec![],
        legend: Legend::UpperRight,
    };
    let mut accuracy = panel(
        &format!("Accuracy after epoch {epoch}"),
        "accuracy (ties ½)",
        bars(|r| r.accuracy),
        Some(0.5),
    );
    accuracy.y_range = Some((0.0, 1.25));
    let margin = panel(
        &format!("Normalised |r⁺ − r⁻| after epoch {epoch}"),
        "mean |r⁺ − r⁻| / std(r)",
        bars(|r| r.margin),
        None,
    );
    let panels = vec![accuracy, margin, by_epoch(&rows)];
    Ok(FigureData {
        figure: Figure {
            panels,
            columns: 3,
            caption: source.to_string(),
            panel_size: (700, 440),
        },
        csv,
    })
}

/// A set's name short enough for the axis: `_test` dropped, `translate_` and `rewardbench_`
/// shortened.
fn short_label(split: &str) -> String {
    split
        .trim_end_matches("_test")
        .replace("translate_", "")
        .replace("rewardbench_", "RB ")
}

/// Each group's mean accuracy (over its sets) by epoch, EX-RM solid, IM-RM dashed.
fn by_epoch(rows: &[Row]) -> Panel {
    let mut series = Vec::new();
    for (mi, (model, label, _)) in MODELS.iter().enumerate() {
        for (gi, group) in GROUPS.iter().enumerate() {
            let mut at: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
            for r in rows
                .iter()
                .filter(|r| r.model == *model && shift_group(&r.split) == *group)
            {
                let e = at.entry(r.epoch).or_default();
                e.0 += r.accuracy;
                e.1 += 1;
            }
            if at.is_empty() {
                continue;
            }
            series.push(Series {
                name: format!("{label} {group}"),
                points: at
                    .into_iter()
                    .map(|(e, (s, n))| (e as f64, s / n as f64))
                    .collect(),
                color: [1, 3, 5][gi],
                dashed: mi == 1,
                markers: true,
                ..Default::default()
            });
        }
    }
    let mut p = Panel::lines(
        "Mean accuracy per group by epoch",
        "epoch",
        "accuracy (ties ½)",
        false,
        false,
        series,
    );
    p.y_range = Some((0.0, 1.05));
    p.notes = vec!["solid EX-RM, dashed IM-RM".into()];
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `metrics.csv` rows (the columns the figure reads, and one it ignores) for `model` at
    /// `epochs`, accuracy `a + epoch / 100` on every set, margin 1.
    fn metrics(models: &[(&str, usize, f64)]) -> String {
        let mut s =
            String::from("mode,model,epoch,split,exact_tie_accuracy,normalised_abs_margin,loss\n");
        let sets = ["train", "test", "paraphrase_test", "rewardmath_test"];
        for (model, epochs, a) in models {
            for e in 0..=*epochs {
                for set in sets {
                    let acc = a + e as f64 / 100.0;
                    s += &format!("full,{model},{e},{set},{acc},1,0.7\n");
                }
                s += &format!("head,{model},{e},test,0.99,1,0.7\n");
            }
        }
        s
    }

    fn bars(f: &FigureData, panel: usize) -> (&str, Vec<(String, Vec<f64>)>) {
        let p = &f.figure.panels[panel];
        let PanelContent::Bars { bars, .. } = &p.content else {
            panic!("panel {panel} is not bars")
        };
        let named = bars.iter().map(|b| (b.name.clone(), b.values.clone()));
        (p.title.as_str(), named.collect())
    }

    #[test]
    fn bars_stand_at_the_last_epoch_both_models_reached() {
        let f = preference_shift(&metrics(&[("exrm", 5, 0.6), ("imrm", 3, 0.4)]), "t").unwrap();
        let (title, b) = bars(&f, 0);
        assert_eq!(title, "Accuracy after epoch 3");
        assert_eq!(b[0], ("EX-RM".into(), vec![0.6 + 3.0 / 100.0; 4]));
        assert_eq!(b[1], ("IM-RM".into(), vec![0.4 + 3.0 / 100.0; 4]));
        // Head-mode rows are left out; the CSV has every full-mode row, grouped.
        assert_eq!(f.csv.lines().count(), 1 + (6 + 4) * 4);
        assert!(f
            .csv
            .contains("exrm,5,paraphrase_test,token-level shift,0.65,1\n"));
        assert!(f
            .csv
            .contains("imrm,0,rewardmath_test,domain shift,0.4,1\n"));
    }

    #[test]
    fn a_run_read_before_the_imrm_shows_the_exrm_alone() {
        let f = preference_shift(&metrics(&[("exrm", 2, 0.5)]), "t").unwrap();
        let (title, b) = bars(&f, 1);
        assert_eq!(title, "Normalised |r⁺ − r⁻| after epoch 2");
        assert_eq!(b, vec![("EX-RM".to_string(), vec![1.0; 4])]);
        let PanelContent::Lines(series) = &f.figure.panels[2].content else {
            panic!("the third panel is not lines")
        };
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        let groups = ["in distribution", "token-level shift", "domain shift"];
        assert_eq!(names, groups.map(|g| format!("EX-RM {g}")));
        assert_eq!(series[1].points, vec![(0.0, 0.5), (1.0, 0.51), (2.0, 0.52)]);
        assert!(preference_shift(&metrics(&[("exrm_token_mean", 2, 0.5)]), "t").is_err());
    }
}
