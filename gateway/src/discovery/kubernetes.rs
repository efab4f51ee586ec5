//! Kubernetes discovery from EndpointSlices: the endpoints a Service (or a label selector) has now.
//!
//! A kube-rs `watcher` lists the slices, then watches from the list's resourceVersion; when the
//! apiserver answers 410 Gone (the version fell out of its history), the watcher re-lists. The slices
//! are kept in a [`WatchTable`] keyed by slice name, and a re-list *replaces* that table atomically at
//! `InitDone` instead of merging into it: a slice deleted while the watch was down simply is not in
//! the new list, so it cannot linger, and nothing is counted twice.
//!
//! Endpoint conditions follow the EndpointSlice API: `ready` nil means ready; `terminating` nil means
//! not terminating; a terminating endpoint is published as terminating and not ready (it gets no new
//! requests, but the pool still knows it, so requests already on it can finish). Endpoints that are
//! not ready are published as not ready rather than dropped, so the pool can see pods coming up.
//!
//! While the watch is failing, the last known set stays published: a brief apiserver outage must not
//! empty a pool whose pods are all still serving.

use super::{DiscoveredEndpoint, EndpointSet};
use futures_util::StreamExt;
use infergate_config::{KubernetesDiscovery, PortRef};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One row of the RBAC contract: the verbs the code uses on one resource of one API group.
///
/// The Helm chart's RBAC rules are tested against these tables, so every API call the code makes
/// must appear in one, and the tests over the fake apiserver's request log check that it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// API group ("" for the core group).
    pub api_group: &'static str,
    /// Resource, with `/subresource` when one is used (`deployments/scale`).
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
}

impl ApiCall {
    /// Whether this row grants `verb` on `api_group`/`resource`.
    pub fn grants(&self, api_group: &str, resource: &str, verb: &str) -> bool {
        self.api_group == api_group && self.resource == resource && self.verbs.contains(&verb)
    }
}

/// The API calls of EndpointSlice discovery (the watcher lists, then watches).
pub const API_CALLS: &[ApiCall] = &[ApiCall {
    api_group: "discovery.k8s.io",
    resource: "endpointslices",
    verbs: &["list", "watch"],
}];

/// The label every EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why a discovery configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeDiscoveryError {
    /// Neither a Service nor a label selector was given: that would watch every slice.
    #[error("kubernetes discovery needs `service` or `selector`")]
    NoSelector,
}

/// What to watch: slices in a namespace matching a selector, and which of their ports to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceDiscovery {
    /// Namespace; `None` means the client's default namespace (the pod's own, in a cluster).
    pub namespace: Option<String>,
    /// Label selector on the slices (`kubernetes.io/service-name=x`, and/or the user's).
    pub label_selector: String,
    /// The model server's port, by number or by the slice port's name.
    pub port: PortRef,
}

impl SliceDiscovery {
    /// From the pool's `discovery.kubernetes` config: the Service's slices, narrowed by the
    /// selector if both are given.
    pub fn from_config(cfg: &KubernetesDiscovery) -> Result<Self, KubeDiscoveryError> {
        let mut parts = Vec::new();
        if let Some(svc) = cfg.service.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("{SERVICE_NAME_LABEL}={svc}"));
        }
        if let Some(sel) = cfg.selector.as_deref().filter(|s| !s.trim().is_empty()) {
            parts.push(sel.trim().to_owned());
        }
        if parts.is_empty() {
            return Err(KubeDiscoveryError::NoSelector);
        }
        Ok(Self {
            namespace: cfg.namespace.clone(),
            label_selector: parts.join(","),
            port: cfg.port.clone(),
        })
    }

    /// Starts watching; the receiver always holds the newest set (empty until the first list).
    /// The task ends when every receiver is dropped, or when aborted.
    pub fn spawn(self, client: kube::Client) -> (watch::Receiver<EndpointSet>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(EndpointSet::default());
        let task = tokio::spawn(self.run(client, tx));
        (rx, task)
    }

    /// Watches until every receiver of `tx` is dropped.
    pub async fn run(self, client: kube::Client, tx: watch::Sender<EndpointSet>) {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().labels(&self.label_selector);
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut table = WatchTable::default();
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Err(err)) => {
                    tracing::warn!(%namespace, selector = %self.label_selector, error = %err,
                        "endpointslice watch failed; keeping the last known endpoints");
                }
                Some(Ok(event)) => {
                    if table.apply(event, |s| {
                        Some((s.name_any(), slice_endpoints(s, &self.port)))
                    }) {
                        publish(&tx, merge_endpoints(table.values()));
                    }
                }
            }
        }
    }
}

