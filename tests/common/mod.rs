//! Helpers shared by the end-to-end tests: start real `infergate` processes on 127.0.0.1 and learn
//! where they listen.
//!
//! Every server subcommand accepts port 0 and prints one line per listener to stdout:
//! `infergate <role> listening on http://<addr>` (role: `sim`, `gateway`, `admin`, `autoscaler`).
//! [`Proc::spawn`] waits for the roles it is told to expect and records their addresses, so tests never
//! race for free ports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `infergate` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    /// Lines the process printed on stdout after its listeners came up.
    pub stdout: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `infergate <args>` and waits (up to 60 s) until each role in `roles` printed its address.
    pub fn spawn(args: &[&str], roles: &[&str]) -> Proc {
        Proc::spawn_with_env(args, &[], roles)
    }

    /// [`Proc::spawn`], with extra environment variables for the child.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)], roles: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn infergate");
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while roles.iter().any(|r| !addrs.contains_key(*r)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("infergate {args:?} did not report {roles:?} (got {addrs:?})");
            };
            if let Some((role, addr)) = parse_listening(&line) {
                addrs.insert(role, addr);
            }
        }
        Proc {
            child,
            addrs,
            stdout: rx,
        }
    }

    /// The address a role listens on, e.g. `proc.addr("gateway")`.
    pub fn addr(&self, role: &str) -> SocketAddr {
        self.addrs[role]
    }

    /// `http://<addr>` of a role.
    pub fn url(&self, role: &str) -> String {
        format!("http://{}", self.addr(role))
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `infergate <role> listening on http://<addr>`.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.strip_prefix("infergate ")?;
    let (role, rest) = rest.split_once(" listening on http://")?;
    let addr = rest.split_whitespace().next()?.parse().ok()?;
    Some((role.to_string(), addr))
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("infergate-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file written in its own [`TempDir`], removed with it when dropped: a config a child process
/// reads. Keep it alive until the process has read it. Derefs to its path.
pub struct ConfigFile {
    _dir: TempDir,
    pub path: std::path::PathBuf,
}

impl ConfigFile {
    /// Writes `text` to a file named `tag.yaml` in a fresh temporary directory.
    pub fn new(tag: &str, text: &str) -> ConfigFile {
        let dir = TempDir::new(tag);
        let path = dir.0.join(format!("{tag}.yaml"));
        std::fs::write(&path, text).expect("write config");
        ConfigFile { _dir: dir, path }
    }
}

impl std::ops::Deref for ConfigFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

/// Runs `infergate <args>` to its end and returns its output. Past `within` it gets SIGINT (its
/// Ctrl-C, so it can stop children of its own), then SIGKILL 5 s later, and the test fails with
/// what it printed.
pub fn run_to_end(args: &[&str], within: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn infergate");
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().expect("poll the child").is_none() {
        if std::time::Instant::now() >= deadline {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "infergate {args:?} did not finish within {within:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}
