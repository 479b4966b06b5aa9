//! Verification without generation on the Hamiltonian-cycle task (MATH.md §7), from
//! `rmflow ham-cycle` runs' `metrics.csv`.

use super::figure::FigureData;
use crate::figures::plot::{Figure, Legend, Panel, Series};
use anyhow::{bail, Result};
use std::fmt::Write as _;

/// One run's rows: reward model, epoch, and the named columns (`None` where empty).
struct Rows {
    label: String,
    rows: Vec<(String, f64, Vec<Option<f64>>)>,
}

const COLUMNS: [&str; 6] = [
    "test_accuracy",
    "sampled_success",
    "greedy_success",
    "mean_cycle_mass",
    "mean_reference_cycle_mass",
    "bound_holds",
];

/// The runs' colours ([`crate::figures::plot::PALETTE`] indices), in the order the runs are given.
const RUN_COLORS: [usize; 7] = [5, 1, 3, 6, 4, 2, 0];

fn parse(label: &str, text: &str) -> Result<Rows> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| anyhow::anyhow!("{label}: metrics.csv has no column {name:?}"))
    };
    let (reward, epoch) = (col("reward")?, col("epoch")?);
    let cols: Vec<usize> = COLUMNS.iter().map(|c| col(c)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
        let e = num(epoch).ok_or_else(|| anyhow::anyhow!("{label}: bad row {line:?}"))?;
        rows.push((
            f[reward].to_string(),
            e,
            cols.iter().map(|&c| num(c)).collect(),
        ));
    }
    Ok(Rows {
        label: label.into(),
        rows,
    })
}

/// Points `(epoch, column k)` of `reward`'s rows that have a value.
fn points(r: &Rows, reward: &str, k: usize) -> Vec<(f64, f64)> {
    r.rows
        .iter()
        .filter(|x| x.0 == reward)
        .filter_map(|x| x.2[k].map(|v| (x.1, v)))
        .collect()
}

/// Three panels from one or more runs (`(label, metrics.csv text)`, e.g. n = 6 and n = 10):
/// test verification accuracy of both reward models; the IM-RM policy's generation success
/// (one sample at T = 1, greedy); and, where the run enumerated every order, the exact mean
/// `π(C|x)` beside `π_ref(C|x)` (log scale). The CSV holds the rows drawn.
pub fn verification_without_generation_hamiltonian(
    runs: &[(String, String)],
) -> Result<FigureData> {
    let parsed: Vec<Rows> = runs
        .iter()
        .map(|(l, t)| parse(l, t))
        .collect::<Result<_>>()?;
    if parsed.iter().all(|r| r.rows.is_empty()) {
        bail!("no rows in the metrics.csv files given");
    }
    let labels: Vec<&str> = parsed.iter().map(|r| r.label.as_str()).collect();
    let panels = panels(&parsed);
    Ok(FigureData {
        figure: Figure {
            columns: panels.len(),
            panels,
            caption: format!(
                "rmflow ham-cycle (MATH.md §7): {} · rmflow {}",
                labels.join(", "),
                crate::io::layout::RMFLOW_VERSION
            ),
            panel_size: (560, 420),
        },
        csv: long_csv(&parsed)?,
    })
}

/// Every value drawn, one per line: `run,reward,epoch,column,value`.
fn long_csv(parsed: &[Rows]) -> Result<String> {
    let mut csv = String::from("run,reward,epoch,column,value\n");
    for r in parsed {
        for (reward, epoch, values) in &r.rows {
            for (k, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    writeln!(csv, "{},{reward},{epoch},{},{v}", r.label, COLUMNS[k])?;
                }
            }
        }
    }
    Ok(csv)
}

