//! Kubernetes discovery (EndpointSlices and InferencePool) against the fake apiserver, over real HTTP
//! with a stock kube-rs client: adds, updates, deletes, terminating endpoints, bookmarks, and a
//! 410 Gone after an outage that forces a re-list.

use infergate_config::PortRef;
use infergate_gateway::discovery::EndpointSet;
use infergate_gateway::discovery::inference_pool::{self, InferencePoolSource};
use infergate_gateway::discovery::kubernetes::{self, ApiCall, SliceDiscovery};
use infergate_kube_fake::{FakeApi, Gvr, RequestRecord};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits (bounded) until the published set satisfies `pred`, and returns it.
async fn wait_for(
    rx: &mut watch::Receiver<EndpointSet>,
    what: &str,
    pred: impl Fn(&EndpointSet) -> bool,
) -> EndpointSet {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let current = rx.borrow_and_update().clone();
        if pred(&current) {
            return current;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}; last set: {current:?}"),
        }
    }
}

/// Polls a condition with a bounded deadline.
async fn poll_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn slice(name: &str, service: &str, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn ep(ip: &str, pod: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns"}})
}

fn urls(set: &EndpointSet) -> Vec<&str> {
    set.iter().map(|e| e.url.as_str()).collect()
}

/// Every request the code made is granted by its API_CALLS table.
fn assert_calls_declared(requests: &[RequestRecord], table: &[ApiCall]) {
    assert!(!requests.is_empty());
    for r in requests {
        assert!(
            table
                .iter()
                .any(|c| c.grants(&r.api_group, &r.resource, &r.verb)),
            "call not in API_CALLS: {} {} {:?} ({} {})",
            r.verb,
            r.resource,
            r.api_group,
            r.method,
            r.path
        );
    }
}

fn slice_source() -> SliceDiscovery {
    SliceDiscovery {
        namespace: Some("ns".into()),
        label_selector: "kubernetes.io/service-name=vllm".into(),
        port: PortRef::Name("http".into()),
    }
}

#[tokio::test]
async fn slices_added_modified_deleted_and_terminating_dropped() {
    let fake = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    fake.put(&slice(
        "vllm-a",
        "vllm",
        json!([ep("10.0.0.1", "p1"), ep("10.0.0.2", "p2")]),
    ));
    fake.put(&slice("other-a", "other", json!([ep("10.9.0.1", "x")])));
    let (mut rx, task) = slice_source().spawn(fake.client());

    let set = wait_for(&mut rx, "the first list", |s| s.len() == 2).await;
    assert_eq!(urls(&set), ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]);
    assert_eq!(set[0].name.as_deref(), Some("p1"));
    assert!(set.iter().all(|e| e.ready && !e.terminating));

    // Added.
    fake.put(&slice("vllm-b", "vllm", json!([ep("10.0.0.3", "p3")])));
    wait_for(&mut rx, "slice b added", |s| s.len() == 3).await;

    // Modified: p1 terminating, p2 not ready yet.
    fake.put(&slice(
        "vllm-a",
        "vllm",
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false, "terminating": false}},
        ]),
    ));
    let set = wait_for(&mut rx, "p1 terminating", |s| {
        s.iter()
            .any(|e| e.url == "http://10.0.0.1:8000" && e.terminating)
    })
    .await;
    let p1 = set
        .iter()
        .find(|e| e.url == "http://10.0.0.1:8000")
        .unwrap();
    assert!(
        !p1.ready,
        "a terminating endpoint must not take new requests"
    );
    let p2 = set
        .iter()
        .find(|e| e.url == "http://10.0.0.2:8000")
        .unwrap();
    assert!(!p2.ready && !p2.terminating);

    // Deleted.
    assert!(fake.delete::<EndpointSlice>("ns", "vllm-b"));
    let set = wait_for(&mut rx, "slice b deleted", |s| s.len() == 2).await;
    assert!(!urls(&set).contains(&"http://10.0.0.3:8000"));

    // Bookmarks keep flowing and do not disturb the published set.
    let before = rx.borrow_and_update().clone();
    let sent = fake.bookmarks_sent();
    poll_until("three more bookmarks", || fake.bookmarks_sent() >= sent + 3).await;
    assert!(
        !rx.has_changed().unwrap(),
        "a bookmark must not republish the set"
    );
    assert_eq!(*rx.borrow(), before);

    // The other Service's slice never leaked in.
    assert!(!urls(&rx.borrow()).contains(&"http://10.9.0.1:8000"));
    assert_calls_declared(&fake.requests(), kubernetes::API_CALLS);
    task.abort();
}

