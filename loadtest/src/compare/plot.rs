//! The comparison's pictures, as SVG: latency CDFs per contender, and p90 TTFT against offered load.
//!
//! The TTFT CDF is exact: drawn from the report's per-request timeline (every request, or an evenly
//! thinned sample of a very long run). The report keeps only percentiles (p50, p90, p99, max) of
//! end-to-end latency, so that CDF is drawn through those points: exact at them, straight between.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Row, Status};
use crate::generate::RunReport;
use crate::generate::report::Summary;
pub use crate::plot::PlotError;
use crate::plot::{Panel, legend, line, panel};

/// Points of a CDF: (latency ms, share of requests at or below it).
type Curve = Vec<(f64, f64)>;

fn cdf_points(s: &Summary) -> Curve {
    vec![
        (0.0, 0.0),
        (s.p50, 0.5),
        (s.p90, 0.9),
        (s.p99, 0.99),
        (s.max, 1.0),
    ]
}

/// The empirical CDF of the completed requests' TTFTs, at most ~500 points.
fn ttft_cdf(run: &RunReport) -> Option<Curve> {
    let mut v: Vec<f64> = run
        .timeline
        .iter()
        .filter(|p| p.ok)
        .filter_map(|p| p.ttft_ms)
        .collect();
    if v.len() < 2 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let step = n.div_ceil(500).max(1);
    let mut pts: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (v[i], (i + 1) as f64 / n as f64))
        .collect();
    pts.push((v[n - 1], 1.0));
    Some(pts)
}

/// TTFT and e2e CDFs of every contender that ran at one rate, side by side.
pub fn write_cdfs(path: &Path, title: &str, rows: &[&Row]) -> Result<(), PlotError> {
    draw_cdfs(path, title, rows).map_err(|e| PlotError::at(path, e))
}

fn draw_cdfs(path: &Path, title: &str, rows: &[&Row]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    type Pick = fn(&RunReport) -> Option<(Summary, Curve)>;
    let panels: [(&str, Pick, _); 2] = [
        (
            "TTFT (ms)",
            |r| {
                let s = r.ttft_ms?;
                Some((s, ttft_cdf(r).unwrap_or_else(|| cdf_points(&s))))
            },
            left,
        ),
        (
            "end-to-end (ms)",
            |r| r.e2e_ms.map(|s| (s, cdf_points(&s))),
            right,
        ),
    ];
    for (what, pick, area) in panels {
        let ran: Vec<(&str, Summary, Curve)> = rows
            .iter()
            .filter(|r| r.status == Status::Ran)
            .filter_map(|r| {
                let (s, pts) = pick(r.run.as_ref()?)?;
                Some((r.contender.as_str(), s, pts))
            })
            .collect();
        // Clip at the largest p99 so one long tail does not flatten every curve.
        let x_max = ran.iter().map(|(_, s, _)| s.p99).fold(1.0, f64::max) * 1.2;
        let caption = format!("{title}: CDF of {what}");
        let mut chart = panel(
            &area,
            Panel {
                caption: &caption,
                x: 0.0..x_max,
                y: 0.0..1.0,
                x_desc: what,
                y_desc: "share of requests",
            },
        )?;
        for (i, (name, _, pts)) in ran.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            line(&mut chart, pts, color.stroke_width(2), name)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// p90 TTFT against offered load (sessions/s), one line per contender.
pub fn write_sweep(path: &Path, title: &str, rows: &[Row]) -> Result<(), PlotError> {
    draw_sweep(path, title, rows).map_err(|e| PlotError::at(path, e))
}

fn draw_sweep(path: &Path, title: &str, rows: &[Row]) -> Result<(), String> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if r.status == Status::Ran && !names.contains(&r.contender.as_str()) {
            names.push(&r.contender);
        }
    }
    let point = |r: &Row| Some((r.rate_per_s, r.run.as_ref()?.ttft_ms?.p90));
    let pts: Vec<(f64, f64)> = rows.iter().filter_map(point).collect();
    let x_max = pts.iter().map(|p| p.0).fold(0.1, f64::max) * 1.1;
    let y_max = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 550)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let caption = format!("{title}: p90 TTFT vs offered load");
    let mut chart = panel(
        &root,
        Panel {
            caption: &caption,
            x: 0.0..x_max,
            y: 0.0..y_max,
            x_desc: "offered load (new sessions/s)",
            y_desc: "p90 TTFT (ms)",
        },
    )?;
    for (i, name) in names.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut sweep: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.contender == *name)
            .filter_map(point)
            .collect();
        sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
        line(&mut chart, sweep.clone(), color.stroke_width(2), name)?;
        chart
            .draw_series(sweep.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(|e| e.to_string())
}
