//! Figures: line panels (optionally log axes, shaded intervals) and heatmaps, drawn with plotters
//! to PNG and SVG. Text uses the DejaVu Sans font bundled in `assets/fonts` (no system fonts).
//! Colours: the Okabe–Ito colour-blind-safe palette; heatmaps a blue–white–red diverging map.

use anyhow::{anyhow, Context, Result};
use ndarray::Array2;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Okabe–Ito palette (black first).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(240, 228, 66),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| ())
            .expect("bundled DejaVu Sans parses");
    });
}

/// One curve; `band` holds `(x, low, high)` of a shaded interval drawn under it.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into [`PALETTE`].
    pub color: usize,
    pub dashed: bool,
    pub markers: bool,
    /// Stroke width in pixels (0 means 2): nested widths keep coinciding curves visible.
    pub width: u32,
    pub band: Option<Vec<(f64, f64, f64)>>,
}

/// What a panel shows.
#[derive(Debug, Clone)]
pub enum PanelContent {
    Lines(Vec<Series>),
    /// A matrix drawn cell by cell, colour scale symmetric in `[-limit, limit]`.
    Heatmap {
        matrix: Array2<f64>,
        limit: f64,
    },
    /// Grouped bars: one group per category, one bar per [`Bars`] series; an optional dashed
    /// horizontal reference line (e.g. chance).
    Bars {
        categories: Vec<String>,
        bars: Vec<Bars>,
        reference: Option<f64>,
    },
}

/// One bar per category; `marks` (same length, optional) are drawn as black ticks on the bars.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
    pub marks: Option<Vec<f64>>,
    /// Index into [`PALETTE`].
    pub color: usize,
    /// Lighter fill with a full-colour outline (e.g. the head-only variant).
    pub light: bool,
}

/// One panel of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    /// Fixed y range (in data units); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    pub content: PanelContent,
    /// Short notes printed in the panel's upper-left corner (e.g. the tie tolerance).
    pub notes: Vec<String>,
    /// Where the legend goes (placed where the data leave room).
    pub legend: Legend,
}

/// Legend placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Legend {
    #[default]
    LowerRight,
    UpperRight,
    MiddleRight,
    LowerLeft,
    UpperLeft,
}

impl Panel {
    pub fn lines(
        title: &str,
        x_label: &str,
        y_label: &str,
        x_log: bool,
        y_log: bool,
        series: Vec<Series>,
    ) -> Panel {
        Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_log,
            y_log,
            y_range: None,
            content: PanelContent::Lines(series),
            notes: vec![],
            legend: Legend::LowerRight,
        }
    }
}

/// A figure: panels on a grid and a caption line (config, seeds).
#[derive(Debug, Clone)]
pub struct Figure {
    pub panels: Vec<Panel>,
    pub columns: usize,
    pub caption: String,
    /// Pixel size of one panel.
    pub panel_size: (u32, u32),
}

fn tr(v: f64, log: bool) -> Option<f64> {
    if log {
        (v > 0.0 && v.is_finite()).then(|| v.log10())
    } else {
        v.is_finite().then_some(v)
    }
}

