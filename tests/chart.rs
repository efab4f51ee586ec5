//! The Helm chart (charts/infergate), checked with the real tools and against the code's contracts.
//!
//! - `helm lint --strict` and `helm template` for every `ci/*.yaml` values file, and every rendered
//!   object validated offline against the Kubernetes 1.33 schemas (`kubernetes-validate --strict`).
//! - `values.schema.json` refuses each `ci/invalid/*.yaml` with the message its first line names.
//! - The rendered ConfigMap is a configuration file the binary accepts (`infergate_config::Config`),
//!   and its ports agree with the containers', probes' and Services' ports.
//! - The rendered Roles grant exactly the union of the code's `API_CALLS` tables for the features the
//!   rendered configuration uses: nothing missing (the code would get 403), nothing extra.
//!
//! helm is looked up at `.tools/bin/helm`, then on PATH; the validator at
//! `.tools/venv/bin/kubernetes-validate`, then on PATH (scripts/install-tools.sh puts them there).
//! Without them a test prints a note and passes, except under CI (env `CI` set), where it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use infergate_config::{Config, Discovery, ScaleKind};
use serde_json::Value;

const KUBE_VERSION: &str = "1.33.0";
const RELEASE: &str = "infergate";
const NAMESPACE: &str = "llm";
/// Kinds without a schema in kubernetes-validate (custom resources): a warning, not an error.
const CRD_KINDS: &[&str] = &["ServiceMonitor"];
const SERVICE_MONITOR_API: &str = "monitoring.coreos.com/v1/ServiceMonitor";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/infergate")
}

