//! The autoscaling policy: `(&ScalerState, &Signals, now) -> Recommendation`, pure and synchronous.
//!
//! No I/O and no clock: time arrives as a [`Duration`] since an origin the caller picks, so the live
//! autoscaler, the property tests and the virtual-time planner run exactly this code.
//!
//! One decision, in order (docs/AUTOSCALER.md has the long form):
//! 1. **Demand.** Each signal's per-replica average over its target (engine waiting queue plus the
//!    gateway's held requests, in-flight over the learned per-pod capacity, KV use, optionally
//!    running requests and TTFT p90); the most loaded
//!    decides: `raw = ceil(ready * max_i ratio_i)`, or `ready` while every ratio is within the
//!    tolerance of 1. Unknown sources never read as zero: with nothing known the pool holds, with
//!    part unknown it may grow but not shrink.
//! 2. **Up** at once when `raw` exceeds the replicas already asked for (ready *and starting*: a
//!    cold start is capacity on its way, not a reason to ask again), within the rate limit.
//! 3. **Panic** (Knative): while the mean ratio over the short panic window is at or over the
//!    threshold, and for a full stabilization window after, the pool never shrinks.
//! 4. **Down** only when every raw recommendation of the stabilization window is below what is
//!    asked for (the window's maximum wins), nothing is held, no source is unknown, and within the
//!    down rate limit.
//! 5. **Zero** (min 0 only) after the idle window with nothing in flight or held and a gateway that
//!    can see the next request; one held request at zero wakes the pool at once.
//! 6. **Bounds**: always within `[min_replicas, max_replicas]`.

mod demand;
mod state;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use state::ScalerState;

use std::time::Duration;

use crate::signals::{GatewayLoad, Signals};

/// What the policy asks for, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// The replica count to set.
    pub replicas: u32,
    /// The replica count asked for when the decision was made (`Signals::replicas.wanted`).
    pub from: u32,
    pub reason: Reason,
    pub mode: Mode,
    /// The numbers behind the decision; [`ScalerState::record`] keeps them for later windows.
    pub evidence: Evidence,
}

impl Recommendation {
    /// Whether applying it changes the replica count.
    pub fn is_change(&self) -> bool {
        self.replicas != self.from
    }
}

/// The measurements a decision rested on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evidence {
    /// Replicas the instant's load asks for (before windows, limits and bounds); `None` when
    /// nothing was known.
    pub raw: Option<u32>,
    /// The most loaded signal over its target (1.0 = exactly at target); `None` without data or
    /// without ready pods.
    pub ratio: Option<f64>,
    /// The panic window's mean ratio was at or over the panic threshold.
    pub over_threshold: bool,
    /// Nothing in flight, nothing held, every source known.
    pub idle: bool,
    /// Running requests on the fullest pod that had a queue, if one had: teaches the scaler a
    /// pod's concurrency.
    pub saturated_running: Option<f64>,
}

/// Stable or panic (Knative's two modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Stable,
    /// A burst: demand at or over `panic.threshold` times capacity within the panic window, or less
    /// than a stabilization window ago. Scale up only.
    Panic,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stable => "stable",
            Mode::Panic => "panic",
        }
    }
}

/// Why the policy recommends what it does. `as_str` is the `reason` label of
/// `infergate_autoscaler_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Load over target: more replicas, at once.
    ScaleUp,
    /// Scale-up during panic mode (a burst).
    ScaleUpPanic,
    /// Load under target for a whole stabilization window: fewer replicas, within the rate limit.
    ScaleDown,
    /// Idle for the idle window with `min_replicas: 0`: no replicas.
    ScaleToZero,
    /// At zero, requests are held at the gateway: start replicas now.
    WakeFromZero,
    /// Load within tolerance of target: no change.
    HoldStable,
    /// More capacity is needed than is ready, but enough is already starting.
    HoldStarting,
    /// A source is unknown (pod or gateway metrics missing or stale): no scale-down on guesswork.
    HoldUnknown,
    /// A change is due but the rate limit allows none this period.
    HoldRateLimited,
    /// Load is under target, but not for a whole stabilization window yet.
    HoldStabilizing,
    /// Load is under target, but panic mode forbids scaling down.
    HoldPanic,
    /// Load is under target, but the gateway holds requests: they are demand.
    HoldQueued,
    /// Held at (or raised to) `min_replicas`.
    ClampMin,
    /// Held at (or lowered to) `max_replicas`.
    ClampMax,
}

