//! A tiny scriptable model server for the gateway's end-to-end tests: the faults `infergate sim`
//! does not script (dying mid-stream at a chosen chunk, 503 answers, failing scrapes, a reported
//! saturation), in-process on 127.0.0.1.
//!
//! Behaviour per request comes from the header `x-test`: `stream-die` (two chunks, then the
//! connection is cut), `slow` (chunks 100 ms apart), `status-503`, `chunked-json` (the normal
//! answer in two frames of unknown length, chunked on the wire), `hang` (no answer for a minute);
//! otherwise a normal answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Shared, adjustable state of one fake upstream.
#[derive(Default)]
pub struct State {
    /// Chat/completion requests received.
    pub requests: AtomicUsize,
    /// Bodies received, in order.
    pub bodies: Mutex<Vec<Bytes>>,
    /// `/metrics` answers 500 while set.
    pub metrics_fail: AtomicBool,
    /// Requests waiting and KV use reported on `/metrics`.
    pub waiting: Mutex<(f64, f64)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream on 127.0.0.1:0 on the current runtime.
pub async fn start() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let state = Arc::new(State::default());
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(answer(st, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, state, task }
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .expect("response")
}

/// The answer to a request that does not stream.
pub const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from upstream"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;

pub const CHUNKS: [&str; 3] = ["Hello", " from", " upstream"];

fn sse_chunk(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}],\"usage\":null}}\n\n"
    ))
}

async fn answer(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        if st.metrics_fail.load(Ordering::SeqCst) {
            return full(500, "text/plain", "broken");
        }
        let (waiting, kv) = *st.waiting.lock().expect("lock");
        return full(
            200,
            "text/plain; version=0.0.4",
            format!(
                "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
                 # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} 1\n\
                 # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
            ),
        );
    }
    let mode = req
        .headers()
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.requests.fetch_add(1, Ordering::SeqCst);
    st.bodies.lock().expect("lock").push(body.clone());
    if mode == "hang" {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if mode == "status-503" {
        return full(503, "application/json", r#"{"error":{"message":"busy"}}"#);
    }
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(false);
    if mode == "chunked-json" {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (head, tail) = ANSWER.split_at(ANSWER.len() / 2);
        for part in [head, tail] {
            let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(part.as_bytes()))));
        }
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .expect("response");
    }
    if !stream {
        return full(200, "application/json", ANSWER);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let delay = if mode == "slow" { 100 } else { 5 };
        for (i, c) in CHUNKS.iter().enumerate() {
            if mode == "stream-die" && i == 2 {
                let _ = tx.send(Err(std::io::Error::other("pod killed"))).await;
                return;
            }
            if tx.send(Ok(Frame::data(sse_chunk(c)))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let usage = Bytes::from_static(
            b"data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\ndata: [DONE]\n\n",
        );
        let _ = tx.send(Ok(Frame::data(usage))).await;
    });
    let body = ChannelBody(rx).boxed();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(body)
        .expect("response")
}

/// A body fed by a channel: each message is one frame (or the error that cuts the connection).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}
