//! Demand: how many replicas the observed load asks for, before any window, limit or bound.

use infergate_config::AutoscalingConfig;

use crate::signals::{GatewayLoad, Signals};

/// The load of one instant, in replicas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Demand {
    /// Replicas needed to bring every signal to its per-replica target; `None` when nothing is known.
    pub required: Option<f64>,
    /// `required / current` (the most loaded signal over its target); `None` without ready pods.
    pub ratio: Option<f64>,
    /// The replicas the ratio was measured on (ready pods).
    pub current: u32,
    /// Some source is unknown: the numbers may be too low, so they may justify more, never fewer.
    pub partial: bool,
    /// Held requests (0 when not reported).
    pub held: f64,
    /// Nothing in flight, nothing held, and every source known.
    pub idle: bool,
}

/// Turns the signals into replicas-at-target.
///
/// Each signal is a per-replica average over the pods that reported, extrapolated to every ready
/// pod, divided by its target: `ratio_i = avg_i / target_i`; `required = current * max_i ratio_i`
/// (the HPA formula, with the most loaded signal deciding). The gateway's held requests join the
/// waiting queue: they are requests no pod has seen yet.
///
/// `capacity` is the learned per-pod concurrency (see [`super::ScalerState`]): with it, in-flight
/// requests per pod over `capacity + waiting target` is one more signal, and the one that keeps the
/// pool from flapping. The waiting queue alone is zero below saturation, so it would say "fewer
/// pods" right up to the size at which the queue comes back; in-flight is proportional to load and
/// says where that size is.
pub(crate) fn measure(cfg: &AutoscalingConfig, s: &Signals, capacity: Option<f64>) -> Demand {
    let t = &cfg.targets;
    let held_known = s.gateway.held();
    let held = held_known.unwrap_or(0.0).max(0.0);
    let pods = &s.pods;
    let current = s.replicas.ready.max(pods.known);
    let gateway_in_flight = match &s.gateway {
        GatewayLoad::Known(r) => r.in_flight.unwrap_or(0.0),
        _ => 0.0,
    };
    let idle = pods.unknown == 0
        && matches!(s.gateway, GatewayLoad::Known(_))
        && held == 0.0
        && gateway_in_flight <= 0.0
        && pods.in_flight() <= 0.0;
    let partial = pods.unknown > 0 || held_known.is_none();

    if pods.known == 0 {
        // No pod told us anything: with ready pods, that is ignorance; without ready pods, only the
        // gateway's held requests can show demand (the wake-from-zero path).
        let required = if current > 0 || held_known.is_none() {
            None
        } else if held > 0.0 {
            Some((held / positive(t.waiting_per_replica).unwrap_or(1.0)).max(1.0))
        } else {
            Some(0.0)
        };
        return Demand {
            required,
            ratio: None,
            current,
            partial,
            held,
            idle,
        };
    }

    let n = f64::from(current);
    let known = f64::from(pods.known);
    let mut ratio: f64 = 0.0;
    if let Some(target) = positive(t.waiting_per_replica) {
        ratio = ratio.max((pods.waiting / known + held / n) / target);
    }
    if let (Some(c), Some(w)) = (capacity.and_then(positive), positive(t.waiting_per_replica)) {
        ratio = ratio.max((pods.in_flight() / known + held / n) / (c + w));
    }
    if let Some(target) = positive(t.kv_usage) {
        ratio = ratio.max(pods.kv_usage / known / target);
    }
    if let Some(target) = t.running_per_replica.and_then(positive) {
        ratio = ratio.max(pods.running / known / target);
    }
    if let (Some(target), GatewayLoad::Known(r)) = (t.ttft_p90, &s.gateway)
        && let Some(observed) = r.ttft_p90
        && !target.is_zero()
    {
        ratio = ratio.max(observed.as_secs_f64() / target.as_secs_f64());
    }
    Demand {
        required: Some(n * ratio),
        ratio: Some(ratio),
        current,
        partial,
        held,
        idle,
    }
}

fn positive(v: f64) -> Option<f64> {
    (v.is_finite() && v > 0.0).then_some(v)
}
