//! The planner's picture: pods over time (autoscaled vs the fixed pool) above the per-minute p90
//! TTFT against the SLO, as one SVG.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunResult;

/// Why the plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// Writes the SVG to `path`.
pub fn write_svg(
    path: &Path,
    autoscaled: &RunResult,
    fixed: Option<&RunResult>,
    slo_ttft_ms: f64,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(350);
    let hours = |t: f64| t / 3600.0;
    let series = &autoscaled.series;
    let t_max = series
        .last()
        .map(|p| hours(p.t_s + 60.0))
        .unwrap_or(1.0)
        .max(1.0 / 60.0);
    let fixed_n = fixed.map(|f| f.summary.mean_pods).unwrap_or(0.0);
    let pods_max = series
        .iter()
        .map(|p| f64::from(p.ready + p.starting + p.draining))
        .fold(fixed_n, f64::max)
        .max(1.0)
        * 1.15;

    let mut chart = ChartBuilder::on(&top)
        .caption("pods: autoscaled vs fixed", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..pods_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("pods")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            series
                .iter()
                .map(|p| (hours(p.t_s), f64::from(p.ready + p.starting + p.draining))),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("autoscaled: pods alive")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|p| (hours(p.t_s), f64::from(p.ready))),
            &GREEN,
        ))
        .map_err(|e| err(&e))?
        .label("autoscaled: ready")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    if fixed.is_some() {
        chart
            .draw_series(LineSeries::new([(0.0, fixed_n), (t_max, fixed_n)], &BLACK))
            .map_err(|e| err(&e))?
            .label("fixed pool")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

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
    let mut chart = ChartBuilder::on(&bottom)
        .caption("p90 TTFT per minute (ms)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..ttft_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("ms")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            series
                .iter()
                .filter_map(|p| p.ttft_p90_ms.map(|v| (hours(p.t_s), v))),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("autoscaled")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if let Some(f) = fixed {
        chart
            .draw_series(LineSeries::new(
                f.series
                    .iter()
                    .filter_map(|p| p.ttft_p90_ms.map(|v| (hours(p.t_s), v))),
                &BLACK,
            ))
            .map_err(|e| err(&e))?
            .label("fixed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, slo_ttft_ms), (t_max, slo_ttft_ms)],
            &RED,
        ))
        .map_err(|e| err(&e))?
        .label("TTFT SLO")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
