//! Signals: what a pool's pods and the gateways in front of them report, reduced to the few numbers
//! the policy needs, with "unknown" kept apart from "zero".
//!
//! The distinction matters more than any formula: a pod whose `/metrics` did not answer is not an
//! idle pod. If a scrape failure read as zero load, every network blip would look like a reason to
//! scale down. So each source is either known (fresh), unknown (configured but missing or stale), or
//! not configured at all, and the policy decides what each may justify.
//!
//! This module is plain data; [`reader`] is the I/O shell that fills it from HTTP `/metrics`.

pub mod fetch;
pub mod reader;

use std::time::Duration;

/// Everything observed about one pool at one instant: the input of
/// [`crate::policy::recommend`] besides the scaler's own memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// How many replicas are asked for, ready and on their way.
    pub replicas: Replicas,
    /// Load reported by the ready pods themselves (engine queue, running, KV use).
    pub pods: PodLoads,
    /// What the gateways report for the pool (held requests, in-flight, arrivals, TTFT).
    pub gateway: GatewayLoad,
}

/// The pool's size as the actuator sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas asked for (Kubernetes `spec.replicas`; the local actuator's target).
    pub wanted: u32,
    /// Replicas serving (passed their readiness check, not draining).
    pub ready: u32,
    /// Replicas that exist but are not ready yet: capacity on its way. A pod cold-starting for
    /// minutes counts here, so the policy does not ask for it again every interval.
    pub starting: u32,
}

/// One pod's load, as its `/metrics` said.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodLoad {
    /// Requests in the engine's waiting queue.
    pub waiting: f64,
    /// Requests in the running batch.
    pub running: f64,
    /// KV-cache use, 0..=1.
    pub kv_usage: f64,
}

/// The ready pods' loads, summed over those whose load is known.
///
/// Sums rather than a list so that a planner simulating thousands of pods, and the live reader, fill
/// the same small value; the policy only ever needs totals and counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodLoads {
    /// Ready pods whose load is known (a fresh scrape).
    pub known: u32,
    /// Ready pods whose load is unknown (scrape failed, timed out or is stale).
    pub unknown: u32,
    /// Sum of `waiting` over the known pods.
    pub waiting: f64,
    /// Sum of `running` over the known pods.
    pub running: f64,
    /// Sum of `kv_usage` over the known pods.
    pub kv_usage: f64,
    /// The most requests running on one pod that also had a waiting queue (0 if none had one): the
    /// concurrency a pod carries when full, whether its batch size or its KV cache is the limit.
    pub saturated_running: f64,
}

impl PodLoads {
    /// Adds one pod: `Some(load)` when its metrics were read, `None` when they were not.
    pub fn add(&mut self, load: Option<PodLoad>) {
        match load {
            Some(l) => {
                self.known += 1;
                self.waiting += finite_non_negative(l.waiting);
                self.running += finite_non_negative(l.running);
                self.kv_usage += finite_non_negative(l.kv_usage);
                if l.waiting > 0.0 {
                    self.saturated_running =
                        self.saturated_running.max(finite_non_negative(l.running));
                }
            }
            None => self.unknown += 1,
        }
    }

    /// Requests the known pods hold, waiting or running.
    pub fn in_flight(&self) -> f64 {
        self.waiting + self.running
    }
}

/// The gateways' view of the pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum GatewayLoad {
    /// No gateway is configured as a signal source. Nothing can then report demand while the pool
    /// is at zero, so the policy never scales such a pool to zero.
    #[default]
    NotConfigured,
    /// A gateway is configured but did not answer (or answered without this pool).
    Unknown,
    /// Fresh numbers, summed over every configured gateway.
    Known(GatewayReading),
}

/// What the gateways report for one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayReading {
    /// Requests held by flow control (no endpoint could take them: saturated, or zero ready). This
    /// is demand the pods cannot see, and at zero replicas the only demand there is.
    pub held: f64,
    /// Requests the gateways have sent to the pool's endpoints and not yet finished, if reported.
    pub in_flight: Option<f64>,
    /// Requests per second arriving for the pool, if known (needs two readings of a counter).
    pub arrival_rate: Option<f64>,
    /// Observed time-to-first-token p90, if reported.
    pub ttft_p90: Option<Duration>,
}

impl GatewayLoad {
    /// Held requests if known; `Some(0)` when no gateway is configured (nothing is held that anyone
    /// could know of), `None` when a configured gateway did not answer.
    pub fn held(&self) -> Option<f64> {
        match self {
            GatewayLoad::NotConfigured => Some(0.0),
            GatewayLoad::Unknown => None,
            GatewayLoad::Known(r) => Some(r.held),
        }
    }
}

/// NaN, infinities and negative numbers from a peer become 0, so one bad pod cannot poison a sum.
pub(crate) fn finite_non_negative(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}