/// Publishes a set if it differs from the current one (so consumers wake only on real changes).
pub(crate) fn publish(tx: &watch::Sender<EndpointSet>, set: Vec<DiscoveredEndpoint>) {
    tx.send_if_modified(|current| {
        if **current == set {
            false
        } else {
            *current = Arc::new(set);
            true
        }
    });
}

/// The objects a watcher has reported, keyed by name, with re-lists applied atomically.
///
/// `Init` starts a fresh buffer, `InitApply` fills it, `InitDone` swaps it in whole: the state
/// between `Init` and `InitDone` is never published, and whatever the re-list did not return is
/// gone afterwards.
#[derive(Debug)]
pub struct WatchTable<V> {
    current: BTreeMap<String, V>,
    pending: Option<BTreeMap<String, V>>,
}

impl<V> Default for WatchTable<V> {
    fn default() -> Self {
        Self {
            current: BTreeMap::new(),
            pending: None,
        }
    }
}

impl<V> WatchTable<V> {
    /// Applies one watcher event; `extract` gives an object's key and value (`None`: ignore the
    /// object, as if absent). Returns whether the published view may have changed.
    pub fn apply<K>(
        &mut self,
        event: watcher::Event<K>,
        extract: impl Fn(&K) -> Option<(String, V)>,
    ) -> bool
    where
        K: kube::Resource,
    {
        match event {
            watcher::Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let pending = self.pending.get_or_insert_with(BTreeMap::new);
                if let Some((key, value)) = extract(&obj) {
                    pending.insert(key, value);
                }
                false
            }
            watcher::Event::InitDone => {
                self.current = self.pending.take().unwrap_or_default();
                true
            }
            watcher::Event::Apply(obj) => {
                match extract(&obj) {
                    Some((key, value)) => {
                        self.current.insert(key, value);
                    }
                    None => {
                        self.current.remove(&obj.name_any());
                    }
                }
                true
            }
            watcher::Event::Delete(obj) => self.current.remove(&obj.name_any()).is_some(),
        }
    }

    /// The current values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.current.values()
    }

    /// Forgets everything (the watched selector changed).
    pub fn clear(&mut self) {
        self.current.clear();
        self.pending = None;
    }
}

/// The endpoints one slice contributes for the wanted port.
pub fn slice_endpoints(slice: &EndpointSlice, port: &PortRef) -> Vec<DiscoveredEndpoint> {
    let Some(port) = resolve_port(slice, port) else {
        if !slice.endpoints.is_empty() {
            tracing::debug!(slice = %slice.name_any(), "slice has no port matching the configured one");
        }
        return Vec::new();
    };
    let ipv6 = slice.address_type == "IPv6";
    let mut out = Vec::new();
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        let terminating = conditions.terminating.unwrap_or(false);
        let ready = !terminating && conditions.ready.unwrap_or(true);
        let name = endpoint
            .target_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .or_else(|| endpoint.hostname.clone());
        for address in &endpoint.addresses {
            let host = if ipv6 && !address.starts_with('[') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            out.push(DiscoveredEndpoint {
                url: format!("http://{host}:{port}"),
                name: name.clone(),
                ready,
                terminating,
            });
        }
    }
    out
}

/// The port number to use in this slice: by name from its port list, or the configured number.
fn resolve_port(slice: &EndpointSlice, port: &PortRef) -> Option<u16> {
    match port {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok()),
    }
}

