//! The gateway's settings: listeners, limits, scraping, picking, flow control and resilience.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// `gateway:` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Data port: the OpenAI-compatible API.
    pub listen: SocketAddr,
    /// Admin port: `/metrics`, `/healthz`, `/readyz`, `/debug/pools`.
    pub admin_listen: SocketAddr,
    /// Data-plane threads, each with its own listener (SO_REUSEPORT) and upstream connections, so
    /// a request never hops threads between its client and upstream connections; 0 = one per core.
    pub workers: usize,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    pub scrape: ScrapeConfig,
    pub picker: PickerConfig,
    pub flow: FlowConfig,
    pub retry: RetryConfig,
    pub outlier: OutlierConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([0, 0, 0, 0], 9090).into(),
            workers: 0,
            limits: LimitsConfig::default(),
            upstream: UpstreamConfig::default(),
            scrape: ScrapeConfig::default(),
            picker: PickerConfig::default(),
            flow: FlowConfig::default(),
            retry: RetryConfig::default(),
            outlier: OutlierConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// Bounds on what a client may send and how long the gateway waits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted; larger gets 413. Long-context prompts (128k tokens) are about
    /// 512 KiB of text; the default leaves room for base64 images.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    #[serde(with = "crate::duration")]
    pub header_read_timeout: Duration,
    /// Longest a request body may stall: the most time between two reads that bring bytes of it
    /// (408 past it). Without it, a client that sends a head and then trickles its body (or
    /// nothing) holds a connection, and with enough of them `max_connections`, for ever.
    #[serde(with = "crate::duration")]
    pub body_read_timeout: Duration,
    /// Longest an answer may wait for the client to take its next bytes (HTTP/1: a write that
    /// makes no progress for this long closes the connection and cancels the upstream request).
    /// A client that stops reading a stream would otherwise hold its pod's slot for ever. (HTTP/2
    /// has no such bound yet: its flow control holds such a stream until the client leaves.)
    #[serde(with = "crate::duration")]
    pub send_timeout: Duration,
    /// Time the upstream has to send the response's first byte (504 past it). Generous, because a
    /// long prompt's prefill on a busy pod takes seconds.
    #[serde(with = "crate::duration")]
    pub first_byte_timeout: Duration,
    /// Most concurrent client connections; past it new connections wait in the accept backlog.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 16 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            first_byte_timeout: Duration::from_secs(300),
            max_connections: 10_000,
        }
    }
}

/// The gateway's keep-alive connections to the model servers (each data-plane worker has its own).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Time a TCP connection to a model server may take; past it the attempt fails as a connect
    /// error (retried on another endpoint).
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// A connection idle for this long is not used again, and is closed. Keep it below the model
    /// server's own keep-alive timeout: vLLM and SGLang (uvicorn) close idle connections after 5 s.
    /// Closing first, the gateway rarely races the server; when it does (a reused connection
    /// closed before any byte of the answer), the request is sent again on another connection.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint and worker; a burst's connections beyond it close
    /// when their answers end. 0: no keep-alive, a new connection per request.
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(4),
            max_idle_per_endpoint: 1024,
        }
    }
}

/// How the gateway polls each endpoint's Prometheus `/metrics`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Time between polls of one endpoint. The Inference Extension's picker uses 50 ms; 100 ms keeps
    /// a 64-pod pool's scrape traffic small while the in-flight count covers the gap.
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// Time one poll may take.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// After this long without a good scrape, the endpoint's scraped load is ignored and the picker
    /// falls back to the gateway's own in-flight count.
    #[serde(with = "crate::duration")]
    pub stale_after: Duration,
    /// After this long without a good scrape, the endpoint is marked unready and gets no requests.
    #[serde(with = "crate::duration")]
    pub unready_after: Duration,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            stale_after: Duration::from_secs(1),
            unready_after: Duration::from_secs(5),
        }
    }
}

/// Which picker policy a pool uses.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum PickerPolicy {
    /// What a Kubernetes Service does: the baseline.
    RoundRobin,
    /// Fewest requests the gateway has in flight to the endpoint.
    LeastInflight,
    /// Engine queue depth and KV-cache use, as scraped.
    QueueKv,
    /// Queue, KV, prefix affinity, LoRA affinity and in-flight correction, weighted.
    #[default]
    Infergate,
}

