//! Starting each contender in front of the pods: infergate with a policy, nginx (round robin or
//! `least_conn`, as the classic Ingress), or SGLang's router.
//!
//! A contender that is not installed is [`Availability::Missing`]: the harness reports it as skipped
//! with the reason, and never substitutes anything for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pods::PodFlavor;
use super::process::{Child, Http, ProcessError, free_port, which};
use super::scenario::Contender;

/// Where the contenders' programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `infergate` binary (gateway and sim).
    pub infergate: PathBuf,
    /// nginx (a name looked up on PATH and in /usr/sbin, or a path).
    pub nginx: PathBuf,
    /// The Python of a venv with `sglang-router` installed (scripts/install-peers.sh).
    pub sglang_python: PathBuf,
}

/// Whether a contender can run here.
#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    /// Yes, with this program.
    Ready(PathBuf),
    /// No, and why.
    Missing(String),
}

impl Programs {
    /// Checks whether `c` is installed.
    pub async fn availability(&self, c: Contender) -> Availability {
        match c {
            Contender::Infergate(_) => Availability::Ready(self.infergate.clone()),
            Contender::NginxRoundRobin | Contender::NginxLeastConn => match which(&self.nginx) {
                Some(p) => Availability::Ready(p),
                None => Availability::Missing(format!(
                    "nginx not found at {} (scripts/install-tools.sh installs Debian's)",
                    self.nginx.display()
                )),
            },
            Contender::SglangCacheAware => {
                if !self.sglang_python.is_file() {
                    return Availability::Missing(format!(
                        "no Python at {} (scripts/install-peers.sh installs sglang-router 0.3.2)",
                        self.sglang_python.display()
                    ));
                }
                let ok = tokio::process::Command::new(&self.sglang_python)
                    .args(["-c", "import sglang_router"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status();
                match tokio::time::timeout(Duration::from_secs(30), ok).await {
                    Ok(Ok(s)) if s.success() => Availability::Ready(self.sglang_python.clone()),
                    _ => Availability::Missing(format!(
                        "{} cannot import sglang_router (scripts/install-peers.sh)",
                        self.sglang_python.display()
                    )),
                }
            }
        }
    }
}

/// The pods' metric flavor a contender needs.
pub fn pod_flavor(c: Contender) -> PodFlavor {
    match c {
        // The router asks workers for /server_info and /model_info, which the sim serves as SGLang.
        Contender::SglangCacheAware => PodFlavor::Sglang,
        _ => PodFlavor::Vllm,
    }
}

/// A running contender, stopped on drop.
pub struct Front {
    /// Base URL to send requests to.
    pub url: String,
    children: Vec<Child>,
    _dir: Option<PathBuf>,
}

impl Front {
    /// Stops it.
    pub async fn stop(self) {
        for c in self.children {
            c.stop(Duration::from_secs(3)).await;
        }
    }
}

/// Starts `c` in front of `pods`, with its logs and temp files under `work`.
pub async fn start(
    c: Contender,
    program: &Path,
    pods: &[String],
    model: &str,
    work: &Path,
    tag: &str,
    http: &Http,
) -> Result<Front, ProcessError> {
    match c {
        Contender::Infergate(policy) => {
            let args: Vec<String> = [
                "gateway",
                "--model",
                model,
                "--endpoints",
                &pods.join(","),
                "--flavor",
                "vllm",
                "--policy",
                policy.flag(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (child, addrs) = Child::spawn_infergate(
                "gateway",
                program,
                &args,
                &["gateway", "admin"],
                &work.join(format!("{tag}-gateway.log")),
                Duration::from_secs(30),
            )
            .await?;
            let admin = format!("http://{}", addrs["admin"]);
            let front = Front {
                url: format!("http://{}", addrs["gateway"]),
                children: vec![child],
                _dir: None,
            };
            http.wait_ok(&format!("{admin}/readyz"), Duration::from_secs(30))
                .await?;
            Ok(front)
        }
        Contender::NginxRoundRobin | Contender::NginxLeastConn => {
            let dir = work.join(format!("{tag}-nginx"));
            std::fs::create_dir_all(&dir).map_err(|e| spawn_err("nginx", program, e))?;
            let port = free_port().map_err(|e| spawn_err("nginx", program, e))?;
            let conf = nginx_conf(&dir, port, pods, c == Contender::NginxLeastConn);
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).map_err(|e| spawn_err("nginx", program, e))?;
            let args = vec![
                "-c".to_string(),
                conf_path.display().to_string(),
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
            ];
            let child = Child::spawn_quiet(
                "nginx",
                program,
                &args,
                &work.join(format!("{tag}-nginx.log")),
            )?;
            let url = format!("http://127.0.0.1:{port}");
            let front = Front {
                url: url.clone(),
                children: vec![child],
                _dir: Some(dir),
            };
            // nginx proxies /health to a pod: 200 once it listens.
            http.wait_ok(&format!("{url}/health"), Duration::from_secs(15))
                .await?;
            Ok(front)
        }
        Contender::SglangCacheAware => {
            let port = free_port().map_err(|e| spawn_err("sglang-router", program, e))?;
            let prom = free_port().map_err(|e| spawn_err("sglang-router", program, e))?;
            let mut args: Vec<String> = [
                "-m",
                "sglang_router.launch_router",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--prometheus-host",
                "127.0.0.1",
                "--prometheus-port",
                &prom.to_string(),
                "--policy",
                "cache_aware",
                "--worker-urls",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(pods.iter().cloned());
            let child = Child::spawn_quiet(
                "sglang-router",
                program,
                &args,
                &work.join(format!("{tag}-sglang-router.log")),
            )?;
            let url = format!("http://127.0.0.1:{port}");
            let front = Front {
                url: url.clone(),
                children: vec![child],
                _dir: None,
            };
            // Workers register in the background; /readiness is 200 once they have.
            http.wait_ok(&format!("{url}/readiness"), Duration::from_secs(60))
                .await?;
            Ok(front)
        }
    }
}

fn spawn_err(name: &str, program: &Path, source: std::io::Error) -> ProcessError {
    ProcessError::Spawn {
        name: name.into(),
        program: program.display().to_string(),
        source,
    }
}

/// nginx as an Ingress would run it in front of model servers: HTTP/1.1 upstream keepalive,
/// no response buffering (SSE streams pass chunk by chunk), long read timeouts. One process
/// (`master_process off`) so the harness's kill reaches all of it.
fn nginx_conf(dir: &Path, port: u16, pods: &[String], least_conn: bool) -> String {
    let d = dir.display();
    let servers: String = pods
        .iter()
        .map(|u| format!("    server {};\n", u.trim_start_matches("http://")))
        .collect();
    let balance = if least_conn { "    least_conn;\n" } else { "" };
    format!(
        "master_process off;
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_max_body_size 32m;
  upstream model {{
{balance}{servers}    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }}
  }}
}}
"
    )
}
