//! A faithful in-process fake of the Kubernetes API's HTTP surface, for testing infergate's kube-rs code.
//!
//! No API server can run on the machines infergate is developed and tested on, so the kube-rs code
//! (EndpointSlice and InferencePool discovery, the scale actuator, leader election, Events) is tested
//! against this instead: a real HTTP/1.1 server on `127.0.0.1:0` that a stock `kube::Client` talks to
//! exactly as to an apiserver. Nothing in the client is mocked; only the server side is small.
//!
//! What is faithful (because infergate's behaviour depends on it):
//! - one global, monotonically increasing resourceVersion; uid, creationTimestamp, generation;
//! - list with label selectors (equality and set-based), field selectors on string fields, `limit` and
//!   `continue`; list envelopes carrying the list's resourceVersion;
//! - watch from a resourceVersion, replayed from a bounded history, with periodic BOOKMARKs and a
//!   410 "too old resource version" ERROR event once that version has been compacted;
//! - create (409 AlreadyExists), replace with compare-and-swap on resourceVersion (409 Conflict),
//!   merge and strategic-merge PATCH (other patch types 415), delete;
//! - the `scale` subresource of Deployments and StatefulSets as an `autoscaling/v1` Scale;
//! - failures as `Status` objects with the apiserver's reasons and wording.
//!
//! What is not: authentication, admission, defaulting and validation beyond names, server-side apply,
//! list-merge semantics of strategic merge patch (lists are replaced), API discovery documents.
//!
//! Tests drive it through [`FakeApi`]: seed and read objects directly, simulate controllers
//! ([`FakeApi::set_scale_status`]), inject faults and outages, and assert on the request log.
#![forbid(unsafe_code)]

mod patch;
mod resource;
pub mod selector;
mod server;
mod status;
mod store;
mod subresource;
mod watch;

pub use resource::{Gvr, ResourcePath};
pub use status::ApiError;
pub use store::ObjectKey;

use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use store::Store;
use tokio::task::JoinHandle;

/// One request the fake received, for assertions (and for checking the RBAC contract: `verb`,
/// `api_group` and `resource` are what an RBAC rule would have to grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" for core).
    pub api_group: String,
    /// RBAC resource, with the subresource (`deployments/scale`).
    pub resource: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// HTTP status answered; 0 when the connection was dropped (outage).
    pub status: u16,
}

/// An injected failure: the next `remaining` requests matching answer `code`.
#[derive(Debug, Clone)]
struct Fault {
    method: Option<String>,
    path_prefix: String,
    remaining: usize,
    code: u16,
}

/// State shared by the server tasks and the test-side handle.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    faults: Mutex<Vec<Fault>>,
    pub(crate) log: Mutex<Vec<RequestRecord>>,
    pub(crate) outage: AtomicBool,
    /// While true, new requests are held unanswered (a hung apiserver).
    pub(crate) hang: tokio::sync::watch::Sender<bool>,
    /// Bumped to end every open watch stream (an apiserver restart, as watchers see it).
    pub(crate) watch_epoch: tokio::sync::watch::Sender<u64>,
    pub(crate) open_watches: AtomicUsize,
    pub(crate) bookmarks_sent: AtomicUsize,
    pub(crate) expired_watches: AtomicUsize,
    pub(crate) bookmark_interval: Duration,
}

impl Shared {
    /// Consumes one matching injected fault, if any.
    pub(crate) fn take_fault(&self, method: &http::Method, path: &str) -> Option<u16> {
        let mut faults = self.faults.lock();
        let fault = faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && path.starts_with(&f.path_prefix)
        })?;
        fault.remaining -= 1;
        let code = fault.code;
        faults.retain(|f| f.remaining > 0);
        Some(code)
    }
}

