//! The HTTP data path. One request's life, as named phases ([`Proxy::handle`]):
//!
//! 1. **route**: path and method to an [`Api`] (404/405); `/v1/models` is answered here.
//! 2. **read**: the body, whole, up to `limits.max_body_bytes` (413, also from Content-Length
//!    before reading a byte).
//! 3. **facts**: the borrowed parse of what the picker needs ([`request::ParsedBody`]), the
//!    model's pool (404 `model_not_found`), the prompt's prefix hashes, the priority header.
//! 4. **admit**: the pool's flow control picks an endpoint now, or holds the request in the pool's
//!    queue until one frees up, or sheds it (429 sheddable, 503 + Retry-After otherwise).
//! 5. **forward**: the original bytes to the endpoint; connect errors and 502/503 are retried on
//!    another endpoint before anything reaches the client ([`forward`]).
//! 6. **respond**: the upstream's head, plus `x-infergate-endpoint`, and its body passed through
//!    and observed ([`body::ObservedBody`]) for TTFT, usage and how the request ends.
//!
//! Every request gets exactly one answer: a phase either returns the upstream's answer or a
//! [`ProxyError`], which becomes one OpenAI-shaped error. A request whose client leaves before
//! its answer ends is counted as status 499 and its upstream request is dropped (cancelled).

pub mod body;
pub mod error;
pub mod forward;
pub mod request;
pub mod route;
pub mod upstream;
pub mod usage;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use infergate_config::{Config, LimitsConfig, PrefixConfig, RetryConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coarse_timer::CoarseTimer;

use crate::flow::{Capacity, CapacitySignal, FlowControl, Shed, Urgency};
use crate::picker::{EndpointId, PickReason, Priority, PromptHasher, RequestFacts};
use crate::pool::{Endpoint, InflightGuard, Pool, PoolPick};
use crate::telemetry::{Metrics, ModelMetrics, PoolMetrics};

pub use body::GatewayBody;
pub use error::{ErrorKind, ErrorSource, ProxyError};
pub use route::{Api, Routes, Target};
pub use upstream::Upstreams;

/// The header naming the endpoint that served the request. A `HeaderName` made once: inserting
/// by `&str` parsed and validated the name again on every answer.
pub const ENDPOINT_HEADER: HeaderName = HeaderName::from_static("x-infergate-endpoint");

/// Suggested wait for a shed request.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An admission: the endpoint chosen and its in-flight guard.
pub struct Admitted {
    pub endpoint: Arc<Endpoint>,
    pub guard: InflightGuard,
    pub reason: PickReason,
}

/// Flow control's view of a pool: a pick that does not exclude anything.
pub struct PoolCapacity(pub Arc<Pool>);

impl Capacity for PoolCapacity {
    type Facts = RequestFacts;
    type Ticket = Admitted;

    fn try_admit(&self, facts: &RequestFacts) -> Option<Admitted> {
        match self.0.pick(facts, &[]) {
            PoolPick::Endpoint {
                endpoint,
                guard,
                reason,
            } => Some(Admitted {
                endpoint,
                guard,
                reason,
            }),
            PoolPick::Hold(_) => None,
        }
    }

    fn capacity_changed(&self) -> &CapacitySignal {
        self.0.capacity_changed()
    }
}

/// One pool as the data path sees it.
pub struct PoolRoute {
    pub pool: Arc<Pool>,
    pub flow: FlowControl<PoolCapacity>,
    pub metrics: Arc<PoolMetrics>,
}

/// The data path's shared state.
pub struct Proxy {
    routes: Routes,
    pools: Vec<PoolRoute>,
    /// Request metrics of each routed model, by [`Target::model`].
    model_metrics: Vec<Arc<ModelMetrics>>,
    /// For requests that never reached a pool (bad path, bad JSON, unknown model).
    unrouted: Arc<ModelMetrics>,
    unrouted_pool: Arc<PoolMetrics>,
    limits: LimitsConfig,
    retry: RetryConfig,
    prefix: PrefixConfig,
    budget: forward::RetryBudget,
}

/// The label used for requests that reached no pool.
pub const UNROUTED: &str = "none";

impl Proxy {
    /// The data path over `pools` (in the configuration's order).
    pub fn new(config: &Config, pools: Vec<PoolRoute>, metrics: &Metrics) -> Proxy {
        let routes = Routes::new(
            config
                .pools
                .iter()
                .map(|p| (p.name.as_str(), p.models.as_slice())),
        );
        let unrouted_pool = metrics.pool(UNROUTED);
        let unrouted = metrics.model(&unrouted_pool.name, UNROUTED);
        // A name routed twice leaves its first slot unused: counted as unrouted, never reached.
        let mut model_metrics = vec![unrouted.clone(); routes.len()];
        for (model, t) in routes.iter() {
            model_metrics[t.model] = metrics.model(&pools[t.pool].metrics.name, model);
        }
        let g = &config.gateway;
        Proxy {
            routes,
            pools,
            model_metrics,
            unrouted,
            unrouted_pool,
            limits: g.limits.clone(),
            retry: g.retry.clone(),
            prefix: g.picker.prefix.clone(),
            budget: forward::RetryBudget::new(g.retry.budget_ratio),
        }
    }

