//! The HTTP shell around the engine host: hyper 1 (HTTP/1.1 and h2c), the routes, health, admin and
//! info endpoints, and graceful shutdown. Completion requests are handled in [`super::completion`].
//!
//! Routes:
//! - `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not)
//! - `GET /v1/models`, `GET /health`, `GET /metrics`
//! - `GET /admin/faults`, `POST /admin/faults` (JSON patch of [`Faults`]), `POST /admin/drain`
//! - flavor sglang only: `GET /server_info`, `GET /model_info`, `GET /get_load` (and the
//!   `/get_server_info`, `/get_model_info` spellings)
//!
//! Drain (`POST /admin/drain`): new completion requests get 503, requests in flight finish, and
//! `/health` answers 503 so that a load balancer stops sending; used by the autoscaler's local
//! actuator before it stops a process. SIGTERM does the same and then exits once the connections are
//! done (bounded by the shutdown grace period).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::api::{ApiError, Endpoint, models_json};
use super::engine::{Engine, EngineConfig};
use super::faults::Faults;
use super::host::Host;
use super::metrics::{Flavor, Recorder, ServedModel, render};
use super::profile::Profile;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The response body type of every route.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything `infergate sim` is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Served model name.
    pub model: String,
    /// Metric names and extra routes.
    pub flavor: Flavor,
    /// Step-time profile.
    pub profile: Profile,
    /// Engine limits.
    pub engine: EngineConfig,
    /// Seed for output lengths and fault draws.
    pub seed: u64,
    /// Engine clock multiplier (10 = ten times faster than real time).
    pub speed: f64,
    /// Requests allowed to wait before new ones get 503.
    pub max_waiting: usize,
    /// Health and requests answer 503 for this long after start (a cold start).
    pub startup_delay: Duration,
    /// Faults at start.
    pub faults: Faults,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

impl SimConfig {
    /// Defaults for `profile`, served as `model`.
    pub fn new(model: impl Into<String>, profile: Profile) -> SimConfig {
        SimConfig {
            model: model.into(),
            flavor: Flavor::Vllm,
            engine: EngineConfig::for_profile(&profile),
            profile,
            seed: 0,
            speed: 1.0,
            max_waiting: 1024,
            startup_delay: Duration::ZERO,
            faults: Faults::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding or accepting failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) host: Arc<Host>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) draining: AtomicBool,
    pub(crate) ready_at: Instant,
    /// Completion requests that arrived (for `crash_after`).
    pub(crate) arrivals: AtomicU64,
    /// Streaming requests started (for `crash_mid_stream_after`).
    pub(crate) streams: AtomicU64,
    pub(crate) next_id: AtomicU64,
    pub(crate) rng: Mutex<ChaCha8Rng>,
    pub(crate) created: u64,
}

impl Shared {
    pub(crate) fn starting(&self) -> bool {
        Instant::now() < self.ready_at
    }
}

/// A bound, not yet serving, simulator.
pub struct SimServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl SimServer {
    /// Binds `addr` (port 0 picks a free one) and builds the engine.
    pub async fn bind(addr: SocketAddr, config: SimConfig) -> Result<SimServer, SimError> {
        let listener = TcpListener::bind(addr).await?;
        let engine = Engine::new(config.engine.clone(), config.profile.clone(), config.seed);
        let recorder = Recorder::new(config.flavor, config.engine.max_model_len);
        let host = Arc::new(Host::new(engine, recorder, config.speed));
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            faults: Mutex::new(config.faults.clone()),
            draining: AtomicBool::new(false),
            ready_at: Instant::now() + config.startup_delay,
            arrivals: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed ^ 0xFA17)),
            created,
            host,
            config,
        });
        Ok(SimServer { listener, shared })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, SimError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains, and waits for open
    /// connections up to the grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
        let SimServer { listener, shared } = self;
        let engine_task = tokio::spawn(shared.host.clone().run());
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors or similar: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(shared, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        shared.draining.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: waiting for open connections");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(shared.config.shutdown_grace) => {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
        }
        engine_task.abort();
        Ok(())
    }
}

