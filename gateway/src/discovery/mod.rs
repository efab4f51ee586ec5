//! Discovery: which endpoints a pool has, as a stream of whole snapshots.
//!
//! Every source (static URLs, Kubernetes EndpointSlices, an InferencePool, or the local actuator's
//! simulated pods in `infergate up`) publishes an [`EndpointSet`] on a `tokio::sync::watch` channel.
//! A whole snapshot, not add/remove events, because the pool only needs "what is there now": a
//! consumer that lags simply sees the newest set, and a re-list after a watch error cannot leave a
//! stale endpoint behind.

pub mod inference_pool;
pub mod kubernetes;

use std::sync::Arc;
use tokio::sync::watch;

/// One endpoint as a discovery source sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiscoveredEndpoint {
    /// Base URL of the model server, e.g. `http://10.0.0.7:8000` (no trailing slash).
    pub url: String,
    /// The pod's (or process's) name when the source knows it; used in metrics and for the
    /// autoscaler's pod-deletion-cost annotation.
    pub name: Option<String>,
    /// Ready to take requests as far as the source knows (EndpointSlice `ready`/`serving`).
    pub ready: bool,
    /// Going away (EndpointSlice `terminating`, pod being deleted, local pod draining): gets no new
    /// requests, while requests already sent to it finish.
    pub terminating: bool,
}

impl DiscoveredEndpoint {
    /// A ready endpoint at `url`, as static configuration gives it.
    pub fn ready(url: impl Into<String>) -> Self {
        let url = url.into();
        let url = url.trim_end_matches('/').to_string();
        DiscoveredEndpoint {
            url,
            name: None,
            ready: true,
            terminating: false,
        }
    }
}

/// A snapshot of a pool's endpoints.
pub type EndpointSet = Arc<Vec<DiscoveredEndpoint>>;

/// A fixed set of endpoints that never changes (the `static` discovery source).
///
/// The sender is leaked into a task-free holder: a watch receiver whose sender is dropped still
/// returns the last value, which is exactly a static set.
pub fn static_endpoints<I, S>(urls: I) -> watch::Receiver<EndpointSet>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let set: Vec<_> = urls.into_iter().map(DiscoveredEndpoint::ready).collect();
    let (_tx, rx) = watch::channel(Arc::new(set));
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_set_outlives_its_sender() {
        let rx = static_endpoints(["http://127.0.0.1:1/", "http://127.0.0.1:2"]);
        let set = rx.borrow().clone();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].url, "http://127.0.0.1:1");
        assert!(set.iter().all(|e| e.ready && !e.terminating));
    }
}
