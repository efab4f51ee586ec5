//! One scenario, end to end: capacity, then for each offered load each contender in turn over fresh
//! pods, then the table's rows, the plots and the JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::capacity;
use super::contender::{self, Availability, Programs, pod_flavor};
use super::mixed::{self, MixedError};
use super::plot::{self, PlotError};
use super::pods::{PodFlavor, PodSpec, Pods, PoolStats, log_dir};
use super::process::{Http, ProcessError};
use super::report::{CapacityReport, Row, ScenarioReport, Status};
use super::scenario::{CapacityConfig, Contender, RateUnit, Scenario, Workload};
use crate::generate::progress::ProgressMode;
use crate::generate::report::Slo;
use crate::generate::workload::{WorkloadSpec, plan_sessions};
use crate::generate::{RunConfig, RunReport};

/// Why a comparison could not produce its report (a contender failing is a row, not an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A child or an HTTP call failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The load generator refused the run.
    #[error(transparent)]
    Generate(#[from] crate::generate::RunError),
    /// The mixed workload's trace could not be written.
    #[error(transparent)]
    Mixed(#[from] MixedError),
    /// A plot could not be written.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// Capacity could not be found.
    #[error("capacity: {0}")]
    Capacity(String),
    /// The scenario is unusable (checked by `Scenario::validate`, so rare).
    #[error("{0}")]
    Scenario(String),
    /// An output file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Interrupted.
    #[error("interrupted")]
    Cancelled,
}

/// How to run a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Where the contenders' programs are.
    pub programs: Programs,
    /// Output directory (plots, JSON, logs, generated traces).
    pub out: PathBuf,
    /// Progress display of each run.
    pub progress: ProgressMode,
    /// Cancel to stop after the current run (children are stopped either way).
    pub cancel: CancellationToken,
}

/// Shared state of one scenario's runs.
pub struct Harness<'a> {
    pub(super) scenario: &'a Scenario,
    pub(super) pod_spec: PodSpec,
    pub(super) http: Http,
    pub(super) turns_per_session: f64,
    workload: Workload,
    out: PathBuf,
    progress: ProgressMode,
    cancel: CancellationToken,
}

impl Harness<'_> {
    /// The load generator's config for one run at `rate` sessions/s against `target`.
    pub(super) fn run_config(
        &self,
        target: &str,
        rate: f64,
        duration: Duration,
        tag: &str,
    ) -> Result<RunConfig, RunError> {
        let s = self.scenario;
        let arrival = s.arrival().map_err(RunError::Scenario)?;
        let spec = match &self.workload {
            Workload::Spec(spec) => spec.clone(),
            Workload::Mixed(mix) => {
                let path = self.out.join(format!("{}-{tag}-mixed.csv", s.name));
                mixed::write_trace(&path, mix, arrival, rate, duration, s.seed)?;
                WorkloadSpec::Trace(path)
            }
        };
        let mut c = RunConfig::new(target, s.model.clone(), spec);
        if matches!(self.workload, Workload::Spec(_)) {
            c.arrival = Some(arrival);
            c.rate = Some(rate);
            c.duration = Some(duration);
        }
        c.seed = s.seed;
        c.timeout = s.request_timeout;
        c.think_time = s.think_time;
        c.slo = Slo {
            ttft: s.slo.ttft,
            itl: s.slo.itl,
        };
        c.progress = self.progress;
        Ok(c)
    }

    /// The longest a run may take: the schedule, then every turn of the last session at its
    /// deadline, then slack. Past it the run is cancelled and reports what completed.
    fn run_bound(&self) -> Duration {
        let s = self.scenario;
        let turns = self.turns_per_session.ceil().max(1.0) as u32;
        s.duration + (s.request_timeout + s.think_time) * turns + Duration::from_secs(30)
    }
}