#[tokio::test]
async fn gone_after_outage_forces_relist_without_losing_or_duplicating() {
    let fake = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    fake.put(&slice("vllm-a", "vllm", json!([ep("10.0.0.1", "p1")])));
    fake.put(&slice("vllm-b", "vllm", json!([ep("10.0.0.2", "p2")])));
    let (mut rx, task) = slice_source().spawn(fake.client());
    wait_for(&mut rx, "the first list", |s| s.len() == 2).await;
    poll_until("the watch to be open", || fake.open_watches() == 1).await;
    let lists_before = fake.requests().iter().filter(|r| r.verb == "list").count();

    // The apiserver goes away; meanwhile b is deleted, a changes, c appears, and the history the
    // watcher would resume from is compacted.
    fake.set_outage(true);
    assert!(fake.delete::<EndpointSlice>("ns", "vllm-b"));
    fake.put(&slice(
        "vllm-a",
        "vllm",
        json!([ep("10.0.0.1", "p1"), ep("10.0.0.4", "p4")]),
    ));
    fake.put(&slice("vllm-c", "vllm", json!([ep("10.0.0.3", "p3")])));
    fake.compact();
    // The last known set stays published while the apiserver is unreachable.
    assert_eq!(rx.borrow().len(), 2);
    fake.set_outage(false);

    let set = wait_for(&mut rx, "the re-listed set", |s| {
        urls(s)
            == [
                "http://10.0.0.1:8000",
                "http://10.0.0.3:8000",
                "http://10.0.0.4:8000",
            ]
    })
    .await;
    assert_eq!(set.len(), 3, "no duplicates after the re-list");
    let lists_after = fake.requests().iter().filter(|r| r.verb == "list").count();
    assert!(
        fake.expired_watches() >= 1,
        "the resumed watch must have been answered 410"
    );
    assert!(lists_after > lists_before, "410 Gone must force a re-list");

    // And the watch goes on after the re-list.
    fake.put(&slice("vllm-c", "vllm", json!([])));
    wait_for(&mut rx, "c emptied", |s| s.len() == 2).await;
    assert_calls_declared(&fake.requests(), kubernetes::API_CALLS);
    task.abort();
}

fn inference_pool_gvr() -> Gvr {
    Gvr::new("inference.networking.k8s.io", "v1", "inferencepools")
}

fn pool(port: u16) -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "llama", "namespace": "ns"},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm-llama"}},
            "targetPorts": [{"number": port}],
            "endpointPickerRef": {"name": "epp", "portNumber": 9002}
        }
    })
}

fn pod(name: &str, ip: &str, app: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn inference_pool_selects_pods_and_follows_spec_changes() {
    let fake = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    fake.put_value(&inference_pool_gvr(), pool(8000));
    fake.put(&pod("llama-1", "10.1.0.1", "vllm-llama", true));
    fake.put(&pod("llama-2", "10.1.0.2", "vllm-llama", false));
    fake.put(&pod("other-1", "10.1.0.9", "other", true));
    let source = InferencePoolSource {
        namespace: Some("ns".into()),
        name: "llama".into(),
    };
    let (mut rx, task) = source.spawn(fake.client());

    let set = wait_for(&mut rx, "the pool's pods", |s| s.len() == 2).await;
    assert_eq!(urls(&set), ["http://10.1.0.1:8000", "http://10.1.0.2:8000"]);
    assert!(set[0].ready && !set[1].ready);
    assert_eq!(set[0].name.as_deref(), Some("llama-1"));

    // A pod becomes ready; another is being deleted.
    fake.put(&pod("llama-2", "10.1.0.2", "vllm-llama", true));
    let mut deleting = pod("llama-1", "10.1.0.1", "vllm-llama", true);
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    fake.put(&deleting);
    let set = wait_for(&mut rx, "llama-1 terminating, llama-2 ready", |s| {
        s.len() == 2 && s[0].terminating && s[1].ready
    })
    .await;
    assert!(!set[0].ready);

    // The pool's port changes: the pods are re-watched and their URLs follow.
    fake.put_value(&inference_pool_gvr(), pool(9000));
    wait_for(&mut rx, "the new port", |s| {
        urls(s) == ["http://10.1.0.1:9000", "http://10.1.0.2:9000"]
    })
    .await;

    // The pool is deleted: no endpoints.
    assert!(fake.delete_value(&inference_pool_gvr(), "ns", "llama"));
    wait_for(&mut rx, "no endpoints", |s| s.is_empty()).await;
    assert_calls_declared(&fake.requests(), inference_pool::API_CALLS);
    task.abort();
}
