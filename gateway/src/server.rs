//! The gateway as a whole: pools, their discovery, scrapers and flow control, the data port and
//! the admin port, and their graceful shutdown. [`Gateway::start`] is the one entry point, used by
//! `infergate gateway` and embedded by `infergate up`.
//!
//! The data port is thread-per-core: `gateway.workers` threads, each a current-thread runtime
//! with its own listener on the same address (`SO_REUSEPORT`: the kernel spreads connections)
//! and its own upstream client. A request's client connection, upstream connection and body
//! forwarding then all run on one thread; on a work-stealing runtime each body chunk woke a
//! task on another thread, and those wake-ups, not the gateway's own code, were most of the
//! proxy's cost (docs/BENCHMARKS.md, "proxy overhead"). Pools, metrics and flow control are
//! shared (atomics and locks); discovery, scrapers, flow dispatchers and the admin port stay on
//! the caller's runtime.
//!
//! Shutdown, in order: `/readyz` turns 503 and the data listener closes (new connections are
//! refused); open connections finish their in-flight requests (streams included) and close, for
//! at most `shutdown.drain_timeout`; then requests still held in flow control are answered 503,
//! whatever is left is cut, the background tasks stop, and the admin port closes last (so the
//! drain is observable on it).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use infergate_config::{Config, Discovery};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod drain;
mod http1;

use crate::admin::{self, AdminState};
use crate::coarse_timer::CoarseTimer;
use crate::discovery::inference_pool::InferencePoolSource;
use crate::discovery::kubernetes::SliceDiscovery;
use crate::discovery::{EndpointSet, static_endpoints};
use crate::flow::FlowControl;
use crate::pool::Pool;
use crate::proxy::{GatewayBody, PoolCapacity, PoolRoute, Proxy, Upstreams};
use crate::scrape::scrape_client;
use crate::telemetry::{Metrics, PoolsCollector};

/// What the gateway is started with.
pub struct GatewayOptions {
    pub config: Config,
    /// pool name -> endpoints, overriding that pool's configured discovery
    pub discovery: HashMap<String, watch::Receiver<EndpointSet>>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} for the {role} port: {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("pool `{pool}`: {reason}")]
    Discovery { pool: String, reason: String },
    #[error("cannot start a data-plane worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// The gateway's entry point.
pub struct Gateway;

/// A running gateway.
pub struct GatewayHandle {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    drain: CancellationToken,
    draining: Arc<AtomicBool>,
    pools: Vec<Arc<Pool>>,
    task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Where the OpenAI-compatible API listens.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Where `/metrics`, `/healthz`, `/readyz` and `/debug/pools` listen.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Begins the graceful drain: stop accepting, `/readyz` 503, in-flight requests finish within
    /// `shutdown.drain_timeout`. Returns at once; [`GatewayHandle::wait`] sees it through.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain.cancel();
    }

    /// Resolves when the gateway has drained and stopped (only after [`GatewayHandle::shutdown`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// The live pools, in the configuration's order.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.clone()
    }
}

