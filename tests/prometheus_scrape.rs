//! A real Prometheus scrapes the real gateway and autoscaler with the scrape settings the chart
//! renders, and answers a PromQL query for the gateway's request counter after traffic.
//!
//! The chart's ServiceMonitors say what Prometheus scrapes in a cluster: a Service port by name, a
//! path and an interval. This test follows that chain in the rendered objects (ServiceMonitor port
//! name -> Service port -> container port -> the config file's `admin_listen`), so it knows which
//! listener of each binary the cluster's Prometheus reads, then writes the same job as a static
//! scrape config aimed at the processes it started on 127.0.0.1.
//!
//! Needs helm (scripts/install-tools.sh) and Debian's `prometheus`; without them it prints a note
//! and passes, except under CI (env `CI` set), where it fails.

mod common;
mod helm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};
use helm::*;
use serde_json::{Value, json};

const MODEL: &str = "sim-llama-8b";

/// What the chart tells Prometheus to scrape for one component.
#[derive(Debug)]
struct ScrapeJob {
    component: &'static str,
    path: String,
    interval: String,
    timeout: String,
}

/// Follows each ServiceMonitor to the container port it reaches, and checks that is the port the
/// rendered config file gives the component's admin listener.
fn scrape_jobs(helm: &Path) -> Vec<ScrapeJob> {
    let values = chart().join("ci/servicemonitor-values.yaml");
    let objs = objects(&template(
        helm,
        &values,
        &[
            "--set",
            "serviceMonitor.interval=1s",
            "--set",
            "serviceMonitor.scrapeTimeout=1s",
        ],
    ));
    let config = rendered_config(&objs, "servicemonitor ConfigMap");
    let mut jobs = Vec::new();
    for (component, config_port) in [
        ("gateway", config.gateway.admin_listen.port()),
        ("autoscaler", config.autoscaler.admin_listen.port()),
    ] {
        let sm = of_kind(&objs, "ServiceMonitor")
            .find(|o| name(o) == component_name(component))
            .unwrap_or_else(|| panic!("no ServiceMonitor for the {component}"));
        let endpoint = &sm["spec"]["endpoints"][0];
        let port_name = endpoint["port"].as_str().expect("endpoint port name");
        let selector = sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let service = of_kind(&objs, "Service")
            .find(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .unwrap_or_else(|| panic!("{component}: the ServiceMonitor selects no Service"));
        let service_port = service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == port_name)
            .unwrap_or_else(|| panic!("{component}: Service has no port {port_name}"));
        let target = service_port["targetPort"]
            .as_str()
            .expect("targetPort by name");
        let deploy = deployment(&objs, component).expect("Deployment");
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        let container_port = container_port(container, target).expect("container port");
        assert_eq!(
            container_port,
            u64::from(config_port),
            "{component}: Prometheus would scrape port {container_port}, the binary serves /metrics on {config_port}"
        );
        jobs.push(ScrapeJob {
            component,
            path: endpoint["path"].as_str().expect("path").to_string(),
            interval: endpoint["interval"].as_str().expect("interval").to_string(),
            timeout: endpoint["scrapeTimeout"]
                .as_str()
                .expect("scrapeTimeout")
                .to_string(),
        });
    }
    jobs
}

/// An `infergate` process stopped with SIGTERM on drop (also when the test panics), so that the
/// autoscaler's local actuator stops the `infergate sim` processes it started instead of leaving
/// them behind after a SIGKILL.
struct Terminated(Proc);

