//! The autoscaler's own Prometheus metrics (docs/AUTOSCALER.md lists them).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PoolLabel {
    pub(super) pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DecisionLabels {
    pub(super) pool: String,
    pub(super) reason: &'static str,
}

/// The autoscaler's own metrics.
pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) desired: Family<PoolLabel, Gauge>,
    pub(super) current: Family<PoolLabel, Gauge>,
    pub(super) ready: Family<PoolLabel, Gauge>,
    pub(super) starting: Family<PoolLabel, Gauge>,
    pub(super) ratio: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    pub(super) decisions: Family<DecisionLabels, Counter>,
    pub(super) panic: Family<PoolLabel, Gauge>,
    pub(super) errors: Family<PoolLabel, Counter>,
    pub(super) is_leader: Gauge,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            desired: Family::default(),
            current: Family::default(),
            ready: Family::default(),
            starting: Family::default(),
            ratio: Family::default(),
            decisions: Family::default(),
            panic: Family::default(),
            errors: Family::default(),
            is_leader: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "infergate_autoscaler_desired_replicas",
            "Replicas the policy recommends for the pool",
            m.desired.clone(),
        );
        r.register(
            "infergate_autoscaler_current_replicas",
            "Replicas asked for (ready and starting)",
            m.current.clone(),
        );
        r.register(
            "infergate_autoscaler_ready_replicas",
            "Replicas serving",
            m.ready.clone(),
        );
        r.register(
            "infergate_autoscaler_starting_replicas",
            "Replicas starting (capacity on its way)",
            m.starting.clone(),
        );
        r.register(
            "infergate_autoscaler_demand_ratio",
            "The most loaded signal over its per-replica target (1 = at target)",
            m.ratio.clone(),
        );
        r.register(
            "infergate_autoscaler_decisions",
            "Decisions by reason (one per pool per interval)",
            m.decisions.clone(),
        );
        r.register(
            "infergate_autoscaler_panic_mode",
            "1 while the pool is in panic mode",
            m.panic.clone(),
        );
        r.register(
            "infergate_autoscaler_actuation_errors",
            "Failed reads or writes of the pool's replicas",
            m.errors.clone(),
        );
        r.register(
            "infergate_autoscaler_is_leader",
            "1 while this replica may write (always 1 without leader election)",
            m.is_leader.clone(),
        );
        m
    }

    pub(super) fn pool(&self, pool: &str) -> PoolLabel {
        PoolLabel {
            pool: pool.to_string(),
        }
    }

    pub(super) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