    pub fn pools(&self) -> &[PoolRoute] {
        &self.pools
    }

    /// Counts an answer the connection itself gave, before any request reached [`Proxy::handle`]
    /// (a malformed or oversized head, a broken or stalled body): like every answer made before
    /// a model is known, under the pool and model `none`, so that such traffic is seen.
    pub fn count_refused(&self, status: StatusCode) {
        self.unrouted.answered(status.as_u16());
    }

    /// Serves one request to its one answer, upstream through `upstreams`. A data-plane worker
    /// passes its own, so the request's upstream connection is driven by the same thread as its
    /// client connection (no cross-thread wake-ups per body chunk).
    pub async fn handle<B>(
        &self,
        upstreams: &Arc<Upstreams>,
        req: Request<B>,
    ) -> Response<GatewayBody>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut ctx = RequestCtx {
            started: Instant::now(),
            model: &self.unrouted,
            pool: &self.unrouted_pool,
            answered: false,
        };
        match self.serve(upstreams, req, &mut ctx).await {
            Ok(Answer::Upstream(resp)) => {
                ctx.answered = true;
                resp
            }
            Ok(Answer::Local(resp)) => {
                // `/v1/models` is not an inference request: not counted.
                ctx.answered = true;
                resp.map(GatewayBody::full)
            }
            Err(e) => {
                if e.source_side != ErrorSource::Downstream {
                    tracing::debug!(error = %e, "request failed");
                }
                let resp = e.to_response();
                ctx.answer(resp.status());
                resp.map(GatewayBody::full)
            }
        }
    }