/// Runs one scenario and writes its plots and JSON under `opts.out`.
pub async fn compare(
    scenario: &Scenario,
    opts: &CompareOptions,
) -> Result<ScenarioReport, RunError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let logs = log_dir(&opts.out).map_err(io(&opts.out))?;
    let workload = scenario.workload().map_err(RunError::Scenario)?;
    let turns_per_session = match &workload {
        Workload::Spec(spec) => {
            let plans = plan_sessions(spec, 1000, scenario.seed);
            plans.iter().map(|p| p.turns.len()).sum::<usize>() as f64 / plans.len().max(1) as f64
        }
        Workload::Mixed(_) => 1.0,
    };
    let h = Harness {
        scenario,
        pod_spec: PodSpec {
            program: opts.programs.infergate.clone(),
            pods: scenario.pods.clone(),
            model: scenario.model.clone(),
            seed: scenario.seed,
            log_dir: logs.clone(),
        },
        http: Http::new(),
        turns_per_session,
        workload,
        out: opts.out.clone(),
        progress: opts.progress,
        cancel: opts.cancel.clone(),
    };

    let capacity: Option<CapacityReport> = match &scenario.capacity {
        None => None,
        Some(CapacityConfig::SessionsPerS(c)) => Some(CapacityReport {
            sessions_per_s: *c,
            source: "stated in the scenario".into(),
            probe_requests_per_s: None,
            probe_output_tokens_per_s: None,
            probe_waiting: None,
            turns_per_session,
        }),
        Some(CapacityConfig::Probe(p)) => {
            tracing::info!(scenario = %scenario.name, "probing one pod's capacity");
            Some(capacity::probe(&h, p).await?)
        }
    };
    let rates: Vec<(f64, Option<f64>)> = scenario
        .rates
        .iter()
        .map(|r| match (scenario.rate_unit, &capacity) {
            (RateUnit::Capacity, Some(c)) => (r * c.sessions_per_s, Some(*r)),
            (_, c) => (*r, c.as_ref().map(|c| r / c.sessions_per_s)),
        })
        .collect();

    let mut available = Vec::new();
    for c in &scenario.contenders {
        available.push((*c, opts.programs.availability(*c).await));
    }
    let mut rows = Vec::new();
    for (i, (rate, fraction)) in rates.iter().enumerate() {
        for (c, avail) in &available {
            let status_only = |status: Status| Row {
                contender: c.to_string(),
                rate_per_s: *rate,
                fraction_of_capacity: *fraction,
                status,
                run: None,
                pool: None,
                loadavg_1m: None,
                clock_ratio: None,
            };
            if h.cancel.is_cancelled() {
                return Err(RunError::Cancelled);
            }
            let program = match avail {
                Availability::Ready(p) => p,
                Availability::Missing(why) => {
                    rows.push(status_only(Status::Skipped(why.clone())));
                    continue;
                }
            };
            tracing::info!(contender = %c, rate, "run");
            let tag = format!("r{i}-{}", c.to_string().replace(':', "-"));
            match run_one(&h, Some((*c, program.as_path())), *rate, &tag).await {
                Ok((run, pool)) => rows.push(Row {
                    clock_ratio: clock_ratio(&run, &pool, scenario.pods.speed),
                    run: Some(run),
                    pool: Some(pool),
                    loadavg_1m: loadavg(),
                    ..status_only(Status::Ran)
                }),
                Err(RunError::Cancelled) => return Err(RunError::Cancelled),
                Err(e) => rows.push(status_only(Status::Failed(e.to_string()))),
            }
        }
        if scenario.reference {
            let tag = format!("r{i}-reference");
            let row = |status| Row {
                contender: "reference:one-big-pod".into(),
                rate_per_s: *rate,
                fraction_of_capacity: *fraction,
                status,
                run: None,
                pool: None,
                loadavg_1m: loadavg(),
                clock_ratio: None,
            };
            match run_one(&h, None, *rate, &tag).await {
                Ok((run, pool)) => rows.push(Row {
                    clock_ratio: clock_ratio(&run, &pool, scenario.pods.speed),
                    run: Some(run),
                    pool: Some(pool),
                    ..row(Status::Ran)
                }),
                Err(RunError::Cancelled) => return Err(RunError::Cancelled),
                Err(e) => rows.push(row(Status::Failed(e.to_string()))),
            }
        }
    }

    let mut files = Vec::new();
    for (i, (rate, fraction)) in rates.iter().enumerate() {
        let at: Vec<&Row> = rows
            .iter()
            .filter(|r| r.rate_per_s == *rate && !r.contender.starts_with("reference"))
            .collect();
        let path = opts.out.join(format!("{}-cdf-{i}.svg", scenario.name));
        let title = match fraction {
            Some(f) => format!("{} at {:.0}% ({rate:.2}/s)", scenario.name, f * 100.0),
            None => format!("{} at {rate:.2}/s", scenario.name),
        };
        plot::write_cdfs(&path, &title, &at)?;
        files.push(path.display().to_string());
    }
    if rates.len() > 1 {
        let path = opts.out.join(format!("{}-sweep.svg", scenario.name));
        let contenders: Vec<Row> = rows
            .iter()
            .filter(|r| !r.contender.starts_with("reference"))
            .cloned()
            .collect();
        plot::write_sweep(&path, &scenario.name, &contenders)?;
        files.push(path.display().to_string());
    }
    let json_path = opts.out.join(format!("{}.json", scenario.name));
    files.push(json_path.display().to_string());
    let report = ScenarioReport {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        workload: scenario.workload.clone(),
        arrival: scenario.arrival.clone(),
        pods: scenario.pods.count,
        profile: scenario.pods.profile.clone(),
        speed: scenario.pods.speed,
        duration_s: scenario.duration.as_secs_f64(),
        seed: scenario.seed,
        capacity,
        rows,
        files,
    };
    std::fs::write(&json_path, report.to_json()).map_err(io(&json_path))?;
    Ok(report)
}

