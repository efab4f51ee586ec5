//! The answer's body: either made by the gateway, or the upstream's passed through and observed.
//!
//! [`ObservedBody`] hands each upstream frame on as it arrives (no buffering, no re-framing) and
//! looks at it after the fact: the first non-empty frame is the time to first token; SSE frames
//! go through the usage watcher; a small JSON body's frames are kept (as refcounted `Bytes`, no
//! copy) to read its `usage` at the end. It also decides how the request ends:
//! - the upstream body ends: success (or failure, for a 5xx) for outlier detection;
//! - the upstream fails mid-body: for SSE, the client gets an OpenAI error event and `[DONE]`, then
//!   a clean end; otherwise the error aborts the client's connection (a truncated JSON body must
//!   not look complete);
//! - the client leaves (the body is dropped unfinished): the upstream request is dropped with it,
//!   which closes the upstream connection and so cancels the generation; counted as status 499.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use super::error::sse_error_events;
use super::upstream::{AnswerBody, Lease, UpstreamError};
use super::usage::{SseUsageWatcher, Usage, read_usage};
use crate::pool::InflightGuard;
use crate::telemetry::{ModelMetrics, PoolMetrics};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest non-streaming body whose `usage` is read.
const MAX_USAGE_BODY: usize = 64 * 1024;

/// How much of a non-stream answer is read ahead before its head is passed on.
const PREFETCH_LIMIT: usize = 64 * 1024;

/// The body of every answer on the data port.
pub enum GatewayBody {
    /// Made by the gateway (errors, `/v1/models`).
    Full(Option<Bytes>),
    /// The upstream's.
    Upstream(Box<ObservedBody>),
}

impl GatewayBody {
    pub fn full(data: Bytes) -> Self {
        GatewayBody::Full(Some(data))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBody::Upstream(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(data) => data.is_none(),
            GatewayBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Upstream(b) => b.size_hint(),
        }
    }
}

/// What is watched in the body.
enum Watch {
    Sse(SseUsageWatcher),
    /// Frames of a small JSON body, kept until the end.
    Json {
        frames: Vec<Bytes>,
        len: usize,
    },
    Nothing,
}

/// Everything needed to account for the request when its answer ends.
pub struct Accounting {
    pub started: Instant,
    pub model: Arc<ModelMetrics>,
    pub pool: Arc<PoolMetrics>,
    pub status: u16,
    pub guard: Option<InflightGuard>,
}

/// The upstream's body, passed through and observed.
pub struct ObservedBody {
    inner: AnswerBody,
    /// What [`ObservedBody::prefetch`] read ahead (`None`: the end), passed on first.
    ahead: VecDeque<Option<Result<Frame<Bytes>, UpstreamError>>>,
    watch: Watch,
    account: Accounting,
    /// The upstream connection, handed back when the body ends cleanly; otherwise dropped with
    /// the body, which closes it (a failed body is finished, so it never reaches a clean end).
    lease: Option<Lease>,
    first_byte: bool,
    finished: bool,
}

impl ObservedBody {
    /// Observes `inner`; `sse` when the upstream answered `text/event-stream`, `json_len` the
    /// Content-Length of a JSON answer (or `Some(0)` when JSON of unknown length).
    pub fn new(inner: AnswerBody, sse: bool, json_len: Option<u64>, account: Accounting) -> Self {
        let watch = if sse {
            Watch::Sse(SseUsageWatcher::new())
        } else if json_len.is_some_and(|n| n as usize <= MAX_USAGE_BODY) {
            Watch::Json {
                frames: Vec::new(),
                len: 0,
            }
        } else {
            Watch::Nothing
        };
        ObservedBody {
            inner,
            ahead: VecDeque::new(),
            watch,
            account,
            lease: None,
            first_byte: false,
            finished: false,
        }
    }