impl Gateway {
    /// Builds every pool, starts discovery, scrapers and flow control, binds both ports.
    pub async fn start(opts: GatewayOptions) -> Result<GatewayHandle, GatewayError> {
        let GatewayOptions {
            config,
            mut discovery,
        } = opts;
        let g = &config.gateway;
        let background = CancellationToken::new();
        let client = scrape_client();
        let mut metrics = Metrics::new();

        // Discovery sources first: a pool that cannot find its endpoints fails the start.
        let mut sources = Vec::with_capacity(config.pools.len());
        let mut kube_client = None;
        for pc in &config.pools {
            let rx = match discovery.remove(&pc.name) {
                Some(rx) => rx,
                None => match discovery_source(pc, &mut kube_client, &background).await {
                    Ok(rx) => rx,
                    Err(e) => {
                        background.cancel();
                        return Err(e);
                    }
                },
            };
            sources.push(rx);
        }

        let mut routes = Vec::with_capacity(config.pools.len());
        let mut pools = Vec::with_capacity(config.pools.len());
        for (pc, mut rx) in config.pools.iter().zip(sources) {
            let pool = Pool::new(pc, g);
            pool.apply_discovery(&rx.borrow_and_update().clone());
            tokio::spawn(follow_discovery(pool.clone(), rx, background.clone()));
            crate::scrape::spawn_scraper(
                pool.clone(),
                client.clone(),
                g.scrape.clone(),
                background.clone(),
            );
            let flow = FlowControl::start(
                Arc::new(PoolCapacity(pool.clone())),
                g.flow.clone(),
                background.clone(),
            );
            routes.push(PoolRoute {
                metrics: metrics.pool(&pc.name),
                pool: pool.clone(),
                flow,
            });
            pools.push(pool);
        }
        metrics.register_collector(Box::new(PoolsCollector::new(
            routes
                .iter()
                .map(|r| (r.metrics.name.clone(), r.pool.clone(), r.flow.clone()))
                .collect(),
        )));
        let metrics = Arc::new(metrics);
        let proxy = Arc::new(Proxy::new(&config, routes, &metrics));

        let workers = worker_count(g.workers);
        let listeners = async {
            let (data, data_addr) = bind_data(g.listen, workers)?;
            let admin = bind("admin", g.admin_listen).await?;
            let admin_addr = local_addr("admin", g.admin_listen, &admin)?;
            Ok::<_, GatewayError>((data, admin, data_addr, admin_addr))
        };
        let (data, admin, data_addr, admin_addr) = match listeners.await {
            Ok(l) => l,
            Err(e) => {
                background.cancel();
                return Err(e);
            }
        };

        let draining = Arc::new(AtomicBool::new(false));
        let drain = CancellationToken::new();
        let admin_state = Arc::new(AdminState {
            metrics,
            pools: config
                .pools
                .iter()
                .map(|p| p.name.clone())
                .zip(pools.iter().cloned())
                .collect(),
            draining: draining.clone(),
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(serve_admin(admin, admin_state, admin_stop.clone()));
        let shared = DataShared {
            proxy,
            limits: g.limits.clone(),
            upstream: g.upstream.clone(),
            permits: Arc::new(Semaphore::new(g.limits.max_connections.max(1))),
            drain: drain.clone(),
            drain_timeout: g.shutdown.drain_timeout,
            background: background.clone(),
        };
        let mut done = Vec::with_capacity(data.len());
        for (i, listener) in data.into_iter().enumerate() {
            match spawn_worker(i, listener, shared.clone()) {
                Ok(rx) => done.push(rx),
                Err(e) => {
                    // Stop the workers already started, and everything else.
                    drain.cancel();
                    background.cancel();
                    admin_stop.cancel();
                    return Err(e);
                }
            }
        }
        let task = tokio::spawn(async move {
            for rx in done {
                // An error means the worker thread ended without a word (a panic): also done.
                let _ = rx.await;
            }
            background.cancel();
            admin_stop.cancel();
            let _ = admin_task.await;
        });
        Ok(GatewayHandle {
            data_addr,
            admin_addr,
            drain,
            draining,
            pools,
            task,
        })
    }
}

/// The configured discovery of a pool, as a channel of endpoint sets. Kubernetes sources share
/// one client, made on first use from the in-cluster service account or the kubeconfig.
async fn discovery_source(
    pc: &infergate_config::PoolConfig,
    kube_client: &mut Option<kube::Client>,
    cancel: &CancellationToken,
) -> Result<watch::Receiver<EndpointSet>, GatewayError> {
    let err = |reason: String| GatewayError::Discovery {
        pool: pc.name.clone(),
        reason,
    };
    let (rx, task) = match &pc.discovery {
        Discovery::Static { endpoints } => return Ok(static_endpoints(endpoints.iter().cloned())),
        Discovery::Kubernetes(k) => {
            let source = SliceDiscovery::from_config(k).map_err(|e| err(e.to_string()))?;
            source.spawn(kube(kube_client).await.map_err(err)?)
        }
        Discovery::InferencePool(ip) => {
            InferencePoolSource::from_config(ip).spawn(kube(kube_client).await.map_err(err)?)
        }
    };
    let cancel = cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        task.abort();
    });
    Ok(rx)
}

