//! "One pod's capacity", measured: the completion rate of one saturated pod, behind the gateway,
//! with the scenario's own workload and simulator settings.
//!
//! The probe starts `up --min 1 --max 1`, offers more than one pod can serve (`probe_rate`), skips
//! the first third as warm-up and counts the requests the gateway answered 200 per second over the
//! rest. Past its capacity a pod's queue grows without bound and it completes requests at its
//! service rate whatever the offered rate, so that rate is the capacity: 100% is the load at which
//! the queue stops being stable. The probe refuses the figure if nothing was queued at the end
//! (then the pod was not saturated and the figure would only be the offered rate).

use std::path::Path;
use std::time::Duration;

use super::StepError;
use super::pool::{Up, UpOptions};
use crate::compare::process::Http;
use crate::generate::{self, RunConfig};

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Capacity {
    /// Requests per second one pod completes when saturated.
    pub requests_per_s: f64,
    /// How the figure was obtained.
    pub source: String,
}

/// Probes one pod's capacity; `base` is the step runs' config (target replaced).
pub async fn probe(
    exe: &Path,
    opts: &UpOptions,
    base: &RunConfig,
    rate: f64,
    duration: Duration,
    log: &Path,
) -> Result<Capacity, StepError> {
    let http = Http::new();
    let up = Up::start(exe, opts, (1, 1), log, &http).await?;
    let result = measure(&up, &http, base, rate, duration).await;
    up.stop().await;
    result
}

async fn measure(
    up: &Up,
    http: &Http,
    base: &RunConfig,
    rate: f64,
    duration: Duration,
) -> Result<Capacity, StepError> {
    let mut config = base.clone();
    config.target = up.gateway.clone();
    config.rate = Some(rate);
    config.duration = Some(duration);
    config.cancel = base.cancel.child_token();
    let cancel = config.cancel.clone();
    let run = tokio::spawn(generate::run(config));
    let warmup = duration / 3;
    tokio::time::sleep(warmup).await;
    let (c1, _) = up.completed_and_queued(http).await?;
    let window = duration - warmup;
    tokio::time::sleep(window).await;
    let (c2, queued) = up.completed_and_queued(http).await?;
    cancel.cancel();
    // Only the gateway's counters over the window count; the run's report is not needed.
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    let per_s = (c2 - c1) / window.as_secs_f64();
    if queued < 1.0 || per_s <= 0.0 {
        return Err(StepError::Probe(format!(
            "the probe at {rate} requests/s did not saturate one pod ({queued} queued at the end, \
             {per_s:.2} requests/s completed): raise --probe-rate or pass --capacity"
        )));
    }
    Ok(Capacity {
        requests_per_s: per_s,
        source: format!(
            "probe: one pod offered {rate} requests/s for {:.0} s, completions counted over the last {:.0} s ({queued} still queued)",
            duration.as_secs_f64(),
            window.as_secs_f64()
        ),
    })
}
