//! infergate's gateway: an OpenAI-compatible reverse proxy that picks the model-server pod for each
//! request by engine queue depth, KV-cache pressure, prefix-cache affinity and its own in-flight count.
//!
//! The modules follow the path of a request and the signals that steer it:
//! - [`discovery`]: which endpoints exist (static URLs, Kubernetes EndpointSlices, local processes).
//! - [`scrape`]: what each endpoint reports about its load (Prometheus text from the model server).
//! - [`pool`]: the live state of one pool's endpoints (scraped load + the gateway's own accounting).
//! - [`picker`]: the pure decision `(&PoolSnapshot, &RequestFacts) -> Pick`.
//! - [`flow`]: where a request waits when every endpoint is saturated, and who is shed first.
//! - [`proxy`]: the HTTP data path that ties them together.
//! - [`telemetry`]: the gateway's own Prometheus metrics.
//! - [`coarse_timer`]: the data-plane workers' cheap timer for the per-request deadlines.
// One audited exception: the prefetch hint of the prefix index (`picker/prefix/table.rs`).
#![deny(unsafe_code)]

pub mod admin;
pub mod chunked;
pub mod coarse_timer;
pub mod discovery;
pub mod flow;
pub mod framing;
pub mod picker;
pub mod pool;
pub mod proxy;
pub mod scrape;
pub mod server;
pub mod telemetry;
#[cfg(test)]
mod test_body;

pub use server::{Gateway, GatewayError, GatewayHandle, GatewayOptions};
