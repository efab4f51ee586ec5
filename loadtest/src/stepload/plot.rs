//! The scenario's picture: three panels over the same time axis, autoscaled pool in blue, fixed
//! pool in red.
//!
//! 1. Pods: the offered load in pods' worth of capacity (grey, 1.5 = 150% of one pod) against the
//!    replicas current (solid) and ready (thin): the gap between the grey line and the blue one is
//!    the autoscaler's lag, the cold start included.
//! 2. Queue: requests held by the gateway plus those waiting in the pods' engines.
//! 3. p90 TTFT over the trailing window, with the TTFT SLO as a thin grey line.

use std::path::Path;

use plotters::prelude::*;

use super::StepError;
use super::analysis::Row;
use super::run::StepReport;
use crate::plot::{Panel, legend, line};

type Series<'a> = (String, RGBColor, u32, Vec<(f64, f64)>);

/// Writes the SVG to `path`.
pub fn write_svg(path: &Path, report: &StepReport) -> Result<(), StepError> {
    draw(path, report).map_err(|message| StepError::Plot {
        path: path.display().to_string(),
        message,
    })
}

fn series(rows: &[Row], f: impl Fn(&Row) -> Option<f64>) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| f(r).map(|v| (r.sample.t_s, v)))
        .collect()
}

fn draw(path: &Path, report: &StepReport) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    let grey = RGBColor(150, 150, 150);
    let pools: Vec<(&str, RGBColor, &[Row])> =
        std::iter::once(("autoscaled", blue, &report.autoscaled))
            .chain(report.fixed.as_ref().map(|f| ("fixed", red, f)))
            .map(|(l, c, p)| (l, c, p.rows.as_slice()))
            .collect();
    let t_max = pools
        .iter()
        .flat_map(|(_, _, rows)| rows.iter().map(|r| r.sample.t_s))
        .fold(1.0, f64::max);

    let mut pods: Vec<Series> = vec![(
        "offered load (pods' worth)".into(),
        grey,
        2,
        series(pools[0].2, |r| Some(r.sample.offered)),
    )];
    let mut queue: Vec<Series> = Vec::new();
    let mut ttft: Vec<Series> = Vec::new();
    for (label, color, rows) in &pools {
        pods.push((
            format!("{label}: pods (current)"),
            *color,
            3,
            series(rows, |r| r.sample.current),
        ));
        pods.push((
            format!("{label}: pods ready"),
            *color,
            1,
            series(rows, |r| r.sample.ready),
        ));
        queue.push((
            format!("{label}: held + waiting"),
            *color,
            2,
            series(rows, |r| match (r.sample.held, r.sample.waiting) {
                (None, None) => None,
                (h, w) => Some(h.unwrap_or(0.0) + w.unwrap_or(0.0)),
            }),
        ));
        ttft.push((
            format!("{label}: p90 TTFT"),
            *color,
            2,
            series(rows, |r| r.p90_ttft_ms),
        ));
    }
    if let Some(slo) = report.slo_ttft_ms {
        ttft.push(("TTFT SLO".into(), grey, 1, vec![(0.0, slo), (t_max, slo)]));
    }

    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    let title = format!(
        "step load {} ({:.2} req/s = 100% of one pod)",
        report.workload, report.capacity.requests_per_s
    );
    draw_panel(&panels[0], &title, "pods", t_max, &pods)?;
    draw_panel(&panels[1], "queue", "requests", t_max, &queue)?;
    draw_panel(&panels[2], "p90 TTFT (trailing window)", "ms", t_max, &ttft)?;
    root.present().map_err(|e| err(&e))
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    t_max: f64,
    lines: &[Series],
) -> Result<(), String> {
    let y_max = lines
        .iter()
        .flat_map(|(_, _, _, pts)| pts.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = crate::plot::panel(
        area,
        Panel {
            caption,
            x: 0.0..t_max,
            y: 0.0..y_max,
            x_desc: "seconds",
            y_desc,
        },
    )?;
    for (label, color, width, pts) in lines {
        line(
            &mut chart,
            pts.iter().copied(),
            color.stroke_width(*width),
            label,
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}
