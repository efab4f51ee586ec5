//! The planner's picture: pods over time (autoscaled vs the fixed pool) above the per-minute p90
//! TTFT against the SLO, as one SVG.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunResult;
pub use crate::plot::PlotError;
use crate::plot::{Panel, legend, level, line, panel};

/// Writes the SVG to `path`.
pub fn write_svg(
    path: &Path,
    autoscaled: &RunResult,
    fixed: Option<&RunResult>,
    slo_ttft_ms: f64,
) -> Result<(), PlotError> {
    draw(path, autoscaled, fixed, slo_ttft_ms).map_err(|e| PlotError::at(path, e))
}

fn draw(
    path: &Path,
    autoscaled: &RunResult,
    fixed: Option<&RunResult>,
    slo_ttft_ms: f64,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(350);
    let hours = |t: f64| t / 3600.0;
    let series = &autoscaled.series;
    let t_max = series
        .last()
        .map(|p| hours(p.t_s + 60.0))
        .unwrap_or(1.0)
        .max(1.0 / 60.0);
    let fixed_n = fixed.map(|f| f.summary.mean_pods).unwrap_or(0.0);
    let alive = |p: &super::report::SeriesPoint| f64::from(p.ready + p.starting + p.draining);
    let pods_max = series.iter().map(alive).fold(fixed_n, f64::max).max(1.0) * 1.15;

    let mut chart = panel(
        &top,
        Panel {
            caption: "pods: autoscaled vs fixed",
            x: 0.0..t_max,
            y: 0.0..pods_max,
            x_desc: "hours",
            y_desc: "pods",
        },
    )?;
    let pods = series.iter().map(|p| (hours(p.t_s), alive(p)));
    line(&mut chart, pods, BLUE, "autoscaled: pods alive")?;
    let ready = series.iter().map(|p| (hours(p.t_s), f64::from(p.ready)));
    line(&mut chart, ready, GREEN, "autoscaled: ready")?;
    if fixed.is_some() {
        level(&mut chart, 0.0..t_max, fixed_n, BLACK, "fixed pool")?;
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;

    let ttft_max = series
        .iter()
        .filter_map(|p| p.ttft_p90_ms)
        .chain(
            fixed
                .into_iter()
                .flat_map(|f| f.series.iter().filter_map(|p| p.ttft_p90_ms)),
        )
        .fold(slo_ttft_ms, f64::max)
        * 1.1;
    let mut chart = panel(
        &bottom,
        Panel {
            caption: "p90 TTFT per minute (ms)",
            x: 0.0..t_max,
            y: 0.0..ttft_max,
            x_desc: "hours",
            y_desc: "ms",
        },
    )?;
    let p90 = |r: &RunResult| {
        r.series
            .iter()
            .filter_map(|p| p.ttft_p90_ms.map(|v| (hours(p.t_s), v)))
            .collect::<Vec<_>>()
    };
    line(&mut chart, p90(autoscaled), BLUE, "autoscaled")?;
    if let Some(f) = fixed {
        line(&mut chart, p90(f), BLACK, "fixed")?;
    }
    level(&mut chart, 0.0..t_max, slo_ttft_ms, RED, "TTFT SLO")?;
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(|e| e.to_string())
}
