//! `infergate autoscaler --actuator local` end to end: the standalone autoscaler with its own
//! simulated pods, reading the pods' `/metrics` only (no gateway). Load goes straight to the pod
//! found in `/debug/pools`.

mod autoscale_support;
mod common;

use std::time::Duration;

use autoscale_support::*;
use common::{ConfigFile, Proc};

const MODEL: &str = "sim-llama-3-8b";
const POOL: &str = "sim";

const CONFIG: &str = r#"
autoscaler:
  interval: 500ms
  signals: { pods: true, stale_after: 3s }
  leader_election: { enabled: false }
pools:
  - name: sim
    models: [sim-llama-3-8b]
    flavor: vllm
    discovery: { static: { endpoints: [] } }
    autoscaling:
      min_replicas: 1
      max_replicas: 3
      targets: { running_per_replica: 1.5 }
      scale_down: { stabilization_window: 2s, period: 500ms }
"#;

fn autoscaler(config: &ConfigFile, extra: &[&str]) -> Proc {
    let path = config.path.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "autoscaler",
        "--config",
        path,
        "--actuator",
        "local",
        "--admin-listen",
        "127.0.0.1:0",
        "--cold-start",
        "300ms",
        "--sim-args",
        "--max-num-seqs 2",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args, &["autoscaler"])
}

