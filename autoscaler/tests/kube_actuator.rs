//! The Kubernetes actuator against the fake apiserver over real HTTP: reads, the scale patch as the
//! apiserver receives it, retries of conflicts, server errors and outages, the deletion-cost
//! annotation, Events, dry-run and the leader gate.

use infergate_autoscaler::actuate::kubernetes::{
    API_CALLS, DELETION_COST_ANNOTATION, EventType, FIELD_MANAGER, KubeActuatorError, KubeScaler,
    RetryPolicy, ScaleStatus, WriteOutcome,
};
use infergate_config::ScaleKind;
use infergate_kube_fake::{FakeApi, Gvr, RequestRecord};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

const SCALE_PATH: &str = "/apis/apps/v1/namespaces/ns/deployments/vllm/scale";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(10),
    }
}

async fn setup() -> (FakeApi, KubeScaler) {
    let fake = FakeApi::start().await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "vllm", "namespace": "ns"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vllm"}},
                 "template": {"metadata": {"labels": {"app": "vllm"}}}}
    }))
    .unwrap();
    fake.put(&deployment);
    fake.set_scale_status(&Gvr::of::<Deployment>(), "ns", "vllm", 2, 1);
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "sglang", "namespace": "ns"},
        "spec": {"replicas": 1, "serviceName": "sglang",
                 "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["sglang"]}]},
                 "template": {"metadata": {"labels": {"app": "sglang"}}}}
    }))
    .unwrap();
    fake.put(&sts);
    fake.set_scale_status(&Gvr::of::<StatefulSet>(), "ns", "sglang", 1, 1);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "vllm-abc", "namespace": "ns", "labels": {"app": "vllm"}}
    }))
    .unwrap();
    fake.put(&pod);
    let scaler = KubeScaler::new(fake.client(), "autoscaler-0").with_retry(fast_retry());
    fake.clear_requests();
    (fake, scaler)
}

fn spec_replicas(fake: &FakeApi) -> i32 {
    fake.get::<Deployment>("ns", "vllm")
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
        .unwrap()
}

fn patches(fake: &FakeApi) -> Vec<RequestRecord> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect()
}

fn assert_calls_declared(fake: &FakeApi) {
    let requests = fake.requests();
    for r in &requests {
        assert!(
            API_CALLS
                .iter()
                .any(|c| c.grants(&r.api_group, &r.resource, &r.verb)),
            "call not in API_CALLS: {} {} {:?}",
            r.verb,
            r.resource,
            r.api_group
        );
    }
}

#[tokio::test]
async fn get_scale_reads_spec_status_and_selector() {
    let (fake, scaler) = setup().await;
    let s = scaler
        .get_scale(ScaleKind::Deployment, "ns", "vllm")
        .await
        .unwrap();
    assert_eq!(
        s,
        ScaleStatus {
            spec_replicas: 2,
            replicas: 2,
            ready_replicas: 1,
            selector: "app=vllm".into()
        }
    );
    let s = scaler
        .get_scale(ScaleKind::StatefulSet, "ns", "sglang")
        .await
        .unwrap();
    assert_eq!((s.spec_replicas, s.ready_replicas), (1, 1));
    assert_eq!(s.selector, "app in (sglang)");
    let err = scaler
        .get_scale(ScaleKind::Deployment, "ns", "missing")
        .await
        .unwrap_err();
    assert!(matches!(err, KubeActuatorError::NotFound { .. }), "{err}");
    assert_calls_declared(&fake);
}

#[tokio::test]
async fn patch_scale_is_a_merge_patch_of_the_scale_subresource() {
    let (fake, scaler) = setup().await;
    let out = scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 5)
        .await
        .unwrap();
    assert_eq!(out, WriteOutcome::Written);
    assert_eq!(spec_replicas(&fake), 5);
    let p = patches(&fake);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, SCALE_PATH);
    assert_eq!(p[0].resource, "deployments/scale");
    assert_eq!(
        p[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(p[0].field_manager.as_deref(), Some(FIELD_MANAGER));
    let stored = fake.get::<Deployment>("ns", "vllm").unwrap();
    let managers: Vec<_> = stored
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&FIELD_MANAGER.to_string()));

    // Pods coming up: the next read sees them.
    fake.set_scale_status(&Gvr::of::<Deployment>(), "ns", "vllm", 5, 3);
    let s = scaler
        .get_scale(ScaleKind::Deployment, "ns", "vllm")
        .await
        .unwrap();
    assert_eq!((s.spec_replicas, s.replicas, s.ready_replicas), (5, 5, 3));

    scaler
        .patch_scale(ScaleKind::StatefulSet, "ns", "sglang", 0)
        .await
        .unwrap();
    let sts = fake.get::<StatefulSet>("ns", "sglang").unwrap();
    assert_eq!(sts.spec.unwrap().replicas, Some(0));
    assert!(
        patches(&fake)
            .iter()
            .any(|r| r.resource == "statefulsets/scale")
    );
    let err = scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", -1)
        .await
        .unwrap_err();
    assert!(matches!(err, KubeActuatorError::Invalid { .. }));
    assert_calls_declared(&fake);
}

