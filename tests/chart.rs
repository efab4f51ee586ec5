//! The Helm chart (charts/infergate), checked with the real tools and against the code's contracts.
//!
//! - `helm lint --strict` and `helm template` for every `ci/*.yaml` values file, and every rendered
//!   object validated offline against the Kubernetes 1.33 schemas (`kubernetes-validate --strict`).
//! - `values.schema.json` refuses each `ci/invalid/*.yaml` with the message its first line names.
//! - The rendered ConfigMap is a configuration file the binary accepts (`infergate_config::Config`),
//!   and its ports agree with the containers', probes' and Services' ports.
//! - The rendered Roles grant exactly the union of the code's `API_CALLS` tables for the features the
//!   rendered configuration uses: nothing missing (the code would get 403), nothing extra.
//! - The rendered command lines run the real binary (args parsed, config loaded), the dashboard
//!   queries only metrics the code registers, and the pods are non-root and read-only.
//!
//! Tools and rendering helpers live in tests/helm/; without helm a test prints a note and passes,
//! except under CI (env `CI` set), where it fails.

mod common;
mod helm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use helm::rbac::{Grants, expected_grants, rendered_grants};
use helm::*;
use infergate_config::{Discovery, ScaleKind};
use serde_json::Value;

#[test]
fn lint_strict_passes_for_every_ci_values_file() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    for values in ci_values() {
        let args = [
            "lint",
            "--strict",
            chart.to_str().expect("utf-8"),
            "-f",
            values.to_str().expect("utf-8"),
        ];
        if let Err(e) = run_helm(&helm, &args) {
            panic!("helm lint --strict -f {}:\n{e}", values.display());
        }
    }
}

/// Runs the validator on a YAML stream: (exit success, combined output).
fn validate(validator: &Path, stream: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(validator)
        .args(["--strict", "-k", KUBE_VERSION, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stream.as_bytes())
        .expect("write manifests");
    let out = child
        .wait_with_output()
        .expect("kubernetes-validate output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The kinds the validator had no schema for, less the custom resources that are expected.
fn unexpected_missing_schemas(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains("Couldn't find schema"))
        .filter(|l| !CRD_KINDS.iter().any(|k| l.contains(&format!("kind {k} "))))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schemas() {
    let (Some(helm), Some(validator)) = (helm(), validator()) else {
        return;
    };
    // The check can fail: an unknown field in a Deployment is refused, an unknown kind is reported.
    let (ok, out) = validate(
        &validator,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 1}\n",
    );
    assert!(!ok, "the validator accepted an unknown field:\n{out}");
    let (_, out) = validate(
        &validator,
        "apiVersion: v1\nkind: Pood\nmetadata: {name: x}\n",
    );
    assert_eq!(unexpected_missing_schemas(&out).len(), 1, "{out}");

    for values in ci_values() {
        for caps in [&[][..], &["--api-versions", SERVICE_MONITOR_API][..]] {
            let stream = template(&helm, &values, caps);
            let count = objects(&stream).len();
            assert!(count >= 10, "{}: only {count} objects", name_of(&values));
            let (ok, out) = validate(&validator, &stream);
            assert!(
                ok,
                "{} {caps:?}: kubernetes-validate failed:\n{out}",
                name_of(&values)
            );
            let missing = unexpected_missing_schemas(&out);
            assert!(
                missing.is_empty(),
                "{} {caps:?}: built-in kinds without a schema: {missing:?}",
                name_of(&values)
            );
        }
    }
}

#[test]
fn example_manifests_pass_the_kubernetes_schemas() {
    let Some(validator) = validator() else { return };
    let mut seen = 0;
    for dir in example_dirs() {
        for entry in std::fs::read_dir(&dir).expect("example dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "yaml") || path.ends_with("values.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read manifest");
            let (ok, out) = validate(&validator, &text);
            assert!(ok, "{}: kubernetes-validate failed:\n{out}", path.display());
            let missing = unexpected_missing_schemas(&out);
            assert!(missing.is_empty(), "{}: {missing:?}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected the vLLM, SGLang and InferencePool manifests, found {seen}"
    );
}

#[test]
fn schema_refuses_bad_values_with_a_clear_message() {
    let Some(helm) = helm() else { return };
    let dir = chart().join("ci/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("ci/invalid") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read invalid values");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
        let chart = chart();
        let args = [
            "template",
            RELEASE,
            chart.to_str().expect("utf-8"),
            "-f",
            path.to_str().expect("utf-8"),
        ];
        match run_helm(&helm, &args) {
            Ok(_) => panic!(
                "{}: helm accepted values the schema must refuse",
                path.display()
            ),
            Err(e) => {
                assert!(
                    e.contains("values don't meet the specifications of the schema"),
                    "{}: refused, but not by the schema: {e}",
                    path.display()
                );
                assert!(
                    e.contains(expect),
                    "{}: message lacks `{expect}`:\n{e}",
                    path.display()
                );
            }
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected several invalid values files, found {seen}"
    );
}

#[test]
fn rendered_config_is_accepted_by_the_binary_and_matches_the_ports() {
    let Some(helm) = helm() else { return };
    for values in ci_values() {
        let objs = objects(&template(&helm, &values, &[]));
        let file = format!("{} ConfigMap", name_of(&values));
        let config = rendered_config(&objs, &file);

        let values_doc: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&values).expect("read values"))
                .expect("values YAML");
        let sim = values_doc["simulator"]["enabled"]
            .as_bool()
            .unwrap_or(false);
        let user_pools = values_doc["pools"].as_array().map_or(0, Vec::len);
        assert_eq!(
            config.pools.len(),
            user_pools + usize::from(sim),
            "{file}: pools"
        );

        let gw = deployment(&objs, "gateway").expect("gateway Deployment");
        let container = &gw["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container_port(container, "http"),
            Some(u64::from(config.gateway.listen.port())),
            "{file}: gateway data port"
        );
        assert_eq!(
            container_port(container, "admin"),
            Some(u64::from(config.gateway.admin_listen.port())),
            "{file}: gateway admin port"
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            args[..3],
            ["gateway", "--config", "/etc/infergate/config.yaml"]
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "admin",
                "{file}: {probe}"
            );
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

        if let Some(a) = deployment(&objs, "autoscaler") {
            let c = &a["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(
                container_port(c, "admin"),
                Some(u64::from(config.autoscaler.admin_listen.port())),
                "{file}: autoscaler admin port"
            );
            let args: Vec<&str> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                args.windows(2).any(|w| w == ["--actuator", "kubernetes"]),
                "{args:?}"
            );
            assert!(
                config.autoscaler.leader_election.enabled,
                "{file}: leader election"
            );
        }
        if sim {
            let pool = config
                .pools
                .iter()
                .find(|p| p.name == "simulator")
                .expect("sim pool");
            let Discovery::Kubernetes(k) = &pool.discovery else {
                panic!("{file}: the simulator pool must use kubernetes discovery")
            };
            let svc = of_kind(&objs, "Service")
                .find(|s| Some(name(s)) == k.service.as_deref())
                .unwrap_or_else(|| panic!("{file}: no Service {:?}", k.service));
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .any(|p| serde_json::to_value(&k.port).ok().as_ref() == Some(&p["name"])),
                "{file}: the simulator Service has no port {:?}",
                k.port
            );
        }
    }
}

