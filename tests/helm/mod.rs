//! Shared by the chart tests (tests/chart.rs) and the Prometheus scrape test
//! (tests/prometheus_scrape.rs): finding helm and the schema validator, rendering the chart, and
//! reading the rendered objects.
//!
//! helm is looked up at `.tools/bin/helm`, then on PATH; the validator at
//! `.tools/venv/bin/kubernetes-validate`, then on PATH (scripts/install-tools.sh puts them there).
//! Without them a test prints a note and passes, except under CI (env `CI` set), where it fails.
#![allow(dead_code)]

pub mod rbac;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use infergate_config::Config;
use serde_json::Value;

pub const KUBE_VERSION: &str = "1.33.0";
pub const RELEASE: &str = "infergate";
pub const NAMESPACE: &str = "llm";
/// Kinds without a schema in kubernetes-validate (custom resources): a warning, not an error.
pub const CRD_KINDS: &[&str] = &["ServiceMonitor", "InferencePool"];
pub const SERVICE_MONITOR_API: &str = "monitoring.coreos.com/v1/ServiceMonitor";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart() -> PathBuf {
    root().join("charts/infergate")
}

/// The first of `local` (if executable) or `name` on PATH.
pub fn find_tool(local: &Path, name: &str) -> Option<PathBuf> {
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
pub fn require(local: &str, name: &str) -> Option<PathBuf> {
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

pub fn helm() -> Option<PathBuf> {
    require(".tools/bin/helm", "helm")
}

pub fn validator() -> Option<PathBuf> {
    require(".tools/venv/bin/kubernetes-validate", "kubernetes-validate")
}

/// The values files CI renders (charts/infergate/ci/*.yaml), then the examples' (examples/*/values.yaml).
pub fn ci_values() -> Vec<PathBuf> {
    let yaml_in = |dir: PathBuf| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    };
    let mut files = yaml_in(chart().join("ci"));
    assert!(
        files.len() >= 5,
        "expected the ci values files, found {files:?}"
    );
    for example in example_dirs() {
        files.extend(
            yaml_in(example)
                .into_iter()
                .filter(|p| p.ends_with("values.yaml")),
        );
    }
    files
}

/// examples/*/, sorted.
pub fn example_dirs() -> Vec<PathBuf> {
    let dir = root().join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A values file's name for messages: `two-pools-values`, or `vllm/values` for an example.
pub fn name_of(values: &Path) -> String {
    if values.ends_with("values.yaml") {
        let dir = values
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default();
        return format!("{}/values", dir.to_string_lossy());
    }
    values
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Runs helm; Ok(stdout) on success, Err(stderr) on failure.
pub fn run_helm(helm: &Path, args: &[&str]) -> Result<String, String> {
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
pub fn template(helm: &Path, values: &Path, extra: &[&str]) -> String {
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
pub fn objects(stream: &str) -> Vec<Value> {
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

pub fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

pub fn of_kind<'a>(objs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objs.iter().filter(move |o| kind(o) == k)
}

pub fn component_name(component: &str) -> String {
    format!("{RELEASE}-{component}")
}

/// The configuration file the chart renders, parsed by the same code the binary uses.
pub fn rendered_config(objs: &[Value], origin: &str) -> Config {
    let cm = of_kind(objs, "ConfigMap")
        .find(|o| name(o) == "infergate-config")
        .expect("the config ConfigMap");
    let text = cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    Config::from_yaml(text, Path::new(origin))
        .unwrap_or_else(|e| panic!("the binary refuses the chart's config: {e}\n{text}"))
}
/// A container's port number by name.
pub fn container_port(container: &Value, port_name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_u64())
}

pub fn deployment<'a>(objs: &'a [Value], component: &str) -> Option<&'a Value> {
    let want = component_name(component);
    of_kind(objs, "Deployment").find(|d| name(d) == want)
}