fn tick(v: f64, log: bool, span: f64) -> String {
    if log && span < 3.0 {
        let x = 10f64.powf(v);
        format!("{}", (x * 100.0).round() / 100.0)
    } else if log {
        let r = v.round();
        if (v - r).abs() < 1e-9 {
            format!("1e{}", r as i64)
        } else {
            String::new()
        }
    } else if v.abs() < 1e-9 * span.max(f64::MIN_POSITIVE) {
        "0".to_string()
    } else if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo.is_finite() && hi.is_finite() {
        Some(if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        })
    } else {
        None
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    series: &[Series],
) -> Result<()> {
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|&(x, _)| tr(x, p.x_log)));
    let (x0, x1) =
        extent(xs).ok_or_else(|| anyhow!("panel '{}' has no finite x values", p.title))?;
    let (y0, y1) = match p.y_range {
        Some((a, b)) => (tr(a, p.y_log).unwrap_or(a), tr(b, p.y_log).unwrap_or(b)),
        None => {
            let ys = series.iter().flat_map(|s| {
                s.points.iter().filter_map(|&(_, y)| tr(y, p.y_log)).chain(
                    s.band
                        .iter()
                        .flatten()
                        .flat_map(|&(_, lo, hi)| [tr(lo, p.y_log), tr(hi, p.y_log)])
                        .flatten(),
                )
            });
            let (a, b) =
                extent(ys).ok_or_else(|| anyhow!("panel '{}' has no finite y values", p.title))?;
            let pad = 0.05 * (b - a);
            (a - pad, b + pad)
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 17))
        .margin(8)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let (xl, yl) = (p.x_log, p.y_log);
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .x_labels(8)
        .y_labels(7)
        .x_label_formatter(&|v| tick(*v, xl, x1 - x0))
        .y_label_formatter(&|v| tick(*v, yl, y1 - y0))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    for s in series {
        let color = PALETTE[s.color % PALETTE.len()];
        if let Some(band) = &s.band {
            let upper: Vec<(f64, f64)> = band
                .iter()
                .filter_map(|&(x, _, hi)| Some((tr(x, xl)?, tr(hi, yl)?)))
                .collect();
            let lower: Vec<(f64, f64)> = band
                .iter()
                .rev()
                .filter_map(|&(x, lo, _)| Some((tr(x, xl)?, tr(lo, yl)?)))
                .collect();
            let poly: Vec<(f64, f64)> = upper.into_iter().chain(lower).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2).filled())))
                .map_err(err)?;
        }
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|&(x, y)| Some((tr(x, xl)?, tr(y, yl)?)))
            .collect();
        let style = ShapeStyle::from(color).stroke_width(if s.width == 0 { 2 } else { s.width });
        let drawn = if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
        };
        match (s.name.is_empty(), s.dashed) {
            (true, _) => {}
            // A dashed series' legend swatch is dashed too (two dashes).
            (false, true) => {
                drawn.label(&s.name).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (7, 0)], style)
                        + PathElement::new(vec![(11, 0), (18, 0)], style)
                });
            }
            (false, false) => {
                drawn
                    .label(&s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
        }
        if s.markers {
            chart
                .draw_series(
                    pts.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(err)?;
        }
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        draw_legend(&mut chart, p.legend)?;
    }
    draw_notes(area, &p.notes)
}

/// The series legend of a panel, boxed, where `legend` puts it.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    legend: Legend,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(match legend {
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::MiddleRight => SeriesLabelPosition::MiddleRight,
            Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
        })
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FAMILY, 12))
        .draw()
        .map_err(err)
}

/// A panel's notes in its upper-left corner.
fn draw_notes<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, notes: &[String]) -> Result<()> {
    for (i, note) in notes.iter().enumerate() {
        area.draw(&Text::new(
            note.clone(),
            (74, 34 + 15 * i as i32),
            (FAMILY, 12).into_font().color(&RGBColor(60, 60, 60)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    categories: &[String],
    bars: &[Bars],
    reference: Option<f64>,
) -> Result<()> {
    let n = categories.len() as f64;
    let (y0, y1) = match p.y_range {
        Some(r) => r,
        None => {
            let hi = bars
                .iter()
                .flat_map(|b| b.values.iter().copied())
                .fold(0.0f64, f64::max);
            (0.0, 1.05 * hi.max(f64::MIN_POSITIVE))
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 17))
        .margin(8)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .y_labels(7)
        .y_label_formatter(&|v| tick(*v, false, y1 - y0))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    let g = bars.len().max(1) as f64;
    let width = 0.8 / g;
    for (j, b) in bars.iter().enumerate() {
        let color = PALETTE[b.color % PALETTE.len()];
        let fill = if b.light {
            color.mix(0.35)
        } else {
            color.mix(1.0)
        };
        let rects: Vec<_> = b
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, &v)| {
                let x = k as f64 + 0.1 + j as f64 * width;
                [(x, y0), (x + width * 0.92, v)]
            })
            .collect();
        chart
            .draw_series(rects.iter().map(|r| Rectangle::new(*r, fill.filled())))
            .map_err(err)?
            .label(&b.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill.filled()));
        chart
            .draw_series(
                rects
                    .iter()
                    .map(|r| Rectangle::new(*r, ShapeStyle::from(color).stroke_width(1))),
            )
            .map_err(err)?;
        if let Some(marks) = &b.marks {
            chart
                .draw_series(marks.iter().enumerate().filter(|(_, m)| m.is_finite()).map(
                    |(k, &m)| {
                        let x = k as f64 + 0.1 + j as f64 * width;
                        PathElement::new(
                            vec![(x, m), (x + width * 0.92, m)],
                            ShapeStyle::from(BLACK).stroke_width(3),
                        )
                    },
                ))
                .map_err(err)?;
        }
    }
    if let Some(r) = reference {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, r), (n, r)],
                6,
                4,
                ShapeStyle::from(RGBColor(90, 90, 90)).stroke_width(1),
            ))
            .map_err(err)?;
    }
    let base = area.get_base_pixel();
    for (k, c) in categories.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(k as f64 + 0.5, y0));
        area.draw(&Text::new(
            c.clone(),
            (px - base.0 - 4 * c.chars().count() as i32, py - base.1 + 6),
            (FAMILY, 14).into_font(),
        ))
        .map_err(err)?;
    }
    draw_legend(&mut chart, p.legend)?;
    draw_notes(area, &p.notes)
}