async fn kube(cached: &mut Option<kube::Client>) -> Result<kube::Client, String> {
    if let Some(c) = cached {
        return Ok(c.clone());
    }
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("Kubernetes discovery needs an API server (in-cluster service account or kubeconfig): {e}")
    })?;
    *cached = Some(client.clone());
    Ok(client)
}

/// Applies each new endpoint set to the pool until cancelled or the source ends.
async fn follow_discovery(
    pool: Arc<Pool>,
    mut rx: watch::Receiver<EndpointSet>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return; // the source ended: its last set stays
                }
                let set = rx.borrow_and_update().clone();
                pool.apply_discovery(&set);
            }
            _ = cancel.cancelled() => return,
        }
    }
}

/// `configured` workers, or one per core for 0.
fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The data port's listeners, one per worker, all on one address: the first binds (port 0 picks
/// the port), the others join it with `SO_REUSEPORT`. Returned as std listeners, because each is
/// registered with its own worker's runtime.
fn bind_data(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), GatewayError> {
    let err = |source| GatewayError::Bind {
        role: "data",
        addr,
        source,
    };
    let mut listeners = Vec::with_capacity(workers);
    let mut at = addr;
    for _ in 0..workers.max(1) {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        if workers > 1 {
            socket.set_reuseport(true).map_err(err)?;
        }
        socket.bind(at).map_err(err)?;
        let listener = socket.listen(1024).map_err(err)?;
        at = listener.local_addr().map_err(err)?;
        listeners.push(listener.into_std().map_err(err)?);
    }
    Ok((listeners, at))
}

/// What every data-plane worker shares.
#[derive(Clone)]
struct DataShared {
    proxy: Arc<Proxy>,
    limits: infergate_config::LimitsConfig,
    /// `gateway.upstream`, for each worker's own upstream connections.
    upstream: infergate_config::UpstreamConfig,
    /// `limits.max_connections`, across all workers.
    permits: Arc<Semaphore>,
    drain: CancellationToken,
    drain_timeout: Duration,
    background: CancellationToken,
}

/// Starts data-plane worker `i` on its own thread and current-thread runtime, serving `listener`
/// until drained. The receiver resolves when the worker has stopped.
fn spawn_worker(
    i: usize,
    listener: std::net::TcpListener,
    shared: DataShared,
) -> Result<oneshot::Receiver<()>, GatewayError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(GatewayError::Worker)?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("infergate-data-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                let registered = listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener));
                match registered {
                    Ok(listener) => serve_data(listener, shared).await,
                    Err(e) => tracing::error!(worker = i, error = %e, "data listener unusable"),
                }
            });
            // Connections still open were cut by the drain; resolvers and the like get a moment.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = tx.send(());
        })
        .map_err(GatewayError::Worker)?;
    Ok(rx)
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { role, addr, source })
}

fn local_addr(
    role: &'static str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<SocketAddr, GatewayError> {
    l.local_addr()
        .map_err(|source| GatewayError::Bind { role, addr, source })
}

/// What each request of one worker holds on to. One `Arc` per worker, cloned per request: its
/// count stays in this worker's cache. Cloning the shared `Arc<Proxy>` per request wrote a line
/// that every worker writes, next to the routes every request reads.
struct Worker {
    proxy: Arc<Proxy>,
    upstreams: Arc<Upstreams>,
}

impl Worker {
    /// One request's answer, whichever protocol brought it.
    async fn answer<B>(self: Arc<Self>, req: Request<B>) -> Response<GatewayBody>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        self.proxy.handle(&self.upstreams, req).await
    }
}

