//! The capacity planner (`infergate loadtest plan`): a discrete-event simulation in virtual time
//! that answers "how many pods, at what SLO, for how many pod-hours" before anything is deployed.
//!
//! It drives the live binaries' own decision code, not a copy: the gateway's pure picker
//! (`infergate_gateway::picker::pick`, its prefix index and prompt hasher), flow control's bounded
//! wait queue (`infergate_gateway::flow::WaitQueue`) and the autoscaler's pure policy
//! (`infergate_autoscaler::policy::ScalerState::step`), over pods that are the simulator's own
//! [`crate::sim::Engine`]s. Only the I/O shells are replaced: the clock is virtual, scrapes read the
//! engine directly, and the actuator is a cold-start delay. See `docs/PLANNER.md`.
//!
//! - [`scenario`]: the YAML scenario (pods, picker, flow, autoscaling, SLOs, workload, variants).
//! - [`day`]: a generated diurnal day with bursts.
//! - [`request`]: one request's engine tokens and gateway prefix hashes, as the live path computes.
//! - [`world`]: the event loop; [`pod`]: one simulated pod.
//! - [`report`], [`plot`]: summaries, time series, CSV, the comparison table and the SVG.

pub mod day;
pub mod plot;
pub mod pod;
pub mod report;
pub mod request;
pub mod scenario;
pub mod world;

pub use report::{RunResult, RunSummary, ScaleEvent, SeriesPoint};
pub use scenario::{Scenario, ScenarioError, WorkloadConfig};
pub use world::{PoolMode, RunSpec, simulate};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::generate::arrival::Bound;
use crate::generate::workload::{Plan, WorkloadSpec};

/// How the fixed pool of the comparison is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedSizing {
    /// The smallest N whose run meets `slo.attainment` of TTFT on the same workload (binary
    /// search over simulations; assumes more pods never hurt, which holds for these policies).
    Search,
    /// Exactly this many pods.
    Pods(u32),
    /// No fixed pool.
    Off,
}

/// What to run besides the scenario's own autoscaled pool.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Also run the scenario's `variants`.
    pub compare: bool,
    /// The fixed pool.
    pub fixed: FixedSizing,
    /// Pause between a session's answer and its next turn.
    pub think_time: Duration,
    /// Simulations run at once (each is single-threaded).
    pub threads: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            compare: false,
            fixed: FixedSizing::Search,
            think_time: Duration::from_secs(1),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The headline question: is the autoscaled pool inside the SLO at a fraction of the fixed pool's
/// pod-hours?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// Autoscaled share of requests inside the TTFT SLO.
    pub autoscaled_ttft_attainment: f64,
    /// Autoscaled pod-hours over the fixed pool's.
    pub pod_hours_ratio: f64,
    /// The fixed pool's size and how it was chosen.
    pub fixed_pods: u32,
    /// `search`: the smallest N meeting the attainment target; `given`: set by the user.
    pub fixed_sizing: String,
    /// The fixed pool's own TTFT attainment.
    pub fixed_ttft_attainment: f64,
    /// Target: attainment at least this...
    pub target_attainment: f64,
    /// ...with pod-hours at most this share of the fixed pool's.
    pub target_ratio: f64,
    /// Both targets met.
    pub met: bool,
}

/// Everything `loadtest plan` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// The scenario as run (flags applied).
    pub scenario: Scenario,
    /// Requests planned (all turns).
    pub planned_requests: u64,
    /// Sessions planned.
    pub sessions: u64,
    /// The span pod-hours are measured over, seconds.
    pub span_s: f64,
    /// The scenario's autoscaled pool.
    pub autoscaled: RunResult,
    /// The fixed pool, if any.
    pub fixed: Option<RunResult>,
    /// Fixed-pool sizes tried by the search, with their TTFT attainment.
    pub fixed_search: Vec<(u32, f64)>,
    /// The variants, in the scenario's order.
    pub variants: Vec<RunSummary>,
    /// The headline verdict (with a fixed pool).
    pub headline: Option<Headline>,
}

impl PlanReport {
    /// The report as pretty-printed JSON (what `--json FILE` writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the report: {e}\"}}"))
    }

    /// Every summary, for the comparison table: autoscaled, variants, fixed.
    pub fn rows(&self) -> Vec<RunSummary> {
        let mut rows = vec![self.autoscaled.summary.clone()];
        rows.extend(self.variants.iter().cloned());
        rows.extend(self.fixed.iter().map(|f| f.summary.clone()));
        rows
    }
}

