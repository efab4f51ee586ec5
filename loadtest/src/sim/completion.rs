//! One completion request, from arrival to its last byte: faults, validation, admission into the
//! engine, then either a server-sent-event stream or one JSON response.
//!
//! Output text is filler: each generated token is a space and three letters, which the simulator's
//! tokenizer counts as exactly one token, so re-sending an answer in a later turn costs what it
//! should.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

use super::api::{ApiError, CompletionBody, Endpoint, ResponseMeta, SSE_DONE, Usage, sse_event};
use super::engine::{AddError, EngineRequest, RequestId};
use super::faults::FaultAction;
use super::host::{AbortGuard, Delivery, SubmitError};
use super::server::{Body, Shared, error_response, json_response, read_body, roll};
use super::tokens::filler_text;

/// Handles `POST /v1/chat/completions` or `/v1/completions`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<Body> {
    if shared.starting() {
        return error_response(&ApiError::new(503, "the server is starting"));
    }
    if shared.draining.load(Ordering::SeqCst) {
        return error_response(&ApiError::new(503, "the server is draining"));
    }
    let nth = shared.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
    let faults = shared.faults.lock().clone();
    match faults.decide(nth, roll(&shared), roll(&shared)) {
        FaultAction::Proceed => {}
        FaultAction::Error => {
            return error_response(&ApiError::new(500, "injected fault: internal error"));
        }
        FaultAction::Hang => {
            tracing::debug!(nth, "injected fault: hanging");
            std::future::pending::<()>().await;
        }
        FaultAction::Crash => {
            tracing::error!(
                nth,
                "injected fault: crashing after {:?} requests",
                faults.crash_after
            );
            std::process::exit(1);
        }
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let bytes = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    match admit(&shared, endpoint, &bytes) {
        Ok(admitted) if admitted.stream => stream_response(&shared, admitted, &faults),
        Ok(admitted) => whole_response(admitted).await,
        Err(e) => error_response(&e),
    }
}

struct Admitted {
    meta: ResponseMeta,
    id: RequestId,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u32,
    rx: mpsc::Receiver<Delivery>,
    guard: AbortGuard,
}

/// Parses, validates and queues the request.
fn admit(shared: &Arc<Shared>, endpoint: Endpoint, bytes: &[u8]) -> Result<Admitted, ApiError> {
    let body = CompletionBody::parse(bytes)?;
    if body.model != shared.config.model {
        return Err(ApiError::new(
            404,
            format!("The model `{}` does not exist.", body.model),
        ));
    }
    body.validate(endpoint)?;
    let prompt = body.prompt_tokens();
    let max_model_len = shared.config.engine.max_model_len;
    let max_tokens = match body.requested_max_tokens() {
        Some(n) => n,
        // As vLLM: whatever room the context leaves (at least 1, so an over-long prompt is refused
        // below with the context-length message).
        None => max_model_len.saturating_sub(prompt.len()).max(1) as u32,
    };
    if max_tokens == 0 {
        return Err(ApiError::bad_request(
            "max_tokens must be at least 1, got 0.",
            Some("max_tokens"),
        ));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let prompt_tokens = prompt.len() as u32;
    let req = EngineRequest {
        id,
        prompt_tokens: prompt,
        max_tokens,
        ignore_eos: body.ignore_eos,
        min_tokens: body.min_tokens.unwrap_or(0),
    };
    let rx = match shared.host.submit(req, shared.config.max_waiting) {
        Ok((_, rx)) => rx,
        Err(SubmitError::Overloaded { waiting }) => {
            return Err(ApiError::new(
                503,
                format!("the server is overloaded: {waiting} requests are waiting"),
            ));
        }
        Err(SubmitError::Rejected(e)) => {
            let param = match e {
                AddError::ContextTooLong { .. } | AddError::ExceedsKvCache { .. } => {
                    Some("max_tokens")
                }
                AddError::EmptyPrompt => Some("prompt"),
                AddError::ZeroMaxTokens => Some("max_tokens"),
                AddError::DuplicateId(_) => None,
            };
            return Err(ApiError::bad_request(e.to_string(), param));
        }
    };
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    Ok(Admitted {
        meta: ResponseMeta {
            endpoint,
            id: format!("{prefix}-sim{id:016x}"),
            created: shared.created,
            model: shared.config.model.clone(),
        },
        id,
        stream: body.stream,
        include_usage: body.include_usage(),
        prompt_tokens,
        rx,
        guard: AbortGuard::new(shared.host.clone(), id),
    })
}

/// Filler text for tokens `from..from + n` of request `id`.
fn output_text(id: RequestId, from: u32, n: u32) -> String {
    filler_text(n as usize, id.wrapping_mul(1_000_003) ^ u64::from(from))
}

async fn whole_response(mut a: Admitted) -> Response<Body> {
    let mut text = String::new();
    let mut generated = 0;
    while let Some(d) = a.rx.recv().await {
        text.push_str(&output_text(a.id, generated, d.tokens));
        generated += d.tokens;
        if let Some(reason) = d.finished {
            a.guard.disarm();
            let usage = Usage {
                prompt_tokens: a.prompt_tokens,
                completion_tokens: generated,
            };
            return json_response(StatusCode::OK, &a.meta.full_response(&text, reason, usage));
        }
    }
    error_response(&ApiError::new(503, "the request was dropped by the engine"))
}

struct StreamState {
    a: Admitted,
    generated: u32,
    frames: VecDeque<Bytes>,
    done: bool,
    /// This stream is the one that crashes the process, right after its first token.
    crash: bool,
}

fn stream_response(
    shared: &Arc<Shared>,
    a: Admitted,
    faults: &super::faults::Faults,
) -> Response<Body> {
    let nth_stream = shared.streams.fetch_add(1, Ordering::SeqCst) + 1;
    let crash = faults.crash_mid_stream_after == Some(nth_stream);
    let mut frames = VecDeque::new();
    if let Some(role) = a.meta.role_chunk() {
        frames.push_back(Bytes::from(sse_event(&role)));
    }
    let state = StreamState {
        a,
        generated: 0,
        frames,
        done: false,
        crash,
    };
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.frames.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(frame)), st));
            }
            if st.done {
                return None;
            }
            if st.crash && st.generated > 0 {
                tracing::error!("injected fault: crashing in the middle of a stream");
                std::process::exit(1);
            }
            match st.a.rx.recv().await {
                Some(d) => st.push(d),
                // The engine dropped it (shutdown): end the stream without [DONE].
                None => st.done = true,
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(events).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

impl StreamState {
    fn push(&mut self, d: Delivery) {
        let text = output_text(self.a.id, self.generated, d.tokens);
        self.generated += d.tokens;
        let chunk = self.a.meta.text_chunk(&text, d.finished);
        self.frames.push_back(Bytes::from(sse_event(&chunk)));
        if d.finished.is_some() {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.a.guard.disarm();
        if self.a.include_usage {
            let usage = self.a.meta.usage_chunk(Usage {
                prompt_tokens: self.a.prompt_tokens,
                completion_tokens: self.generated,
            });
            self.frames.push_back(Bytes::from(sse_event(&usage)));
        }
        self.frames
            .push_back(Bytes::from_static(SSE_DONE.as_bytes()));
        self.done = true;
    }
}