/// One worker's share of the data port: HTTP/1.1 and h2c on its listener, at most
/// `max_connections` at once across all workers, upstream through the worker's own connections.
async fn serve_data(listener: TcpListener, shared: DataShared) {
    let DataShared {
        proxy,
        limits,
        upstream,
        permits,
        drain,
        drain_timeout,
        background,
    } = shared;
    // The worker's timer for the per-request deadlines (request head, answer head): one slot
    // table and one ticker per worker, instead of tokio's timer wheel twice per request.
    let timer = CoarseTimer::new();
    let ticker = tokio::spawn(timer.clone().tick());
    // HTTP/1.x is served by the gateway's own loop (`http1`); HTTP/2 by hyper, whose timer only
    // paces keep-alive pings (per connection, not per request).
    let h1_limits = http1::Limits {
        max_body: limits.max_body_bytes,
        header_read: limits.header_read_timeout,
        body_read: limits.body_read_timeout,
        send: limits.send_timeout,
    };
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let graceful = drain::Drain::new();
    // The connections' tasks: the drain's hard stop aborts what is left of them. (A per-task
    // select on a cancellation token polled the token's lock on every wake-up of every
    // connection, that is on every request and every streamed chunk.)
    let mut connections = tokio::task::JoinSet::new();
    // The worker's own upstream connections, driven by this thread.
    let upstreams = Upstreams::new(upstream, timer.clone());
    let sweeper = tokio::spawn(upstreams.clone().sweep_periodically());
    let worker = Arc::new(Worker { proxy, upstreams });
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = drain.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = drain.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (worker, graceful, timer, h2) =
            (worker.clone(), graceful.clone(), timer.clone(), h2.clone());
        // Forget the connections that have ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let protocol = timer
                .timeout(h1_limits.header_read, sniff(&stream))
                .await
                .unwrap_or(Ok(Protocol::Gone));
            let ended = match protocol {
                Ok(Protocol::Http1) => {
                    let refused = {
                        let worker = worker.clone();
                        move |status| worker.proxy.count_refused(status)
                    };
                    let service = move |req: Request<Full<Bytes>>| worker.clone().answer(req);
                    let conn = http1::Connection::new(stream, service, refused, h1_limits, timer);
                    graceful.watch(conn).await.map_err(|e| e.to_string())
                }
                Ok(Protocol::Http2) => {
                    let service = service_fn(move |req| {
                        let answer = worker.clone().answer(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let conn = h2.serve_connection(TokioIo::new(stream), service);
                    graceful.watch(conn).await.map_err(|e| e.to_string())
                }
                Ok(Protocol::Gone) | Err(_) => Ok(()),
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.open(),
        "draining: no new connections, waiting for in-flight requests"
    );
    graceful.start();
    if tokio::time::timeout(drain_timeout, all_closed(&mut connections))
        .await
        .is_ok()
    {
        tracing::info!("drained");
    } else {
        // Requests still held in flow control get their 503 (the dispatchers answer every
        // waiter when stopped) before the remaining connections are cut.
        background.cancel();
        let _ =
            tokio::time::timeout(Duration::from_millis(200), all_closed(&mut connections)).await;
        tracing::warn!("drain timeout: closing the remaining connections");
        connections.abort_all();
    }
    sweeper.abort();
    ticker.abort();
}

/// What a new data connection speaks.
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): it opens with the connection preface.
    Http2,
    /// Closed, or silent past the header-read timeout, before saying.
    Gone,
}

/// HTTP/2's connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells the protocol from the connection's first bytes, without taking them from the socket.
/// An HTTP/1 request is told at its first byte; a preface that has arrived in part is looked at
/// again a millisecond later (the caller bounds the wait).
async fn sniff(stream: &tokio::net::TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(Protocol::Gone);
        }
        if first[..n] != H2_PREFACE[..n] {
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Resolves when every connection task has ended (cancel-safe: the set keeps the rest).
async fn all_closed(connections: &mut tokio::task::JoinSet<()>) {
    while connections.join_next().await.is_some() {}
}

/// The admin port, until `stop`.
async fn serve_admin(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = admin::handle(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_listeners_share_one_port_and_refuse_an_outsider() {
        let (listeners, addr) = bind_data(([127, 0, 0, 1], 0).into(), 3).expect("bind");
        assert_eq!(listeners.len(), 3);
        assert_ne!(addr.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr"), addr);
        }
        // A socket without SO_REUSEPORT (another program) cannot take the port.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }

    #[test]
    fn zero_workers_means_one_per_core() {
        assert!(worker_count(0) >= 1);
        assert_eq!(worker_count(3), 3);
    }
}