/// Options for [`FakeApi`].
#[derive(Debug, Clone)]
pub struct FakeApiBuilder {
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for FakeApiBuilder {
    fn default() -> Self {
        Self {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl FakeApiBuilder {
    /// How many changes watches can be resumed across (default 1000); older versions get 410.
    pub fn history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit;
        self
    }

    /// How often open watches that asked for bookmarks get one (default 1 s; a real apiserver
    /// sends one about every minute, which is too slow for tests).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Panics
    /// If the loopback port cannot be bound (a test environment failure).
    pub async fn start(self) -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("kube-fake: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("kube-fake: local_addr");
        let (watch_epoch, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(self.history_limit)),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            outage: AtomicBool::new(false),
            hang: tokio::sync::watch::channel(false).0,
            watch_epoch,
            open_watches: AtomicUsize::new(0),
            bookmarks_sent: AtomicUsize::new(0),
            expired_watches: AtomicUsize::new(0),
            bookmark_interval: self.bookmark_interval,
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        FakeApi { shared, addr, task }
    }
}

/// A running fake apiserver. Dropping it stops the server and every connection.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }
}

impl FakeApi {
    /// Starts a fake with default options.
    pub async fn start() -> FakeApi {
        FakeApiBuilder::default().start().await
    }

    /// Options for a fake (history size, bookmark interval).
    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder::default()
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Config` for the fake: plain HTTP, no auth, namespace `default`, and otherwise the
    /// same defaults as an inferred config (including kube's own retry layer for 429/503/504).
    ///
    /// # Panics
    /// Never in practice: the URL is well-formed.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("kube-fake: url"))
    }

    /// A `kube::Client` pointed at the fake.
    ///
    /// # Panics
    /// If kube cannot build a client from the plain-HTTP config.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kube-fake: client")
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().resource_version()
    }

    /// Creates or replaces an object of a kube-rs type (no preconditions), as if some other
    /// client wrote it. Returns the stored object.
    ///
    /// # Panics
    /// If the object has no name or does not serialize to a JSON object.
    pub fn put<K>(&self, object: &K) -> K
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let value = serde_json::to_value(object).expect("kube-fake: serialize");
        let stored = self.put_value(&Gvr::of::<K>(), value);
        serde_json::from_value(stored).expect("kube-fake: deserialize stored object")
    }

    /// Creates or replaces an object given as JSON (its namespace from `metadata.namespace`).
    ///
    /// # Panics
    /// If the object has no name or is not a JSON object.
    pub fn put_value(&self, gvr: &Gvr, object: Value) -> Value {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        self.shared
            .store
            .lock()
            .put(gvr, &ns, object)
            .expect("kube-fake: put")
    }

    /// Reads an object of a kube-rs type.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.get_value(&Gvr::of::<K>(), namespace, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Reads an object as JSON.
    pub fn get_value(&self, gvr: &Gvr, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjectKey {
            gvr: gvr.clone(),
            namespace: if gvr.namespaced() {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        };
        self.shared.store.lock().get(&key).cloned()
    }

    /// Deletes an object (a DELETED event for watchers); false if it did not exist.
    pub fn delete_value(&self, gvr: &Gvr, namespace: &str, name: &str) -> bool {
        self.shared
            .store
            .lock()
            .delete(gvr, namespace, name)
            .is_ok()
    }

    /// Deletes an object of a kube-rs type.
    pub fn delete<K: kube::Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        self.delete_value(&Gvr::of::<K>(), namespace, name)
    }

    /// Plays the workload controller: sets `status.replicas`, `readyReplicas`, `availableReplicas`,
    /// `updatedReplicas` and `observedGeneration` of a Deployment or StatefulSet (e.g. pods coming
    /// up after a scale). Returns false if the object does not exist.
    pub fn set_scale_status(
        &self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        replicas: i32,
        ready: i32,
    ) -> bool {
        let mut store = self.shared.store.lock();
        let key = ObjectKey {
            gvr: gvr.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let Some(mut object) = store.get(&key).cloned() else {
            return false;
        };
        let generation = object
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1));
        object["status"] = json!({
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas,
            "currentReplicas": replicas,
            "observedGeneration": generation,
        });
        store.put(gvr, namespace, object).is_ok()
    }

    /// Every stored Event (`events.k8s.io/v1` and core `v1`), in namespace and name order.
    pub fn events(&self) -> Vec<Value> {
        let store = self.shared.store.lock();
        let mut events = Vec::new();
        for gvr in [
            Gvr::new("events.k8s.io", "v1", "events"),
            Gvr::new("", "v1", "events"),
        ] {
            events.extend(store.list(&gvr, None).map(|(_, v)| v.clone()));
        }
        events
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.log.lock().clear();
    }

    /// The next `count` requests whose path starts with `path_prefix` (and whose method is `method`,
    /// if given) answer `code` with a Status body (500 InternalError, 503 ServiceUnavailable,
    /// 409 Conflict, ...). Rules are consumed in the order they were added.
    pub fn fail_next(&self, method: Option<&str>, path_prefix: &str, count: usize, code: u16) {
        self.shared.faults.lock().push(Fault {
            method: method.map(str::to_owned),
            path_prefix: path_prefix.to_owned(),
            remaining: count,
            code,
        });
    }

    /// Starts or ends an outage: while on, open watches are cut and every request has its
    /// connection dropped without an answer.
    pub fn set_outage(&self, on: bool) {
        self.shared.outage.store(on, Ordering::SeqCst);
        if on {
            self.close_watches();
        }
    }

    /// Starts or ends a hang: while on, every new request is accepted and held without an answer
    /// until the hang ends (open watches are not affected). Tests timeouts on a stuck apiserver.
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.send_replace(on);
    }

    /// Ends every open watch stream cleanly (clients re-watch from their last resourceVersion).
    pub fn close_watches(&self) {
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Drops the change history: a watch from any version before the current one now gets
    /// 410 Gone, forcing the client to re-list (as after etcd compaction).
    pub fn compact(&self) {
        self.shared.store.lock().compact();
    }

    /// How many periodic BOOKMARK events have been sent, over all watches.
    pub fn bookmarks_sent(&self) -> usize {
        self.shared.bookmarks_sent.load(Ordering::SeqCst)
    }

    /// How many watches were answered with a 410 "too old resource version" ERROR event.
    pub fn expired_watches(&self) -> usize {
        self.shared.expired_watches.load(Ordering::SeqCst)
    }

    /// How many watch streams are open now (to wait until a watcher is established).
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }
}