/// One run: fresh pods, the contender in front (None: straight to one pod with the pool's total
/// capacity, the reference), the schedule, the pods' counters before and after.
async fn run_one(
    h: &Harness<'_>,
    contender: Option<(Contender, &Path)>,
    rate: f64,
    tag: &str,
) -> Result<(RunReport, PoolStats), RunError> {
    let s = h.scenario;
    let (pods, front) = match contender {
        Some((c, program)) => {
            let pods = Pods::start(&h.pod_spec, s.pods.count, 1, pod_flavor(c), tag).await?;
            let front = contender::start(
                c,
                program,
                &pods.urls,
                &s.model,
                &h.pod_spec.log_dir,
                tag,
                &h.http,
            )
            .await;
            match front {
                Ok(f) => (pods, Some(f)),
                Err(e) => {
                    pods.stop().await;
                    return Err(e.into());
                }
            }
        }
        None => (
            Pods::start(&h.pod_spec, 1, s.pods.count, PodFlavor::Vllm, tag).await?,
            None,
        ),
    };
    let target = front
        .as_ref()
        .map_or_else(|| pods.urls[0].clone(), |f| f.url.clone());
    let result = measure(h, &pods, &target, rate, tag).await;
    if let Some(f) = front {
        f.stop().await;
    }
    let mut pods = pods;
    let died = pods.any_exited();
    pods.stop().await;
    let (run, pool) = result?;
    if let Some(d) = died {
        tracing::warn!(tag, "{d}");
    }
    Ok((run, pool))
}

async fn measure(
    h: &Harness<'_>,
    pods: &Pods,
    target: &str,
    rate: f64,
    tag: &str,
) -> Result<(RunReport, PoolStats), RunError> {
    let s = h.scenario;
    let config = h.run_config(target, rate, s.duration, tag)?;
    let run_cancel = config.cancel.clone();
    let before = pods.counters(&h.http).await?;
    let faults: Vec<_> = s
        .faults
        .iter()
        .filter(|f| (f.pod as usize) < pods.urls.len())
        .map(|f| {
            let (http, url, body, after) = (
                h.http.clone(),
                format!("{}/admin/faults", pods.urls[f.pod as usize]),
                f.body(),
                f.after,
            );
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                match http.call(&url, Some(body)).await {
                    Ok((200, _)) => tracing::info!(%url, "fault set"),
                    Ok((st, b)) => tracing::warn!(%url, status = st, body = %b, "fault refused"),
                    Err(e) => tracing::warn!(%url, "fault not set: {e}"),
                }
            })
        })
        .collect();
    let bound = h.run_bound();
    let mut run = tokio::spawn(crate::generate::run(config));
    let report = tokio::select! {
        r = &mut run => r,
        _ = tokio::time::sleep(bound) => {
            tracing::warn!(tag, "run passed its bound of {} s: cancelling", bound.as_secs());
            run_cancel.cancel();
            run.await
        }
        _ = h.cancel.cancelled() => {
            run_cancel.cancel();
            let _ = run.await;
            for f in &faults { f.abort(); }
            return Err(RunError::Cancelled);
        }
    };
    for f in &faults {
        f.abort();
    }
    let report =
        report.map_err(|e| RunError::Scenario(format!("the load generator panicked: {e}")))??;
    let after = pods.counters(&h.http).await?;
    let deltas = after.iter().zip(&before).map(|(a, b)| a.since(b)).collect();
    Ok((report, PoolStats::from_deltas(deltas)))
}

/// See [`Row::clock_ratio`].
fn clock_ratio(run: &RunReport, pool: &PoolStats, speed: f64) -> Option<f64> {
    Some(run.e2e_ms?.mean * speed / pool.engine_e2e_mean_ms.filter(|m| *m > 0.0)?)
}

/// The 1-minute load average (Linux), to show how busy the machine's cores were.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
