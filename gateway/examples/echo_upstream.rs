//! A trivial upstream for measuring the proxy's own overhead (scripts/bench-proxy.sh).
//!
//! `echo_upstream [ADDR]` (default 127.0.0.1:0) prints `infergate sim listening on http://ADDR` and
//! answers:
//! - `GET /metrics`: a tiny vLLM-style page (an idle engine), so the gateway's scraper is happy;
//! - a POST whose body has `"stream":true`: an SSE stream of `chunks` events (default 20, or the
//!   `x-chunks` header) `interval_ms` apart (default 50, or `x-interval-ms`), each carrying the
//!   send time in nanoseconds since the Unix epoch (`{"t":...}`), then `[DONE]`;
//! - any other request: the same 1 KiB JSON answer, after reading the body.
//!
//! A request's `x-bench-id` header (bench_client's `rate` numbers its requests) comes back on the
//! answer, first among its headers, so a loopback capture can pair each answer with its request.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

enum Out {
    Full(Option<Bytes>),
    Stream(Sse),
}

/// An SSE answer that makes its own events: `left` more, one per tick of `tick`, then `[DONE]`.
/// The answer's connection task polls it, so an event costs one timer wake-up (no task and
/// channel per stream): the upstream's CPU per event is part of what the benchmark's machine
/// spends besides the proxy, so it is kept small.
struct Sse {
    tick: tokio::time::Interval,
    left: u64,
    done: bool,
}

impl Sse {
    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        if self.left == 0 {
            if self.done {
                return std::task::Poll::Ready(None);
            }
            self.done = true;
            return std::task::Poll::Ready(Some(Bytes::from_static(b"data: [DONE]\n\n")));
        }
        std::task::ready!(self.tick.poll_tick(cx));
        self.left -= 1;
        let ev = format!("data: {{\"t\":{}}}\n\n", now_nanos());
        std::task::Poll::Ready(Some(Bytes::from(ev)))
    }
}

impl hyper::body::Body for Out {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Out::Full(b) => std::task::Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Stream(sse) => sse.poll_event(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    /// A JSON answer's exact length, so that it goes out with a Content-Length, as vLLM's and
    /// SGLang's do (their JSON answers are whole FastAPI responses). Without it hyper sent it
    /// chunked, and nginx, which passes chunks on as they come, made three writes of it.
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Out::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Out::Stream(_) => http_body::SizeHint::default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Out::Full(None))
    }
}

fn answer_1k() -> Bytes {
    let head = r#"{"id":"cmpl-1","object":"chat.completion","model":"m","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30},"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":""#;
    let tail = r#""}}]}"#;
    let fill = 1024 - head.len() - tail.len();
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn header_num(req: &Request<Incoming>, name: &str, default: u64) -> u64 {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(req: Request<Incoming>, body_1k: Bytes) -> Response<Out> {
    if req.uri().path() == "/metrics" {
        let page = "vllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:num_requests_running{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0\n";
        return Response::new(Out::Full(Some(Bytes::from_static(page.as_bytes()))));
    }
    let id = req.headers().get("x-bench-id").cloned();
    let chunks = header_num(&req, "x-chunks", 20);
    let interval = Duration::from_millis(header_num(&req, "x-interval-ms", 50));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    if !stream {
        let mut resp = Response::new(Out::Full(Some(body_1k)));
        if let Some(id) = id {
            resp.headers_mut().insert("x-bench-id", id);
        }
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("static"));
        return resp;
    }
    // The first tick is at once: the first event leaves with the head, the rest `interval` apart.
    let sse = Sse {
        tick: tokio::time::interval(interval),
        left: chunks,
        done: false,
    };
    let mut resp = Response::new(Out::Stream(sse));
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("static"));
    resp
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    // A deep accept queue: the SSE benchmark opens 1,000 connections within 50 ms, and a full
    // queue (the default here is 128) drops SYNs, which the client retries after a whole second.
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!(
        "infergate sim listening on http://{}",
        listener.local_addr()?
    );
    let body_1k = answer_1k();
    debug_assert_eq!(body_1k.len(), 1024);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body_1k = body_1k.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let b = body_1k.clone();
                async move { Ok::<_, Infallible>(serve(req, b).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