#[test]
fn security_context_is_non_root_and_read_only_everywhere() {
    let Some(helm) = helm() else { return };
    for values in ci_values() {
        let objs = objects(&template(&helm, &values, &[]));
        let pods = objs.iter().filter_map(|o| match kind(o) {
            "Deployment" => Some((name(o).to_string(), &o["spec"]["template"]["spec"])),
            "Pod" => Some((name(o).to_string(), &o["spec"])),
            _ => None,
        });
        for (pod, spec) in pods {
            let at = format!("{} {pod}", name_of(&values));
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{at}");
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{at}"
            );
            for c in spec["containers"].as_array().expect("containers") {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert!(c["resources"]["requests"].is_object(), "{at}: resources");
            }
        }
    }
}

#[test]
fn rbac_grants_exactly_what_the_code_calls() {
    let Some(helm) = helm() else { return };
    let two_pools = chart().join("ci/two-pools-values.yaml");
    let variants: Vec<(PathBuf, &[&str])> = ci_values()
        .into_iter()
        .map(|v| (v, &[][..]))
        .chain([
            (
                two_pools.clone(),
                &["--set", "autoscaler.config.signals.pods=false"][..],
            ),
            (
                chart().join("ci/scale-to-zero-values.yaml"),
                &["--set", "autoscaler.enabled=false"][..],
            ),
            (
                two_pools.clone(),
                &["--set", "autoscaler.enabled=false"][..],
            ),
        ])
        .collect();
    for (values, extra_args) in variants {
        let objs = objects(&template(&helm, &values, extra_args));
        for cluster_kind in ["ClusterRole", "ClusterRoleBinding"] {
            assert_eq!(
                of_kind(&objs, cluster_kind).count(),
                0,
                "no {cluster_kind}: all calls are namespaced"
            );
        }
        let config = rendered_config(&objs, &name_of(&values));
        let autoscaler = deployment(&objs, "autoscaler").is_some();
        let want = expected_grants(&config, autoscaler);
        let got = rendered_grants(&objs);
        let keys: BTreeSet<_> = want.keys().chain(got.keys()).cloned().collect();
        for key in keys {
            let empty = Grants::new();
            let w = want.get(&key).unwrap_or(&empty);
            let g = got.get(&key).unwrap_or(&empty);
            let missing: Vec<_> = w.difference(g).collect();
            let extra: Vec<_> = g.difference(w).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{} {extra_args:?}: {key:?}: missing {missing:?}, extra {extra:?}",
                name_of(&values)
            );
        }
    }
}