    async fn serve<'a, B>(
        &'a self,
        upstreams: &Arc<Upstreams>,
        req: Request<B>,
        ctx: &mut RequestCtx<'a>,
    ) -> Result<Answer, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        // 1. route
        let api = Api::route(req.method(), req.uri().path())?;
        if api == Api::Models {
            return Ok(Answer::Local(json_response(self.routes.models_json())));
        }
        // 2. read
        let (parts, body) = req.into_parts();
        let body = read_body(&parts, body, &self.limits, upstreams.timer()).await?;
        // 3. facts
        let (target, facts) = self.facts(&parts, &body, ctx)?;
        let route = &self.pools[target];
        ctx.pool = &route.metrics;
        ctx.model.received.inc();
        self.budget.deposit();
        // 4. admit
        let urgency = Urgency {
            rank: facts.priority as u8,
            sheddable: facts.priority == Priority::Sheddable,
        };
        let (admitted, facts) = match route.flow.admit(facts, urgency).await {
            Ok(ok) => ok,
            Err((shed, _)) => {
                route.metrics.shed(shed.as_str());
                return Err(shed_error(shed, urgency));
            }
        };
        route.metrics.picked(admitted.reason);
        // 5. forward
        let (resp, lease, admitted) = self
            .forward(upstreams, route, &parts, &body, &facts, admitted)
            .await?;
        // 6. respond
        Ok(Answer::Upstream(respond(resp, lease, admitted, ctx).await))
    }

    /// The facts phase: the body's fields, the model's pool, the picker's facts.
    fn facts<'a>(
        &'a self,
        parts: &Parts,
        body: &[u8],
        ctx: &mut RequestCtx<'a>,
    ) -> Result<(usize, RequestFacts), ProxyError> {
        let parsed = request::ParsedBody::parse(body).map_err(|e| {
            ProxyError::new(
                ErrorKind::InvalidJson,
                format!("the request body is not valid JSON for this API: {e}"),
            )
        })?;
        let Some(model) = parsed.model.as_deref() else {
            return Err(
                ProxyError::new(ErrorKind::MissingField, "`model` is required").with_param("model"),
            );
        };
        let Some(target) = self.routes.target(model) else {
            return Err(ProxyError::new(
                ErrorKind::ModelNotFound,
                format!("the model `{model}` does not exist on this gateway"),
            )
            .with_param("model"));
        };
        ctx.model = &self.model_metrics[target.model];
        let mut hasher = PromptHasher::new(&self.prefix);
        for segment in &parsed.segments {
            hasher.feed(segment);
        }
        let priority = Priority::from_header(
            parts
                .headers
                .get(Priority::HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let facts = RequestFacts {
            model: model.to_string(),
            prompt_chars: hasher.chars(),
            prefix: hasher.finish(),
            lora: target.lora.clone(),
            priority,
            max_tokens: parsed.max_tokens.map(|n| n.min(u32::MAX as u64) as u32),
        };
        Ok((target.pool, facts))
    }

    /// The forward phase, with retries on other endpoints before the first answer byte. Every
    /// attempt sends the same borrowed request ([`upstream::Outgoing`]).
    async fn forward(
        &self,
        upstreams: &Arc<Upstreams>,
        route: &PoolRoute,
        parts: &Parts,
        body: &Bytes,
        facts: &RequestFacts,
        mut current: Admitted,
    ) -> Result<(Response<upstream::AnswerBody>, upstream::Lease, Admitted), ProxyError> {
        let outgoing = upstream::Outgoing {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            body,
        };
        let mut tried: Vec<EndpointId> = Vec::new();
        let mut retries = 0;
        loop {
            let outcome = forward::attempt(
                upstreams,
                &current.endpoint,
                &outgoing,
                self.limits.first_byte_timeout,
            )
            .await;
            let (failure, kind, answer) = match outcome {
                forward::Attempt::Answered(resp, lease)
                    if !forward::is_retryable_status(resp.status()) =>
                {
                    return Ok((resp, lease, current));
                }
                forward::Attempt::Answered(resp, lease) => {
                    let kind = if resp.status() == StatusCode::BAD_GATEWAY {
                        "status_502"
                    } else {
                        "status_503"
                    };
                    (None, kind, Some((resp, lease)))
                }
                forward::Attempt::Failed(e, kind) => (Some(e), kind, None),
            };
            route.metrics.upstream_error(kind);
            let retryable = failure.as_ref().is_none_or(|e| e.retryable);
            // Another endpoint, if the rules and the budget allow one.
            let next = if retryable && retries < self.retry.max_retries {
                tried.push(current.endpoint.id());
                match route.pool.pick(facts, &tried) {
                    PoolPick::Endpoint {
                        endpoint,
                        guard,
                        reason,
                    } if self.budget.withdraw() => Some(Admitted {
                        endpoint,
                        guard,
                        reason,
                    }),
                    _ => None,
                }
            } else {
                None
            };
            match (next, answer, failure) {
                (Some(next), _, _) => {
                    current.guard.failure();
                    retries += 1;
                    route.metrics.retries.inc();
                    route.metrics.picked(next.reason);
                    current = next;
                }
                // No other endpoint: the 502/503 answer is the answer.
                (None, Some((resp, lease)), _) => return Ok((resp, lease, current)),
                (None, None, Some(e)) => {
                    current.guard.failure();
                    return Err(e);
                }
                (None, None, None) => {
                    return Err(ProxyError::new(
                        ErrorKind::Internal,
                        "attempt without outcome",
                    ));
                }
            }
        }
    }
}

/// What `serve` produced.
enum Answer {
    /// The upstream's answer, accounted for by its body.
    Upstream(Response<GatewayBody>),
    /// Made by the gateway.
    Local(Response<Bytes>),
}

/// Per-request accounting that survives early returns and a dropped future. It borrows the
/// metrics from the [`Proxy`]; only an answer's body, which outlives the handler, holds `Arc`s
/// of them (every clone of a shared `Arc` writes a line that every worker writes).
struct RequestCtx<'a> {
    started: Instant,
    model: &'a Arc<ModelMetrics>,
    pool: &'a Arc<PoolMetrics>,
    answered: bool,
}

