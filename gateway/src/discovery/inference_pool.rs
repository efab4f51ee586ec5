//! Kubernetes discovery from a Gateway API Inference Extension `InferencePool`
//! (`inference.networking.k8s.io/v1`): the pool names its member pods by `spec.selector.matchLabels`
//! and their port by `spec.targetPorts[0].number`; the endpoints are those pods.
//!
//! Two watches, chained: one on the InferencePool object itself (so an edit of its selector or port
//! takes effect without a restart), and one on the Pods its selector matches, restarted whenever the
//! selector or port changes. A pod is an endpoint once it has an IP; it is ready when its `Ready`
//! condition is `True`, and terminating (no new requests) once it has a `deletionTimestamp`. Pods in
//! phase `Succeeded` or `Failed` are gone for good and left out.
//!
//! The InferencePool is read as a `DynamicObject` whose `spec` is decoded into the few fields used
//! here: no CRD type or derive is needed, and unknown fields (endpointPickerRef, status) are ignored.

use super::kubernetes::{ApiCall, WatchTable, merge_endpoints, publish};
use super::{DiscoveredEndpoint, EndpointSet};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use infergate_config::InferencePoolDiscovery;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The InferencePool API group.
pub const GROUP: &str = "inference.networking.k8s.io";
/// The InferencePool API version infergate reads.
pub const VERSION: &str = "v1";

/// The API calls of InferencePool discovery: the pool object and its pods, each listed then watched.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        api_group: GROUP,
        resource: "inferencepools",
        verbs: &["list", "watch"],
    },
    ApiCall {
        api_group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
];

/// The fields of `InferencePool.spec` infergate uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Which pods are members.
    #[serde(default)]
    pub selector: PoolSelector,
    /// The model server's port (the API allows exactly one).
    #[serde(default)]
    pub target_ports: Vec<TargetPort>,
}

/// `spec.selector`: equality on labels only, like a Service selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSelector {
    /// Labels a member pod must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One of `spec.targetPorts`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TargetPort {
    /// Port number on the member pods.
    pub number: u16,
}

/// What the pod watch needs from the pool: a label selector string and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTarget {
    /// `k=v,k2=v2` from `matchLabels`.
    pub selector: String,
    /// The first target port.
    pub port: u16,
}

impl InferencePoolSpec {
    /// The pod selector and port, or `None` when the pool selects nothing usable (no labels: the
    /// API forbids it, and it would select every pod in the namespace; no port).
    pub fn target(&self) -> Option<PoolTarget> {
        if self.selector.match_labels.is_empty() {
            return None;
        }
        let port = self.target_ports.first()?.number;
        let selector = self
            .selector
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Some(PoolTarget { selector, port })
    }
}

/// The `ApiResource` of `inference.networking.k8s.io/v1` InferencePool.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "InferencePool"),
        "inferencepools",
    )
}

/// The endpoint a pod is, if it is one (it has an IP and has not finished).
pub fn pod_endpoint(pod: &Pod, port: u16) -> Option<DiscoveredEndpoint> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    Some(DiscoveredEndpoint {
        url: format!("http://{host}:{port}"),
        name: Some(pod.name_any()),
        ready: ready_condition && !terminating,
        terminating,
    })
}

/// Discovery of one InferencePool's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferencePoolSource {
    /// Namespace of the pool (and its pods); `None` means the client's default namespace.
    pub namespace: Option<String>,
    /// The InferencePool's name.
    pub name: String,
}

impl InferencePoolSource {
    /// From the pool's `discovery.inference_pool` config.
    pub fn from_config(cfg: &InferencePoolDiscovery) -> Self {
        Self {
            namespace: cfg.namespace.clone(),
            name: cfg.name.clone(),
        }
    }

    /// Starts watching; the receiver always holds the newest set (empty until the pods are listed).
    /// The task ends when every receiver is dropped, or when aborted.
    pub fn spawn(self, client: kube::Client) -> (watch::Receiver<EndpointSet>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(EndpointSet::default());
        let task = tokio::spawn(self.run(client, tx));
        (rx, task)
    }

