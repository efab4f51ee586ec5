//! The scenario: probe (or take) one pod's capacity, run the step load against the autoscaled
//! pool, then the same load against a fixed pool sized for the peak, each observed for the same
//! window.
//!
//! Each step is its own open-loop run of the load generator at that step's rate, started on the
//! scenario's clock at the step's offset, so the steps overlap only by the previous step's answers
//! still streaming, as a real rate change would. Their per-request points are shifted onto the
//! scenario's clock and merged.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StepError;
use super::analysis::{self, Outcomes, PoolSummary, Row};
use super::capacity::{self, Capacity};
use super::pool::{self, Up, UpOptions};
use super::schedule::StepSchedule;
use crate::compare::process::Http;
use crate::generate::report::TimelinePoint;
use crate::generate::{self, RunConfig};

/// Everything the scenario needs.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// The `infergate` executable (`up` is started from it).
    pub exe: PathBuf,
    /// Where the CSV, the SVG and the children's logs go.
    pub out_dir: PathBuf,
    /// How `up` runs (both pools).
    pub up: UpOptions,
    /// The autoscaled pool's bounds.
    pub bounds: (u32, u32),
    /// The load.
    pub schedule: StepSchedule,
    /// One pod's capacity in requests/s; None: probe it.
    pub capacity: Option<f64>,
    /// The probe's offered rate (must overload one pod).
    pub probe_rate: f64,
    /// The probe's length.
    pub probe_duration: Duration,
    /// Each step's load-generator settings (workload, arrival, seed, SLOs, timeout, cancel);
    /// target, rate and duration are set per step.
    pub run: RunConfig,
    /// Sampling period.
    pub sample_every: Duration,
    /// Trailing window of the p90 TTFT series.
    pub p90_window: Duration,
    /// Observation continues this long after the last step (both pools alike).
    pub tail: Duration,
    /// Also run the fixed pool; `Some(n)` overrides its size (default: `ceil(peak)`).
    pub fixed: Option<Option<u32>>,
}

/// One pool's result.
#[derive(Debug, Clone)]
pub struct PoolResult {
    /// The figures.
    pub summary: PoolSummary,
    /// The time series.
    pub rows: Vec<Row>,
}

/// The scenario's result.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// One pod's capacity.
    pub capacity: Capacity,
    /// The load.
    pub schedule: StepSchedule,
    /// The workload spec.
    pub workload: String,
    /// TTFT SLO (ms).
    pub slo_ttft_ms: Option<f64>,
    /// ITL SLO (ms).
    pub slo_itl_ms: Option<f64>,
    /// The autoscaled pool.
    pub autoscaled: PoolResult,
    /// The fixed pool, if it ran.
    pub fixed: Option<PoolResult>,
}

/// Runs the scenario.
pub async fn run(cfg: &StepConfig) -> Result<StepReport, StepError> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| StepError::io(&cfg.out_dir, e))?;
    let capacity = match cfg.capacity {
        Some(c) if c.is_finite() && c > 0.0 => Capacity {
            requests_per_s: c,
            source: "given (--capacity)".into(),
        },
        Some(c) => return Err(StepError::Probe(format!("--capacity must be > 0, got {c}"))),
        None => {
            tracing::info!(rate = cfg.probe_rate, "probing one pod's capacity");
            capacity::probe(
                &cfg.exe,
                &cfg.up,
                &cfg.run,
                cfg.probe_rate,
                cfg.probe_duration,
                &cfg.out_dir.join("probe-up.log"),
            )
            .await?
        }
    };
    tracing::info!(
        requests_per_s = capacity.requests_per_s,
        "one pod's capacity"
    );
    let autoscaled = run_pool(cfg, "autoscaled", cfg.bounds, capacity.requests_per_s).await?;
    let fixed = match cfg.fixed {
        None => None,
        Some(n) => {
            let n = n.unwrap_or_else(|| cfg.schedule.pods_for_peak());
            Some(run_pool(cfg, "fixed", (n, n), capacity.requests_per_s).await?)
        }
    };
    Ok(StepReport {
        capacity,
        schedule: cfg.schedule.clone(),
        workload: cfg.run.workload.to_string(),
        slo_ttft_ms: cfg.run.slo.ttft.map(|d| d.as_secs_f64() * 1e3),
        slo_itl_ms: cfg.run.slo.itl.map(|d| d.as_secs_f64() * 1e3),
        autoscaled,
        fixed,
    })
}

async fn run_pool(
    cfg: &StepConfig,
    label: &str,
    bounds: (u32, u32),
    capacity: f64,
) -> Result<PoolResult, StepError> {
    tracing::info!(pool = label, min = bounds.0, max = bounds.1, "starting up");
    let http = Http::new();
    let log = cfg.out_dir.join(format!("{label}-up.log"));
    let up = Up::start(&cfg.exe, &cfg.up, bounds, &log, &http).await?;
    let result = drive(cfg, &up, &http, label, bounds, capacity).await;
    up.stop().await;
    result
}

async fn drive(
    cfg: &StepConfig,
    up: &Up,
    http: &Http,
    label: &str,
    bounds: (u32, u32),
    capacity: f64,
) -> Result<PoolResult, StepError> {
    let cancel: CancellationToken = cfg.run.cancel.child_token();
    let start = Instant::now();
    let mut steps = Vec::new();
    for (k, (offset, fraction)) in cfg.schedule.steps().enumerate() {
        if fraction <= 0.0 {
            continue;
        }
        let mut run = cfg.run.clone();
        run.target = up.gateway.clone();
        run.rate = Some(fraction * capacity);
        run.duration = Some(cfg.schedule.step);
        run.requests = None;
        run.seed = cfg.run.seed.wrapping_add(k as u64);
        run.cancel = cancel.child_token();
        steps.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            let began = start.elapsed().as_secs_f64();
            (began, generate::run(run).await)
        }));
    }
    let end = cfg.schedule.total() + cfg.tail;
    let samples = pool::sample_until(
        up,
        http,
        &cfg.schedule,
        start,
        start + end,
        cfg.sample_every,
        &cancel,
    )
    .await;
    // Every request is bounded by the run's timeout, so the drain is bounded too.
    let mut points: Vec<TimelinePoint> = Vec::new();
    let mut outcomes = Outcomes::default();
    for step in steps {
        let (began, report) = step
            .await
            .map_err(|e| StepError::Probe(format!("a step's run panicked: {e}")))?;
        let report = report?;
        outcomes.requests += report.requests;
        outcomes.completed += report.completed;
        outcomes.good += report.slo.good;
        points.extend(report.timeline.iter().map(|p| TimelinePoint {
            sent_s: p.sent_s + began,
            ..*p
        }));
    }
    if cfg.run.cancel.is_cancelled() {
        return Err(StepError::Cancelled);
    }
    points.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    let rows = analysis::rows(&samples, &points, cfg.p90_window.as_secs_f64());
    let summary = analysis::summarize(
        label,
        bounds,
        &samples,
        &points,
        outcomes,
        cfg.run.slo.ttft.map(|d| d.as_secs_f64() * 1e3),
        end.as_secs_f64(),
    );
    Ok(PoolResult { summary, rows })
}