#[test]
fn service_monitor_when_the_crd_exists_else_scrape_annotations() {
    let Some(helm) = helm() else { return };
    let defaults = chart().join("ci/default-values.yaml");
    let annotated = |objs: &[Value]| {
        of_kind(objs, "Deployment")
            .filter(|d| {
                d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            })
            .count()
    };
    let plain = objects(&template(&helm, &defaults, &[]));
    assert_eq!(of_kind(&plain, "ServiceMonitor").count(), 0);
    assert_eq!(
        annotated(&plain),
        2,
        "gateway and autoscaler pods carry scrape annotations"
    );

    let detected = objects(&template(
        &helm,
        &defaults,
        &["--api-versions", SERVICE_MONITOR_API],
    ));
    assert_eq!(of_kind(&detected, "ServiceMonitor").count(), 2);
    assert_eq!(annotated(&detected), 0, "no double scraping");

    let forced = objects(&template(
        &helm,
        &defaults,
        &["--set", "serviceMonitor.enabled=true"],
    ));
    assert_eq!(of_kind(&forced, "ServiceMonitor").count(), 2);

    let off = objects(&template(
        &helm,
        &defaults,
        &[
            "--api-versions",
            SERVICE_MONITOR_API,
            "--set",
            "serviceMonitor.autoDetect=false",
        ],
    ));
    assert_eq!(of_kind(&off, "ServiceMonitor").count(), 0);

    // Each ServiceMonitor selects exactly one Service, which exposes the named port.
    for sm in of_kind(&detected, "ServiceMonitor") {
        let selector = sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let selected: Vec<_> = of_kind(&detected, "Service")
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{} selects {} Services",
            name(sm),
            selected.len()
        );
        let port = &sm["spec"]["endpoints"][0]["port"];
        assert!(
            selected[0]["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .any(|p| &p["name"] == port),
            "{}: Service {} has no port {port}",
            name(sm),
            name(selected[0])
        );
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    }
}

#[test]
fn dashboard_charts_the_documented_metrics() {
    let Some(helm) = helm() else { return };
    let objs = objects(&template(
        &helm,
        &chart().join("ci/default-values.yaml"),
        &[],
    ));
    let cm = of_kind(&objs, "ConfigMap")
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let json = cm["data"]["infergate.json"]
        .as_str()
        .expect("infergate.json");
    let dash: Value = serde_json::from_str(json).expect("dashboard JSON");
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "infergate_requests_total",
        "infergate_time_to_first_token_seconds_bucket",
        "infergate_endpoint_waiting_requests",
        "infergate_endpoint_kv_cache_usage",
        "infergate_pool_queued_requests",
        "infergate_autoscaler_desired_replicas",
        "infergate_autoscaler_current_replicas",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
    // Every metric a panel queries is one the code registers (a renamed metric breaks this test,
    // not a dashboard nobody looks at until an incident).
    let registered = registered_metric_names();
    for expr in &exprs {
        for metric in metric_names_in(expr) {
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .unwrap_or(&metric);
            assert!(
                registered.contains(base) || registered.contains(metric.as_str()),
                "the dashboard queries {metric}, which no code in gateway/ or autoscaler/ registers"
            );
        }
    }
}

