//! The Kubernetes actuator: reads and sets a Deployment's or StatefulSet's replica count through its
//! `scale` subresource, steers which pods a scale-down removes, and reports each rescale as an Event.
//!
//! Why the `scale` subresource and a merge patch of `spec.replicas` only: it is the narrowest write
//! that does the job (RBAC can grant `deployments/scale` without `deployments` update), it cannot
//! clobber a concurrent edit of the pod template, and it is what the HPA itself uses. The field
//! manager `infergate-autoscaler` makes the writer visible in `managedFields`.
//!
//! Failures: a conflict (409), throttling (429), a server error (5xx) or a transport error is retried
//! with capped exponential back-off, a bounded number of times; anything else (not found, forbidden,
//! invalid) is returned at once as a typed error. The caller turns a failed write into a metric and an
//! Event, never a crash. In dry-run mode every write is logged and skipped; reads still happen, so a
//! dry run shows what would have been done against the real current state.
//!
//! Before a scale-down the caller sets `controller.kubernetes.io/pod-deletion-cost` on the pods
//! ([`deletion_costs`] ranks them by load), so the ReplicaSet controller removes the idlest pods
//! first rather than a busy one mid-generation.

use infergate_config::ScaleKind;
use infergate_gateway::discovery::kubernetes::ApiCall;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::Selector;
use serde_json::json;
use std::time::SystemTime;
use tokio::sync::watch;

mod retry;

use retry::with_retries;
pub use retry::{RetryPolicy, is_retryable};

/// The field manager of every write, visible in the objects' `managedFields`.
pub const FIELD_MANAGER: &str = "infergate-autoscaler";
/// The Event `reportingController`.
pub const REPORTING_CONTROLLER: &str = "infergate-autoscaler";
/// The annotation the ReplicaSet controller reads to choose which pods a scale-down removes
/// (lower cost goes first).
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The API calls of the Kubernetes actuator (the Helm chart's RBAC is tested against this).
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        api_group: "apps",
        resource: "deployments",
        verbs: &["get"],
    },
    ApiCall {
        api_group: "apps",
        resource: "statefulsets",
        verbs: &["get"],
    },
    ApiCall {
        api_group: "apps",
        resource: "deployments/scale",
        verbs: &["patch"],
    },
    ApiCall {
        api_group: "apps",
        resource: "statefulsets/scale",
        verbs: &["patch"],
    },
    ApiCall {
        api_group: "",
        resource: "pods",
        verbs: &["patch"],
    },
    ApiCall {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create"],
    },
];

/// A workload's replica counts as the API reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleStatus {
    /// Desired replicas (`spec.replicas`; the API's default of 1 when unset).
    pub spec_replicas: i32,
    /// Pods that exist (`status.replicas`).
    pub replicas: i32,
    /// Pods that are ready (`status.readyReplicas`).
    pub ready_replicas: i32,
    /// The pod selector, as a label selector string (`app=vllm`).
    pub selector: String,
}

/// Whether a write happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The API accepted the write.
    Written,
    /// Dry-run: logged, not sent.
    DryRun,
}

