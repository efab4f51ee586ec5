//! `?watch=true`: a chunked stream of JSON lines `{"type": ..., "object": ...}`.
//!
//! Semantics follow the apiserver's watch cache: a watch from version N replays every change after N
//! still in the history, then streams live changes; N older than the history gets a single ERROR event
//! carrying a 410 Status (HTTP 200, as the apiserver answers an expired watch), after which the client
//! must re-list. Selector-filtered watches translate an update that moves an object out of (into) the
//! selector into DELETED (ADDED). BOOKMARK events carry the latest version the stream has accounted
//! for, never one ahead of a change it has yet to deliver, so resuming from a bookmark loses nothing.

use crate::Shared;
use crate::resource::ResourcePath;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Change, ChangeType};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// What a watch request asked for.
pub(crate) struct WatchRequest {
    pub path: ResourcePath,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `resourceVersion`; `None` for "" and "0" (start with the current state as ADDED events).
    pub since: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    fn matches(&self, change: &Change, object: &Value) -> bool {
        change.key.gvr == self.path.gvr
            && self
                .path
                .namespace
                .as_deref()
                .is_none_or(|ns| change.key.namespace == ns)
            && self.labels.matches_object(object)
            && self.fields.matches_object(object)
    }

    fn matches_object(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches_object(object)
    }
}

/// Decrements the open-watch gauge when the stream task ends, however it ends.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the stream task and returns the receiving end of the response body.
pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // Snapshot (or replay) and subscription happen under one lock: no change can fall between them.
    let (initial, subscription) = {
        let store = shared.store.lock();
        match req.since {
            None => {
                let objects: Vec<Value> = store
                    .list(&req.path.gvr, req.path.namespace.as_deref())
                    .map(|(_, v)| v)
                    .filter(|v| req.matches_object(v))
                    .cloned()
                    .collect();
                let mut lines: Vec<Value> =
                    objects.into_iter().map(|o| event("ADDED", o)).collect();
                if req.send_initial_events {
                    lines.push(bookmark(&req, store.resource_version(), true));
                }
                (lines, Some(store.subscribe()))
            }
            Some(rv) => match store.changes_since(rv) {
                Ok(changes) => {
                    let lines = changes
                        .iter()
                        .filter_map(|c| translate(&req, c))
                        .collect::<Vec<_>>();
                    (lines, Some(store.subscribe()))
                }
                Err(gone) => {
                    shared.expired_watches.fetch_add(1, Ordering::SeqCst);
                    (vec![error_event(&gone)], None)
                }
            },
        }
    };
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = OpenWatch(shared.clone());
    let mut epoch = shared.watch_epoch.subscribe();
    tokio::spawn(async move {
        let _guard = guard;
        for line in initial {
            if tx.send(to_line(&line)).await.is_err() {
                return;
            }
        }
        let Some((mut changes, mut last_rv)) = subscription else {
            return;
        };
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(shared.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = epoch.changed() => return,
                _ = &mut deadline => return,
                received = changes.recv() => match received {
                    Ok(change) => {
                        last_rv = last_rv.max(change.rv);
                        if let Some(line) = translate(&req, &change)
                            && tx.send(to_line(&line)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Like the apiserver's cacher when a watcher falls behind: end with 410.
                        let _ = tx.send(to_line(&error_event(&ApiError::gone(last_rv, last_rv)))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if req.bookmarks => {
                    if tx.send(to_line(&bookmark(&req, last_rv, false))).await.is_err() {
                        return;
                    }
                    shared.bookmarks_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    rx
}

/// The event a change produces on this watch, if any.
fn translate(req: &WatchRequest, change: &Change) -> Option<Value> {
    let now = req.matches(change, &change.object);
    let before = change.old.as_ref().is_some_and(|o| req.matches(change, o));
    let kind = match (change.kind, before, now) {
        (ChangeType::Added, _, true) => "ADDED",
        (ChangeType::Modified, true, true) => "MODIFIED",
        (ChangeType::Modified, false, true) => "ADDED",
        (ChangeType::Modified, true, false) => "DELETED",
        (ChangeType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some(event(kind, change.object.clone()))
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn error_event(err: &ApiError) -> Value {
    event("ERROR", err.to_status())
}

fn bookmark(req: &WatchRequest, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        json!({
            "kind": req.path.gvr.kind(),
            "apiVersion": req.path.gvr.api_version(),
            "metadata": metadata,
        }),
    )
}

fn to_line(value: &Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}