/// `infergate_*` identifiers in a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("infergate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every `"infergate_..."` string literal in the gateway's and autoscaler's sources: the names their
/// registries are given.
fn registered_metric_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (at, _) in text.match_indices("\"infergate_") {
                    let literal = &text[at + 1..];
                    let end = literal
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(literal.len());
                    if literal[end..].starts_with('"') {
                        out.insert(literal[..end].to_string());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for crate_dir in ["gateway/src", "autoscaler/src"] {
        walk(&root().join(crate_dir), &mut names);
    }
    assert!(names.len() > 10, "found only {names:?}");
    names
}

#[test]
fn helm_test_hook_sends_a_chat_completion_to_the_gateway() {
    let Some(helm) = helm() else { return };
    let objs = objects(&template(
        &helm,
        &chart().join("ci/simulator-values.yaml"),
        &[],
    ));
    let pod = of_kind(&objs, "Pod")
        .find(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("a helm test Pod");
    let env: BTreeMap<&str, &str> = pod["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    let url = format!("http://{}.{NAMESPACE}.svc:", component_name("gateway"));
    assert!(
        env["URL"].starts_with(&url) && env["URL"].ends_with("/v1/chat/completions"),
        "{env:?}"
    );
    let body: Value = serde_json::from_str(env["BODY"]).expect("BODY is JSON");
    assert_eq!(body["model"], "sim-llama-8b");
    let script = pod["spec"]["containers"][0]["args"][0]
        .as_str()
        .expect("script");
    assert!(script.contains("test \"$code\" = 200"), "{script}");

    // No pool, no model to ask for: no test Pod rather than one that must fail.
    let none = objects(&template(
        &helm,
        &chart().join("ci/default-values.yaml"),
        &[],
    ));
    assert_eq!(of_kind(&none, "Pod").count(), 0);
}

#[test]
fn scale_targets_are_left_to_the_autoscaler() {
    let Some(helm) = helm() else { return };
    let objs = objects(&template(
        &helm,
        &chart().join("ci/scale-to-zero-values.yaml"),
        &[],
    ));
    let config = rendered_config(&objs, "scale-to-zero");
    let sim = deployment(&objs, "sim").expect("sim Deployment");
    assert!(
        sim["spec"].get("replicas").is_none(),
        "helm upgrade must not reset the scaled count"
    );
    let scaled: Vec<_> = config
        .pools
        .iter()
        .filter_map(|p| p.autoscaling.as_ref())
        .collect();
    assert!(scaled.iter().all(|a| a.min_replicas == 0), "{scaled:?}");
    assert!(scaled.iter().any(|a| {
        a.target
            .as_ref()
            .is_some_and(|t| t.kind == ScaleKind::Deployment)
    }));
}

/// The container's args as strings.
fn args_of(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// Runs the binary to its exit (bounded), with no way to reach a Kubernetes API: no kubeconfig, not
/// in a cluster. Returns (exit code, stderr).
fn run_without_cluster(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn infergate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    (status.and_then(|s| s.code()), stderr)
}

/// The rendered command lines are the binary's: the gateway and the autoscaler parse their args,
/// load the rendered config file and get as far as connecting to the Kubernetes API (which this
/// machine has not); the simulator starts with its rendered args and answers `/health`.
#[test]
fn rendered_command_lines_run_the_real_binary() {
    let Some(helm) = helm() else { return };
    let objs = objects(&template(
        &helm,
        &chart().join("ci/simulator-values.yaml"),
        &[],
    ));
    let cm = of_kind(&objs, "ConfigMap")
        .find(|o| name(o) == "infergate-config")
        .expect("config ConfigMap");
    let dir = std::env::temp_dir().join(format!("infergate-chart-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("config.yaml");
    std::fs::write(
        &config_path,
        cm["data"]["config.yaml"].as_str().expect("config"),
    )
    .expect("write config");
    let mount = "/etc/infergate/config.yaml";
    let local = |args: Vec<String>| -> Vec<String> {
        args.into_iter()
            .map(|a| {
                if a == mount {
                    config_path.display().to_string()
                } else {
                    a
                }
            })
            .collect()
    };

    // Loopback listeners instead of the pod's 0.0.0.0 ports (flags that exist for this purpose).
    let mut gateway = local(args_of(deployment(&objs, "gateway").expect("gateway")));
    gateway.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
    let (code, stderr) = run_without_cluster(&gateway);
    assert_eq!(code, Some(1), "gateway {gateway:?}:\n{stderr}");
    assert!(
        stderr.contains("Kubernetes"),
        "gateway stopped before discovery:\n{stderr}"
    );

    let mut autoscaler = local(args_of(
        deployment(&objs, "autoscaler").expect("autoscaler"),
    ));
    autoscaler.extend(["--admin-listen", "127.0.0.1:0"].map(String::from));
    let (code, stderr) = run_without_cluster(&autoscaler);
    assert_eq!(code, Some(1), "autoscaler {autoscaler:?}:\n{stderr}");
    assert!(
        stderr.contains("kubernetes actuator"),
        "autoscaler:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The simulator: the rendered args with host and port moved to loopback.
    let mut sim = args_of(deployment(&objs, "sim").expect("sim"));
    for (flag, value) in [("--host", "127.0.0.1"), ("--port", "0")] {
        let at = sim.iter().position(|a| a == flag).expect(flag);
        sim[at + 1] = value.to_string();
    }
    let sim: Vec<&str> = sim.iter().map(String::as_str).collect();
    let proc = common::Proc::spawn(&sim, &["sim"]);
    let mut stream = std::net::TcpStream::connect(proc.addr("sim")).expect("connect to sim");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: sim\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}