/// Raises the soft open-files limit to the hard limit (1,000 streams need 1,000 sockets); returns
/// the new soft limit.
pub fn raise_nofile_limit() -> Result<u64, SimError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let sglang = shared.config.flavor == Flavor::Sglang;
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/chat/completions") => {
            super::completion::handle(shared, Endpoint::Chat, req).await
        }
        (Method::POST, "/v1/completions") => {
            super::completion::handle(shared, Endpoint::Completions, req).await
        }
        (Method::GET, "/health") => health(&shared),
        (Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &models_json(
                &shared.config.model,
                shared.created,
                shared.config.engine.max_model_len,
            ),
        ),
        (Method::GET, "/metrics") => metrics(&shared),
        (Method::GET, "/admin/faults") => {
            let faults = shared.faults.lock().clone();
            json_response(StatusCode::OK, &json!(faults))
        }
        (Method::POST, "/admin/faults") => admin_faults(&shared, req).await,
        (Method::POST, "/admin/drain") => {
            shared.draining.store(true, Ordering::SeqCst);
            tracing::info!("draining: new requests get 503");
            let running = shared.host.with_core(|c| c.engine.stats());
            json_response(
                StatusCode::OK,
                &json!({"draining": true, "running": running.running, "waiting": running.waiting}),
            )
        }
        (Method::GET, "/server_info" | "/get_server_info") if sglang => {
            json_response(StatusCode::OK, &server_info(&shared))
        }
        (Method::GET, "/model_info" | "/get_model_info") if sglang => json_response(
            StatusCode::OK,
            &json!({
                "served_model_name": shared.config.model,
                "is_generation": true,
                "max_context_length": shared.config.engine.max_model_len,
            }),
        ),
        (Method::GET, "/get_load") if sglang => {
            let s = shared.host.with_core(|c| c.engine.stats());
            let tokens = u64::from(s.used_blocks) * u64::from(s.block_size);
            json_response(
                StatusCode::OK,
                &json!({
                    "load": s.running + s.waiting,
                    "num_reqs": s.running + s.waiting,
                    "num_waiting_reqs": s.waiting,
                    "num_tokens": tokens,
                }),
            )
        }
        (_, path) => error_response(&ApiError::new(404, format!("no route for {path}"))),
    }
}

fn health(shared: &Shared) -> Response<Body> {
    let failing = shared.starting()
        || shared.draining.load(Ordering::SeqCst)
        || shared.faults.lock().fail_health;
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn metrics(shared: &Shared) -> Response<Body> {
    let model = ServedModel {
        model: shared.config.model.clone(),
        max_num_seqs: shared.config.engine.max_num_seqs,
        enable_prefix_caching: shared.config.engine.enable_prefix_caching,
    };
    let text = shared
        .host
        .with_core(|c| render(&model, &c.engine.stats(), &c.recorder));
    let mut resp = Response::new(full(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn server_info(shared: &Shared) -> Value {
    let c = &shared.config;
    json!({
        "served_model_name": c.model,
        "version": concat!("infergate-sim ", env!("CARGO_PKG_VERSION")),
        "max_total_num_tokens": u64::from(c.engine.num_gpu_blocks) * u64::from(c.engine.block_size),
        "max_running_requests": c.engine.max_num_seqs,
        "chunked_prefill_size": c.engine.max_num_batched_tokens,
        "page_size": c.engine.block_size,
        "context_length": c.engine.max_model_len,
        "disable_radix_cache": !c.engine.enable_prefix_caching,
        "profile": c.profile.name,
    })
}

async fn admin_faults(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let mut faults = shared.faults.lock();
    match faults.apply_patch(&body) {
        Ok(()) => {
            tracing::info!(faults = ?*faults, "faults updated");
            json_response(StatusCode::OK, &json!(*faults))
        }
        Err(e) => error_response(&ApiError::bad_request(e.to_string(), None)),
    }
}

/// Reads a whole request body, up to [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            format!("request body over {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("could not read the body: {e}"),
            None,
        )),
    }
}

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An OpenAI-shaped error response.
pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

/// A uniform draw in `0..1` from the fault generator.
pub(crate) fn roll(shared: &Shared) -> f64 {
    shared.rng.lock().random::<f64>()
}