/// Run `i`'s curve of column `k` of `reward`'s rows. One colour per run; within a panel the
/// second quantity is dashed (EX-RM, greedy, `π_ref`), so a run's two curves stay together and
/// every run reads apart. The legend names each run once (its solid curve); a note says what
/// the dashes are.
fn series(r: &Rows, i: usize, (reward, k): (&str, usize), dashed: bool) -> Series {
    Series {
        name: if dashed {
            String::new()
        } else {
            r.label.clone()
        },
        points: points(r, reward, k),
        color: RUN_COLORS[i % RUN_COLORS.len()],
        dashed,
        markers: true,
        ..Series::default()
    }
}

/// The accuracy and generation panels, and the exact masses' where a run enumerated.
fn panels(parsed: &[Rows]) -> Vec<Panel> {
    let (mut acc, mut gen, mut mass) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in parsed.iter().enumerate() {
        acc.push(series(r, i, ("imrm", 0), false));
        acc.push(series(r, i, ("exrm", 0), true));
        gen.push(series(r, i, ("imrm", 1), false));
        gen.push(series(r, i, ("imrm", 2), true));
        let exact = series(r, i, ("imrm", 3), false);
        if !exact.points.is_empty() {
            mass.push(exact);
            mass.push(series(r, i, ("imrm", 4), true));
        }
    }
    let panel =
        |title: &str, y_label: &str, y_log: bool, series: Vec<Series>, legend, notes: &[&str]| {
            let mut p = Panel::lines(title, "epoch", y_label, false, y_log, series);
            p.legend = legend;
            p.notes = notes.iter().map(|n| n.to_string()).collect();
            p
        };
    let mut a = panel(
        "verification: test accuracy",
        "accuracy (ties ½)",
        false,
        acc,
        Legend::MiddleRight,
        &["solid: IM-RM; dashed: EX-RM"],
    );
    a.y_range = Some((0.4, 1.02));
    let mut g = panel(
        "generation by the IM-RM's policy",
        "fraction of test prompts with a correct cycle",
        false,
        gen,
        Legend::UpperRight,
        &[
            "the official check; solid: one sample at T = 1,",
            "dashed: greedy decoding",
        ],
    );
    g.y_range = Some((-0.02, 1.02));
    let mut out = vec![a, g];
    if !mass.is_empty() {
        out.push(panel(
            "exact mass of correct responses",
            "mean over test prompts",
            true,
            mass,
            Legend::LowerRight,
            &["every vertex order enumerated; solid: π(C|x), dashed: π_ref(C|x)"],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::plot::PanelContent;

    const HEADER: &str = "reward,epoch,test_accuracy,sampled_success,greedy_success,mean_cycle_mass,mean_reference_cycle_mass,bound_holds";

    /// The legend names each run once (its solid curve), whichever panels it appears in; the
    /// dashed curves are drawn without a name, and every curve keeps its run's colour.
    #[test]
    fn legends_name_each_run_once() {
        let enumerated = format!("{HEADER}\nimrm,0,0.5,0.1,0.2,0.3,0.3,1\nexrm,0,0.5,,,,,\n");
        let generated =
            format!("{HEADER}\nimrm,0,0.5,0,0,,,\nimrm,1,0.6,0,0,,,\nexrm,1,0.55,,,,,\n");
        let runs = vec![("a".to_string(), enumerated), ("b".to_string(), generated)];
        let data = verification_without_generation_hamiltonian(&runs).unwrap();
        let panels = &data.figure.panels;
        assert_eq!(panels.len(), 3, "the enumerated run adds the mass panel");
        let expected: [&[&str]; 3] = [&["a", "b"], &["a", "b"], &["a"]];
        for (panel, names) in panels.iter().zip(expected) {
            let PanelContent::Lines(series) = &panel.content else {
                panic!("{}: not a line panel", panel.title);
            };
            let named: Vec<&str> = series
                .iter()
                .filter(|s| !s.name.is_empty())
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(named, names, "{}", panel.title);
            assert!(series.iter().all(|s| s.dashed == s.name.is_empty()));
            for pair in series.chunks(2) {
                assert_eq!(pair[0].color, pair[1].color, "{}", panel.title);
            }
        }
    }
}
