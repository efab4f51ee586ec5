//! The gateway's own Prometheus metrics (names and meaning: docs/METRICS.md).
//!
//! Two kinds. Request metrics are written on the data path, so every handle a request touches is
//! created once at start, per (pool, model): a request increments atomics and never builds a label
//! set. Pool and endpoint state (queue depth, KV use, in-flight, ejected, queued, ready) is read at
//! scrape time by a [`prometheus_client::collector::Collector`] over the live pools, so the data
//! path never writes a gauge.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::flow::FlowControl;
use crate::picker::PickReason;
use crate::pool::Pool;
use crate::proxy::PoolCapacity;

/// A label value shared without copying (pool, model and endpoint names).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub pool: Name,
    pub model: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub pool: Name,
    pub model: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub pool: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub pool: Name,
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latency buckets (seconds): from a cached short answer to a long generation.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];
/// Time-to-first-token buckets (seconds): SLOs are usually 0.2 s to a few seconds.
const TTFT_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}
fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}

/// Statuses whose counters are made at start; others are made on first use.
const COMMON_STATUSES: [u16; 12] = [200, 400, 404, 405, 413, 429, 499, 500, 502, 503, 504, 422];

/// The request metrics of one (pool, model): what the data path touches, made once.
#[derive(Debug)]
pub struct ModelMetrics {
    labels: ModelLabels,
    pub received: Counter,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    statuses: [(u16, Counter); COMMON_STATUSES.len()],
    requests: Family<StatusLabels, Counter>,
}

impl ModelMetrics {
    /// Counts one answer with `status`.
    pub fn answered(&self, status: u16) {
        match self.statuses.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.requests
                    .get_or_create(&StatusLabels {
                        pool: self.labels.pool.clone(),
                        model: self.labels.model.clone(),
                        status,
                    })
                    .inc();
            }
        }
    }
}

/// The metrics of one pool that the data path writes.
#[derive(Debug)]
pub struct PoolMetrics {
    pub name: Name,
    pub retries: Counter,
    /// One counter per [`PickReason`], by its index, made with the pool: a pick counts without
    /// a label lookup (a lock and a hash of the labels per request).
    picks: [Counter; PickReason::ALL.len()],
    shed: Family<ReasonLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
}

impl PoolMetrics {
    pub fn picked(&self, reason: PickReason) {
        self.picks[reason.index()].inc();
    }

