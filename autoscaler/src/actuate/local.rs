//! The `local` actuator: a pool's pods are `infergate sim` processes on 127.0.0.1.
//!
//! Used by `infergate up` and the end-to-end tests, so it behaves like a small orchestrator:
//! - **Start**: run `<this executable> sim --host 127.0.0.1 --port 0 --startup-delay-ms N ...`,
//!   read the child's `infergate sim listening on http://<addr>` line, then poll `/health` until
//!   the simulated cold start is over. Only then is the pod ready.
//! - **Publish**: every change of the pool's pods is sent as an [`EndpointSet`] on a watch
//!   channel: the same discovery interface the gateway uses for Kubernetes EndpointSlices, so an
//!   embedded gateway routes to local pods with no special case. Starting pods are listed unready;
//!   draining ones terminating.
//! - **Stop** (a scale-down): mark the pod terminating (the gateway stops picking it), `POST
//!   /admin/drain` (the sim refuses new work and fails `/health`), wait until its engine has nothing
//!   running or waiting (bounded), then SIGTERM, and SIGKILL if it lingers; always reap.
//! - **Shutdown**: every child gets SIGTERM, then SIGKILL after a grace period, and is reaped.
//!   Children run in their own process group, so a terminal's Ctrl-C reaches only `infergate`,
//!   which then stops them in order; `kill_on_drop` covers a panic. A `SIGKILL` of the parent
//!   cannot be caught, so each sim is started with a pipe on its stdin and `--exit-on-stdin-eof`:
//!   when the parent dies the kernel closes the pipe and the sims stop themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infergate_gateway::discovery::{DiscoveredEndpoint, EndpointSet};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ActuateError, Actuator, PodPhase, PodStatus, PoolStatus, honour_hint};
use crate::signals::Replicas;
use crate::signals::fetch::HttpClient;

/// How one pool's local pods are run.
#[derive(Clone, Debug)]
pub struct LocalPoolSpec {
    /// The pool's name (from the configuration).
    pub pool: String,
    /// The `infergate` executable (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Extra arguments to `infergate sim`: `--model`, `--speed`, `--max-num-seqs`, ...
    pub sim_args: Vec<String>,
    /// The simulated cold start: the sim answers 503 on `/health` for this long.
    pub startup_delay: Duration,
    /// How long a pod may take from spawn to healthy beyond `startup_delay` before it is given up.
    pub ready_margin: Duration,
    /// Longest wait for a draining pod's in-flight requests to finish before it is stopped anyway.
    pub drain_timeout: Duration,
}

impl LocalPoolSpec {
    /// A spec with the usual margins: 30 s to come up beyond the cold start, 30 s to drain.
    pub fn new(
        pool: impl Into<String>,
        exe: PathBuf,
        sim_args: Vec<String>,
        startup_delay: Duration,
    ) -> Self {
        LocalPoolSpec {
            pool: pool.into(),
            exe,
            sim_args,
            startup_delay,
            ready_margin: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Time a child has after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Time between two `/health` or drain polls.
const POLL: Duration = Duration::from_millis(50);

/// Starts and stops simulated pods; see the module docs.
pub struct LocalActuator {
    pools: HashMap<String, Arc<LocalPool>>,
    client: HttpClient,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

struct LocalPool {
    spec: LocalPoolSpec,
    pods: Mutex<Vec<Pod>>,
    next_id: AtomicU64,
    endpoints: watch::Sender<EndpointSet>,
}

struct Pod {
    name: String,
    url: Option<String>,
    phase: PodPhase,
    /// Cancelled to stop the pod (drain, then terminate).
    stop: CancellationToken,
}

impl LocalActuator {
    /// An actuator for these pools, with no pods yet (the autoscaler's first decision starts
    /// `min_replicas` of each).
    pub fn new(specs: Vec<LocalPoolSpec>) -> Self {
        let pools = specs
            .into_iter()
            .map(|spec| {
                let (endpoints, _) = watch::channel(Arc::new(Vec::new()));
                let name = spec.pool.clone();
                let pool = LocalPool {
                    spec,
                    pods: Mutex::new(Vec::new()),
                    next_id: AtomicU64::new(0),
                    endpoints,
                };
                (name, Arc::new(pool))
            })
            .collect();
        LocalActuator {
            pools,
            client: HttpClient::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The pool's pods as a discovery source, for a gateway (`None` for an unknown pool).
    pub fn endpoints(&self, pool: &str) -> Option<watch::Receiver<EndpointSet>> {
        self.pools.get(pool).map(|p| p.endpoints.subscribe())
    }

    /// Stops every pod (SIGTERM, SIGKILL after a grace period) and waits until each is reaped, at
    /// most `timeout`. New scale requests are refused from the first moment.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("local pods did not all stop within {timeout:?}");
        }
    }

    fn pool(&self, pool: &str) -> Result<&Arc<LocalPool>, ActuateError> {
        self.pools
            .get(pool)
            .ok_or_else(|| ActuateError::UnknownPool(pool.to_string()))
    }

    fn start_pod(&self, pool: &Arc<LocalPool>, pods: &mut Vec<Pod>) -> Result<(), ActuateError> {
        let spec = &pool.spec;
        let id = pool.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{id}", spec.pool);
        let mut child = Command::new(&spec.exe)
            .arg("sim")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--startup-delay-ms")
            .arg(spec.startup_delay.as_millis().to_string())
            .arg("--exit-on-stdin-eof")
            .args(&spec.sim_args)
            // The pipe's write end is held by the pod's task until the pod is reaped; if this
            // process dies, even by SIGKILL, the kernel closes it and the sim shuts itself down.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| ActuateError::Spawn {
                pool: spec.pool.clone(),
                reason: format!("{}: {e}", spec.exe.display()),
            })?;
        let stop = CancellationToken::new();
        pods.push(Pod {
            name: name.clone(),
            url: None,
            phase: PodPhase::Starting,
            stop: stop.clone(),
        });
        tracing::info!(pool = %spec.pool, pod = %name, pid = child.id(), "starting pod");
        let stdout = child.stdout.take();
        if let Some(stderr) = child.stderr.take() {
            let pod = name.clone();
            self.tasks.spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(pod = %pod, "{line}");
                }
            });
        }
        let life = PodLife {
            pool: pool.clone(),
            name,
            client: self.client.clone(),
            stop,
            shutdown: self.shutdown.clone(),
        };
        // Taken out of `child`: tokio's `Child::wait` closes a stdin it still holds, which would
        // tell the sim its parent is gone.
        let stdin = child.stdin.take();
        self.tasks.spawn(async move {
            let _parent_alive = stdin;
            life.run(child, stdout).await
        });
        Ok(())
    }
}