/// The scenario's workload as a plan, and the span pod-time is measured over.
pub fn workload_plan(sc: &Scenario) -> Result<(Plan, Duration), ScenarioError> {
    match &sc.workload {
        WorkloadConfig::Trace {
            path,
            rate,
            duration,
        } => {
            let plan = Plan::build(
                &WorkloadSpec::Trace(path.clone()),
                None,
                *rate,
                Bound {
                    duration: *duration,
                    requests: None,
                },
                sc.seed,
            )
            .map_err(|e| ScenarioError::Invalid(e.to_string()))?;
            let span =
                duration.unwrap_or_else(|| plan.arrivals.last().copied().unwrap_or_default());
            Ok((plan, span))
        }
        WorkloadConfig::Day(day) => Ok((day.plan(sc.seed)?, day.duration)),
    }
}

/// Runs the scenario: the autoscaled pool, the variants (with `compare`) and the fixed pool.
pub fn plan(sc: &Scenario, opts: &PlanOptions) -> Result<PlanReport, ScenarioError> {
    sc.validate()?;
    let (plan, span) = workload_plan(sc)?;
    let spec = |name: &str, pool: PoolMode| RunSpec {
        name: name.to_string(),
        pool,
        span,
        think_time: opts.think_time,
    };
    let mut jobs = vec![spec(
        "autoscaled",
        PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())),
    )];
    if opts.compare {
        for v in &sc.variants {
            jobs.push(spec(
                &v.name,
                PoolMode::Autoscaled(Box::new(v.autoscaling.clone())),
            ));
        }
    }
    if let FixedSizing::Pods(n) = opts.fixed {
        jobs.push(spec(&format!("fixed {n}"), PoolMode::Fixed(n)));
    }
    let mut results = run_parallel(sc, &plan, &jobs, opts.threads)?;
    let autoscaled = results.remove(0);
    let mut fixed = match opts.fixed {
        FixedSizing::Pods(_) => results.pop(),
        _ => None,
    };
    let variants: Vec<RunSummary> = results.into_iter().map(|r| r.summary).collect();

    let mut fixed_search = Vec::new();
    if opts.fixed == FixedSizing::Search {
        let target = sc.slo.attainment;
        let mut run_fixed = |n: u32| -> Result<RunResult, ScenarioError> {
            let r = simulate(
                sc,
                &plan,
                &spec(&format!("fixed {n} (sized)"), PoolMode::Fixed(n)),
            )?;
            fixed_search.push((n, r.summary.ttft_attainment));
            Ok(r)
        };
        // Start from the autoscaled peak, grow until the SLO holds, then bisect down.
        let cap = sc
            .autoscaling
            .max_replicas
            .max(autoscaled.summary.peak_pods)
            .max(1)
            * 4;
        let mut hi = autoscaled.summary.peak_pods.max(1);
        let mut best = run_fixed(hi)?;
        while best.summary.ttft_attainment < target && hi < cap {
            hi = (hi * 2).min(cap);
            best = run_fixed(hi)?;
        }
        let mut lo = if best.summary.ttft_attainment >= target {
            0
        } else {
            hi
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let r = run_fixed(mid)?;
            if r.summary.ttft_attainment >= target {
                hi = mid;
                best = r;
            } else {
                lo = mid;
            }
        }
        fixed = Some(best);
    }

    let headline = fixed.as_ref().map(|f| {
        let a = &autoscaled.summary;
        let ratio = if f.summary.pod_hours > 0.0 {
            a.pod_hours / f.summary.pod_hours
        } else {
            f64::INFINITY
        };
        let target_ratio = 0.6;
        Headline {
            autoscaled_ttft_attainment: a.ttft_attainment,
            pod_hours_ratio: ratio,
            fixed_pods: f.summary.peak_pods,
            fixed_sizing: match opts.fixed {
                FixedSizing::Search => "search".into(),
                _ => "given".into(),
            },
            fixed_ttft_attainment: f.summary.ttft_attainment,
            target_attainment: sc.slo.attainment,
            target_ratio,
            met: a.ttft_attainment >= sc.slo.attainment && ratio <= target_ratio,
        }
    });
    Ok(PlanReport {
        scenario: sc.clone(),
        planned_requests: plan.total_requests(),
        sessions: plan.sessions.len() as u64,
        span_s: span.as_secs_f64(),
        autoscaled,
        fixed,
        fixed_search,
        variants,
        headline,
    })
}

/// Runs independent simulations on up to `threads` threads; results in `jobs` order.
fn run_parallel(
    sc: &Scenario,
    plan: &Plan,
    jobs: &[RunSpec],
    threads: usize,
) -> Result<Vec<RunResult>, ScenarioError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<RunResult, ScenarioError>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = simulate(sc, plan, job);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(ScenarioError::Invalid(
                    "a simulation thread panicked".into(),
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