    pub fn shed(&self, reason: &'static str) {
        self.shed
            .get_or_create(&ReasonLabels {
                pool: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// `kind`: `connect`, `timeout`, `protocol`, `status_502`/`status_503` (retried answers),
    /// `stream` (failed after the first byte).
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels {
                pool: self.name.clone(),
                kind,
            })
            .inc();
    }
}

/// Every metric of one gateway, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<ModelLabels, Counter>,
    requests: Family<StatusLabels, Counter>,
    duration: HistogramFamily<ModelLabels>,
    ttft: HistogramFamily<ModelLabels>,
    prompt_tokens: Family<ModelLabels, Counter>,
    completion_tokens: Family<ModelLabels, Counter>,
    picks: Family<ReasonLabels, Counter>,
    shed: Family<ReasonLabels, Counter>,
    retries: Family<PoolLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            received: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            ttft: Family::new_with_constructor(ttft_histogram),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            picks: Family::default(),
            shed: Family::default(),
            retries: Family::default(),
            upstream_errors: Family::default(),
        };
        // Counter names lack `_total`: the encoder appends it.
        let r = &mut m.registry;
        r.register(
            "infergate_requests_received",
            "Requests received, counted on arrival (the arrival rate)",
            m.received.clone(),
        );
        r.register(
            "infergate_requests",
            "Requests answered, by the HTTP status sent (499: the client left first)",
            m.requests.clone(),
        );
        r.register(
            "infergate_request_duration_seconds",
            "Time from the request's arrival to the end of its answer",
            m.duration.clone(),
        );
        r.register(
            "infergate_time_to_first_token_seconds",
            "Time from the request's arrival to the first byte of the upstream's answer body",
            m.ttft.clone(),
        );
        r.register(
            "infergate_prompt_tokens",
            "Prompt tokens, from the answers' usage",
            m.prompt_tokens.clone(),
        );
        r.register(
            "infergate_completion_tokens",
            "Completion tokens, from the answers' usage",
            m.completion_tokens.clone(),
        );
        r.register(
            "infergate_picks",
            "Endpoint picks by the picker's reason",
            m.picks.clone(),
        );
        r.register(
            "infergate_shed_requests",
            "Requests refused by flow control, by reason",
            m.shed.clone(),
        );
        r.register(
            "infergate_retries",
            "Attempts on another endpoint after a connect error or a 502/503",
            m.retries.clone(),
        );
        r.register(
            "infergate_upstream_errors",
            "Failures of model-server endpoints, by kind",
            m.upstream_errors.clone(),
        );
        m
    }

    /// The handles of one (pool, model), made now so requests never build label sets.
    pub fn model(&self, pool: &Name, model: &str) -> Arc<ModelMetrics> {
        let labels = ModelLabels {
            pool: pool.clone(),
            model: model.into(),
        };
        let statuses = COMMON_STATUSES.map(|status| {
            let c = self.requests.get_or_create_owned(&StatusLabels {
                pool: labels.pool.clone(),
                model: labels.model.clone(),
                status,
            });
            (status, c)
        });
        Arc::new(ModelMetrics {
            received: self.received.get_or_create_owned(&labels),
            duration: self.duration.get_or_create_owned(&labels),
            ttft: self.ttft.get_or_create_owned(&labels),
            prompt_tokens: self.prompt_tokens.get_or_create_owned(&labels),
            completion_tokens: self.completion_tokens.get_or_create_owned(&labels),
            statuses,
            requests: self.requests.clone(),
            labels,
        })
    }

    /// The handles of one pool.
    pub fn pool(&self, name: &str) -> Arc<PoolMetrics> {
        let name = Name::from(name);
        Arc::new(PoolMetrics {
            retries: self
                .retries
                .get_or_create_owned(&PoolLabels { pool: name.clone() }),
            picks: PickReason::ALL.map(|reason| {
                self.picks.get_or_create_owned(&ReasonLabels {
                    pool: name.clone(),
                    reason: reason.as_str(),
                })
            }),
            shed: self.shed.clone(),
            upstream_errors: self.upstream_errors.clone(),
            name,
        })
    }

    /// Adds a collector of state read at scrape time (pools, endpoints).
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// A gauge or counter value read at scrape time, with its labels.
pub struct Sample<L> {
    pub labels: L,
    pub value: f64,
}

/// Writes one metric family of gauges read at scrape time.
pub fn encode_gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[Sample<L>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for s in samples {
        let metric = family.encode_family(&s.labels)?;
        ConstGauge::new(s.value).encode(metric)?;
    }
    Ok(())
}

/// Writes one metric family of counters read at scrape time (`name` without `_total`).
pub fn encode_counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[Sample<L>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for s in samples {
        let metric = family.encode_family(&s.labels)?;
        ConstCounter::new(s.value.max(0.0) as u64).encode(metric)?;
    }
    Ok(())
}

/// Labels of per-endpoint metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub pool: Name,
    pub endpoint: Name,
}

/// Pool and endpoint state, read from the live pools at scrape time.
pub struct PoolsCollector {
    pools: Vec<(Name, Arc<Pool>, FlowControl<PoolCapacity>)>,
}

impl std::fmt::Debug for PoolsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolsCollector")
            .field("pools", &self.pools.len())
            .finish()
    }
}

impl PoolsCollector {
    pub fn new(pools: Vec<(Name, Arc<Pool>, FlowControl<PoolCapacity>)>) -> Self {
        PoolsCollector { pools }
    }
}