impl Drop for Terminated {
    fn drop(&mut self) {
        // Only while it runs: a reaped pid could be reused by another process.
        if matches!(self.0.child.try_wait(), Ok(None)) {
            let _ = self.0.terminate(Duration::from_secs(30));
        }
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 exchange (no chunked bodies, the server closes): (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Polls `check` every 200 ms until it returns Some, or panics after `limit` with `what`.
fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Starts Prometheus on 127.0.0.1 and waits until it is ready.
fn start_prometheus(binary: &Path, dir: &Path, config: &Path) -> (Killed, SocketAddr) {
    let log_path = dir.join("prometheus.log");
    for _attempt in 0..3 {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prom = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = prom.0.try_wait() {
                break; // exited: most likely the port was taken meanwhile; try another
            }
            if matches!(http(addr, "GET", "/-/ready", None), Ok((200, _))) {
                return (prom, addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    panic!("prometheus did not become ready:\n{log}");
}

/// Runs an instant query; the result vector.
fn query(prom: SocketAddr, promql: &str) -> Vec<Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok((200, body)) = http(prom, "GET", &format!("/api/v1/query?query={encoded}"), None) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_gateway_and_autoscaler_with_the_charts_scrape_config() {
    let Some(helm) = helm::require(".tools/bin/helm", "helm") else {
        return;
    };
    let Some(prometheus) = helm::require("/usr/bin/prometheus", "prometheus") else {
        return;
    };
    let jobs = scrape_jobs(&helm);

    // The processes, as the chart wires them, on loopback.
    let sim = Proc::spawn(
        &[
            "sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            MODEL,
            "--speed",
            "20",
        ],
        &["sim"],
    );
    let dir = TempDir::new("prom");
    let config_path = dir.0.join("config.yaml");
    // Pool `sim` is the gateway's (a static endpoint); pool `local` is the autoscaler's, whose local
    // actuator keeps one `infergate sim` process running, so it has decisions to export.
    let config = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n\
         autoscaler:\n  admin_listen: 127.0.0.1:0\n  interval: 200ms\n  leader_election: {{ enabled: false }}\n\
         pools:\n  - name: sim\n    models: [{MODEL}]\n    flavor: vllm\n    \
         discovery: {{ static: {{ endpoints: [\"{}\"] }} }}\n  \
         - name: local\n    models: [local-model]\n    flavor: vllm\n    \
         discovery: {{ static: {{ endpoints: [] }} }}\n    \
         autoscaling: {{ min_replicas: 1, max_replicas: 1 }}\n",
        sim.url("sim")
    );
    std::fs::write(&config_path, &config).expect("write config");
    let config_arg = config_path.to_str().expect("utf-8 path");
    let gateway = Proc::spawn(&["gateway", "--config", config_arg], &["gateway", "admin"]);
    let mut autoscaler = Terminated(Proc::spawn(
        &[
            "autoscaler",
            "--config",
            config_arg,
            "--actuator",
            "local",
            "--cold-start",
            "0s",
            "--sim-args",
            "--speed 20",
        ],
        &["autoscaler"],
    ));

    // The chart's scrape jobs, aimed at the listeners that serve the config's admin_listen.
    let mut scrape = String::from("scrape_configs:\n");
    for job in &jobs {
        let target = match job.component {
            "gateway" => gateway.addr("admin"),
            _ => autoscaler.0.addr("autoscaler"),
        };
        scrape.push_str(&format!(
            "  - job_name: infergate-{}\n    metrics_path: {}\n    scrape_interval: {}\n    \
             scrape_timeout: {}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            job.component, job.path, job.interval, job.timeout
        ));
    }
    let prom_config = dir.0.join("prometheus.yml");
    std::fs::write(&prom_config, &scrape).expect("write prometheus.yml");
    let (_prom, prom) = start_prometheus(&prometheus, &dir.0, &prom_config);

    // Traffic through the gateway.
    let body =
        json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    for i in 0..5 {
        let (status, text) = http(
            gateway.addr("gateway"),
            "POST",
            "/v1/chat/completions",
            Some(&body),
        )
        .expect("gateway request");
        assert_eq!(status, 200, "request {i}: {text}");
    }

    // Both targets are scraped and up.
    for job in &jobs {
        let q = format!("up{{job=\"infergate-{}\"}}", job.component);
        poll(Duration::from_secs(30), &format!("{q} == 1"), || {
            query(prom, &q)
                .first()
                .filter(|s| sample_value(s) == 1.0)
                .map(|_| ())
        });
    }
    let desired = poll(
        Duration::from_secs(30),
        "infergate_autoscaler_desired_replicas{pool=\"local\"}",
        || {
            query(
                prom,
                "infergate_autoscaler_desired_replicas{pool=\"local\"}",
            )
            .first()
            .map(sample_value)
        },
    );
    assert_eq!(desired, 1.0, "min_replicas = max_replicas = 1");
    let autoscaler_series = poll(
        Duration::from_secs(30),
        "infergate_ series from the autoscaler",
        || {
            let n = query(
                prom,
                "count({job=\"infergate-autoscaler\", __name__=~\"infergate_.+\"})",
            )
            .first()
            .map(sample_value)?;
            (n > 0.0).then_some(n)
        },
    );
    assert!(autoscaler_series > 0.0);

    // The gateway's request counter, through PromQL.
    let total = poll(
        Duration::from_secs(30),
        "infergate_requests_total > 0",
        || {
            let samples = query(prom, "infergate_requests_total");
            let total: f64 = samples
                .iter()
                .filter(|s| s["metric"]["job"] == "infergate-gateway")
                .map(sample_value)
                .sum();
            (total >= 5.0).then_some(total)
        },
    );
    assert!(total >= 5.0, "{total}");
    let ok = query(
        prom,
        "sum(infergate_requests_total{status=\"200\", pool=\"sim\"})",
    );
    assert_eq!(ok.first().map(sample_value), Some(5.0), "{ok:?}");
    eprintln!(
        "prometheus at {prom}: infergate_requests_total = {total}, {autoscaler_series} autoscaler series"
    );

    // SIGTERM, so the local actuator stops the sim process it started.
    let status = autoscaler.0.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "autoscaler exit: {status:?}"
    );
}