/// Normal or Warning, as Events are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Routine (a rescale).
    Normal,
    /// Something an operator should look at (a failed write).
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Why a Kubernetes call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum KubeActuatorError {
    /// The object does not exist.
    #[error("{what}: not found")]
    NotFound {
        /// The call and object.
        what: String,
    },
    /// The API refused the call in a way retrying cannot fix (forbidden, invalid, ...).
    #[error("{what}: {source}")]
    Rejected {
        /// The call and object.
        what: String,
        /// kube's error, with the apiserver's Status.
        #[source]
        source: kube::Error,
    },
    /// Retryable failures (409, 429, 5xx, transport) outlasted the retry budget.
    #[error("{what}: still failing after {attempts} attempts: {source}")]
    Exhausted {
        /// The call and object.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: kube::Error,
    },
    /// Every attempt in the budget timed out (a hung apiserver, or kube's own client-side retries
    /// of 503 outlasting the attempt timeout).
    #[error("{what}: timed out {attempts} times")]
    TimedOut {
        /// The call and object.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The requested value cannot be written (negative replicas).
    #[error("{what}: invalid request: {detail}")]
    Invalid {
        /// The call and object.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// This replica is not the leader: writes are refused so two autoscalers never fight.
    #[error("{what}: not the leader; write refused")]
    NotLeader {
        /// The call and object.
        what: String,
    },
}

/// Deletion costs for a scale-down: pods ranked by load, the idlest lowest (removed first). Ties
/// keep the input order. Returns `(pod, cost)` in the input order.
pub fn deletion_costs(pods: &[(String, f64)]) -> Vec<(String, i32)> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&a, &b| pods[a].1.total_cmp(&pods[b].1).then(a.cmp(&b)));
    let mut costs = vec![0i32; pods.len()];
    for (rank, &i) in order.iter().enumerate() {
        costs[i] = i32::try_from(rank).unwrap_or(i32::MAX).saturating_mul(100);
    }
    pods.iter()
        .zip(costs)
        .map(|((name, _), cost)| (name.clone(), cost))
        .collect()
}

/// Scales Deployments and StatefulSets through the Kubernetes API.
#[derive(Clone)]
pub struct KubeScaler {
    client: kube::Client,
    /// Log writes instead of sending them.
    pub dry_run: bool,
    /// Back-off for retryable failures.
    pub retry: RetryPolicy,
    /// This replica's name, as the Events' `reportingInstance`.
    pub instance: String,
    leader: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for KubeScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeScaler")
            .field("dry_run", &self.dry_run)
            .field("retry", &self.retry)
            .field("instance", &self.instance)
            .field("leader_gated", &self.leader.is_some())
            .finish()
    }
}

impl KubeScaler {
    /// A scaler that writes (not dry-run), with the default retry policy and no leader gate.
    pub fn new(client: kube::Client, instance: impl Into<String>) -> Self {
        Self {
            client,
            dry_run: false,
            retry: RetryPolicy::default(),
            instance: instance.into(),
            leader: None,
        }
    }

    /// Sets dry-run mode.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Refuses writes whenever `is_leader` reads false (see [`crate::lease::LeaderElector`]).
    pub fn with_leader_gate(mut self, is_leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(is_leader);
        self
    }