impl Drop for LocalActuator {
    fn drop(&mut self) {
        // Children are `kill_on_drop`; cancelling makes every pod task stop its child now rather
        // than when the runtime drops the task.
        self.shutdown.cancel();
    }
}

impl Actuator for LocalActuator {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn status(&self, pool: &str) -> Result<PoolStatus, ActuateError> {
        let pool = self.pool(pool)?;
        let pods = pool.pods.lock();
        let mut replicas = Replicas::default();
        let list = pods
            .iter()
            .map(|p| {
                match p.phase {
                    PodPhase::Starting => replicas.starting += 1,
                    PodPhase::Ready => replicas.ready += 1,
                    PodPhase::Draining => {}
                }
                PodStatus {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    phase: p.phase,
                }
            })
            .collect();
        replicas.wanted = replicas.ready + replicas.starting;
        Ok(PoolStatus {
            replicas,
            pods: list,
        })
    }

    async fn set_replicas(
        &self,
        pool: &str,
        replicas: u32,
        victims: &[String],
    ) -> Result<(), ActuateError> {
        if self.shutdown.is_cancelled() {
            return Err(ActuateError::ShuttingDown);
        }
        let pool = self.pool(pool)?;
        let mut pods = pool.pods.lock();
        let active = pods
            .iter()
            .filter(|p| p.phase != PodPhase::Draining)
            .count();
        let want = replicas as usize;
        if want > active {
            for _ in active..want {
                self.start_pod(pool, &mut pods)?;
            }
        } else if want < active {
            let count = active - want;
            let status: Vec<PodStatus> = pods
                .iter()
                .map(|p| PodStatus {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    phase: p.phase,
                })
                .collect();
            let chosen = honour_hint(&status, victims, count);
            for pod in pods.iter_mut().filter(|p| chosen.contains(&p.name)) {
                tracing::info!(pool = %pool.spec.pool, pod = %pod.name, from = pod.phase.as_str(), "stopping pod");
                pod.phase = PodPhase::Draining;
                pod.stop.cancel();
            }
        }
        publish(&pool.endpoints, &pods);
        Ok(())
    }
}

fn publish(tx: &watch::Sender<EndpointSet>, pods: &[Pod]) {
    let set: Vec<DiscoveredEndpoint> = pods
        .iter()
        .filter_map(|p| {
            Some(DiscoveredEndpoint {
                url: p.url.clone()?,
                name: Some(p.name.clone()),
                ready: p.phase == PodPhase::Ready,
                terminating: p.phase == PodPhase::Draining,
            })
        })
        .collect();
    tx.send_if_modified(|current| {
        if current.as_slice() == set.as_slice() {
            false
        } else {
            *current = Arc::new(set);
            true
        }
    });
}

/// One pod's life, from spawn to reaping.
struct PodLife {
    pool: Arc<LocalPool>,
    name: String,
    client: HttpClient,
    /// This pod is to stop (a scale-down picked it).
    stop: CancellationToken,
    /// Everything stops (the actuator shuts down).
    shutdown: CancellationToken,
}