/// Merges per-slice endpoint lists into one set, sorted by URL. An address can sit in two slices
/// while the controller moves it; it is kept once, in its most usable state (ready and not
/// terminating beats not ready beats terminating).
pub fn merge_endpoints<'a>(
    slices: impl Iterator<Item = &'a Vec<DiscoveredEndpoint>>,
) -> Vec<DiscoveredEndpoint> {
    let mut by_url: HashMap<String, DiscoveredEndpoint> = HashMap::new();
    for endpoint in slices.flatten() {
        let rank = |e: &DiscoveredEndpoint| (e.ready, !e.terminating);
        match by_url.get(&endpoint.url) {
            Some(existing) if rank(existing) >= rank(endpoint) => {}
            _ => {
                by_url.insert(endpoint.url.clone(), endpoint.clone());
            }
        }
    }
    let mut set: Vec<_> = by_url.into_values().collect();
    set.sort_by(|a, b| a.url.cmp(&b.url));
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn extract(s: &EndpointSlice) -> Option<(String, Vec<DiscoveredEndpoint>)> {
        Some((
            s.name_any(),
            slice_endpoints(s, &PortRef::Name("http".into())),
        ))
    }

    #[test]
    fn conditions_map_to_ready_and_terminating() {
        let s = slice(
            "a",
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        );
        let eps = slice_endpoints(&s, &PortRef::Name("http".into()));
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].url, "http://10.0.0.1:8000");
        assert_eq!(eps[0].name.as_deref(), Some("p1"));
        assert!(eps[0].ready && !eps[0].terminating);
        assert!(!eps[1].ready && !eps[1].terminating);
        assert!(!eps[2].ready && eps[2].terminating);
    }

    #[test]
    fn ports_by_name_and_number() {
        let s = slice("a", json!([{"addresses": ["10.0.0.1"]}]));
        assert!(slice_endpoints(&s, &PortRef::Name("grpc".into())).is_empty());
        assert_eq!(
            slice_endpoints(&s, &PortRef::Number(9000))[0].url,
            "http://10.0.0.1:9000"
        );
        let mut v6 = s.clone();
        v6.address_type = "IPv6".into();
        v6.endpoints[0].addresses = vec!["fd00::1".into()];
        assert_eq!(
            slice_endpoints(&v6, &PortRef::Name("http".into()))[0].url,
            "http://[fd00::1]:8000"
        );
    }

    #[test]
    fn relist_replaces_instead_of_merging() {
        let mut table = WatchTable::default();
        let a = slice("a", json!([{"addresses": ["10.0.0.1"]}]));
        let b = slice("b", json!([{"addresses": ["10.0.0.2"]}]));
        assert!(!table.apply(watcher::Event::Init, extract));
        assert!(!table.apply(watcher::Event::InitApply(a.clone()), extract));
        assert!(!table.apply(watcher::Event::InitApply(b.clone()), extract));
        assert!(table.apply(watcher::Event::InitDone, extract));
        assert_eq!(merge_endpoints(table.values()).len(), 2);
        // A re-list after 410 that no longer has `b`: `b` is gone, `a` is not doubled.
        table.apply(watcher::Event::Init, extract);
        table.apply(watcher::Event::InitApply(a.clone()), extract);
        assert_eq!(
            merge_endpoints(table.values()).len(),
            2,
            "nothing published mid-relist"
        );
        table.apply(watcher::Event::InitDone, extract);
        let set = merge_endpoints(table.values());
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].url, "http://10.0.0.1:8000");
        assert!(table.apply(watcher::Event::Delete(a), extract));
        assert_eq!(merge_endpoints(table.values()).len(), 0);
    }

    #[test]
    fn an_address_in_two_slices_is_kept_once_in_its_best_state() {
        let a = slice(
            "a",
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "terminating": true}}]),
        );
        let b = slice("b", json!([{"addresses": ["10.0.0.1"]}]));
        let lists = [extract(&a).unwrap().1, extract(&b).unwrap().1];
        let set = merge_endpoints(lists.iter());
        assert_eq!(set.len(), 1);
        assert!(set[0].ready && !set[0].terminating);
    }

    #[test]
    fn selector_from_config() {
        let cfg = KubernetesDiscovery {
            namespace: Some("ns".into()),
            service: Some("vllm".into()),
            selector: Some("tier in (a,b)".into()),
            port: PortRef::Number(8000),
        };
        let d = SliceDiscovery::from_config(&cfg).unwrap();
        assert_eq!(
            d.label_selector,
            "kubernetes.io/service-name=vllm,tier in (a,b)"
        );
        let none = KubernetesDiscovery {
            service: None,
            selector: None,
            ..cfg
        };
        assert_eq!(
            SliceDiscovery::from_config(&none),
            Err(KubeDiscoveryError::NoSelector)
        );
    }
}
