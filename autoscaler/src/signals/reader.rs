//! The I/O shell that fills [`Signals`](super::Signals): each interval it reads the pods' own
//! `/metrics` and/or the gateways' admin `/metrics`, and keeps what it needs across reads.
//!
//! - Pods: the engine's waiting queue, running batch and KV use, in the pool's metric flavor
//!   (parsed by the gateway's own reader, `infergate_gateway::scrape`).
//! - Gateways: held requests (`infergate_pool_queued_requests`), in-flight
//!   (`infergate_endpoint_inflight_requests`), arrivals (`infergate_requests_received_total`, a
//!   counter: the rate needs two reads) and TTFT p90 (`infergate_time_to_first_token_seconds`, a
//!   histogram: the quantile of the buckets' growth since the previous read). Without pod reads,
//!   the gateways' mirrors of each endpoint's queue and KV use stand in.
//!
//! A failed read reuses the last good one while it is younger than `stale_after`; past that the
//! source is unknown, and unknown is never zero.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use infergate_config::{Flavor, SignalsConfig};
use infergate_gateway::scrape::parse::parse_filtered;
use tokio::task::JoinSet;

use super::fetch::HttpClient;
use super::{GatewayLoad, GatewayReading, PodLoad, PodLoads};

/// What one gateway page says about one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayPoolPage {
    pub held: f64,
    pub in_flight: f64,
    /// `infergate_requests_received_total`, summed over models.
    pub received: f64,
    /// TTFT histogram: `(le, cumulative count)`, summed over models, sorted by `le`.
    pub ttft_buckets: Vec<(f64, f64)>,
    /// Per-endpoint mirrors: `endpoint label -> load`.
    pub endpoints: HashMap<String, PodLoad>,
}

/// Reads a gateway's admin `/metrics` into per-pool pages. Pure.
pub fn parse_gateway_page(text: &str) -> HashMap<String, GatewayPoolPage> {
    let mut pools: HashMap<String, GatewayPoolPage> = HashMap::new();
    parse_filtered(
        text,
        |name| {
            matches!(
                name,
                "infergate_pool_queued_requests"
                    | "infergate_requests_received_total"
                    | "infergate_time_to_first_token_seconds_bucket"
                    | "infergate_endpoint_inflight_requests"
                    | "infergate_endpoint_waiting_requests"
                    | "infergate_endpoint_running_requests"
                    | "infergate_endpoint_kv_cache_usage"
            )
        },
        |s| {
            let Some(pool) = s.label("pool") else { return };
            let page = pools.entry(pool.into_owned()).or_default();
            let v = super::finite_non_negative(s.value);
            let endpoint = || s.label("endpoint").map(|e| e.into_owned());
            match s.name {
                "infergate_pool_queued_requests" => page.held += v,
                "infergate_requests_received_total" => page.received += v,
                "infergate_time_to_first_token_seconds_bucket" => {
                    let le = match s.label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(x) => match x.parse::<f64>() {
                            Ok(le) => le,
                            Err(_) => return,
                        },
                        None => return,
                    };
                    match page.ttft_buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some(bucket) => bucket.1 += v,
                        None => page.ttft_buckets.push((le, v)),
                    }
                }
                "infergate_endpoint_inflight_requests" => {
                    page.in_flight += v;
                    if let Some(e) = endpoint() {
                        // In-flight at the gateway = running + waiting at the pod; the running
                        // share is what is not waiting (set once the waiting line is read).
                        page.endpoints.entry(e).or_default().running += v;
                    }
                }
                "infergate_endpoint_waiting_requests" => {
                    if let Some(e) = endpoint() {
                        page.endpoints.entry(e).or_default().waiting = v;
                    }
                }
                "infergate_endpoint_kv_cache_usage" => {
                    if let Some(e) = endpoint() {
                        page.endpoints.entry(e).or_default().kv_usage = v;
                    }
                }
                _ => {}
            }
        },
    );
    for page in pools.values_mut() {
        page.ttft_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    pools
}

/// The `q` quantile of the observations a cumulative histogram gained between two reads, by
/// linear interpolation within the bucket (as PromQL's `histogram_quantile`). `None` without new
/// observations or after a counter reset.
pub fn quantile_of_growth(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let growth: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, n - was)
        })
        .collect();
    if growth.iter().any(|(_, d)| *d < 0.0) {
        return None;
    }
    let total = growth.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, cumulative) in &growth {
        if cumulative >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = cumulative - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, cumulative);
    }
    None
}

/// A pool's pod load as read this interval, with each pod's own numbers for victim choice.
#[derive(Clone, Debug, Default)]
pub struct PodReading {
    pub loads: PodLoads,
    /// `url -> load` for the pods whose load is known.
    pub per_pod: HashMap<String, PodLoad>,
}

struct GatewayState {
    url: String,
    /// Last good page and when it was read.
    last: Option<(Instant, HashMap<String, GatewayPoolPage>)>,
    /// The good page before it (for rates and histogram growth).
    previous: Option<(Instant, HashMap<String, GatewayPoolPage>)>,
}