impl PickerPolicy {
    /// Every policy, in the order reports list them.
    pub const ALL: [PickerPolicy; 4] = [
        PickerPolicy::RoundRobin,
        PickerPolicy::LeastInflight,
        PickerPolicy::QueueKv,
        PickerPolicy::Infergate,
    ];

    /// The name used in the file, on the command line and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PickerPolicy::RoundRobin => "round-robin",
            PickerPolicy::LeastInflight => "least-inflight",
            PickerPolicy::QueueKv => "queue-kv",
            PickerPolicy::Infergate => "infergate",
        }
    }
}

impl std::str::FromStr for PickerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PickerPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown picker policy `{s}`; expected round-robin, least-inflight, queue-kv or infergate")
            })
    }
}

/// The picker's policy and the weights of the `infergate` policy's scores.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PickerConfig {
    pub policy: PickerPolicy,
    pub weights: PickerWeights,
    pub prefix: PrefixConfig,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            policy: PickerPolicy::Infergate,
            weights: PickerWeights::default(),
            prefix: PrefixConfig::default(),
        }
    }
}

/// Weights of the `infergate` policy's scores (each score is in 0..=1; higher weight, more say).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PickerWeights {
    pub queue: f64,
    pub kv: f64,
    pub prefix: f64,
    pub lora: f64,
    pub inflight: f64,
}

impl Default for PickerWeights {
    fn default() -> Self {
        PickerWeights {
            queue: 1.0,
            kv: 1.0,
            prefix: 2.0,
            lora: 1.0,
            inflight: 1.0,
        }
    }
}

/// The prefix-affinity index: which endpoint was recently sent which prompt prefix.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixConfig {
    /// Characters of prompt per hashed block (about 4 characters a token: 256 characters is about
    /// 64 tokens, four of vLLM's 16-token KV blocks).
    pub block_chars: usize,
    /// Most leading blocks hashed per request: bounds the work per pick for very long prompts.
    pub max_blocks: usize,
    /// Most block hashes remembered per pool (least recently used are forgotten): bounds memory.
    pub capacity: usize,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig {
            block_chars: 256,
            max_blocks: 256,
            capacity: 200_000,
        }
    }
}

/// Flow control: when a pool is full, requests wait in a bounded priority queue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// An endpoint is saturated when its engine has at least this many requests waiting...
    pub saturation_queue: f64,
    /// ...and its KV cache is at least this full (0..=1).
    pub saturation_kv: f64,
    /// Most requests waiting per pool; past it the lowest-priority waiter is refused with 429.
    pub max_queued: usize,
    /// Longest a request waits before it gets 503 with Retry-After.
    #[serde(with = "crate::duration")]
    pub queue_timeout: Duration,
    /// Longest a `sheddable` request waits before it gets 429.
    #[serde(with = "crate::duration")]
    pub sheddable_timeout: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            saturation_queue: 8.0,
            saturation_kv: 0.9,
            max_queued: 1024,
            queue_timeout: Duration::from_secs(60),
            sheddable_timeout: Duration::from_secs(5),
        }
    }
}

/// Retries on another endpoint, only before the first response byte.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Most extra attempts per request.
    pub max_retries: u32,
    /// Retries allowed as a share of recent requests, so that retries cannot multiply an outage.
    pub budget_ratio: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            budget_ratio: 0.2,
        }
    }
}

/// Outlier detection: endpoints that keep failing are ejected for a back-off period.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, 5xx) that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection's length; each further ejection doubles it up to `max_ejection`.
    #[serde(with = "crate::duration")]
    pub base_ejection: Duration,
    #[serde(with = "crate::duration")]
    pub max_ejection: Duration,
    /// Never eject more than this share of a pool's endpoints (0..=1).
    pub max_ejected_ratio: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_ratio: 0.5,
        }
    }
}

/// Graceful shutdown on SIGTERM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest in-flight requests (streams included) may take to finish after SIGTERM.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(30),
        }
    }
}
