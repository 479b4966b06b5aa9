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
    let v = Velocities::read(pairs, split)?;
    // One table: `pairs` rows (each pair's predicted velocity, by rank), `tokens` rows and
    // `whole` rows (the IM-RM's whole-model velocity beside its unembedding part's).
    let mut csv = String::from(
        "panel,reward,rank,velocity,velocity_identity,velocity_rest,whole_velocity,share,token\n",
    );
    for (k, x) in v.im.iter().enumerate() {
        writeln!(csv, "pairs,imrm,{k},{},{},{},,,", x[0], x[1], x[2])?;
    }
    for (k, x) in v.ex.iter().enumerate() {
        writeln!(csv, "pairs,exrm,{k},{x},,,,,")?;
    }
    let mut panels = Vec::new();
    if !v.im.is_empty() {
        panels.push(imrm_panel(&v.im, split));
        panels.push(token_panel(tokens, split, &mut csv)?);
    }
    if !v.whole.is_empty() {
        for (k, (w, x)) in v.whole.iter().enumerate() {
            writeln!(csv, "whole,imrm,{k},{x},,,{w},,")?;
        }
        panels.push(whole_panel(&v.whole, split));
    }
    if !v.ex.is_empty() {
        panels.push(exrm_panel(&v.ex, split));
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

/// One split's predicted margin velocities, each list sorted ascending.
struct Velocities {
    /// The IM-RM's (`imrm` or `imrm_no_ref`): total, token-identity part, rest.
    im: Vec<[f64; 3]>,
    /// The EX-RM head's.
    ex: Vec<f64>,
    /// The IM-RM's whole-model velocity (Richardson of the central differences at ε and ε/2)
    /// and its unembedding part's, where measured; sorted by the first.
    whole: Vec<(f64, f64)>,
}

impl Velocities {
    /// `split`'s rows of `pairs.csv`; an error where it has none.
    fn read(pairs: &str, split: &str) -> Result<Velocities> {
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
        let (mut im, mut ex, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            if !matches!(r[0].as_str(), "imrm" | "imrm_no_ref") {
                ex.push(number(&r[2], "velocity")?);
                continue;
            }
            let total = number(&r[2], "velocity")?;
            im.push([
                total,
                number(&r[3], "velocity_identity")?,
                number(&r[4], "velocity_rest")?,
            ]);
            if !r[5].is_empty() {
                let (w, h) = (number(&r[5], "whole_velocity")?, number(&r[6], "whole")?);
                whole.push(((4.0 * h - w) / 3.0, total));
            }
        }
        whole.sort_by(|a: &(f64, f64), b| a.0.total_cmp(&b.0));
        im.sort_by(|a: &[f64; 3], b| a[0].total_cmp(&b[0]));
        ex.sort_by(f64::total_cmp);
        Ok(Velocities { im, ex, whole })
    }
}

/// A curve over the pairs' ranks.
fn ranked(name: &str, color: usize, markers: bool, values: impl Iterator<Item = f64>) -> Series {
    Series {
        name: name.into(),
        points: values.enumerate().map(|(k, v)| (k as f64, v)).collect(),
        color,
        markers,
        dashed: false,
        ..Default::default()
    }
}

/// A panel of ranked curves, its legend upper left.
fn ranked_panel(title: String, x_label: &str, y_label: &str, series: Vec<Series>) -> Panel {
    let mut p = Panel::lines(&title, x_label, y_label, false, false, series);
    p.legend = Legend::UpperLeft;
    p
}

/// The IM-RM's predicted velocities: total, token-identity part, rest.
fn imrm_panel(im: &[[f64; 3]], split: &str) -> Panel {
    ranked_panel(
        format!("IM-RM: predicted dm/dt on {split}"),
        "pair (sorted by dm/dt)",
        "β² ⟨G(y⁺) − G(y⁻), D⟩",
        vec![
            ranked("total", 0, false, im.iter().map(|x| x[0])),
            ranked("token identity", 4, true, im.iter().map(|x| x[1])),
            ranked("rest (softmax terms)", 5, true, im.iter().map(|x| x[2])),
        ],
    )
}

/// The IM-RM's whole-model velocity beside its unembedding part's.
fn whole_panel(whole: &[(f64, f64)], split: &str) -> Panel {
    ranked_panel(
        format!("IM-RM: whole model vs unembedding on {split}"),
        "pair (sorted by the whole model's dm/dt)",
        "dm/dt along −∇L",
        vec![
            ranked(
                "whole model (central differences)",
                0,
                false,
                whole.iter().map(|x| x.0),
            ),
            ranked("unembedding part", 5, true, whole.iter().map(|x| x.1)),
        ],
    )
}

/// The EX-RM head's predicted velocities.
fn exrm_panel(ex: &[f64], split: &str) -> Panel {
    ranked_panel(
        format!("EX-RM: predicted dm/dt on {split}"),
        "pair (sorted by dm/dt)",
        "⟨h⁺ − h⁻, Σ c_i z_i⟩",
        vec![ranked("head", 1, true, ex.iter().copied())],
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAIRS: &str = "reward,split,pair,velocity,velocity_identity,velocity_rest,whole_velocity,whole_velocity_half
exrm,test,0,3.0,,,,
exrm,test,1,-1.0,,,,
exrm,other,0,99.0,,,,
imrm,test,0,2.0,1.5,0.5,4.0,3.0
imrm,test,1,-2.0,-1.0,-1.0,,
";
    const TOKENS: &str = "reward,split,token_id,velocity_identity,share,token
imrm,test,5,-4.0,0.6,\"a,b\"
imrm,test,6,1.0,0.1,Ġx
exrm,test,7,9.0,0.3,y
";

    /// The split's velocities sorted, the whole model's by Richardson `(4 h − w) / 3` beside
    /// the unembedding part's total; other splits and the EX-RM's tokens left out; an unknown
    /// split refused.
    #[test]
    fn panels_hold_the_split_sorted() {
        let data = mechanism(PAIRS, TOKENS, "test", "source").unwrap();
        let titles: Vec<&str> = data
            .figure
            .panels
            .iter()
            .map(|p| p.title.as_str())
            .collect();
        assert_eq!(titles.len(), 4, "{titles:?}");
        assert_eq!(data.figure.columns, 2);
        let lines = |k: usize| match &data.figure.panels[k].content {
            PanelContent::Lines(s) => s.clone(),
            _ => panic!("panel {k} is not lines"),
        };
        let ys = |s: &Series| s.points.iter().map(|p| p.1).collect::<Vec<_>>();
        let im = lines(0);
        assert_eq!(ys(&im[0]), [-2.0, 2.0]);
        assert_eq!(ys(&im[1]), [-1.0, 1.5]);
        assert_eq!(ys(&im[2]), [-1.0, 0.5]);
        let whole = lines(2);
        assert_eq!(ys(&whole[0]), [(4.0 * 3.0 - 4.0) / 3.0]);
        assert_eq!(ys(&whole[1]), [2.0]);
        assert_eq!(ys(&lines(3)[0]), [-1.0, 3.0]);
        let PanelContent::Bars { categories, .. } = &data.figure.panels[1].content else {
            panic!("the token panel is not bars");
        };
        assert_eq!(categories, &["a,b 60%", "␣x 10%"]);
        assert!(
            data.csv.contains("tokens,imrm,,,-4,,,0.6,\"a,b\"\n"),
            "{}",
            data.csv
        );
        assert!(mechanism(PAIRS, TOKENS, "missing", "s").is_err());
    }
}