    /// Holds the connection `inner` arrives on until the body's clean end.
    pub fn lending(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The upstream body has ended cleanly, at `now`: its connection may carry another request.
    fn release(&mut self, now: Instant) {
        if let Some(lease) = self.lease.take()
            && let Some(conn) = self.inner.take_idle()
        {
            lease.release(conn, now);
        }
    }

    /// The clean end: the connection handed back and the request accounted for, with one read
    /// of the clock for both.
    fn end_cleanly(&mut self) {
        let now = Instant::now();
        self.release(now);
        let status = self.account.status;
        self.finish_at(status, status < 500, now);
    }

    /// Reads the upstream's body ahead, up to its end or [`PREFETCH_LIMIT`] bytes, to be passed
    /// on first. Why: hyper writes the response head on its own when the body is not ready at
    /// once, and a chunked body's end on its own when it learns of it after the last data; the
    /// upstream's body arrives a moment after its head. Read ahead, a small answer leaves in one
    /// `writev` with an exact Content-Length instead of three. Only for answers whose body
    /// follows the head at once (not SSE, where events may be seconds apart and must pass on
    /// one by one); past the limit the rest streams through as before.
    pub async fn prefetch(&mut self) {
        let mut len = 0;
        while len < PREFETCH_LIMIT && !self.inner.is_end_stream() {
            let next = self.inner.frame().await;
            let data = match &next {
                Some(Ok(frame)) => frame.data_ref().map(|d| d.len()),
                _ => None,
            };
            self.ahead.push_back(next);
            match data {
                Some(n) => len += n,
                None => break, // the end, an error or trailers: nothing more to wait for
            }
        }
    }

    /// Whether nothing but the end is left to pass on.
    fn at_end(&self) -> bool {
        match self.ahead.front() {
            Some(next) => next.is_none(),
            None => self.inner.is_end_stream(),
        }
    }

    fn observe(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        if !self.first_byte {
            self.first_byte = true;
            self.account
                .model
                .ttft
                .observe(self.account.started.elapsed().as_secs_f64());
        }
        match &mut self.watch {
            Watch::Sse(w) => w.feed(data),
            Watch::Json { frames, len } => {
                *len += data.len();
                if *len > MAX_USAGE_BODY {
                    self.watch = Watch::Nothing;
                } else {
                    frames.push(data.clone());
                }
            }
            Watch::Nothing => {}
        }
    }

    fn usage(&self) -> Option<Usage> {
        match &self.watch {
            Watch::Sse(w) => w.usage(),
            Watch::Json { frames, .. } => match frames.as_slice() {
                [one] => read_usage(one),
                many => read_usage(&many.concat()),
            },
            Watch::Nothing => None,
        }
    }

    /// Records the request's end once: `status` as counted, `ok` for outlier detection.
    fn finish(&mut self, status: u16, ok: bool) {
        self.finish_at(status, ok, Instant::now());
    }

    fn finish_at(&mut self, status: u16, ok: bool, now: Instant) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let a = &mut self.account;
        a.model.answered(status);
        a.model
            .duration
            .observe(now.saturating_duration_since(a.started).as_secs_f64());
        if let Some(u) = self.usage() {
            let a = &self.account;
            a.model.prompt_tokens.inc_by(u.prompt_tokens);
            a.model.completion_tokens.inc_by(u.completion_tokens);
        }
        if let Some(guard) = self.account.guard.take() {
            if ok {
                guard.success();
            } else {
                guard.failure();
            }
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let next = match this.ahead.pop_front() {
            Some(next) => next,
            None => ready!(Pin::new(&mut this.inner).poll_frame(cx)),
        };
        match next {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.observe(data);
                }
                // The server may stop polling once the length is reached: account now.
                if this.at_end() {
                    this.end_cleanly();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.account.pool.upstream_error("stream");
                let status = this.account.status;
                tracing::warn!(error = %e, "upstream failed mid-answer");
                if let Watch::Sse(w) = &this.watch {
                    let event = sse_error_events(
                        &format!("the model server failed mid-stream: {e}"),
                        w.trailing_newlines(),
                    );
                    this.finish(status, false);
                    Poll::Ready(Some(Ok(Frame::data(event))))
                } else {
                    this.finish(status, false);
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            }
            None => {
                this.end_cleanly();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            return SizeHint::default();
        }
        let ahead: u64 = self
            .ahead
            .iter()
            .map(|next| match next {
                Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => 0,
            })
            .sum();
        // An ended chunked body does not know its size is now zero: say it. Its end may also be
        // in `ahead` already (prefetched; a chunked upstream body knows its end only once polled
        // past it), and without this a whole answer read ahead would still go out chunked.
        let ended = matches!(self.ahead.back(), Some(None)) || self.inner.is_end_stream();
        let inner = if ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + ahead);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if !self.finished {
            // The client left before the end: the upstream request is dropped with `inner`.
            let guard = self.account.guard.take();
            self.finish(499, true);
            drop(guard);
        }
    }
}