impl Collector for PoolsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let mut queued = Vec::with_capacity(self.pools.len());
        let mut ready = Vec::with_capacity(self.pools.len());
        let mut per_endpoint: [Vec<Sample<EndpointLabels>>; 8] = Default::default();
        let [
            waiting,
            running,
            kv,
            inflight,
            ejected,
            ep_ready,
            errors,
            age,
        ] = &mut per_endpoint;
        for (name, pool, flow) in &self.pools {
            let pool_labels = PoolLabels { pool: name.clone() };
            queued.push(Sample {
                labels: pool_labels.clone(),
                value: flow.queued() as f64,
            });
            let mut usable = 0usize;
            for ep in pool.endpoints() {
                let health = pool.health(&ep, now);
                usable += usize::from(health.usable);
                let labels = EndpointLabels {
                    pool: name.clone(),
                    endpoint: Name::from(ep.label()),
                };
                let sample = |value: f64| Sample {
                    labels: labels.clone(),
                    value,
                };
                if let Some(load) = ep.load() {
                    if let Some(v) = load.waiting {
                        waiting.push(sample(v));
                    }
                    if let Some(v) = load.running {
                        running.push(sample(v));
                    }
                    if let Some(v) = load.kv_usage {
                        kv.push(sample(v));
                    }
                    age.push(sample(
                        now.saturating_duration_since(load.taken_at).as_secs_f64(),
                    ));
                }
                inflight.push(sample(f64::from(ep.inflight())));
                ejected.push(sample(f64::from(u8::from(health.ejected))));
                ep_ready.push(sample(f64::from(u8::from(health.usable))));
                errors.push(sample(ep.scrape_errors() as f64));
            }
            ready.push(Sample {
                labels: pool_labels,
                value: usable as f64,
            });
        }
        let e = &mut encoder;
        encode_gauges(
            e,
            "infergate_pool_queued_requests",
            "Requests held in the pool's flow-control queue now (the wake signal at zero replicas)",
            &queued,
        )?;
        encode_gauges(
            e,
            "infergate_pool_ready_endpoints",
            "Endpoints the picker may choose now",
            &ready,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_waiting_requests",
            "Requests waiting in the endpoint's engine queue, as last scraped",
            waiting,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_running_requests",
            "Requests in the endpoint's running batch, as last scraped",
            running,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_kv_cache_usage",
            "KV-cache use of the endpoint (0..1), as last scraped",
            kv,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_inflight_requests",
            "Requests this gateway has in flight to the endpoint",
            inflight,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_ejected",
            "1 while outlier detection has ejected the endpoint",
            ejected,
        )?;
        encode_gauges(
            e,
            "infergate_endpoint_ready",
            "1 while the picker may choose the endpoint",
            ep_ready,
        )?;
        encode_counters(
            e,
            "infergate_scrape_errors",
            "Failed scrapes of the endpoint's /metrics",
            errors,
        )?;
        encode_gauges(
            e,
            "infergate_scrape_age_seconds",
            "Age of the endpoint's last good scrape",
            age,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_are_exposed_with_their_labels() {
        let m = Metrics::new();
        let pool = m.pool("p");
        let model = m.model(&pool.name, "llama");
        model.received.inc();
        model.answered(200);
        model.answered(418);
        model.duration.observe(0.3);
        model.ttft.observe(0.05);
        model.prompt_tokens.inc_by(12);
        model.completion_tokens.inc_by(7);
        pool.picked(PickReason::LeastLoaded);
        pool.shed("timeout");
        pool.retries.inc();
        pool.upstream_error("connect");
        let text = m.encode();
        for line in [
            r#"infergate_requests_received_total{pool="p",model="llama"} 1"#,
            r#"infergate_requests_total{pool="p",model="llama",status="200"} 1"#,
            r#"infergate_requests_total{pool="p",model="llama",status="418"} 1"#,
            r#"infergate_requests_total{pool="p",model="llama",status="503"} 0"#,
            r#"infergate_request_duration_seconds_count{pool="p",model="llama"} 1"#,
            r#"infergate_time_to_first_token_seconds_bucket{le="0.05",pool="p",model="llama"} 1"#,
            r#"infergate_prompt_tokens_total{pool="p",model="llama"} 12"#,
            r#"infergate_completion_tokens_total{pool="p",model="llama"} 7"#,
            r#"infergate_picks_total{pool="p",reason="least_loaded"} 1"#,
            r#"infergate_picks_total{pool="p",reason="prefix_affinity"} 0"#,
            r#"infergate_shed_requests_total{pool="p",reason="timeout"} 1"#,
            r#"infergate_retries_total{pool="p"} 1"#,
            r#"infergate_upstream_errors_total{pool="p",kind="connect"} 1"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }
}