#[tokio::test]
async fn conflicts_and_server_errors_are_retried() {
    let (fake, scaler) = setup().await;
    fake.fail_next(Some("PATCH"), SCALE_PATH, 2, 409);
    scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 3)
        .await
        .unwrap();
    assert_eq!(spec_replicas(&fake), 3);
    let statuses: Vec<u16> = patches(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [409, 409, 200]);

    fake.clear_requests();
    fake.fail_next(Some("PATCH"), SCALE_PATH, 2, 503);
    fake.fail_next(Some("PATCH"), SCALE_PATH, 1, 500);
    scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 4)
        .await
        .unwrap();
    assert_eq!(spec_replicas(&fake), 4);
    let statuses: Vec<u16> = patches(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 500, 200]);

    // The budget is bounded: a persistent failure ends in a typed error, not a hang or a panic.
    fake.clear_requests();
    fake.fail_next(Some("PATCH"), SCALE_PATH, 100, 500);
    let err = scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 6)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KubeActuatorError::Exhausted { attempts: 5, .. }),
        "{err}"
    );
    assert_eq!(patches(&fake).len(), 5);
    assert_eq!(spec_replicas(&fake), 4);

    // Not retryable (403 Forbidden): one attempt, and the error says so.
    let fresh = FakeApi::start().await;
    let forbidden = KubeScaler::new(fresh.client(), "x").with_retry(fast_retry());
    fresh.fail_next(None, "/", 1, 403);
    let err = forbidden
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, KubeActuatorError::Rejected { .. }), "{err}");
    assert_eq!(fresh.requests().len(), 1);
}

#[tokio::test]
async fn an_outage_is_retried_until_the_apiserver_returns() {
    let (fake, scaler) = setup().await;
    let scaler = scaler.with_retry(RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(10),
    });
    fake.set_outage(true);
    let patch = tokio::spawn(async move {
        scaler
            .patch_scale(ScaleKind::Deployment, "ns", "vllm", 7)
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake.requests().iter().any(|r| r.status == 0) {
        assert!(
            Instant::now() < deadline,
            "no request reached the fake during the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.set_outage(false);
    let out = tokio::time::timeout(Duration::from_secs(20), patch)
        .await
        .expect("patch finished")
        .unwrap()
        .unwrap();
    assert_eq!(out, WriteOutcome::Written);
    assert_eq!(spec_replicas(&fake), 7);
}

#[tokio::test]
async fn deletion_cost_annotation_and_events() {
    let (fake, scaler) = setup().await;
    scaler
        .set_deletion_cost("ns", "vllm-abc", 300)
        .await
        .unwrap();
    let pod = fake.get::<Pod>("ns", "vllm-abc").unwrap();
    assert_eq!(
        pod.metadata.annotations.unwrap()[DELETION_COST_ANNOTATION],
        "300"
    );
    let p = patches(&fake);
    assert_eq!(p[0].resource, "pods");
    assert_eq!(
        p[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );

    let target = KubeScaler::workload_ref(ScaleKind::Deployment, "ns", "vllm");
    scaler
        .record_event(
            &target,
            "Rescaled",
            "2 -> 5: waiting queue 9.0 over target 3.0",
            EventType::Normal,
        )
        .await
        .unwrap();
    let events = fake.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["reportingController"], "infergate-autoscaler");
    assert_eq!(e["reportingInstance"], "autoscaler-0");
    assert_eq!(e["reason"], "Rescaled");
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["action"], "Scale");
    assert_eq!(e["regarding"]["kind"], "Deployment");
    assert_eq!(e["regarding"]["name"], "vllm");
    assert!(e["eventTime"].is_string());
    assert!(e["metadata"]["name"].as_str().unwrap().starts_with("vllm."));
    assert_calls_declared(&fake);
}

#[tokio::test]
async fn dry_run_reads_but_never_writes() {
    let (fake, scaler) = setup().await;
    let scaler = scaler.with_dry_run(true);
    let s = scaler
        .get_scale(ScaleKind::Deployment, "ns", "vllm")
        .await
        .unwrap();
    assert_eq!(s.spec_replicas, 2);
    let target = KubeScaler::workload_ref(ScaleKind::Deployment, "ns", "vllm");
    assert_eq!(
        scaler
            .patch_scale(ScaleKind::Deployment, "ns", "vllm", 9)
            .await
            .unwrap(),
        WriteOutcome::DryRun
    );
    assert_eq!(
        scaler.set_deletion_cost("ns", "vllm-abc", 1).await.unwrap(),
        WriteOutcome::DryRun
    );
    assert_eq!(
        scaler
            .record_event(&target, "Rescaled", "x", EventType::Normal)
            .await
            .unwrap(),
        WriteOutcome::DryRun
    );
    assert!(fake.requests().iter().all(|r| r.method == "GET"));
    assert_eq!(spec_replicas(&fake), 2);
    assert!(fake.events().is_empty());
}

#[tokio::test]
async fn writes_are_refused_while_not_leader() {
    let (fake, scaler) = setup().await;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let scaler = scaler.with_leader_gate(leader_rx);
    let err = scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 3)
        .await
        .unwrap_err();
    assert!(matches!(err, KubeActuatorError::NotLeader { .. }));
    assert!(fake.requests().is_empty());
    leader_tx.send_replace(true);
    scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 3)
        .await
        .unwrap();
    assert_eq!(spec_replicas(&fake), 3);
}

#[tokio::test]
async fn a_hung_apiserver_times_out_instead_of_stalling() {
    let (fake, scaler) = setup().await;
    let scaler = scaler.with_retry(RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        attempt_timeout: Duration::from_millis(200),
    });
    fake.set_hang(true);
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        scaler.patch_scale(ScaleKind::Deployment, "ns", "vllm", 3),
    )
    .await
    .expect("the scaler gave up by itself")
    .unwrap_err();
    assert!(
        matches!(err, KubeActuatorError::TimedOut { attempts: 2, .. }),
        "{err}"
    );
    fake.set_hang(false);
    scaler
        .patch_scale(ScaleKind::Deployment, "ns", "vllm", 3)
        .await
        .unwrap();
    assert_eq!(spec_replicas(&fake), 3);
}
