//! The pure half of the report: from samples and per-request points to the time series and the
//! summary of one pool. No I/O, so every figure of the table is unit-tested.
//!
//! - p90 TTFT over time: at each sample, the 90th percentile of the TTFTs of the requests *sent*
//!   in the trailing window (default 5 s; one second holds too few requests at 10% load for a
//!   percentile to mean anything). Keyed by send time, so a queue shows up where it was met.
//! - Pod-seconds: the integral of the replica gauge over the observation window, each sample's
//!   value held until the next (the gauges only change at decisions). `current` counts starting
//!   pods too, which is what a cluster bills; `ready` is what served.
//! - Scale events: changes of `current` between samples (each counted once, whatever its size).

use serde::Serialize;

use super::sample::Sample;
use crate::generate::report::TimelinePoint;

/// One row of the time series: a sample and the p90 TTFT of its trailing window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Row {
    /// The sample.
    #[serde(flatten)]
    pub sample: Sample,
    /// p90 TTFT (ms) of completed requests sent in the trailing window; None if there were none.
    pub p90_ttft_ms: Option<f64>,
    /// Requests sent in the trailing window (completed or not).
    pub sent: usize,
}

/// The summary of one pool's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSummary {
    /// `autoscaled` or `fixed`.
    pub label: String,
    /// The pool's bounds (`up --min --max`).
    pub min_replicas: u32,
    /// See `min_replicas`.
    pub max_replicas: u32,
    /// Requests attempted.
    pub requests: u64,
    /// Requests that did not complete.
    pub failed: u64,
    /// p50 / p90 / p99 TTFT (ms) of completed requests.
    pub ttft_ms: [Option<f64>; 3],
    /// Share of all requests that completed within the TTFT SLO.
    pub ttft_attainment: Option<f64>,
    /// Share of all requests that completed within every SLO (TTFT and mean ITL): the load
    /// generator's goodput.
    pub goodput: f64,
    /// Integral of `current` replicas (ready + starting) over the observation window.
    pub pod_seconds: f64,
    /// Integral of `ready` replicas.
    pub ready_pod_seconds: f64,
    /// Length of the observation window (s).
    pub window_s: f64,
    /// Increases of `current`.
    pub scale_ups: u32,
    /// Decreases of `current`.
    pub scale_downs: u32,
    /// Largest `current` seen.
    pub peak_replicas: f64,
    /// `current` at the last sample.
    pub final_replicas: f64,
}

/// Counts of the load generator's runs, summed over the steps.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Outcomes {
    /// Requests attempted.
    pub requests: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests that met every SLO.
    pub good: u64,
}

/// Builds the time series: each sample with the p90 TTFT of the requests sent in the `window_s`
/// seconds before it. `points` must be sorted by `sent_s`.
pub fn rows(samples: &[Sample], points: &[TimelinePoint], window_s: f64) -> Vec<Row> {
    samples
        .iter()
        .map(|s| {
            let lo = points.partition_point(|p| p.sent_s <= s.t_s - window_s);
            let hi = points.partition_point(|p| p.sent_s <= s.t_s);
            let in_window = &points[lo..hi.max(lo)];
            let mut ttfts: Vec<f64> = in_window
                .iter()
                .filter(|p| p.ok)
                .filter_map(|p| p.ttft_ms)
                .collect();
            Row {
                sample: *s,
                p90_ttft_ms: percentile(&mut ttfts, 0.9),
                sent: in_window.len(),
            }
        })
        .collect()
}

/// The `q` quantile (nearest rank) of `v`; sorts `v`.
pub fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Integral over `[samples[0].t_s, end_s]` of a gauge, each value held until the next sample;
/// a missing value carries the last known one forward (and counts as nothing before the first).
pub fn integral(samples: &[Sample], end_s: f64, gauge: impl Fn(&Sample) -> Option<f64>) -> f64 {
    let mut total = 0.0;
    let mut last: Option<f64> = None;
    for (k, s) in samples.iter().enumerate() {
        last = gauge(s).or(last);
        let next = samples.get(k + 1).map_or(end_s, |n| n.t_s).min(end_s);
        if next > s.t_s {
            total += last.unwrap_or(0.0) * (next - s.t_s);
        }
    }
    total
}

/// `(ups, downs)`: changes of the `current` gauge between known values.
pub fn scale_events(samples: &[Sample]) -> (u32, u32) {
    let mut known = samples.iter().filter_map(|s| s.current);
    let Some(mut prev) = known.next() else {
        return (0, 0);
    };
    let (mut ups, mut downs) = (0, 0);
    for c in known {
        if c > prev {
            ups += 1;
        } else if c < prev {
            downs += 1;
        }
        prev = c;
    }
    (ups, downs)
}

