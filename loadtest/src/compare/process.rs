//! Child processes the harness starts (sims, gateways, nginx, the SGLang router), and the few HTTP
//! calls it makes to them.
//!
//! Every child is killed when its [`Child`] is dropped (tokio's `kill_on_drop`), so an error or a
//! panic anywhere in a run leaves no process behind; a clean stop sends SIGTERM first. Children are
//! single processes (nginx runs with `master_process off`), so killing the one pid is enough. A
//! SIGKILL of the harness itself cannot be caught: that case alone can leak children.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Why a child could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        /// Which child.
        name: String,
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It did not come up in time.
    #[error("{name} did not come up within {secs} s: {detail} (log: {log})")]
    NotReady {
        /// Which child.
        name: String,
        /// The bound.
        secs: u64,
        /// What was missing.
        detail: String,
        /// Its log file.
        log: String,
    },
    /// An HTTP call failed.
    #[error("{url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// A running child, killed on drop.
pub struct Child {
    name: String,
    child: tokio::process::Child,
}

impl Child {
    /// Starts `program args`, stdout parsed for listening lines, stderr into `log`.
    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<(Child, tokio::process::ChildStdout), ProcessError> {
        let spawn_err = |source| ProcessError::Spawn {
            name: name.into(),
            program: program.display().to_string(),
            source,
        };
        let log_file = std::fs::File::create(log).map_err(spawn_err)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| spawn_err(std::io::Error::other("stdout was not piped")))?;
        Ok((
            Child {
                name: name.into(),
                child,
            },
            stdout,
        ))
    }

    /// Starts an `infergate` subcommand and waits until every role in `roles` printed
    /// `infergate <role> listening on http://<addr>`; returns the addresses by role.
    pub async fn spawn_infergate(
        name: &str,
        program: &Path,
        args: &[String],
        roles: &[&str],
        log: &Path,
        within: Duration,
    ) -> Result<(Child, HashMap<String, SocketAddr>), ProcessError> {
        let (mut child, stdout) = Child::start(name, program, args, log)?;
        let mut lines = BufReader::new(stdout).lines();
        let mut addrs = HashMap::new();
        let deadline = tokio::time::Instant::now() + within;
        while roles.iter().any(|r| !addrs.contains_key(*r)) {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    let status = child.child.try_wait().ok().flatten();
                    return Err(ProcessError::NotReady {
                        name: name.into(),
                        secs: within.as_secs(),
                        detail: format!(
                            "expected {roles:?} listening lines, got {:?}{}",
                            addrs.keys().collect::<Vec<_>>(),
                            status
                                .map(|s| format!("; exited with {s}"))
                                .unwrap_or_default()
                        ),
                        log: log.display().to_string(),
                    });
                }
            };
            if let Some((role, addr)) = parse_listening(&line) {
                addrs.insert(role, addr);
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        child.name = name.into();
        Ok((child, addrs))
    }

    /// Starts a program that prints nothing useful (nginx, the SGLang router); readiness is then
    /// the caller's to poll.
    pub fn spawn_quiet(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Child, ProcessError> {
        let (child, stdout) = Child::start(name, program, args, log)?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        Ok(child)
    }

    /// Whether it already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        tracing::debug!(name = %self.name, "did not stop on SIGTERM: killing");
        let _ = self.child.kill().await;
    }
}

/// Parses `infergate <role> listening on http://<addr>`.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.strip_prefix("infergate ")?;
    let (role, rest) = rest.split_once(" listening on http://")?;
    let addr = rest.split_whitespace().next()?.parse().ok()?;
    Some((role.to_string(), addr))
}

/// A free port on 127.0.0.1 for programs that cannot be told port 0 and report back (nginx, the
/// router). Another process could take it before the child binds: the caller then sees the child
/// fail to come up, and says so.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Finds `name` on PATH (or takes it as a path).
pub fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The harness's small HTTP client (metrics, faults, readiness).
#[derive(Clone)]
pub struct Http {
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client with a connection pool.
    pub fn new() -> Self {
        Http {
            client: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GET (or POST with a JSON body) within 5 s; returns the status and the body.
    pub async fn call(
        &self,
        url: &str,
        json: Option<String>,
    ) -> Result<(u16, String), ProcessError> {
        let err = |m: String| ProcessError::Http {
            url: url.into(),
            message: m,
        };
        let builder = hyper::Request::builder().uri(url);
        let req = match json {
            Some(body) => builder
                .method("POST")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body))),
            None => builder.method("GET").body(Full::new(Bytes::new())),
        }
        .map_err(|e| err(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| err(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| err("no answer within 5 s".into()))?
    }

    /// Polls `url` until it answers 200, at most `within`.
    pub async fn wait_ok(&self, url: &str, within: Duration) -> Result<(), ProcessError> {
        let deadline = Instant::now() + within;
        let mut last = String::from("never answered");
        while Instant::now() < deadline {
            match self.call(url, None).await {
                Ok((200, _)) => return Ok(()),
                Ok((s, b)) => {
                    last = format!("status {s}: {}", b.chars().take(200).collect::<String>())
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ProcessError::Http {
            url: url.into(),
            message: format!("not ready within {} s: {last}", within.as_secs()),
        })
    }
}
