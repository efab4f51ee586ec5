//! The report as files and text: one CSV of both pools' time series, and the summary table
//! (Markdown, so it pastes into docs/BENCHMARKS.md as printed).

use std::fmt::{self, Write as _};
use std::path::Path;

use super::StepError;
use super::analysis::Row;
use super::run::{PoolResult, StepReport};

const HEADER: &str = "pool,t_s,offered_pct,offered_rps,desired,current,ready,held,waiting,p90_ttft_ms,sent_in_window";

/// Writes both pools' time series to `path`, one row per sample.
pub fn write_csv(path: &Path, report: &StepReport) -> Result<(), StepError> {
    let mut out = String::from(HEADER);
    out.push('\n');
    let pools = std::iter::once(&report.autoscaled).chain(report.fixed.as_ref());
    for pool in pools {
        for row in &pool.rows {
            push_row(
                &mut out,
                &pool.summary.label,
                row,
                report.capacity.requests_per_s,
            );
        }
    }
    std::fs::write(path, out).map_err(|e| StepError::io(path, e))
}

fn push_row(out: &mut String, label: &str, r: &Row, capacity: f64) {
    let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    let s = &r.sample;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{label},{:.3},{:.0},{:.3},{},{},{},{},{},{},{}",
        s.t_s,
        s.offered * 100.0,
        s.offered * capacity,
        opt(s.desired),
        opt(s.current),
        opt(s.ready),
        opt(s.held),
        opt(s.waiting),
        opt(r.p90_ttft_ms.map(|v| (v * 10.0).round() / 10.0)),
        r.sent
    );
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self
            .schedule
            .fractions
            .iter()
            .map(|p| format!("{:.0}%", p * 100.0))
            .collect();
        writeln!(
            f,
            "one pod's capacity: {:.2} requests/s ({})",
            self.capacity.requests_per_s, self.capacity.source
        )?;
        writeln!(
            f,
            "load: {} of it, {} s each; workload {}; SLOs: TTFT {}, ITL (mean) {}",
            steps.join(" -> "),
            self.schedule.step.as_secs_f64(),
            self.workload,
            ms(self.slo_ttft_ms),
            ms(self.slo_itl_ms),
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| pool | replicas | requests | failed | TTFT p50 / p90 / p99 (ms) | TTFT SLO met | TTFT+ITL SLO met | pod-seconds (ready) | scale ups / downs | peak / final pods |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|")?;
        for pool in std::iter::once(&self.autoscaled).chain(self.fixed.as_ref()) {
            table_row(f, pool)?;
        }
        if let Some(fixed) = &self.fixed {
            let (a, b) = (
                self.autoscaled.summary.pod_seconds,
                fixed.summary.pod_seconds,
            );
            if b > 0.0 {
                writeln!(f)?;
                writeln!(
                    f,
                    "autoscaled used {:.0}% of the fixed pool's pod-seconds over the same {:.0} s",
                    100.0 * a / b,
                    fixed.summary.window_s
                )?;
            }
        }
        Ok(())
    }
}

fn table_row(f: &mut fmt::Formatter<'_>, pool: &PoolResult) -> fmt::Result {
    let s = &pool.summary;
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
    let t = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    writeln!(
        f,
        "| {} | {}..{} | {} | {} | {} / {} / {} | {} | {} | {:.0} ({:.0}) | {} / {} | {} / {} |",
        s.label,
        s.min_replicas,
        s.max_replicas,
        s.requests,
        s.failed,
        t(s.ttft_ms[0]),
        t(s.ttft_ms[1]),
        t(s.ttft_ms[2]),
        pct(s.ttft_attainment),
        pct(Some(s.goodput)),
        s.pod_seconds,
        s.ready_pod_seconds,
        s.scale_ups,
        s.scale_downs,
        s.peak_replicas,
        s.final_replicas,
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or("none".into(), |v| format!("{v:.0} ms"))
}

/// The summary as JSON (what `stepload.json` holds): the capacity, the load, each pool's figures.
pub fn to_json(report: &StepReport) -> String {
    let value = serde_json::json!({
        "capacity": report.capacity,
        "steps_pct": report.schedule.fractions.iter().map(|f| f * 100.0).collect::<Vec<_>>(),
        "step_s": report.schedule.step.as_secs_f64(),
        "workload": report.workload,
        "slo_ttft_ms": report.slo_ttft_ms,
        "slo_itl_ms": report.slo_itl_ms,
        "autoscaled": report.autoscaled.summary,
        "fixed": report.fixed.as_ref().map(|f| &f.summary),
    });
    // Plain numbers and strings: serialization cannot fail.
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
