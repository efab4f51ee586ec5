//! The fake as a stock kube-rs client sees it: every behaviour infergate relies on, over real HTTP.

use futures_util::StreamExt;
use infergate_kube_fake::{FakeApi, Gvr};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::time::Duration;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
    }))
    .unwrap()
}

fn api_code(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn list_with_selectors_and_pages() {
    let fake = FakeApi::start().await;
    for i in 0..5 {
        fake.put(&pod(&format!("p{i}"), if i % 2 == 0 { "a" } else { "b" }));
    }
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
    let list = pods
        .list(&ListParams::default().labels("app in (a)"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(fake.resource_version().to_string().as_str())
    );
    let list = pods
        .list(&ListParams::default().labels("app!=a"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = pods
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.metadata.continue_.is_none());
    let (code, _) = api_code(
        pods.list(&ListParams::default().labels("app in (a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
}

#[tokio::test]
async fn watch_replays_filters_and_expires() {
    let fake = FakeApi::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
    let start = fake.resource_version();
    fake.put(&pod("p1", "a"));
    fake.put(&pod("p2", "b"));
    let mut stream = pods
        .watch(
            &WatchParams::default().labels("app=a").timeout(10),
            &start.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("p1")),
        other => panic!("unexpected {other:?}"),
    }
    // Moving p1 out of the selector is a DELETED on this watch.
    fake.put(&pod("p1", "b"));
    let mut saw_delete = false;
    let mut saw_bookmark = false;
    for _ in 0..50 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Deleted(p) => {
                assert_eq!(p.metadata.name.as_deref(), Some("p1"));
                saw_delete = true;
            }
            WatchEvent::Bookmark(_) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
        if saw_delete && saw_bookmark {
            break;
        }
    }
    assert!(saw_delete && saw_bookmark);
    fake.compact();
    let mut expired = pods
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .unwrap()
        .boxed();
    match expired.next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn lease_create_conflicts_and_cas() {
    let fake = FakeApi::start().await;
    let leases: Api<Lease> = Api::namespaced(fake.client(), "ns");
    let (code, reason) = api_code(leases.get("l").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let (code, reason) = api_code(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("l", &PostParams::default(), &mine)
        .await
        .unwrap();
    let (code, reason) = api_code(
        leases
            .replace("l", &PostParams::default(), &mine)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn scale_subresource_patch_and_put() {
    let fake = FakeApi::start().await;
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "vllm"}},
                 "template": {"metadata": {"labels": {"app": "vllm"}}}}
    }))
    .unwrap();
    fake.put(&dep);
    fake.set_scale_status(&Gvr::of::<Deployment>(), "ns", "d", 1, 1);
    let deps: Api<Deployment> = Api::namespaced(fake.client(), "ns");
    let scale = deps.get_scale("d").await.unwrap();
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(
        scale.status.as_ref().unwrap().selector.as_deref(),
        Some("app=vllm")
    );
    let pp = PatchParams::apply("tester");
    let patched = deps
        .patch_scale("d", &pp, &Patch::Merge(json!({"spec": {"replicas": 4}})))
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(4));
    let stored = fake.get::<Deployment>("ns", "d").unwrap();
    assert_eq!(stored.spec.unwrap().replicas, Some(4));
    assert_eq!(stored.metadata.generation, Some(2));
    assert_eq!(
        stored.metadata.managed_fields.unwrap()[0]
            .manager
            .as_deref(),
        Some("tester")
    );
    let (code, _) = api_code(
        deps.patch_scale("d", &pp, &Patch::Apply(json!({"spec": {"replicas": 2}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 415);
    // PUT with a stale resourceVersion conflicts.
    let mut stale = scale.clone();
    stale.spec = Some(k8s_openapi::api::autoscaling::v1::ScaleSpec { replicas: Some(7) });
    let (code, reason) = api_code(
        deps.replace_scale("d", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let log = fake.requests();
    let patch = log.iter().find(|r| r.method == "PATCH").unwrap();
    assert_eq!(patch.resource, "deployments/scale");
    assert_eq!(patch.verb, "patch");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

#[tokio::test]
async fn injected_faults_and_outage() {
    let fake = FakeApi::start().await;
    fake.put(&pod("p", "a"));
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
    fake.fail_next(Some("GET"), "/api/v1/namespaces/ns/pods/p", 1, 500);
    let (code, reason) = api_code(pods.get("p").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert!(pods.get("p").await.is_ok());
    fake.set_outage(true);
    assert!(!matches!(
        pods.get("p").await,
        Ok(_) | Err(kube::Error::Api(_))
    ));
    fake.set_outage(false);
    assert!(pods.get("p").await.is_ok());
}

#[tokio::test]
async fn kube_runtime_watcher_with_list_watch_and_streaming_list() {
    use kube::runtime::watcher::{self, Event, InitialListStrategy};
    for strategy in [
        InitialListStrategy::ListWatch,
        InitialListStrategy::StreamingList,
    ] {
        let fake = FakeApi::start().await;
        fake.put(&pod("p1", "a"));
        fake.put(&pod("p2", "b"));
        let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
        let config = watcher::Config {
            initial_list_strategy: strategy.clone(),
            ..watcher::Config::default().labels("app=a")
        };
        let mut events = watcher::watcher(pods, config).boxed();
        let mut initial = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("watcher event in time")
                .unwrap()
                .unwrap();
            match event {
                Event::Init => {}
                Event::InitApply(p) => initial.push(p.metadata.name.unwrap()),
                Event::InitDone => break,
                other => panic!("{strategy:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(initial, ["p1"], "{strategy:?}");
        fake.put(&pod("p3", "a"));
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watcher event in time")
            .unwrap()
            .unwrap();
        assert!(
            matches!(&event, Event::Apply(p) if p.metadata.name.as_deref() == Some("p3")),
            "{strategy:?}: {event:?}"
        );
        let sent_initial = fake
            .requests()
            .iter()
            .any(|r| r.query.contains("sendInitialEvents=true"));
        assert_eq!(sent_initial, strategy == InitialListStrategy::StreamingList);
    }
}

#[tokio::test]
async fn watcher_pages_through_a_large_list_and_watch_timeouts_end_streams() {
    use kube::runtime::watcher::{self, Event};
    let fake = FakeApi::start().await;
    for i in 0..7 {
        fake.put(&pod(&format!("p{i}"), "a"));
    }
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
    let config = watcher::Config::default().page_size(3);
    let mut events = watcher::watcher(pods.clone(), config).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watcher event in time")
            .unwrap()
            .unwrap()
        {
            Event::Init => {}
            Event::InitApply(p) => names.push(p.metadata.name.unwrap()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names.len(), 7);
    let pages = fake.requests().iter().filter(|r| r.verb == "list").count();
    assert_eq!(pages, 3, "7 objects in pages of 3");

    // timeoutSeconds ends the stream cleanly.
    let mut stream = pods
        .watch(
            &WatchParams::default().timeout(1),
            &fake.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            assert!(matches!(event, Ok(WatchEvent::Bookmark(_))));
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch outlived its timeoutSeconds");
}

#[tokio::test]
async fn objects_carry_server_set_metadata_and_delete_works() {
    let fake = FakeApi::start().await;
    let pods: Api<Pod> = Api::namespaced(fake.client(), "ns");
    let created = pods
        .create(&PostParams::default(), &pod("p", "a"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    let patched = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})),
        )
        .await
        .unwrap();
    let rv2: u64 = patched
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv);
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "metadata-only change keeps generation"
    );
    assert_eq!(patched.metadata.uid, created.metadata.uid);
    pods.delete("p", &Default::default()).await.unwrap();
    let (code, _) = api_code(pods.get("p").await.unwrap_err());
    assert_eq!(code, 404);
}
