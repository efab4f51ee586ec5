//! The run's picture (`--plot FILE.svg`): what percentiles hide, when in the run things went wrong.
//!
//! Top: every request's time to first token against when it was sent, with the TTFT SLO as a line;
//! a queue building up shows as a rising band, a cold start as a gap then a spike. Bottom: completed
//! and failed requests per time bucket, so errors line up with the latency they came with.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunReport;
pub use crate::plot::PlotError;
use crate::plot::{Panel, legend, level, line, panel};

/// Time buckets across the run in the bottom panel.
const BUCKETS: usize = 100;

/// Writes the SVG to `path`.
pub fn write_svg(path: &Path, report: &RunReport) -> Result<(), PlotError> {
    draw(path, report).map_err(|e| PlotError::at(path, e))
}

fn draw(path: &Path, report: &RunReport) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let points = &report.timeline;
    let t_max = points
        .iter()
        .map(|p| p.sent_s)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.02;
    let slo = report.slo.ttft_ms;
    let ttft_max = points
        .iter()
        .filter_map(|p| p.ttft_ms)
        .fold(slo.unwrap_or(1.0), f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(420);

    let caption = format!(
        "time to first token: {} ({})",
        report.workload, report.arrival
    );
    let mut chart = panel(
        &top,
        Panel {
            caption: &caption,
            x: 0.0..t_max,
            y: 0.0..ttft_max,
            x_desc: "seconds into the run (send time)",
            y_desc: "TTFT ms",
        },
    )?;
    chart
        .draw_series(points.iter().filter(|p| p.ok).filter_map(|p| {
            p.ttft_ms
                .map(|v| Circle::new((p.sent_s, v), 2, BLUE.filled()))
        }))
        .map_err(|e| err(&e))?
        .label("completed")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, BLUE.filled()));
    if let Some(slo) = slo {
        level(&mut chart, 0.0..t_max, slo, RED, "TTFT SLO")?;
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;

    let width = t_max / BUCKETS as f64;
    let mut ok = [0u32; BUCKETS];
    let mut failed = [0u32; BUCKETS];
    for p in points {
        let b = ((p.sent_s / width) as usize).min(BUCKETS - 1);
        if p.ok {
            ok[b] += 1;
        } else {
            failed[b] += 1;
        }
    }
    let count_max = ok.iter().chain(&failed).copied().max().unwrap_or(0).max(1);
    let caption = format!("requests per {:.3} s (by send time)", width);
    let mut chart = panel(
        &bottom,
        Panel {
            caption: &caption,
            x: 0.0..t_max,
            y: 0.0..f64::from(count_max + count_max / 10 + 1),
            x_desc: "seconds into the run",
            y_desc: "requests",
        },
    )?;
    let buckets = |counts: [u32; BUCKETS]| {
        counts
            .into_iter()
            .enumerate()
            .map(move |(i, c)| ((i as f64 + 0.5) * width, f64::from(c)))
    };
    line(&mut chart, buckets(ok), BLUE, "completed")?;
    line(&mut chart, buckets(failed), RED, "failed")?;
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::generate::client::{Exchange, Outcome};
    use crate::generate::report::{Recorder, RunMeta, Slo};

    #[test]
    fn writes_an_svg_of_the_timeline() {
        let mut r = Recorder::new(Slo {
            ttft: Some(Duration::from_millis(50)),
            itl: None,
        });
        for i in 0..200u64 {
            let mut ex = Exchange::failed(Outcome::Ok, Duration::from_millis(90));
            ex.ttft = Some(Duration::from_millis(10 + i % 70));
            ex.token_times = vec![Duration::from_millis(10 + i % 70)];
            if i % 9 == 0 {
                ex.outcome = Outcome::Http(503);
            }
            r.record(&ex, 1, Duration::from_millis(i * 10));
        }
        r.record_overload(Duration::from_millis(1500));
        let report = r.finish(RunMeta {
            target: "t".into(),
            model: "m".into(),
            workload: "fixed:1:1".into(),
            arrival: "poisson".into(),
            rate: Some(100.0),
            seed: 0,
            sessions: 201,
            wall: Duration::from_secs(2),
            start_span: Duration::from_secs(2),
        });
        let path = std::env::temp_dir().join(format!("infergate-plot-{}.svg", std::process::id()));
        write_svg(&path, &report).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("TTFT SLO"));
        assert!(
            svg.matches("<circle").count() >= 150,
            "one dot per completed request"
        );
    }
}
