//! The autoscaler as a running service: every `interval`, for every autoscaled pool, read the
//! signals, ask the policy, apply through the actuator; and an admin port with `/metrics`,
//! `/healthz` and `/debug/pools`.
//!
//! The loop is the only place where time is read: `now` for the policy is the time since the
//! service started. With leader election, every replica computes decisions (so its metrics and
//! windows stay warm for a takeover) but only the leader writes; with `dry_run`, nobody writes and
//! decisions are logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infergate_config::{Config, Flavor};
use infergate_gateway::discovery::EndpointSet;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actuate::{Actuator, PodPhase, PoolStatus, choose_victims};
use crate::policy::{Mode, Reason, Recommendation, ScalerState};
use crate::signals::Signals;
use crate::signals::fetch::HttpClient;
use crate::signals::reader::SignalsReader;
use admin::{Shared, serve_admin, view};
use metrics::{DecisionLabels, Metrics};

mod admin;
mod metrics;
#[cfg(test)]
mod tests;

/// How the service is started.
pub struct AutoscalerOptions {
    /// The whole configuration: `autoscaler` settings and the pools with `autoscaling`.
    pub config: Config,
    /// Where the admin port binds (usually `config.autoscaler.admin_listen`, or a flag's).
    pub admin_listen: SocketAddr,
    /// Log decisions, write nothing (ORed with `config.autoscaler.dry_run`).
    pub dry_run: bool,
    /// "This replica is the leader"; `None` when there is no election (one writer by design).
    pub leader: Option<watch::Receiver<bool>>,
    /// Pool name -> its endpoints, for actuators that cannot list a pool's pods themselves (the
    /// Kubernetes one): the pods whose `/metrics` are read.
    pub discovery: HashMap<String, watch::Receiver<EndpointSet>>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr} for the autoscaler's admin port: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no pool has `autoscaling` set: nothing to scale")]
    NothingToScale,
}

/// A running autoscaler.
pub struct AutoscalerHandle {
    admin_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
    admin: JoinHandle<()>,
}

impl AutoscalerHandle {
    /// Where `/metrics`, `/healthz` and `/debug/pools` listen.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops the loop after the current interval (the actuator's pods are the caller's to stop).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Resolves once the loop and the admin port have stopped (after [`Self::shutdown`]).
    pub async fn wait(self) {
        let _ = self.task.await;
        self.admin.abort();
        let _ = self.admin.await;
    }
}

/// Starts the loop and binds the admin port.
pub async fn start<A: Actuator>(
    opts: AutoscalerOptions,
    actuator: Arc<A>,
) -> Result<AutoscalerHandle, ServiceError> {
    let pools: Vec<PoolScaler> = opts
        .config
        .pools
        .iter()
        .filter_map(|p| {
            let a = p.autoscaling.clone()?;
            Some(PoolScaler {
                name: p.name.clone(),
                flavor: p.flavor,
                state: ScalerState::new(a),
            })
        })
        .collect();
    if pools.is_empty() {
        return Err(ServiceError::NothingToScale);
    }
    let listener = TcpListener::bind(opts.admin_listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: opts.admin_listen,
            source,
        })?;
    let admin_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: opts.admin_listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        pools: Mutex::new(HashMap::new()),
    });
    // Every series exists from the start, so a dashboard shows zeros rather than gaps.
    for pool in &pools {
        let label = shared.metrics.pool(&pool.name);
        let _ = shared.metrics.errors.get_or_create(&label);
        let _ = shared.metrics.panic.get_or_create(&label);
        for reason in Reason::ALL {
            let _ = shared.metrics.decisions.get_or_create(&DecisionLabels {
                pool: pool.name.clone(),
                reason: reason.as_str(),
            });
        }
    }
    let stop = CancellationToken::new();
    let admin = tokio::spawn(serve_admin(listener, shared.clone(), stop.clone()));
    let cfg = &opts.config.autoscaler;
    // Each read must end well within the interval; a second is plenty on a LAN.
    let read_timeout =
        (cfg.interval * 4 / 5).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let reader = SignalsReader::new(cfg.signals.clone(), HttpClient::default(), read_timeout);
    let lp = Loop {
        pools,
        reader,
        actuator,
        shared,
        interval: cfg.interval,
        dry_run: opts.dry_run || cfg.dry_run,
        leader: opts.leader,
        discovery: opts.discovery,
        started: Instant::now(),
    };
    let task = tokio::spawn(lp.run(stop.clone()));
    Ok(AutoscalerHandle {
        admin_addr,
        stop,
        task,
        admin,
    })
}

struct PoolScaler {
    name: String,
    flavor: Flavor,
    state: ScalerState,
}

struct Loop<A> {
    pools: Vec<PoolScaler>,
    reader: SignalsReader,
    actuator: Arc<A>,
    shared: Arc<Shared>,
    interval: Duration,
    dry_run: bool,
    leader: Option<watch::Receiver<bool>>,
    discovery: HashMap<String, watch::Receiver<EndpointSet>>,
    started: Instant,
}