/// Blue (−limit) – white (0) – red (+limit).
fn diverging(v: f64, limit: f64) -> RGBColor {
    let t = (v / limit).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (178.0, 24.0, 43.0)
    } else {
        (33.0, 102.0, 172.0)
    };
    let a = t.abs();
    let mix = |c: f64| (255.0 + (c - 255.0) * a).round() as u8;
    RGBColor(mix(r), mix(g), mix(b))
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    m: &Array2<f64>,
    limit: f64,
) -> Result<()> {
    let (rows, cols) = m.dim();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 15))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..cols as f64, 0f64..rows as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 13))
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .y_label_formatter(&|v| format!("{}", v.round() as i64))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(m.indexed_iter().map(|((r, c), &v)| {
            let y = (rows - 1 - r) as f64;
            Rectangle::new(
                [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                diverging(v, limit).filled(),
            )
        }))
        .map_err(err)?;
    for (i, note) in p.notes.iter().enumerate() {
        area.draw(&Text::new(
            note.clone(),
            (56, 30 + 14 * i as i32),
            (FAMILY, 11).into_font().color(&RGBColor(40, 40, 40)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

fn draw_figure<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (w, h) = root.dim_in_pixel();
    let (body, foot) = root.split_vertically(h - 26);
    foot.draw(&Text::new(
        fig.caption.clone(),
        (10, 6),
        (FAMILY, 13).into_font().color(&RGBColor(70, 70, 70)),
    ))
    .map_err(err)?;
    let rows = fig.panels.len().div_ceil(fig.columns);
    let areas = body.split_evenly((rows, fig.columns));
    for (p, a) in fig.panels.iter().zip(areas.iter()) {
        match &p.content {
            PanelContent::Lines(s) => draw_lines(a, p, s)?,
            PanelContent::Heatmap { matrix, limit } => draw_heatmap(a, p, matrix, *limit)?,
            PanelContent::Bars {
                categories,
                bars,
                reference,
            } => draw_bars(a, p, categories, bars, *reference)?,
        }
    }
    let _ = w;
    root.present().map_err(err)
}

/// Renders `fig` to `<stem>.png` and `<stem>.svg` (each written to a temporary file, then renamed).
pub fn render(fig: &Figure, stem: &Path) -> Result<(PathBuf, PathBuf)> {
    register_font();
    let rows = fig.panels.len().div_ceil(fig.columns) as u32;
    let size = (
        fig.panel_size.0 * fig.columns as u32,
        fig.panel_size.1 * rows + 26,
    );
    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let tmp_png = stem.with_extension("tmp.png");
    let tmp_svg = stem.with_extension("tmp.svg");
    let result = (|| -> Result<()> {
        draw_figure(BitMapBackend::new(&tmp_png, size).into_drawing_area(), fig)?;
        draw_figure(SVGBackend::new(&tmp_svg, size).into_drawing_area(), fig)?;
        std::fs::rename(&tmp_png, &png)
            .with_context(|| format!("cannot write {}", png.display()))?;
        std::fs::rename(&tmp_svg, &svg).with_context(|| format!("cannot write {}", svg.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_png);
        let _ = std::fs::remove_file(&tmp_svg);
    }
    result.map(|_| (png, svg))
}