impl PodLife {
    async fn run(self, mut child: Child, stdout: Option<tokio::process::ChildStdout>) {
        let spec = &self.pool.spec;
        let up_deadline = Instant::now() + spec.startup_delay + spec.ready_margin;
        let was_ready = tokio::select! {
            ready = self.come_up(&mut child, stdout, up_deadline) => ready,
            () = self.stop.cancelled() => false,
            () = self.shutdown.cancelled() => false,
        };
        if was_ready {
            self.set_phase(PodPhase::Ready);
            tracing::info!(pool = %spec.pool, pod = %self.name, "pod ready");
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(pool = %spec.pool, pod = %self.name, ?status, "pod exited on its own");
                    self.remove();
                    return;
                }
                () = self.stop.cancelled() => self.drain().await,
                () = self.shutdown.cancelled() => {}
            }
        }
        terminate(&mut child, &self.name).await;
        self.remove();
    }

    /// Waits for the listening line, then for `/health`; false if the pod never came up.
    async fn come_up(
        &self,
        child: &mut Child,
        stdout: Option<tokio::process::ChildStdout>,
        deadline: Instant,
    ) -> bool {
        let spec = &self.pool.spec;
        let Some(stdout) = stdout else { return false };
        let mut lines = BufReader::new(stdout).lines();
        let find_addr = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line
                    .strip_prefix("infergate sim listening on ")
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    return Some(addr.trim_end_matches('/').to_string());
                }
            }
            None
        };
        let url = tokio::select! {
            url = tokio::time::timeout_at(deadline.into(), find_addr) => url.ok().flatten(),
            status = child.wait() => {
                tracing::warn!(pool = %spec.pool, pod = %self.name, ?status, "pod exited before listening (RUST_LOG=infergate_autoscaler=debug shows its log)");
                None
            }
        };
        let Some(url) = url else {
            tracing::warn!(pool = %spec.pool, pod = %self.name, "pod did not report its address");
            return false;
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        self.pool_tasks_drain(lines);
        {
            let mut pods = self.pool.pods.lock();
            if let Some(p) = pods.iter_mut().find(|p| p.name == self.name) {
                p.url = Some(url.clone());
            }
            publish(&self.pool.endpoints, &pods);
        }
        let health = format!("{url}/health");
        while Instant::now() < deadline {
            if let Ok(200) = self.client.status_of(&health, Duration::from_secs(1)).await {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                status = child.wait() => {
                    tracing::warn!(pool = %spec.pool, pod = %self.name, ?status, "pod exited while starting");
                    return false;
                }
            }
        }
        tracing::warn!(pool = %spec.pool, pod = %self.name, "pod not healthy in time; stopping it");
        false
    }

    fn pool_tasks_drain(
        &self,
        mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }

    /// Asks the pod to refuse new work and waits until it has none, at most `drain_timeout`.
    async fn drain(&self) {
        let spec = &self.pool.spec;
        let Some(url) = self.url() else { return };
        if let Err(e) = self
            .client
            .post_empty(&format!("{url}/admin/drain"), Duration::from_secs(2))
            .await
        {
            tracing::warn!(pool = %spec.pool, pod = %self.name, "drain request failed: {e}");
            return;
        }
        let deadline = Instant::now() + spec.drain_timeout;
        let metrics = format!("{url}/metrics");
        while Instant::now() < deadline && !self.shutdown.is_cancelled() {
            match self.client.get_text(&metrics, Duration::from_secs(1)).await {
                Ok(text) => {
                    let load = infergate_gateway::scrape::extract(
                        &text,
                        infergate_config::Flavor::Auto,
                        std::time::Instant::now(),
                    );
                    let busy =
                        load.map_or(0.0, |l| l.waiting.unwrap_or(0.0) + l.running.unwrap_or(0.0));
                    if busy <= 0.0 {
                        tracing::info!(pool = %spec.pool, pod = %self.name, "pod drained");
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(pod = %self.name, "drain poll: {e}");
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
        tracing::warn!(pool = %spec.pool, pod = %self.name, "drain timed out; stopping with requests in flight");
    }

    fn url(&self) -> Option<String> {
        let pods = self.pool.pods.lock();
        pods.iter()
            .find(|p| p.name == self.name)
            .and_then(|p| p.url.clone())
    }

    fn set_phase(&self, phase: PodPhase) {
        let mut pods = self.pool.pods.lock();
        if let Some(p) = pods.iter_mut().find(|p| p.name == self.name) {
            // A scale-down may have marked it draining meanwhile: that wins.
            if p.phase != PodPhase::Draining {
                p.phase = phase;
            }
        }
        publish(&self.pool.endpoints, &pods);
    }

    fn remove(&self) {
        let mut pods = self.pool.pods.lock();
        pods.retain(|p| p.name != self.name);
        publish(&self.pool.endpoints, &pods);
        tracing::info!(pool = %self.pool.spec.pool, pod = %self.name, "pod stopped");
    }
}

/// SIGTERM, then SIGKILL after [`TERM_GRACE`]; reaps the child either way.
async fn terminate(child: &mut Child, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(TERM_GRACE, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(pod = %name, "pod ignored SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}