impl RequestCtx<'_> {
    fn answer(&mut self, status: StatusCode) {
        self.answered = true;
        self.model.answered(status.as_u16());
        self.model
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RequestCtx<'_> {
    fn drop(&mut self) {
        if !self.answered {
            // The client left while the request waited (queue or upstream head).
            self.answer(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST));
        }
    }
}

/// The read phase: the whole body, bounded in size (`limits.max_body_bytes`) and in how long it
/// may stall (`limits.body_read_timeout` between two frames: HTTP/2's bodies come here as they
/// arrive; HTTP/1's were read whole by the connection's loop, under the same bound). Most bodies
/// arrive as one frame: that frame's bytes are the body, no copy and no list of frames; more
/// frames are joined.
async fn read_body<B>(
    parts: &Parts,
    mut body: B,
    limits: &LimitsConfig,
    timer: &CoarseTimer,
) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let max = limits.max_body_bytes;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(ProxyError::body_too_large(max));
    }
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut len = 0;
    while !body.is_end_stream() {
        let within = limits.body_read_timeout;
        let next = timer.timeout(within, body.frame()).await;
        let Some(frame) = next.map_err(|_| ProxyError::body_stalled(within))? else {
            break;
        };
        let frame = frame.map_err(|e| {
            ProxyError::new(
                ErrorKind::BodyRead,
                format!("could not read the request body: {e}"),
            )
        })?;
        // Trailers carry nothing to forward in a JSON API: dropped.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > max {
            return Err(ProxyError::body_too_large(max));
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut j = BytesMut::with_capacity(len);
                j.extend_from_slice(&std::mem::take(&mut first));
                j.extend_from_slice(&data);
                joined = Some(j);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

fn shed_error(shed: Shed, urgency: Urgency) -> ProxyError {
    let why = match shed {
        Shed::QueueFull => "the pool is at capacity and its queue is full",
        Shed::Evicted => "the pool is at capacity and more urgent requests took the queue",
        Shed::Timeout => "the pool stayed at capacity for the whole wait",
        Shed::ShuttingDown => "the gateway is shutting down",
    };
    let kind = if urgency.sheddable && shed != Shed::ShuttingDown {
        ErrorKind::Shed
    } else {
        ErrorKind::Overloaded
    };
    ProxyError::new(kind, why).with_retry_after(RETRY_AFTER)
}

fn json_response(body: Bytes) -> Response<Bytes> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The respond phase: the upstream's head and its observed body (its first frame already read,
/// unless it is a stream: [`body::ObservedBody::prefetch`]).
async fn respond(
    resp: Response<upstream::AnswerBody>,
    lease: upstream::Lease,
    admitted: Admitted,
    ctx: &mut RequestCtx<'_>,
) -> Response<GatewayBody> {
    // Its hop-by-hop headers were left out when its head was read (`upstream::http1`).
    let (mut parts, incoming) = resp.into_parts();
    if let Some(v) = admitted.endpoint.label_header() {
        parts.headers.insert(ENDPOINT_HEADER, v.clone());
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let sse = content_type.starts_with("text/event-stream");
    let json_len = if content_type.starts_with("application/json") {
        Some(
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    } else {
        None
    };
    let account = body::Accounting {
        started: ctx.started,
        model: ctx.model.clone(),
        pool: ctx.pool.clone(),
        status: parts.status.as_u16(),
        guard: Some(admitted.guard),
    };
    let mut observed = body::ObservedBody::new(incoming, sse, json_len, account).lending(lease);
    // From here the body accounts for the request (also if the client leaves during the wait).
    ctx.answered = true;
    if !sse {
        observed.prefetch().await;
    }
    Response::from_parts(parts, GatewayBody::Upstream(Box::new(observed)))
}

#[cfg(test)]
mod tests;