    /// Reads a workload's desired, existing and ready replicas and its pod selector.
    pub async fn get_scale(
        &self,
        kind: ScaleKind,
        namespace: &str,
        name: &str,
    ) -> Result<ScaleStatus, KubeActuatorError> {
        let what = format!("get {} {namespace}/{name}", kind_name(kind));
        match kind {
            ScaleKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                let d = with_retries(&self.retry, &what, || api.get(name)).await?;
                let spec = d.spec.unwrap_or_default();
                let status = d.status.unwrap_or_default();
                Ok(ScaleStatus {
                    spec_replicas: spec.replicas.unwrap_or(1),
                    replicas: status.replicas.unwrap_or(0),
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                    selector: selector_string(&spec.selector),
                })
            }
            ScaleKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                let s = with_retries(&self.retry, &what, || api.get(name)).await?;
                let spec = s.spec.unwrap_or_default();
                let status = s.status.unwrap_or_default();
                Ok(ScaleStatus {
                    spec_replicas: spec.replicas.unwrap_or(1),
                    replicas: status.replicas,
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                    selector: selector_string(&spec.selector),
                })
            }
        }
    }

    /// Sets `spec.replicas` with a merge patch of the `scale` subresource.
    pub async fn patch_scale(
        &self,
        kind: ScaleKind,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) -> Result<WriteOutcome, KubeActuatorError> {
        let what = format!("scale {} {namespace}/{name} to {replicas}", kind_name(kind));
        if replicas < 0 {
            return Err(KubeActuatorError::Invalid {
                what,
                detail: "replicas must not be negative".into(),
            });
        }
        if self.skip_write(&what)? {
            return Ok(WriteOutcome::DryRun);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        match kind {
            ScaleKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                with_retries(&self.retry, &what, || {
                    api.patch_scale(name, &params, &patch)
                })
                .await?;
            }
            ScaleKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                with_retries(&self.retry, &what, || {
                    api.patch_scale(name, &params, &patch)
                })
                .await?;
            }
        }
        tracing::info!(kind = kind_name(kind), %namespace, %name, replicas, "scaled");
        Ok(WriteOutcome::Written)
    }

    /// Sets a pod's `controller.kubernetes.io/pod-deletion-cost` annotation (merge patch).
    pub async fn set_deletion_cost(
        &self,
        namespace: &str,
        pod: &str,
        cost: i32,
    ) -> Result<WriteOutcome, KubeActuatorError> {
        let what = format!("set deletion cost {cost} on pod {namespace}/{pod}");
        if self.skip_write(&what)? {
            return Ok(WriteOutcome::DryRun);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({
            "metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}
        }));
        with_retries(&self.retry, &what, || api.patch(pod, &params, &patch)).await?;
        Ok(WriteOutcome::Written)
    }

    /// Posts an `events.k8s.io/v1` Event about `regarding` (its namespace is the Event's).
    pub async fn record_event(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        note: &str,
        type_: EventType,
    ) -> Result<WriteOutcome, KubeActuatorError> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| self.client.default_namespace().to_owned());
        let object = regarding.name.clone().unwrap_or_default();
        let what = format!("record event {reason} on {namespace}/{object}");
        if self.skip_write(&what)? {
            tracing::info!(%reason, %note, "dry-run event");
            return Ok(WriteOutcome::DryRun);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                // `<object>.<unique>` as client-go's recorder names them.
                name: Some(format!("{object}.{:x}", unique_suffix())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Scale".into()),
            reason: Some(reason.into()),
            note: Some(truncate_note(note)),
            type_: Some(type_.as_str().into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        with_retries(&self.retry, &what, || api.create(&params, &event)).await?;
        Ok(WriteOutcome::Written)
    }

    /// A reference to a Deployment or StatefulSet, for [`KubeScaler::record_event`].
    pub fn workload_ref(kind: ScaleKind, namespace: &str, name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(kind_name(kind).into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        }
    }

    /// True when the write must be skipped (dry-run); an error when this replica is not the leader.
    fn skip_write(&self, what: &str) -> Result<bool, KubeActuatorError> {
        if self.dry_run {
            tracing::info!(action = %what, "dry-run: not written");
            return Ok(true);
        }
        if let Some(leader) = &self.leader
            && !*leader.borrow()
        {
            return Err(KubeActuatorError::NotLeader { what: what.into() });
        }
        Ok(false)
    }
}

fn kind_name(kind: ScaleKind) -> &'static str {
    match kind {
        ScaleKind::Deployment => "Deployment",
        ScaleKind::StatefulSet => "StatefulSet",
    }
}

/// A workload's `spec.selector` as a selector string ("" if it cannot be expressed).
fn selector_string(selector: &LabelSelector) -> String {
    Selector::try_from(selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Events' notes are limited to 1 KiB by the API.
fn truncate_note(note: &str) -> String {
    let mut end = note.len().min(1024);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_owned()
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idlest_pods_get_the_lowest_cost() {
        let costs = deletion_costs(&[
            ("busy".into(), 5.0),
            ("idle".into(), 0.0),
            ("mid".into(), 2.0),
            ("idle2".into(), 0.0),
        ]);
        assert_eq!(
            costs,
            vec![
                ("busy".into(), 300),
                ("idle".into(), 0),
                ("mid".into(), 200),
                ("idle2".into(), 100),
            ]
        );
    }

    #[test]
    fn notes_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(600);
        let t = truncate_note(&long);
        assert!(t.len() <= 1024 && t.chars().all(|c| c == 'é'));
    }
}
