//! One `infergate up` child: the whole product (gateway, autoscaler, local actuator, sim pods) as
//! a user runs it, on ephemeral ports, plus the per-second sampler of its admin pages.
//!
//! The child is the harness's [`Child`]: killed on drop, so an error or a cancelled run anywhere
//! leaves no `up` behind; and `up` itself stops and reaps its sim pods when it is terminated.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StepError;
use super::sample::{Sample, read_autoscaler, read_completed, read_gateway};
use super::schedule::StepSchedule;
use crate::compare::process::{Child, Http};

/// The pool name `infergate up` gives its simulated pool.
pub const POOL: &str = "sim";

/// How `up` is started: everything but the replica bounds, which differ between the runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The model the pool serves.
    pub model: String,
    /// Delay before a new pod reports ready (`--cold-start`).
    pub cold_start: Duration,
    /// Simulator clock multiplier (`--speed`).
    pub speed: f64,
    /// Requests one pod runs at once (`--max-num-seqs`).
    pub max_num_seqs: u32,
    /// Time between autoscaling decisions (`--interval`).
    pub interval: Duration,
    /// Scale-down stabilization window (`--stabilization-window`).
    pub stabilization_window: Duration,
    /// At most one pod removed per this period (`--scale-down-period`).
    pub scale_down_period: Duration,
    /// Extra `infergate sim` arguments (`--sim-args`).
    pub sim_args: String,
}

/// A running `infergate up`.
pub struct Up {
    child: Child,
    /// The gateway's API, `http://addr`.
    pub gateway: String,
    /// The gateway's admin `/metrics` URL.
    pub gateway_metrics: String,
    /// The autoscaler's admin `/metrics` URL.
    pub autoscaler_metrics: String,
}

impl Up {
    /// Starts `exe up` with the pool bounded to `[min, max]` and waits until `min` pods are ready.
    pub async fn start(
        exe: &Path,
        opts: &UpOptions,
        (min, max): (u32, u32),
        log: &Path,
        http: &Http,
    ) -> Result<Up, StepError> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let args: Vec<String> = [
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--autoscaler-listen",
            "127.0.0.1:0",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--model".into(),
            opts.model.clone(),
            "--min".into(),
            min.to_string(),
            "--max".into(),
            max.to_string(),
            "--cold-start".into(),
            d(opts.cold_start),
            "--speed".into(),
            opts.speed.to_string(),
            "--max-num-seqs".into(),
            opts.max_num_seqs.to_string(),
            "--interval".into(),
            d(opts.interval),
            "--stabilization-window".into(),
            d(opts.stabilization_window),
            "--scale-down-period".into(),
            d(opts.scale_down_period),
            format!("--sim-args={}", opts.sim_args),
        ])
        .collect();
        let (child, addrs) = Child::spawn_infergate(
            "up",
            exe,
            &args,
            &["gateway", "admin", "autoscaler"],
            log,
            Duration::from_secs(30),
        )
        .await?;
        let url = |role: &str| addrs.get(role).map(|a| format!("http://{a}"));
        let (Some(gateway), Some(admin), Some(autoscaler)) =
            (url("gateway"), url("admin"), url("autoscaler"))
        else {
            return Err(StepError::Probe("up did not print its addresses".into()));
        };
        let up = Up {
            child,
            gateway,
            gateway_metrics: format!("{admin}/metrics"),
            autoscaler_metrics: format!("{autoscaler}/metrics"),
        };
        // Every pod of the minimum must be serving before the load starts, or the first step
        // measures the cold start instead of the autoscaler.
        let within = opts.cold_start * min + Duration::from_secs(60);
        let deadline = Instant::now() + within;
        loop {
            let ready = match http.call(&up.autoscaler_metrics, None).await {
                Ok((200, page)) => read_autoscaler(&page, POOL).2,
                _ => None,
            };
            if ready.is_some_and(|r| r >= f64::from(min)) {
                return Ok(up);
            }
            if Instant::now() >= deadline {
                up.stop().await;
                return Err(StepError::Probe(format!(
                    "{min} pods were not ready within {} s (log: {})",
                    within.as_secs(),
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One sample of the pool now (`t_s` is the caller's clock).
    pub async fn sample(&self, http: &Http, t_s: f64, offered: f64) -> Sample {
        let (a, g) = tokio::join!(
            http.call(&self.autoscaler_metrics, None),
            http.call(&self.gateway_metrics, None)
        );
        let (desired, current, ready) = match a {
            Ok((200, page)) => read_autoscaler(&page, POOL),
            _ => (None, None, None),
        };
        let (held, waiting) = match g {
            Ok((200, page)) => read_gateway(&page, POOL),
            _ => (None, None),
        };
        Sample {
            t_s,
            offered,
            desired,
            current,
            ready,
            held,
            waiting,
        }
    }

    /// Requests the gateway completed so far, and what it holds or its pods queue now.
    ///
    /// Retried: a pooled admin connection left idle through a long probe window may have been
    /// closed by the server just as it is reused, and one lost read must not void the probe.
    pub async fn completed_and_queued(&self, http: &Http) -> Result<(f64, f64), StepError> {
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            match http.call(&self.gateway_metrics, None).await {
                Ok((_, page)) => break page,
                Err(e) if attempt >= 3 => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the gateway's metrics: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let (held, waiting) = read_gateway(&page, POOL);
        Ok((
            read_completed(&page, POOL),
            held.unwrap_or(0.0) + waiting.unwrap_or(0.0),
        ))
    }

    /// SIGTERM (`up` drains the gateway and stops its pods), then SIGKILL after a grace period.
    pub async fn stop(self) {
        self.child.stop(Duration::from_secs(30)).await;
    }
}

/// Samples `up` every `every` from `start` until `until` (or cancellation).
pub async fn sample_until(
    up: &Up,
    http: &Http,
    schedule: &StepSchedule,
    start: Instant,
    until: Instant,
    every: Duration,
    cancel: &CancellationToken,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            at = tick.tick() => {
                if at >= until {
                    break;
                }
                let t_s = at.saturating_duration_since(start).as_secs_f64();
                out.push(up.sample(http, t_s, schedule.fraction_at(t_s)).await);
            }
            _ = cancel.cancelled() => break,
        }
    }
    out
}