/// Reads signals over HTTP; one per autoscaler, shared by its pools.
pub struct SignalsReader {
    client: HttpClient,
    config: SignalsConfig,
    timeout: Duration,
    pods: HashMap<String, (Instant, PodLoad)>,
    gateways: Vec<GatewayState>,
}

impl SignalsReader {
    /// `timeout` bounds each HTTP read (keep it under the interval).
    pub fn new(config: SignalsConfig, client: HttpClient, timeout: Duration) -> Self {
        let gateways = config
            .gateways
            .iter()
            .map(|url| GatewayState {
                url: url.clone(),
                last: None,
                previous: None,
            })
            .collect();
        SignalsReader {
            client,
            config,
            timeout,
            pods: HashMap::new(),
            gateways,
        }
    }

    /// Whether pods are read directly (`signals.pods`).
    pub fn reads_pods(&self) -> bool {
        self.config.pods
    }

    /// Reads every configured gateway once (call once per interval, before the pools).
    pub async fn refresh_gateways(&mut self) {
        let mut set = JoinSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let client = self.client.clone();
            let url = g.url.clone();
            let timeout = self.timeout;
            set.spawn(async move { (i, client.get_text(&url, timeout).await) });
        }
        let now = Instant::now();
        while let Some(done) = set.join_next().await {
            let Ok((i, result)) = done else { continue };
            let g = &mut self.gateways[i];
            match result {
                Ok(text) => {
                    let page = parse_gateway_page(&text);
                    g.previous = g.last.take();
                    g.last = Some((now, page));
                }
                Err(e) => tracing::debug!(gateway = %g.url, "gateway read failed: {e}"),
            }
        }
    }

    /// The gateways' view of `pool` from the last refresh.
    pub fn gateway_load(&self, pool: &str) -> GatewayLoad {
        if self.gateways.is_empty() {
            return GatewayLoad::NotConfigured;
        }
        let now = Instant::now();
        let mut reading = GatewayReading::default();
        let mut in_flight = 0.0;
        let mut rate = Some(0.0);
        let mut before = Vec::new();
        let mut after = Vec::new();
        for g in &self.gateways {
            let Some((at, last)) = &g.last else {
                return GatewayLoad::Unknown;
            };
            if now.saturating_duration_since(*at) > self.config.stale_after {
                return GatewayLoad::Unknown;
            }
            // A gateway that does not list the pool yet has nothing for it: zero, not unknown.
            let empty = GatewayPoolPage::default();
            let page = last.get(pool).unwrap_or(&empty);
            reading.held += page.held;
            in_flight += page.in_flight;
            let prev = g
                .previous
                .as_ref()
                .map(|(t, p)| (*t, p.get(pool).cloned().unwrap_or_default()));
            match &prev {
                Some((t, p)) if page.received >= p.received && at > t => {
                    let dt = at.saturating_duration_since(*t).as_secs_f64();
                    rate = rate.map(|r| r + (page.received - p.received) / dt);
                }
                _ => rate = None,
            }
            merge_buckets(&mut after, &page.ttft_buckets);
            if let Some((_, p)) = &prev {
                merge_buckets(&mut before, &p.ttft_buckets);
            }
        }
        reading.in_flight = Some(in_flight);
        reading.arrival_rate = rate;
        reading.ttft_p90 = quantile_of_growth(&before, &after, 0.9).map(Duration::from_secs_f64);
        GatewayLoad::Known(reading)
    }

    /// Reads the pods at `urls` (the pool's ready pods) in `flavor`; or, without pod reads, takes
    /// the gateways' mirrors of them.
    pub async fn read_pods(&mut self, pool: &str, flavor: Flavor, urls: &[String]) -> PodReading {
        let mut reading = PodReading::default();
        if !self.config.pods {
            for url in urls {
                let load = self.mirror_of(pool, url);
                if let Some(l) = load {
                    reading.per_pod.insert(url.clone(), l);
                }
                reading.loads.add(load);
            }
            return reading;
        }
        let mut set = JoinSet::new();
        for url in urls {
            let client = self.client.clone();
            let url = url.clone();
            let timeout = self.timeout;
            set.spawn(async move {
                let text = client.get_text(&format!("{url}/metrics"), timeout).await;
                (url, text)
            });
        }
        let now = Instant::now();
        while let Some(done) = set.join_next().await {
            let Ok((url, text)) = done else { continue };
            let fresh = text.ok().and_then(|t| {
                infergate_gateway::scrape::extract(&t, flavor, now)
                    .ok()
                    .map(|l| PodLoad {
                        waiting: l.waiting.unwrap_or(0.0),
                        running: l.running.unwrap_or(0.0),
                        kv_usage: l.kv_usage.unwrap_or(0.0),
                    })
            });
            if let Some(load) = fresh {
                self.pods.insert(url.clone(), (now, load));
            }
        }
        for url in urls {
            let load = self
                .pods
                .get(url)
                .filter(|(at, _)| now.saturating_duration_since(*at) <= self.config.stale_after)
                .map(|(_, l)| *l);
            if let Some(l) = load {
                reading.per_pod.insert(url.clone(), l);
            }
            reading.loads.add(load);
        }
        // Forget pods that are gone.
        self.pods
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= Duration::from_secs(600));
        reading
    }

    /// A pod's load from the gateways' endpoint mirrors (max of queue and KV, sum of in-flight).
    fn mirror_of(&self, pool: &str, url: &str) -> Option<PodLoad> {
        let now = Instant::now();
        let mut found: Option<PodLoad> = None;
        for g in &self.gateways {
            let (at, last) = g.last.as_ref()?;
            if now.saturating_duration_since(*at) > self.config.stale_after {
                return None;
            }
            let Some(ep) = last.get(pool).and_then(|p| {
                p.endpoints
                    .iter()
                    .find(|(label, _)| label_matches(label, url))
                    .map(|(_, l)| *l)
            }) else {
                continue;
            };
            let f = found.get_or_insert_with(PodLoad::default);
            f.waiting = f.waiting.max(ep.waiting);
            f.kv_usage = f.kv_usage.max(ep.kv_usage);
            f.running += ep.running;
        }
        found.map(|mut l| {
            // The gateways' in-flight includes what waits at the engine.
            l.running = (l.running - l.waiting).max(0.0);
            l
        })
    }
}

