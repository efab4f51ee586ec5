//! The scaler's memory: what past intervals recommended and did, so that the pure decision can apply
//! windows and rate limits without reading a clock.

use std::collections::VecDeque;
use std::time::Duration;

use infergate_config::AutoscalingConfig;

use super::Recommendation;

/// One pool's autoscaling settings plus the history the windows need.
///
/// Time is a [`Duration`] since any fixed origin the caller picks (the process start for the live
/// autoscaler, zero for a virtual-time planner); it only has to grow monotonically.
#[derive(Clone, Debug)]
pub struct ScalerState {
    /// The pool's autoscaling settings.
    pub config: AutoscalingConfig,
    /// `(time, raw recommendation)` over the last stabilization window.
    pub(crate) recommendations: VecDeque<(Duration, u32)>,
    /// When the first recommendation was recorded: a scale-down needs a full window of evidence.
    pub(crate) first_recorded: Option<Duration>,
    /// `(time, demand ratio)` over the last panic window.
    pub(crate) ratios: VecDeque<(Duration, f64)>,
    /// Last time demand was at or over the panic threshold.
    pub(crate) last_over_threshold: Option<Duration>,
    /// Since when the pool has been idle (nothing in flight or held), if it is.
    pub(crate) idle_since: Option<Duration>,
    /// `(time, from, to)` of replica changes within the longer rate-limit period.
    pub(crate) changes: VecDeque<(Duration, u32, u32)>,
    /// Learned concurrency of one full pod: the most requests seen running on a pod that also had
    /// a queue. Grows only; `None` until some pod has queued.
    pub(crate) capacity: Option<f64>,
}

impl ScalerState {
    /// A scaler with no history: it will not scale down before a full stabilization window.
    pub fn new(config: AutoscalingConfig) -> Self {
        ScalerState {
            config,
            recommendations: VecDeque::new(),
            first_recorded: None,
            ratios: VecDeque::new(),
            last_over_threshold: None,
            idle_since: None,
            changes: VecDeque::new(),
            capacity: None,
        }
    }

    /// Remembers a recommendation made at `now`: its raw demand for the stabilization window, its
    /// ratio for the panic window, idleness, and the replica change (if any) for the rate limits.
    ///
    /// Call it once per decision, whether or not the actuator managed to apply it: a failed write
    /// still counts against the rate limit, which keeps a flapping API from turning into a burst of
    /// retried scale-ups.
    pub fn record(&mut self, rec: &Recommendation, now: Duration) {
        let cfg = &self.config;
        if let Some(raw) = rec.evidence.raw {
            self.recommendations.push_back((now, raw));
            self.first_recorded.get_or_insert(now);
        }
        if let Some(ratio) = rec.evidence.ratio {
            self.ratios.push_back((now, ratio));
        }
        if rec.evidence.over_threshold {
            self.last_over_threshold = Some(now);
        }
        if rec.evidence.idle {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
        if let Some(c) = rec.evidence.saturated_running
            && c > self.capacity.unwrap_or(0.0)
        {
            self.capacity = Some(c);
        }
        if rec.replicas != rec.from {
            self.changes.push_back((now, rec.from, rec.replicas));
        }
        let stable = cfg.scale_down.stabilization_window;
        let panic = cfg.panic.window;
        let period = cfg.scale_up.period.max(cfg.scale_down.period);
        trim(&mut self.recommendations, now, stable, |e| e.0);
        trim(&mut self.ratios, now, panic, |e| e.0);
        trim(&mut self.changes, now, period, |e| e.0);
    }

    /// [`super::recommend`] then [`ScalerState::record`]: one interval of the loop.
    pub fn step(&mut self, signals: &crate::signals::Signals, now: Duration) -> Recommendation {
        let rec = super::recommend(self, signals, now);
        self.record(&rec, now);
        rec
    }

    /// Highest raw recommendation within `window` before `now` (entries exactly `window` old
    /// included), or `None` when none was recorded.
    pub(crate) fn max_recommendation(&self, now: Duration, window: Duration) -> Option<u32> {
        self.recommendations
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= window)
            .map(|(_, r)| *r)
            .max()
    }

    /// Mean demand ratio over the panic window, counting `current` as the newest sample.
    pub(crate) fn panic_ratio(&self, now: Duration, current: f64) -> f64 {
        let window = self.config.panic.window;
        let (sum, n) = self
            .ratios
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= window)
            .fold((current, 1.0), |(s, n), (_, r)| (s + r, n + 1.0));
        sum / n
    }

    /// The learned per-pod concurrency when full, if any pod has been seen queueing.
    pub fn learned_capacity(&self) -> Option<f64> {
        self.capacity
    }

    /// Replicas added (`up`) or removed (`!up`) within `period` before `now`.
    pub(crate) fn changed_within(&self, now: Duration, period: Duration, up: bool) -> u32 {
        self.changes
            .iter()
            .filter(|(t, _, _)| now.saturating_sub(*t) < period)
            .map(|&(_, from, to)| {
                if up {
                    to.saturating_sub(from)
                } else {
                    from.saturating_sub(to)
                }
            })
            .sum()
    }
}

fn trim<T>(q: &mut VecDeque<T>, now: Duration, keep: Duration, time: impl Fn(&T) -> Duration) {
    while q
        .front()
        .is_some_and(|e| now.saturating_sub(time(e)) > keep)
    {
        q.pop_front();
    }
}
