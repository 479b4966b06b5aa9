//! The paper's mechanism measured (`rmflow lm-dynamics`, MATH.md §3): on one evaluation split,
//! each pair's predicted IM-RM margin velocity split into its token-identity part and the rest
//! (pairs sorted by velocity), the tokens that carry the identity part, the whole model's
//! velocity beside the unembedding part's, and the EX-RM head's.

use crate::figures::figure::FigureData;
use crate::figures::plot::{Bars, Figure, Legend, Panel, PanelContent, Series};
use crate::io::csv::{field, fields};
use anyhow::{anyhow, bail, Result};
use std::fmt::Write as _;

/// Rows of a CSV `text` (named `name` in errors) as the values of the columns `cols`.
fn table(text: &str, name: &str, cols: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut lines = text.lines();
    let header = fields(lines.next().unwrap_or(""));
    let idx: Vec<usize> = cols
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == c)
                .ok_or_else(|| anyhow!("{name} has no column {c:?}"))
        })
        .collect::<Result<_>>()?;
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f = fields(l);
            idx.iter()
                .map(|&i| f.get(i).cloned().unwrap_or_default())
                .collect()
        })
        .collect())
}

fn number(s: &str, name: &str) -> Result<f64> {
    s.parse()
        .map_err(|_| anyhow!("{name}: {s:?} is not a number"))
}

/// The figure for `split` from `pairs.csv` and `tokens.csv` of an `lm-dynamics` output.
pub fn mechanism(pairs: &str, tokens: &str, split: &str, source: &str) -> Result<FigureData> {
    let cols = [
        "reward",
        "split",
        "velocity",
        "velocity_identity",
        "velocity_rest",
        "whole_velocity",
        "whole_velocity_half",
    ];
    let rows: Vec<Vec<String>> = table(pairs, "pairs.csv", &cols)?
        .into_iter()
        .filter(|r| r[1] == split)
        .collect();
    if rows.is_empty() {
        bail!("pairs.csv has no rows of split {split:?}");
    }
    // One table: `pairs` rows (each pair's predicted velocity, by rank), `whole` rows (the
    // IM-RM's whole-model velocity beside its unembedding part's) and `tokens` rows.
    let mut csv = String::from(
        "panel,reward,rank,velocity,velocity_identity,velocity_rest,whole_velocity,share,token\n",
    );
    let mut im: Vec<[f64; 3]> = Vec::new();
    let mut ex: Vec<f64> = Vec::new();
    // The IM-RM's whole-model velocity (Richardson of the central differences) and its part's.
    let mut whole: Vec<(f64, f64)> = Vec::new();
    for r in &rows {
        match r[0].as_str() {
            "imrm" | "imrm_no_ref" => {
                im.push([
                    number(&r[2], "velocity")?,
                    number(&r[3], "velocity_identity")?,
                    number(&r[4], "velocity_rest")?,
                ]);
                if !r[5].is_empty() {
                    let (w, h) = (number(&r[5], "whole_velocity")?, number(&r[6], "whole")?);
                    whole.push(((4.0 * h - w) / 3.0, im.last().expect("pushed")[0]));
                }
            }
            _ => ex.push(number(&r[2], "velocity")?),
        }
    }
    whole.sort_by(|a, b| a.0.total_cmp(&b.0));
    im.sort_by(|a, b| a[0].total_cmp(&b[0]));
    ex.sort_by(f64::total_cmp);
    for (k, v) in im.iter().enumerate() {
        writeln!(csv, "pairs,imrm,{k},{},{},{},,,", v[0], v[1], v[2])?;
    }
    for (k, v) in ex.iter().enumerate() {
        writeln!(csv, "pairs,exrm,{k},{v},,,,,")?;
    }
    let points = |f: &dyn Fn(usize) -> f64, n: usize| (0..n).map(|k| (k as f64, f(k))).collect();
    let series = |name: &str, color: usize, markers: bool, pts: Vec<(f64, f64)>| Series {
        name: name.into(),
        points: pts,
        color,
        markers,
        dashed: false,
        ..Default::default()
    };
    let mut panels = Vec::new();
    if !im.is_empty() {
        let n = im.len();
        let mut p = Panel::lines(
            &format!("IM-RM: predicted dm/dt on {split}"),
            "pair (sorted by dm/dt)",
            "β² ⟨G(y⁺) − G(y⁻), D⟩",
            false,
            false,
            vec![
                series("total", 0, false, points(&|k| im[k][0], n)),
                series("token identity", 4, true, points(&|k| im[k][1], n)),
                series("rest (softmax terms)", 5, true, points(&|k| im[k][2], n)),
            ],
        );
        p.legend = Legend::UpperLeft;
        panels.push(p);
        panels.push(token_panel(tokens, split, &mut csv)?);
    }
    if !whole.is_empty() {
        for (k, (w, v)) in whole.iter().enumerate() {
            writeln!(csv, "whole,imrm,{k},{v},,,{w},,")?;
        }
        let n = whole.len();
        let mut p = Panel::lines(
            &format!("IM-RM: whole model vs unembedding on {split}"),
            "pair (sorted by the whole model's dm/dt)",
            "dm/dt along −∇L",
            false,
            false,
            vec![
                series(
                    "whole model (central differences)",
                    0,
                    false,
                    points(&|k| whole[k].0, n),
                ),
                series("unembedding part", 5, true, points(&|k| whole[k].1, n)),
            ],
        );
        p.legend = Legend::UpperLeft;
        panels.push(p);
    }
    if !ex.is_empty() {
        let n = ex.len();
        let mut p = Panel::lines(
            &format!("EX-RM: predicted dm/dt on {split}"),
            "pair (sorted by dm/dt)",
            "⟨h⁺ − h⁻, Σ c_i z_i⟩",
            false,
            false,
            vec![series("head", 1, true, points(&|k| ex[k], n))],
        );
        p.legend = Legend::UpperLeft;
        panels.push(p);
    }
    let columns = if panels.len() == 4 { 2 } else { panels.len() };
    Ok(FigureData {
        figure: Figure {
            panels,
            columns,
            caption: source.to_string(),
            panel_size: (560, 420),
        },
        csv,
    })
}

