//! Pictures of results: line charts rendered to SVG with `plotters` (SVG
//! backend only, no font files: text is emitted as `<text>` elements that
//! the viewer renders). Used by `barrier --plot` (loss and accuracy along
//! the path), `ema --plot` (weight per checkpoint over steps) and `basin
//! --plot` (per-layer cosine before and after alignment).
//!
//! Every series is drawn as one `<polyline>` with a point per finite value,
//! in order, so a reader can recover the numbers (see the tests).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, OutputError, Result};

/// One curve: `(x, y)` points in drawing order. Non-finite points are left
/// out of the line.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: axes, title and curves. `x_names` labels integer x positions
/// (tensor names, for instance) instead of numbers; keep them short and
/// few (a dozen fit).
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub x_names: Option<Vec<String>>,
}

/// Colours of the series, in order (colour-blind safe: Okabe–Ito).
pub const COLORS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

const WIDTH: u32 = 720;
const PANEL_HEIGHT: u32 = 360;

fn fail(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("plot: {e}"))
}

/// The `[lo, hi]` range of `values` (finite ones), widened by 5% (or by 0.5
/// around a single value) so that curves do not touch the frame, and by
/// `top` more of the span above (room for the legend).
fn range(values: impl Iterator<Item = f64>, top: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { 10.0 };
    (lo - span * 0.05, hi + span * (0.05 + top))
}

/// Renders `panels` one above the other into an SVG document.
pub fn render_svg(panels: &[Panel]) -> Result<String> {
    let mut svg = String::new();
    {
        let height = PANEL_HEIGHT * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(&areas) {
            draw_panel(panel, area)?;
        }
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

fn draw_panel(p: &Panel, area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<()> {
    let all = || p.series.iter().flat_map(|s| s.points.iter());
    let legend = p.series.len() > 1 || p.series.iter().any(|s| !s.label.is_empty());
    let (x0, x1) = range(all().map(|q| q.0), 0.0);
    // The legend (upper right) gets a band of its own above the curves.
    let (y0, y1) = range(all().map(|q| q.1), if legend { 0.3 } else { 0.0 });
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(fail)?;
    let names = p.x_names.clone();
    let format_x = move |x: &f64| match &names {
        Some(n) if (x - x.round()).abs() < 1e-9 && *x >= 0.0 => {
            n.get(x.round() as usize).cloned().unwrap_or_default()
        }
        Some(_) => String::new(),
        None => format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    };
    let n_labels = p.x_names.as_ref().map_or(10, |n| n.len().clamp(1, 12));
    chart
        .configure_mesh()
        .axis_desc_style(("sans-serif", 16))
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .x_labels(n_labels)
        .x_label_formatter(&format_x)
        .x_label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(fail)?;
    for (k, s) in p.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = (s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(fail)?
            .label(&s.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled()));
        chart
            .draw_series(pts.iter().map(|&q| Circle::new(q, 3, color.filled())))
            .map_err(fail)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(fail)?;
    }
    Ok(())
}

/// Checks a plot path before any work: it must end in `.svg`, its
/// directory must exist, and an existing file there is replaced only with
/// `force` (and only if it is a regular file).
pub fn check_target(path: &Path, force: bool) -> Result<()> {
    let err = |source| Error::Output {
        path: path.to_path_buf(),
        source,
    };
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        return Err(err(OutputError::NotSvg));
    }
    crate::write::refuse_existing(path, force)?;
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(err(OutputError::NotRegularFile));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    if !parent.is_dir() {
        return Err(err(OutputError::NoDirectory(parent)));
    }
    Ok(())
}

/// Renders `panels` and writes them to `path` atomically (checked again
/// with [`check_target`] first).
pub fn save(path: &Path, panels: &[Panel], force: bool) -> Result<()> {
    check_target(path, force)?;
    let svg = render_svg(panels)?;
    crate::write::write_file_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests;