/// A gateway labels an endpoint by its URL or its `host:port`.
fn label_matches(label: &str, url: &str) -> bool {
    label == url || url.strip_prefix("http://") == Some(label)
}

fn merge_buckets(into: &mut Vec<(f64, f64)>, from: &[(f64, f64)]) {
    for &(le, n) in from {
        match into.iter_mut().find(|(b, _)| *b == le) {
            Some(b) => b.1 += n,
            None => into.push((le, n)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"
# HELP infergate_pool_queued_requests Requests held
# TYPE infergate_pool_queued_requests gauge
infergate_pool_queued_requests{pool="llama"} 3
infergate_pool_queued_requests{pool="qwen"} 0
infergate_requests_received_total{pool="llama",model="a"} 10
infergate_requests_received_total{pool="llama",model="b"} 5
infergate_time_to_first_token_seconds_bucket{le="0.1",pool="llama",model="a"} 4
infergate_time_to_first_token_seconds_bucket{le="1.0",pool="llama",model="a"} 9
infergate_time_to_first_token_seconds_bucket{le="+Inf",pool="llama",model="a"} 10
infergate_endpoint_inflight_requests{pool="llama",endpoint="http://127.0.0.1:1"} 6
infergate_endpoint_waiting_requests{pool="llama",endpoint="http://127.0.0.1:1"} 2
infergate_endpoint_kv_cache_usage{pool="llama",endpoint="http://127.0.0.1:1"} 0.5
"#;

    #[test]
    fn gateway_page_gives_held_arrivals_inflight_and_endpoints() {
        let pools = parse_gateway_page(PAGE);
        let llama = &pools["llama"];
        assert_eq!(llama.held, 3.0);
        assert_eq!(llama.received, 15.0);
        assert_eq!(llama.in_flight, 6.0);
        assert_eq!(
            llama.ttft_buckets,
            vec![(0.1, 4.0), (1.0, 9.0), (f64::INFINITY, 10.0)]
        );
        let ep = llama.endpoints["http://127.0.0.1:1"];
        assert_eq!((ep.waiting, ep.running, ep.kv_usage), (2.0, 6.0, 0.5));
        assert_eq!(pools["qwen"].held, 0.0);
    }

    #[test]
    fn quantile_is_over_the_growth_between_reads() {
        let before = vec![(0.1, 4.0), (1.0, 9.0), (f64::INFINITY, 10.0)];
        // 10 new observations, all between 0.1 and 1.0.
        let after = vec![(0.1, 4.0), (1.0, 19.0), (f64::INFINITY, 20.0)];
        let p90 = quantile_of_growth(&before, &after, 0.9).unwrap();
        assert!((p90 - (0.1 + 0.9 * 0.9)).abs() < 1e-9, "{p90}");
        assert_eq!(
            quantile_of_growth(&after, &after, 0.9),
            None,
            "no new observations"
        );
        assert_eq!(
            quantile_of_growth(&after, &before, 0.9),
            None,
            "counter reset"
        );
    }

    #[tokio::test]
    async fn no_gateway_configured_and_unreachable_gateway_differ() {
        let cfg = SignalsConfig::default();
        let reader = SignalsReader::new(
            cfg.clone(),
            HttpClient::default(),
            Duration::from_millis(200),
        );
        assert_eq!(reader.gateway_load("p"), GatewayLoad::NotConfigured);
        let cfg = SignalsConfig {
            gateways: vec!["http://127.0.0.1:9/metrics".into()],
            ..cfg
        };
        let mut reader = SignalsReader::new(cfg, HttpClient::default(), Duration::from_millis(200));
        reader.refresh_gateways().await;
        assert_eq!(reader.gateway_load("p"), GatewayLoad::Unknown);
        // And an unreachable pod is unknown, not idle.
        let r = reader
            .read_pods("p", Flavor::Vllm, &["http://127.0.0.1:9".to_string()])
            .await;
        assert_eq!((r.loads.known, r.loads.unknown), (0, 1));
    }
}