impl Reason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [Reason; 14] = [
        Reason::ScaleUp,
        Reason::ScaleUpPanic,
        Reason::ScaleDown,
        Reason::ScaleToZero,
        Reason::WakeFromZero,
        Reason::HoldStable,
        Reason::HoldStarting,
        Reason::HoldUnknown,
        Reason::HoldRateLimited,
        Reason::HoldStabilizing,
        Reason::HoldPanic,
        Reason::HoldQueued,
        Reason::ClampMin,
        Reason::ClampMax,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUp => "scale_up",
            Reason::ScaleUpPanic => "scale_up_panic",
            Reason::ScaleDown => "scale_down",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::WakeFromZero => "wake_from_zero",
            Reason::HoldStable => "hold_stable",
            Reason::HoldStarting => "hold_starting",
            Reason::HoldUnknown => "hold_unknown",
            Reason::HoldRateLimited => "hold_rate_limited",
            Reason::HoldStabilizing => "hold_stabilizing",
            Reason::HoldPanic => "hold_panic",
            Reason::HoldQueued => "hold_queued",
            Reason::ClampMin => "clamp_min",
            Reason::ClampMax => "clamp_max",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one pool at `now`. Pure: the same inputs give the same answer.
pub fn recommend(state: &ScalerState, signals: &Signals, now: Duration) -> Recommendation {
    let cfg = &state.config;
    let min = cfg.min_replicas;
    let max = cfg.max_replicas.max(min);
    let wanted = signals.replicas.wanted;
    let capacity = match signals.pods.saturated_running {
        c if c > 0.0 => Some(state.capacity.unwrap_or(0.0).max(c)),
        _ => state.capacity,
    };
    let d = demand::measure(cfg, signals, capacity);

    let raw = d.required.map(|required| match d.ratio {
        Some(r) if (r - 1.0).abs() <= cfg.tolerance => d.current,
        // The epsilon keeps 2.0000000001 (float noise) from asking for a third replica.
        _ => (required - 1e-9).ceil().max(0.0).min(f64::from(u32::MAX)) as u32,
    });

    let over_threshold = cfg.panic.enabled
        && d.current > 0
        && d.ratio
            .is_some_and(|r| state.panic_ratio(now, r) >= cfg.panic.threshold);
    let stable_window = cfg.scale_down.stabilization_window;
    let panicking = cfg.panic.enabled
        && (over_threshold
            || state
                .last_over_threshold
                .is_some_and(|t| now.saturating_sub(t) < stable_window));
    let mode = if panicking { Mode::Panic } else { Mode::Stable };
    let evidence = Evidence {
        raw,
        ratio: d.ratio,
        over_threshold,
        idle: d.idle,
        saturated_running: (signals.pods.saturated_running > 0.0)
            .then_some(signals.pods.saturated_running),
    };

    let (target, reason) = match raw {
        None => (wanted, Reason::HoldUnknown),
        Some(raw) if wanted == 0 => {
            if raw == 0 {
                (0, Reason::HoldStable)
            } else {
                let t = limit_up(state, now, wanted, raw);
                if t > 0 {
                    (t, Reason::WakeFromZero)
                } else {
                    (0, Reason::HoldRateLimited)
                }
            }
        }
        Some(raw) if raw > wanted => {
            let t = limit_up(state, now, wanted, raw.min(max.max(wanted)));
            if raw > max && wanted >= max {
                (wanted, Reason::ClampMax)
            } else if t <= wanted {
                (wanted, Reason::HoldRateLimited)
            } else if panicking {
                (t, Reason::ScaleUpPanic)
            } else {
                (t, Reason::ScaleUp)
            }
        }
        Some(raw) => {
            let idle_for = match (d.idle, state.idle_since) {
                (true, Some(since)) => now.saturating_sub(since),
                _ => Duration::ZERO,
            };
            let to_zero = min == 0
                && d.idle
                && idle_for >= cfg.idle_window
                && !panicking
                && matches!(signals.gateway, GatewayLoad::Known(_));
            if to_zero {
                (0, Reason::ScaleToZero)
            } else if raw == wanted {
                if signals.replicas.starting > 0 {
                    (wanted, Reason::HoldStarting)
                } else {
                    (wanted, Reason::HoldStable)
                }
            } else {
                scale_down(state, signals, &d, now, raw, panicking)
            }
        }
    };

    let (replicas, reason) = if target > max {
        (max, Reason::ClampMax)
    } else if target < min {
        (min, Reason::ClampMin)
    } else {
        (target, reason)
    };
    Recommendation {
        replicas,
        from: wanted,
        reason,
        mode,
        evidence,
    }
}

/// The down path: every gate that can keep replicas that the instant's load does not need.
fn scale_down(
    state: &ScalerState,
    signals: &Signals,
    d: &demand::Demand,
    now: Duration,
    raw: u32,
    panicking: bool,
) -> (u32, Reason) {
    let cfg = &state.config;
    let wanted = signals.replicas.wanted;
    if d.partial {
        return (wanted, Reason::HoldUnknown);
    }
    if panicking {
        return (wanted, Reason::HoldPanic);
    }
    if d.held > 0.0 {
        return (wanted, Reason::HoldQueued);
    }
    // Zero is reached only through the idle window (ScaleToZero), never by a load estimate.
    let floor = cfg.min_replicas.max(1);
    if wanted <= floor {
        return (wanted, Reason::ClampMin);
    }
    let window = cfg.scale_down.stabilization_window;
    let covered = state
        .first_recorded
        .is_some_and(|first| now.saturating_sub(first) >= window);
    let candidate = state
        .max_recommendation(now, window)
        .unwrap_or(raw)
        .max(raw);
    if !covered || candidate >= wanted {
        return (wanted, Reason::HoldStabilizing);
    }
    let target = candidate.max(floor);
    let down = &cfg.scale_down;
    let removed = state.changed_within(now, down.period, false);
    let start = wanted.saturating_add(removed);
    let by_percent = (f64::from(start) * down.max_percent / 100.0).floor();
    let allowed = down.max_pods.max(clamp_u32(by_percent));
    let lowest = start.saturating_sub(allowed);
    let target = target.max(lowest);
    if target >= wanted {
        (wanted, Reason::HoldRateLimited)
    } else {
        (target, Reason::ScaleDown)
    }
}

/// Caps a scale-up from `wanted` toward `raw` at the larger of `max_percent`% or `max_pods` added
/// per period, counting what was already added within the period.
fn limit_up(state: &ScalerState, now: Duration, wanted: u32, raw: u32) -> u32 {
    let up = &state.config.scale_up;
    let added = state.changed_within(now, up.period, true);
    let start = wanted.saturating_sub(added);
    let by_percent = (f64::from(start) * up.max_percent / 100.0).ceil();
    let cap = start.saturating_add(up.max_pods.max(clamp_u32(by_percent)));
    raw.min(cap.max(wanted))
}

fn clamp_u32(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        v.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}
