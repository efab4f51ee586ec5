//! The SVG plotting pieces the reports share (`loadtest run --plot`, `compare`, `step`, `plan`):
//! one error type, a titled panel with labelled axes, a labelled line, and the legend box.
//!
//! Each report decides what to draw; this module only keeps the plotters boilerplate in one place,
//! so that every picture the project writes looks alike and a style change is made once.

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

impl PlotError {
    /// An error about the plot at `path`.
    pub fn at(path: &Path, message: impl std::fmt::Display) -> PlotError {
        PlotError {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

/// A chart with f64 axes, the only kind the reports draw.
pub(crate) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What a panel shows: its title, its axes' ranges and descriptions.
pub(crate) struct Panel<'t> {
    pub caption: &'t str,
    pub x: Range<f64>,
    pub y: Range<f64>,
    pub x_desc: &'t str,
    pub y_desc: &'t str,
}

/// Builds a titled panel with labelled axes and a mesh on `area`.
pub(crate) fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    p: Panel<'_>,
) -> Result<Chart<'a, DB>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(p.caption, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(p.x, p.y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Draws `points` as a line in `style` with a legend entry named `label`.
pub(crate) fn line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    points: impl IntoIterator<Item = (f64, f64)>,
    style: impl Into<ShapeStyle>,
    label: &str,
) -> Result<(), String> {
    let style = style.into();
    chart
        .draw_series(LineSeries::new(points, style))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    Ok(())
}

/// Draws a horizontal reference line (an SLO, a fixed pool's size) across `x`.
pub(crate) fn level<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    x: Range<f64>,
    y: f64,
    style: impl Into<ShapeStyle>,
    label: &str,
) -> Result<(), String> {
    line(chart, [(x.start, y), (x.end, y)], style, label)
}

/// Draws the legend box at `position`.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
