//! The paper's mechanism measured (`rmflow lm-dynamics`, MATH.md §3): on one evaluation split,
//! each pair's predicted IM-RM margin velocity split into its token-identity part and the rest
//! (pairs sorted by velocity), the EX-RM head's beside it, and the tokens that carry the
//! identity part.

use crate::figures::figure::FigureData;
use crate::figures::plot::{Bars, Figure, Legend, Panel, PanelContent, Series};
use anyhow::{anyhow, bail, Result};
use std::fmt::Write as _;

/// The fields of one CSV line (RFC 4180 quoting).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

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
    ];
    let rows: Vec<Vec<String>> = table(pairs, "pairs.csv", &cols)?
        .into_iter()
        .filter(|r| r[1] == split)
        .collect();
    if rows.is_empty() {
        bail!("pairs.csv has no rows of split {split:?}");
    }
    let mut csv = String::from("reward,rank,velocity,velocity_identity,velocity_rest\n");
    let mut im: Vec<[f64; 3]> = Vec::new();
    let mut ex: Vec<f64> = Vec::new();
    for r in &rows {
        match r[0].as_str() {
            "imrm" | "imrm_no_ref" => im.push([
                number(&r[2], "velocity")?,
                number(&r[3], "velocity_identity")?,
                number(&r[4], "velocity_rest")?,
            ]),
            _ => ex.push(number(&r[2], "velocity")?),
        }
    }
    im.sort_by(|a, b| a[0].total_cmp(&b[0]));
    ex.sort_by(f64::total_cmp);
    for (k, v) in im.iter().enumerate() {
        writeln!(csv, "imrm,{k},{},{},{}", v[0], v[1], v[2])?;
    }
    for (k, v) in ex.iter().enumerate() {
        writeln!(csv, "exrm,{k},{v},,")?;
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
    let columns = panels.len();
    Ok(FigureData {
        figure: Figure {
            panels,
            columns,
            caption: source.to_string(),
            panel_size: (620, 440),
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
    writeln!(csv, "token,velocity_identity,share")?;
    for (t, v, s) in &rows {
        writeln!(csv, "\"{}\",{v},{s}", t.replace('"', "\"\""))?;
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