impl<A: Actuator> Loop<A> {
    async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            self.tick().await;
        }
    }

    async fn tick(&mut self) {
        let leader = self.leader.as_ref().is_none_or(|rx| *rx.borrow());
        self.shared.metrics.is_leader.set(i64::from(leader));
        self.reader.refresh_gateways().await;
        for i in 0..self.pools.len() {
            self.tick_pool(i, leader).await;
        }
    }

    async fn tick_pool(&mut self, i: usize, leader: bool) {
        let name = self.pools[i].name.clone();
        let m = &self.shared.metrics;
        let label = m.pool(&name);
        let status = match self.actuator.status(&name).await {
            Ok(s) => s,
            Err(e) => {
                m.errors.get_or_create(&label).inc();
                tracing::warn!(pool = %name, actuator = self.actuator.name(), "cannot read the pool: {e}");
                return;
            }
        };
        let urls = self.ready_urls(&name, &status);
        let flavor = self.pools[i].flavor;
        let reading = self.reader.read_pods(&name, flavor, &urls).await;
        let signals = Signals {
            replicas: status.replicas,
            pods: reading.loads,
            gateway: self.reader.gateway_load(&name),
        };
        let now = self.started.elapsed();
        let pool = &mut self.pools[i];
        let rec = crate::policy::recommend(&pool.state, &signals, now);
        let m = &self.shared.metrics;
        m.desired.get_or_create(&label).set(i64::from(rec.replicas));
        m.current
            .get_or_create(&label)
            .set(i64::from(status.replicas.wanted));
        m.ready
            .get_or_create(&label)
            .set(i64::from(status.replicas.ready));
        m.starting
            .get_or_create(&label)
            .set(i64::from(status.replicas.starting));
        m.ratio
            .get_or_create(&label)
            .set(rec.evidence.ratio.unwrap_or(f64::NAN));
        m.panic
            .get_or_create(&label)
            .set(i64::from(rec.mode == Mode::Panic));
        m.decisions
            .get_or_create(&DecisionLabels {
                pool: name.clone(),
                reason: rec.reason.as_str(),
            })
            .inc();
        log_decision(&name, &rec, &signals, self.dry_run, leader);
        // Every replica keeps its windows warm (a standby that takes over must not start from an
        // empty history); only changes actually applied count against the rate limits.
        let applies = leader && !self.dry_run;
        if applies {
            pool.state.record(&rec, now);
        } else {
            let mut unapplied = rec.clone();
            unapplied.replicas = unapplied.from;
            pool.state.record(&unapplied, now);
        }
        self.shared
            .pools
            .lock()
            .insert(name.clone(), view(&status, &rec));
        if !leader || self.dry_run || !rec.is_change() {
            return;
        }
        let victims = if rec.replicas < rec.from {
            choose_victims(
                &status.pods,
                &reading.per_pod,
                (rec.from - rec.replicas) as usize,
            )
        } else {
            Vec::new()
        };
        if let Err(e) = self
            .actuator
            .set_replicas(&name, rec.replicas, &victims)
            .await
        {
            m.errors.get_or_create(&label).inc();
            tracing::warn!(pool = %name, actuator = self.actuator.name(), replicas = rec.replicas, "cannot scale: {e}");
        }
    }

    /// The ready pods' URLs: from the actuator when it lists pods, else from discovery.
    fn ready_urls(&self, pool: &str, status: &PoolStatus) -> Vec<String> {
        if !status.pods.is_empty() {
            return status
                .pods
                .iter()
                .filter(|p| p.phase == PodPhase::Ready)
                .filter_map(|p| p.url.clone())
                .collect();
        }
        match self.discovery.get(pool) {
            Some(rx) => rx
                .borrow()
                .iter()
                .filter(|e| e.ready && !e.terminating)
                .map(|e| e.url.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}

fn log_decision(pool: &str, rec: &Recommendation, s: &Signals, dry_run: bool, leader: bool) {
    let changes = rec.is_change();
    let mode = rec.mode.as_str();
    let ratio = rec.evidence.ratio.map(|r| format!("{r:.2}"));
    let ratio = ratio.as_deref().unwrap_or("unknown");
    let held = s.gateway.held();
    if changes {
        let applied = if dry_run {
            " (dry run: not applied)"
        } else if !leader {
            " (not leader: not applied)"
        } else {
            ""
        };
        tracing::info!(
            pool, from = rec.from, to = rec.replicas, reason = %rec.reason, mode, ratio,
            ready = s.replicas.ready, starting = s.replicas.starting, ?held,
            "scaling{applied}"
        );
    } else if rec.reason != Reason::HoldStable && rec.reason != Reason::ClampMin {
        tracing::debug!(pool, replicas = rec.replicas, reason = %rec.reason, mode, ratio, "holding");
    }
}