/// The 6 tokens with the largest |identity part| summed over the split's pairs (chosen
/// occurrences +, rejected −).
fn token_panel(tokens: &str, split: &str, csv: &mut String) -> Result<Panel> {
    let cols = ["reward", "split", "velocity_identity", "share", "token"];
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for r in table(tokens, "tokens.csv", &cols)? {
        if r[1] == split && r[0].starts_with("imrm") {
            let v = number(&r[2], "velocity_identity")?;
            rows.push((r[4].clone(), v, number(&r[3], "share")?));
        }
    }
    rows.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    rows.truncate(6);
    for (t, v, s) in &rows {
        writeln!(csv, "tokens,imrm,,,{v},,,{s},{}", field(t))?;
    }
    Ok(Panel {
        title: format!("IM-RM: tokens carrying the identity part ({split})"),
        x_label: "token (share of Σ|identity|)".into(),
        y_label: "|Σ over pairs of its identity part|".into(),
        x_log: false,
        y_log: false,
        y_range: None,
        content: PanelContent::Bars {
            categories: rows
                .iter()
                .map(|(t, _, s)| {
                    format!(
                        "{} {:.0}%",
                        t.replace('Ġ', "␣").replace("<|im_end|>", "im_end"),
                        100.0 * s
                    )
                })
                .collect(),
            bars: vec![
                Bars {
                    name: "raises the margins".into(),
                    values: rows.iter().map(|r| r.1.max(0.0)).collect(),
                    color: 3,
                    ..Default::default()
                },
                Bars {
                    name: "lowers the margins".into(),
                    values: rows.iter().map(|r| (-r.1).max(0.0)).collect(),
                    color: 4,
                    ..Default::default()
                },
            ],
            reference: None,
        },
        notes: vec![],
        legend: Legend::UpperRight,
    })
}