/// The URL of the pool's one ready pod, from `/debug/pools`.
async fn ready_pod(http: &HttpClient, autoscaler: &str) -> String {
    let (_, body) = get(http, &format!("{autoscaler}/debug/pools"))
        .await
        .unwrap();
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    pools[POOL]["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["phase"] == "ready"))
        .and_then(|p| p["url"].as_str())
        .map(String::from)
        .unwrap_or_else(|| panic!("no ready pod in {pools}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_actuator_scales_a_burst_up_at_once_and_back_down_after_the_window() {
    let config = ConfigFile::new("burst", CONFIG);
    let mut proc = autoscaler(&config, &[]);
    let url = proc.url("autoscaler");
    let http = client();
    wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(30),
        "one ready pod",
        |m| m.ready == 1.0,
    )
    .await;
    let pod = ready_pod(&http, &url).await;

    let burst = burst(&http, &pod, MODEL, 10, 200);
    let m = wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(20),
        "3 ready pods",
        |m| m.ready == 3.0,
    )
    .await;
    assert_eq!(m.ups(), 1.0, "1 -> 3 in one decision: {m:?}");
    for request in burst {
        assert_eq!(request.await.unwrap(), Ok(200));
    }
    let m = wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(30),
        "back to 1",
        |m| m.current == 1.0,
    )
    .await;
    assert_eq!(m.decisions("scale_down"), 2.0, "one pod at a time: {m:?}");

    let pods: Vec<u32> = children_of(proc.child.id());
    assert!(!pods.is_empty());
    let status = proc
        .terminate(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pods.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pods.iter().all(|p| !alive(*p)), "children left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_decides_but_does_not_scale() {
    let config = ConfigFile::new("dry", CONFIG);
    let proc = autoscaler(&config, &["--dry-run"]);
    let url = proc.url("autoscaler");
    let http = client();
    // Not even the first pod is started: a dry run writes nothing.
    let m = wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(10),
        "a few decisions",
        |m| m.decisions("clamp_min") >= 5.0,
    )
    .await;
    assert_eq!((m.desired, m.current), (1.0, 0.0), "{m:?}");
    let (status, _) = get(&http, &format!("{url}/healthz")).await.unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_config_without_autoscaled_pools_is_refused() {
    let config = ConfigFile::new(
        "none",
        "pools:\n  - {name: p, models: [m], discovery: {static: {endpoints: []}}}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["autoscaler", "--config", config.path.to_str().unwrap()])
        .args(["--actuator", "local", "--admin-listen", "127.0.0.1:0"])
        .output()
        .expect("run infergate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to scale"), "{stderr}");
}

/// The Kubernetes actuator end to end: the binary talks to a fake API server (over HTTP, through a
/// kubeconfig), finds the pool's pod in an EndpointSlice, reads that pod's `/metrics` (a real
/// `infergate sim`), wins the Lease, and patches the Deployment's scale with an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubernetes_actuator_scales_the_deployment_through_the_api() {
    use infergate_kube_fake::{FakeApi, Gvr};
    use serde_json::json;

    let fake = FakeApi::start().await;
    let sim = Proc::spawn(
        &[
            "sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-num-seqs",
            "2",
        ],
        &["sim"],
    );
    let sim_addr = sim.addr("sim");
    let deployments = Gvr::new("apps", "v1", "deployments");
    fake.put_value(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "vllm", "namespace": "ns"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "vllm"}},
                     "template": {"metadata": {"labels": {"app": "vllm"}}}}
        }),
    );
    fake.set_scale_status(&deployments, "ns", "vllm", 1, 1);
    fake.put_value(
        &Gvr::new("discovery.k8s.io", "v1", "endpointslices"),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "vllm-x", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "vllm"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [sim_addr.ip().to_string()],
                           "conditions": {"ready": true, "serving": true, "terminating": false},
                           "targetRef": {"kind": "Pod", "name": "vllm-a", "namespace": "ns"}}],
            "ports": [{"name": "http", "port": sim_addr.port(), "protocol": "TCP"}]
        }),
    );
    fake.put_value(
        &Gvr::new("", "v1", "pods"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "vllm-a", "namespace": "ns", "labels": {"app": "vllm"}}}),
    );
    let kubeconfig = ConfigFile::new(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: ns}}\ncurrent-context: c\n",
            fake.url()
        ),
    );
    let config = ConfigFile::new(
        "kube",
        r#"
autoscaler:
  interval: 500ms
  signals: { pods: true, stale_after: 3s }
  leader_election:
    enabled: true
    lease_duration: 2s
    renew_deadline: 1s
    retry_period: 200ms
pools:
  - name: sim
    models: [sim-llama-3-8b]
    flavor: vllm
    discovery: { kubernetes: { service: vllm, port: http } }
    autoscaling:
      target: { kind: Deployment, name: vllm }
      min_replicas: 1
      max_replicas: 3
      targets: { running_per_replica: 1.5 }
"#,
    );
    let proc = Proc::spawn_with_env(
        &[
            "autoscaler",
            "--config",
            config.path.to_str().unwrap(),
            "--actuator",
            "kubernetes",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("KUBECONFIG", kubeconfig.path.to_str().unwrap()),
            ("POD_NAME", "autoscaler-0"),
        ],
        &["autoscaler"],
    );
    let url = proc.url("autoscaler");
    let http = client();
    let (_, page) = get(&http, &format!("{url}/metrics")).await.unwrap();
    assert!(page.contains("infergate_autoscaler_is_leader"), "{page}");
    wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(20),
        "leader, reading the pod",
        |m| m.ready == 1.0 && m.decisions("clamp_min") + m.decisions("hold_stable") >= 1.0,
    )
    .await;

    let pod = format!("http://{sim_addr}");
    let burst = burst(&http, &pod, MODEL, 10, 200);
    let m = wait_for(
        &http,
        &url,
        POOL,
        Duration::from_secs(20),
        "scaled to 3",
        |m| m.current == 3.0,
    )
    .await;
    assert_eq!(m.ups(), 1.0, "{m:?}");
    let replicas = fake
        .get_value(&deployments, "ns", "vllm")
        .and_then(|d| d.pointer("/spec/replicas").and_then(|r| r.as_i64()));
    assert_eq!(replicas, Some(3));
    assert!(
        fake.events().iter().any(|e| e["reason"] == "Rescaled"),
        "{:?}",
        fake.events()
    );
    let lease = fake
        .get_value(
            &Gvr::new("coordination.k8s.io", "v1", "leases"),
            "ns",
            "infergate-autoscaler",
        )
        .expect("the lease");
    assert_eq!(
        lease.pointer("/spec/holderIdentity"),
        Some(&json!("autoscaler-0"))
    );
    for request in burst {
        assert_eq!(request.await.unwrap(), Ok(200));
    }
}
