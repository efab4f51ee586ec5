//! What "capacity" means when a scenario asks for "80% of capacity".
//!
//! Capacity is the rate of new sessions the pool sustains, and we measure it rather than derive it:
//! the step-time model, chunked prefill, prefix hits and preemption interact too much for a formula
//! to be trusted. The probe starts ONE pod, offers it the scenario's own workload at a rate chosen
//! to overload it (`capacity.probe.rate`), skips the first third of the probe as warm-up, and counts
//! the requests the pod finishes per second over the rest, from the pod's own
//! `vllm:request_success_total`. A saturated pod's completion rate is its service rate. Then
//!
//! ```text
//! capacity (sessions/s) = pods x one pod's completed requests/s / mean requests per session
//! ```
//!
//! The probe checks the pod really was saturated (requests still waiting in its engine queue at the
//! end of the window) and refuses the figure otherwise: an under-loaded probe would only measure the
//! offered rate. This is an optimistic capacity for a multi-pod pool with a shared-prefix workload:
//! one pod sees every system prompt and caches them all, as a perfect router would make each pod do.

use std::time::Duration;

use super::pods::{PodFlavor, Pods};
use super::report::CapacityReport;
use super::run::{Harness, RunError};
use super::scenario::ProbeConfig;

/// Measures one pod's saturated service rate with the scenario's workload.
pub async fn probe(h: &Harness<'_>, p: &ProbeConfig) -> Result<CapacityReport, RunError> {
    let pods = Pods::start(&h.pod_spec, 1, 1, PodFlavor::Vllm, "probe").await?;
    let result = measure(h, &pods, p).await;
    pods.stop().await;
    result
}

async fn measure(
    h: &Harness<'_>,
    pods: &Pods,
    p: &ProbeConfig,
) -> Result<CapacityReport, RunError> {
    let mut config = h.run_config(&pods.urls[0], p.rate, p.duration, "probe")?;
    let cancel = config.cancel.clone();
    config.max_in_flight = 4096;
    let run = tokio::spawn(crate::generate::run(config));
    let warmup = p.duration / 3;
    tokio::time::sleep(warmup).await;
    let c1 = pods.counters(&h.http).await?;
    let window = p.duration - warmup;
    tokio::time::sleep(window).await;
    let c2 = pods.counters(&h.http).await?;
    cancel.cancel();
    // The run's own report is not needed: only the pod's counters over the window count.
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    let d = c2[0].since(&c1[0]);
    let secs = window.as_secs_f64();
    let per_pod = d.requests / secs;
    if c2[0].waiting < 1.0 || per_pod <= 0.0 {
        return Err(RunError::Capacity(format!(
            "the probe at {} sessions/s did not saturate one pod ({} waiting at the end, {per_pod:.2} req/s completed): raise capacity.probe.rate",
            p.rate, c2[0].waiting
        )));
    }
    let turns = h.turns_per_session;
    Ok(CapacityReport {
        sessions_per_s: f64::from(h.scenario.pods.count) * per_pod / turns,
        source: format!(
            "probe: one pod offered {} sessions/s for {} s, measured over the last {:.0} s",
            p.rate,
            p.duration.as_secs_f64(),
            secs
        ),
        probe_requests_per_s: Some(per_pod),
        probe_output_tokens_per_s: Some(d.generation_tokens / secs),
        probe_waiting: Some(c2[0].waiting),
        turns_per_session: turns,
    })
}