/// The first of `local` (if executable) or `name` on PATH.
fn find_tool(local: &Path, name: &str) -> Option<PathBuf> {
    if local.is_file() {
        return Some(local.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A tool, or `None` with a printed note (a panic under CI, where a skipped check is a failure).
fn require(local: &str, name: &str) -> Option<PathBuf> {
    let found = find_tool(&root().join(local), name);
    if found.is_none() {
        let msg = format!("{name} not found at {local} or on PATH; run scripts/install-tools.sh");
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set: the chart checks must run)");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn helm() -> Option<PathBuf> {
    require(".tools/bin/helm", "helm")
}

fn validator() -> Option<PathBuf> {
    require(".tools/venv/bin/kubernetes-validate", "kubernetes-validate")
}

/// The values files CI renders, sorted by name.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/infergate/ci")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the ci values files, found {files:?}"
    );
    files
}

fn name_of(values: &Path) -> String {
    values
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Runs helm; Ok(stdout) on success, Err(stderr) on failure.
fn run_helm(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `helm template` of the chart with a values file and extra arguments.
fn template(helm: &Path, values: &Path, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "-n",
        NAMESPACE,
        "-f",
        values.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    run_helm(helm, &args).unwrap_or_else(|e| panic!("helm template -f {}: {e}", values.display()))
}

/// The objects of a multi-document YAML stream, as JSON values.
fn objects(stream: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str::<Value>(&d).unwrap_or_else(|e| panic!("YAML: {e}\n{d}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

fn of_kind<'a>(objs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objs.iter().filter(move |o| kind(o) == k)
}

fn component_name(component: &str) -> String {
    format!("{RELEASE}-{component}")
}

/// The configuration file the chart renders, parsed by the same code the binary uses.
fn rendered_config(objs: &[Value], origin: &str) -> Config {
    let cm = of_kind(objs, "ConfigMap")
        .find(|o| name(o) == "infergate-config")
        .expect("the config ConfigMap");
    let text = cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    Config::from_yaml(text, Path::new(origin))
        .unwrap_or_else(|e| panic!("the binary refuses the chart's config: {e}\n{text}"))
}

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

/// A container's port number by name.
fn container_port(container: &Value, port_name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_u64())
}

fn deployment<'a>(objs: &'a [Value], component: &str) -> Option<&'a Value> {
    let want = component_name(component);
    of_kind(objs, "Deployment").find(|d| name(d) == want)
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

/// (apiGroup, resource, verb) rows.
type Grants = BTreeSet<(String, String, String)>;

/// Rows of a code table (any struct with `api_group`, `resource`, `verbs`).
macro_rules! rows {
    ($table:expr) => {
        $table
            .iter()
            .flat_map(|c| {
                c.verbs.iter().map(move |v| {
                    (
                        c.api_group.to_string(),
                        c.resource.to_string(),
                        v.to_string(),
                    )
                })
            })
            .collect::<Grants>()
    };
}

/// What the code needs, per (ServiceAccount, namespace), for the features `config` uses.
fn expected_grants(config: &Config, autoscaler: bool) -> BTreeMap<(String, String), Grants> {
    use infergate_gateway::discovery::{inference_pool, kubernetes};
    let mut want: BTreeMap<(String, String), Grants> = BTreeMap::new();
    let mut add = |component: &str, ns: Option<&str>, rows: Grants| {
        want.entry((
            component_name(component),
            ns.unwrap_or(NAMESPACE).to_string(),
        ))
        .or_default()
        .extend(rows);
    };
    let mut components = vec!["gateway"];
    if autoscaler {
        components.push("autoscaler");
    }
    for component in components {
        for pool in &config.pools {
            if component == "autoscaler"
                && (pool.autoscaling.is_none() || !config.autoscaler.signals.pods)
            {
                continue;
            }
            match &pool.discovery {
                Discovery::Kubernetes(k) => add(
                    component,
                    k.namespace.as_deref(),
                    rows!(kubernetes::API_CALLS),
                ),
                Discovery::InferencePool(p) => add(
                    component,
                    p.namespace.as_deref(),
                    rows!(inference_pool::API_CALLS),
                ),
                Discovery::Static { .. } => {}
            }
        }
    }
    if autoscaler {
        for pool in &config.pools {
            let Some(target) = pool.autoscaling.as_ref().and_then(|a| a.target.as_ref()) else {
                continue;
            };
            add(
                "autoscaler",
                target.namespace.as_deref(),
                autoscaler_calls::scaling(target.kind),
            );
        }
        add(
            "autoscaler",
            config.autoscaler.leader_election.namespace.as_deref(),
            autoscaler_calls::lease(),
        );
    }
    want
}

/// The autoscaler's API calls.
mod autoscaler_calls {
    use super::Grants;
    use infergate_config::ScaleKind;

    fn rows(table: &[(&str, &str, &[&str])]) -> Grants {
        table
            .iter()
            .flat_map(|(g, r, verbs)| {
                verbs
                    .iter()
                    .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
            })
            .collect()
    }

    /// Scaling one target: read it, set its scale, annotate and list its pods, record Events.
    pub(super) fn scaling(kind: ScaleKind) -> Grants {
        let resource = match kind {
            ScaleKind::Deployment => "deployments",
            ScaleKind::StatefulSet => "statefulsets",
        };
        let scale = format!("{resource}/scale");
        rows(&[
            ("apps", resource, &["get", "list", "watch"]),
            ("apps", &scale, &["get", "patch", "update"]),
            ("", "pods", &["list", "watch", "patch"]),
            ("", "events", &["create"]),
        ])
    }

    /// Leader election.
    pub(super) fn lease() -> Grants {
        rows(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        )])
    }
}

/// What the rendered Roles grant, per (ServiceAccount, namespace), through their RoleBindings.
fn rendered_grants(objs: &[Value]) -> BTreeMap<(String, String), Grants> {
    let ns_of = |o: &Value| {
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or(NAMESPACE)
            .to_string()
    };
    let roles: BTreeMap<(String, String), &Value> = of_kind(objs, "Role")
        .map(|r| ((ns_of(r), name(r).to_string()), r))
        .collect();
    let mut got: BTreeMap<(String, String), Grants> = BTreeMap::new();
    for binding in of_kind(objs, "RoleBinding") {
        let ns = ns_of(binding);
        assert_eq!(binding["roleRef"]["kind"], "Role", "{}", name(binding));
        let role_name = binding["roleRef"]["name"].as_str().expect("roleRef.name");
        let role = roles
            .get(&(ns.clone(), role_name.to_string()))
            .unwrap_or_else(|| panic!("RoleBinding {} names a missing Role", name(binding)));
        for subject in binding["subjects"].as_array().expect("subjects") {
            assert_eq!(subject["kind"], "ServiceAccount");
            assert_eq!(
                subject["namespace"], NAMESPACE,
                "subjects live in the release namespace"
            );
            let sa = subject["name"].as_str().expect("subject name").to_string();
            let grants = got.entry((sa, ns.clone())).or_default();
            for rule in role["rules"].as_array().expect("rules") {
                assert!(rule.get("nonResourceURLs").is_none());
                for g in rule["apiGroups"].as_array().expect("apiGroups") {
                    for r in rule["resources"].as_array().expect("resources") {
                        for v in rule["verbs"].as_array().expect("verbs") {
                            let (g, r, v) = (g.as_str(), r.as_str(), v.as_str());
                            let (Some(g), Some(r), Some(v)) = (g, r, v) else {
                                panic!("non-string RBAC entry in {}", name(role))
                            };
                            assert!(
                                g != "*" && r != "*" && v != "*",
                                "wildcard in {}",
                                name(role)
                            );
                            grants.insert((g.into(), r.into(), v.into()));
                        }
                    }
                }
            }
        }
    }
    got
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
