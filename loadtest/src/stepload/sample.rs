//! What is sampled every second: the autoscaler's replica gauges and the gateway's queues, read
//! from their admin `/metrics` pages with the gateway's own Prometheus text reader.
//!
//! A gauge missing from a page (the autoscaler before its first decision, an endpoint before its
//! first scrape) is `None`, never zero: the analysis carries the last known value forward instead
//! of pretending the pool had no pods.

use infergate_gateway::scrape::parse::parse;
use serde::Serialize;

/// One sampling instant of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// The schedule's offered load then, as a fraction of one pod's capacity.
    pub offered: f64,
    /// `infergate_autoscaler_desired_replicas`: the latest recommendation.
    pub desired: Option<f64>,
    /// `infergate_autoscaler_current_replicas`: pods asked for (ready + starting); what a cluster bills.
    pub current: Option<f64>,
    /// `infergate_autoscaler_ready_replicas`: pods serving.
    pub ready: Option<f64>,
    /// `infergate_pool_queued_requests`: requests the gateway holds (no pod could take them).
    pub held: Option<f64>,
    /// Sum of `infergate_endpoint_waiting_requests` over the pool's pods: the engines' queues.
    pub waiting: Option<f64>,
}

/// The autoscaler's `(desired, current, ready)` for `pool`.
pub fn read_autoscaler(page: &str, pool: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let (mut desired, mut current, mut ready) = (None, None, None);
    for s in parse(page) {
        let slot = match s.name {
            "infergate_autoscaler_desired_replicas" => &mut desired,
            "infergate_autoscaler_current_replicas" => &mut current,
            "infergate_autoscaler_ready_replicas" => &mut ready,
            _ => continue,
        };
        if s.label("pool").as_deref() == Some(pool) {
            *slot = Some(s.value);
        }
    }
    (desired, current, ready)
}

/// The gateway's `(held, waiting)` for `pool`: its flow-control queue and the sum of its
/// endpoints' engine queues (None when no endpoint has been scraped yet).
pub fn read_gateway(page: &str, pool: &str) -> (Option<f64>, Option<f64>) {
    let (mut held, mut waiting) = (None, None);
    for s in parse(page) {
        if s.label("pool").as_deref() != Some(pool) {
            continue;
        }
        match s.name {
            "infergate_pool_queued_requests" => held = Some(s.value),
            "infergate_endpoint_waiting_requests" => {
                *waiting.get_or_insert(0.0) += s.value;
            }
            _ => {}
        }
    }
    (held, waiting)
}

/// Requests the gateway answered 200 for `pool` so far (`infergate_requests_total`), summed over
/// models: the capacity probe's completion counter.
pub fn read_completed(page: &str, pool: &str) -> f64 {
    parse(page)
        .filter(|s| {
            s.name == "infergate_requests_total"
                && s.label("pool").as_deref() == Some(pool)
                && s.label("status").as_deref() == Some("200")
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTOSCALER: &str = "\
# TYPE infergate_autoscaler_desired_replicas gauge
infergate_autoscaler_desired_replicas{pool=\"sim\"} 3
infergate_autoscaler_desired_replicas{pool=\"other\"} 9
infergate_autoscaler_current_replicas{pool=\"sim\"} 2
infergate_autoscaler_ready_replicas{pool=\"sim\"} 1
";

    const GATEWAY: &str = "\
infergate_pool_queued_requests{pool=\"sim\"} 4
infergate_endpoint_waiting_requests{pool=\"sim\",endpoint=\"127.0.0.1:1\"} 2
infergate_endpoint_waiting_requests{pool=\"sim\",endpoint=\"127.0.0.1:2\"} 3
infergate_endpoint_waiting_requests{pool=\"other\",endpoint=\"127.0.0.1:3\"} 50
infergate_requests_total{pool=\"sim\",model=\"m\",status=\"200\"} 10
infergate_requests_total{pool=\"sim\",model=\"n\",status=\"200\"} 5
infergate_requests_total{pool=\"sim\",model=\"m\",status=\"503\"} 7
";

    #[test]
    fn reads_the_pools_gauges_only() {
        assert_eq!(
            read_autoscaler(AUTOSCALER, "sim"),
            (Some(3.0), Some(2.0), Some(1.0))
        );
        assert_eq!(read_autoscaler(AUTOSCALER, "none"), (None, None, None));
        assert_eq!(read_gateway(GATEWAY, "sim"), (Some(4.0), Some(5.0)));
        assert_eq!(read_gateway("", "sim"), (None, None));
        assert_eq!(read_completed(GATEWAY, "sim"), 15.0);
    }
}