/// Summarizes one pool's run over the observation window `[0, end_s]`.
pub fn summarize(
    label: &str,
    bounds: (u32, u32),
    samples: &[Sample],
    points: &[TimelinePoint],
    outcomes: Outcomes,
    slo_ttft_ms: Option<f64>,
    end_s: f64,
) -> PoolSummary {
    let mut ttfts: Vec<f64> = points
        .iter()
        .filter(|p| p.ok)
        .filter_map(|p| p.ttft_ms)
        .collect();
    let ttft_ms = [0.5, 0.9, 0.99].map(|q| percentile(&mut ttfts, q));
    let share = |n: u64| {
        if outcomes.requests == 0 {
            0.0
        } else {
            n as f64 / outcomes.requests as f64
        }
    };
    // The timeline may be thinned on very long runs: judge the TTFT SLO on its share of points.
    let ttft_attainment = slo_ttft_ms.map(|slo| {
        let good = points
            .iter()
            .filter(|p| p.ok && p.ttft_ms.is_some_and(|t| t <= slo))
            .count();
        if points.is_empty() {
            0.0
        } else {
            good as f64 / points.len() as f64
        }
    });
    let (scale_ups, scale_downs) = scale_events(samples);
    let currents = samples.iter().filter_map(|s| s.current);
    PoolSummary {
        label: label.into(),
        min_replicas: bounds.0,
        max_replicas: bounds.1,
        requests: outcomes.requests,
        failed: outcomes.requests.saturating_sub(outcomes.completed),
        ttft_ms,
        ttft_attainment,
        goodput: share(outcomes.good),
        pod_seconds: integral(samples, end_s, |s| s.current),
        ready_pod_seconds: integral(samples, end_s, |s| s.ready),
        window_s: end_s,
        scale_ups,
        scale_downs,
        peak_replicas: currents.fold(0.0, f64::max),
        final_replicas: samples.iter().rev().find_map(|s| s.current).unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, current: Option<f64>) -> Sample {
        Sample {
            t_s,
            current,
            ready: current.map(|c| (c - 1.0).max(0.0)),
            ..Sample::default()
        }
    }

    fn point(sent_s: f64, ttft_ms: f64) -> TimelinePoint {
        TimelinePoint {
            sent_s,
            ttft_ms: Some(ttft_ms),
            ok: true,
        }
    }

    #[test]
    fn integral_holds_values_and_carries_missing_ones() {
        let s = [
            sample(0.0, Some(1.0)),
            sample(1.0, None),
            sample(2.0, Some(3.0)),
            sample(4.0, Some(1.0)),
        ];
        // 1 + 1 (carried) + 3*2 + 1*1 (until end 5)
        assert_eq!(integral(&s, 5.0, |s| s.current), 9.0);
        // Truncated at the end of the window.
        assert_eq!(integral(&s, 2.0, |s| s.current), 2.0);
        assert_eq!(integral(&[], 5.0, |s| s.current), 0.0);
    }

    #[test]
    fn counts_scale_events_once_each() {
        let s = [
            sample(0.0, None),
            sample(1.0, Some(1.0)),
            sample(2.0, Some(3.0)),
            sample(3.0, None),
            sample(4.0, Some(3.0)),
            sample(5.0, Some(2.0)),
            sample(6.0, Some(1.0)),
        ];
        assert_eq!(scale_events(&s), (1, 2));
    }

    #[test]
    fn p90_of_the_trailing_window_by_send_time() {
        let mut points: Vec<TimelinePoint> =
            (1..=10).map(|k| point(k as f64 * 0.1, k as f64)).collect();
        points.push(TimelinePoint {
            sent_s: 1.5,
            ttft_ms: None,
            ok: false,
        });
        points.push(point(3.0, 500.0));
        let samples = [
            sample(1.0, Some(1.0)),
            sample(2.0, Some(1.0)),
            sample(9.0, None),
        ];
        let r = rows(&samples, &points, 5.0);
        assert_eq!(r[0].p90_ttft_ms, Some(9.0));
        assert_eq!(r[0].sent, 10);
        assert_eq!(r[1].sent, 11, "the failed request counts as sent");
        assert_eq!(r[2].p90_ttft_ms, None, "nothing sent in (4, 9]");
        assert_eq!(rows(&samples, &points, 1.5)[1].p90_ttft_ms, Some(10.0));
    }

    #[test]
    fn summary_figures() {
        let samples = [
            sample(0.0, Some(1.0)),
            sample(1.0, Some(2.0)),
            sample(2.0, Some(1.0)),
        ];
        let points = [point(0.1, 100.0), point(0.2, 300.0), point(1.0, 900.0)];
        let outcomes = Outcomes {
            requests: 4,
            completed: 3,
            good: 2,
        };
        let s = summarize(
            "autoscaled",
            (1, 4),
            &samples,
            &points,
            outcomes,
            Some(500.0),
            3.0,
        );
        assert_eq!(s.failed, 1);
        assert_eq!(s.goodput, 0.5);
        assert_eq!(s.ttft_attainment, Some(2.0 / 3.0));
        assert_eq!(s.ttft_ms[1], Some(900.0));
        assert_eq!(s.pod_seconds, 4.0);
        assert_eq!(s.ready_pod_seconds, 1.0);
        assert_eq!((s.scale_ups, s.scale_downs), (1, 1));
        assert_eq!((s.peak_replicas, s.final_replicas), (2.0, 1.0));
    }
}