    /// Watches the pool and its pods until every receiver of `tx` is dropped.
    pub async fn run(self, client: kube::Client, tx: watch::Sender<EndpointSet>) {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let pools: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &api_resource());
        let pod_api: Api<Pod> = Api::namespaced(client, &namespace);
        let pool_config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut pool_events = watcher(pools, pool_config).default_backoff().boxed();
        let mut pool_table: WatchTable<PoolTarget> = WatchTable::default();
        let mut target: Option<PoolTarget> = None;
        let mut pod_events: Option<
            BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>,
        > = None;
        let mut pod_table: WatchTable<Vec<DiscoveredEndpoint>> = WatchTable::default();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                event = pool_events.next() => match event {
                    None => return,
                    Some(Err(err)) => tracing::warn!(%namespace, pool = %self.name, error = %err,
                        "inferencepool watch failed; keeping the last known endpoints"),
                    Some(Ok(event)) => {
                        if !pool_table.apply(event, |obj| extract_target(obj, &self.name)) {
                            continue;
                        }
                        let new_target = pool_table.values().next().cloned();
                        if new_target == target {
                            continue;
                        }
                        tracing::info!(%namespace, pool = %self.name, target = ?new_target,
                            "inferencepool selector or port changed; re-watching pods");
                        target = new_target;
                        // The new pod watch starts with a re-list that replaces the table whole, so
                        // the old members stay published until the new ones are known.
                        pod_events = target.as_ref().map(|t| {
                            watcher(pod_api.clone(), watcher::Config::default().labels(&t.selector))
                                .default_backoff()
                                .boxed()
                        });
                        if target.is_none() {
                            pod_table.clear();
                            publish(&tx, Vec::new());
                        }
                    }
                },
                event = next_or_pending(&mut pod_events) => match (event, &target) {
                    (None, _) => pod_events = None,
                    (Some(Err(err)), _) => tracing::warn!(%namespace, pool = %self.name, error = %err,
                        "pod watch failed; keeping the last known endpoints"),
                    (Some(Ok(event)), Some(t)) => {
                        let port = t.port;
                        if pod_table.apply(event, |p| pod_endpoint(p, port).map(|e| (p.name_any(), vec![e]))) {
                            publish(&tx, merge_endpoints(pod_table.values()));
                        }
                    }
                    (Some(Ok(_)), None) => {}
                },
            }
        }
    }
}

/// The pool's target, keyed by name; `None` (treated as absent) for another object or an unusable spec.
fn extract_target(obj: &DynamicObject, name: &str) -> Option<(String, PoolTarget)> {
    if obj.name_any() != name {
        return None;
    }
    let spec = obj.data.get("spec").cloned().unwrap_or_default();
    match serde_json::from_value::<InferencePoolSpec>(spec) {
        Ok(spec) => match spec.target() {
            Some(t) => Some((obj.name_any(), t)),
            None => {
                tracing::warn!(pool = %name, "inferencepool has no matchLabels or no targetPorts; no endpoints");
                None
            }
        },
        Err(err) => {
            tracing::warn!(pool = %name, error = %err, "inferencepool spec does not decode; no endpoints");
            None
        }
    }
}

async fn next_or_pending<S: Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn spec_decodes_the_v1_field_names() {
        let spec: InferencePoolSpec = serde_json::from_value(json!({
            "selector": {"matchLabels": {"app": "vllm", "model": "llama"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp", "portNumber": 9002}
        }))
        .unwrap();
        assert_eq!(
            spec.target(),
            Some(PoolTarget {
                selector: "app=vllm,model=llama".into(),
                port: 8000
            })
        );
        let empty: InferencePoolSpec = serde_json::from_value(
            json!({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}),
        )
        .unwrap();
        assert_eq!(empty.target(), None);
    }

    #[test]
    fn pod_states() {
        let ready = pod(json!({
            "metadata": {"name": "p1"},
            "status": {"podIP": "10.0.0.1", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let e = pod_endpoint(&ready, 8000).unwrap();
        assert_eq!(e.url, "http://10.0.0.1:8000");
        assert!(e.ready && !e.terminating);
        let starting = pod(json!({
            "metadata": {"name": "p2"},
            "status": {"podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "False"}]}
        }));
        assert!(!pod_endpoint(&starting, 8000).unwrap().ready);
        let deleting = pod(json!({
            "metadata": {"name": "p3", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"podIP": "10.0.0.3", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let e = pod_endpoint(&deleting, 8000).unwrap();
        assert!(!e.ready && e.terminating);
        assert!(
            pod_endpoint(
                &pod(json!({"metadata": {"name": "p4"}, "status": {}})),
                8000
            )
            .is_none()
        );
        let done = pod(
            json!({"metadata": {"name": "p5"}, "status": {"podIP": "10.0.0.5", "phase": "Succeeded"}}),
        );
        assert!(pod_endpoint(&done, 8000).is_none());
    }
}
