//! End-to-end tests of `infergate gateway` over real processes on 127.0.0.1: the gateway binary in
//! front of scriptable upstreams (tests/gateway_support/upstream.rs) and of `infergate sim`.

mod common;
#[path = "gateway_support/upstream.rs"]
mod upstream;

use bytes::Bytes;
use common::{ConfigFile, Proc};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn endpoint(&self) -> String {
        self.headers
            .get("x-infergate-endpoint")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

async fn send_with(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

async fn post(url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Answer {
    send_with(&client(), "POST", url, body, headers).await
}

async fn get(url: &str) -> Answer {
    send_with(&client(), "GET", url, Bytes::new(), &[]).await
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}],  "max_tokens": 8}"#;
const CHAT_STREAM: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#;

/// A config file for one pool `p` serving `m` over `endpoints`, with short test timings.
fn write_config(name: &str, endpoints: &[String], extra_gateway: &str) -> ConfigFile {
    write_config_with_limits(
        name,
        endpoints,
        "{ max_body_bytes: 65536, first_byte_timeout: 5s }",
        extra_gateway,
    )
}

/// [`write_config`] with its own `gateway.limits` (a YAML flow mapping).
fn write_config_with_limits(
    name: &str,
    endpoints: &[String],
    limits: &str,
    extra_gateway: &str,
) -> ConfigFile {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        r#"gateway:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  limits: {limits}
  scrape: {{ interval: 50ms, timeout: 200ms, stale_after: 200ms, unready_after: 600ms }}
  outlier: {{ consecutive_failures: 2, base_ejection: 30s }}
{extra_gateway}
pools:
  - name: p
    models: [m]
    flavor: vllm
    discovery: {{ static: {{ endpoints: [{list}] }} }}
"#
    );
    ConfigFile::new(name, &yaml)
}

fn spawn_gateway(config: &std::path::Path) -> Proc {
    let config = config.to_str().expect("utf-8 path").to_string();
    tokio::task::block_in_place(|| {
        Proc::spawn(&["gateway", "--config", &config], &["gateway", "admin"])
    })
}

/// Polls the admin `/metrics` until `pred` holds (at most 10 s); returns the last page.
async fn metrics_until(gw: &Proc, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let url = format!("{}/metrics", gw.url("admin"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(&url).await.text();
        if pred(&page) {
            return page;
        }
        if Instant::now() > deadline {
            panic!("metrics never showed {what}:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
/// A gateway (config `extra_gateway`) in front of one upstream whose engine reports a full queue
/// and KV cache (50 waiting, 99% KV), once the gateway has scraped that: every request is held.
async fn saturated_gateway(name: &str, extra_gateway: &str) -> (upstream::Upstream, Proc) {
    let up = upstream::start().await;
    *up.state.waiting.lock().expect("lock") = (50.0, 0.99);
    let cfg = write_config(name, &[up.url()], extra_gateway);
    let gw = spawn_gateway(&cfg);
    let l = up.addr.to_string();
    metrics_until(&gw, "the saturated load scraped", |p| {
        sample(
            p,
            &format!(r#"infergate_endpoint_waiting_requests{{pool="p",endpoint="{l}"}}"#),
        ) == Some(50.0)
    })
    .await;
    (up, gw)
}

fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `promtool check metrics` must not call the page unparsable (exit 1), when promtool exists.
fn promtool_accepts(page: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not on PATH: skipping its check");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool rejected the page: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_plain_streaming_and_h2c_requests_and_counts_them() {
    let up = upstream::start().await;
    let cfg = write_config("basic", &[up.url()], "");
    let gw = spawn_gateway(&cfg);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));

    // Non-streaming: the body reaches the upstream byte for byte; the answer comes back.
    let a = post(&api, CHAT, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "Hello from upstream"
    );
    assert_eq!(a.endpoint(), up.addr.to_string());
    assert_eq!(
        up.state.bodies.lock().expect("lock")[0],
        Bytes::from_static(CHAT.as_bytes()),
        "forwarded unchanged"
    );

    // A JSON answer of unknown length (chunked from the upstream) is read ahead whole and
    // leaves with its exact length, in one piece; its usage is counted all the same.
    let c = post(&api, CHAT, &[("x-test", "chunked-json")]).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.text(), upstream::ANSWER);
    assert_eq!(
        c.headers.get("content-length").map(|v| v.as_bytes()),
        Some(upstream::ANSWER.len().to_string().as_bytes()),
        "{:?}",
        c.headers
    );
    assert!(
        c.headers.get("transfer-encoding").is_none(),
        "{:?}",
        c.headers
    );

    // Streaming: every chunk, then [DONE].
    let s = post(&api, CHAT_STREAM, &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let text = s.text();
    for c in upstream::CHUNKS {
        assert!(text.contains(&format!("\"content\":\"{c}\"")), "{text}");
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // h2c (prior knowledge) on the same port.
    let h2 = send_with(&h2c_client(), "POST", &api, CHAT, &[]).await;
    assert_eq!(h2.status, 200, "{}", h2.text());

    // Embeddings are forwarded too, path and query kept.
    let e = post(
        &format!("{}/v1/embeddings?trace=1", gw.url("gateway")),
        r#"{"model":"m","input":["a","b"]}"#,
        &[],
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text());

    // /v1/models from the configuration.
    let models = get(&format!("{}/v1/models", gw.url("gateway"))).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "m");

    // The admin port: counters from the traffic, usage from bodies and streams, TTFT.
    let page = metrics_until(&gw, "five answered requests with usage", |p| {
        sample(
            p,
            r#"infergate_requests_total{pool="p",model="m",status="200"}"#,
        ) == Some(5.0)
            && sample(
                p,
                r#"infergate_completion_tokens_total{pool="p",model="m"}"#,
            ) == Some(15.0)
    })
    .await;
    assert_eq!(
        sample(
            &page,
            r#"infergate_requests_received_total{pool="p",model="m"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"infergate_prompt_tokens_total{pool="p",model="m"}"#
        ),
        Some(55.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"infergate_time_to_first_token_seconds_count{pool="p",model="m"}"#
        ),
        Some(5.0)
    );
    for name in [
        "infergate_request_duration_seconds_count",
        "infergate_picks_total",
        "infergate_pool_queued_requests",
        "infergate_pool_ready_endpoints",
        "infergate_endpoint_inflight_requests",
        "infergate_endpoint_ready",
        "infergate_endpoint_ejected",
        "infergate_scrape_errors_total",
        "infergate_retries_total",
    ] {
        assert!(page.contains(name), "{name} missing:\n{page}");
    }
    let page = metrics_until(&gw, "scraped endpoint load", |p| {
        p.contains("infergate_endpoint_kv_cache_usage{")
            && p.contains("infergate_scrape_age_seconds{")
    })
    .await;
    promtool_accepts(&page);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            get(&format!("{}{probe}", gw.url("admin"))).await.status,
            200
        );
    }
    let debug = get(&format!("{}/debug/pools", gw.url("admin"))).await;
    assert_eq!(debug.status, 200);
    assert!(debug.json().get("p").is_some(), "{}", debug.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_requests_with_openai_errors_without_bothering_the_upstream() {
    let up = upstream::start().await;
    let cfg = write_config("errors", &[up.url()], "");
    let gw = spawn_gateway(&cfg);
    let base = gw.url("gateway");
    let api = format!("{base}/v1/chat/completions");

    let check = |a: &Answer, status: u16, code: &str| {
        assert_eq!(a.status, status, "{}", a.text());
        let v = a.json();
        assert_eq!(v["error"]["code"], code, "{}", a.text());
        assert!(v["error"]["message"].is_string());
        assert!(v["error"]["type"].is_string());
        assert!(v["error"].get("param").is_some());
    };
    check(
        &post(&api, r#"{"model":"nope","messages":[]}"#, &[]).await,
        404,
        "model_not_found",
    );
    check(&post(&api, "{not json", &[]).await, 400, "invalid_json");
    check(
        &post(&api, r#"{"messages":[]}"#, &[]).await,
        400,
        "missing_required_parameter",
    );
    let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "x".repeat(70 * 1024));
    check(
        &post(&format!("{base}/v1/completions"), big, &[]).await,
        413,
        "request_too_large",
    );
    check(&get(&api).await, 405, "method_not_allowed");
    check(
        &post(&format!("{base}/v2/other"), "{}", &[]).await,
        404,
        "unknown_url",
    );
    assert_eq!(up.state.requests.load(Ordering::SeqCst), 0);
    // The gateway still serves good requests on the same port afterwards.
    assert_eq!(post(&api, CHAT, &[]).await.status, 200);
}

/// Sends a chunked POST over a raw connection, one chunk per write with a pause between, so
/// that the gateway reads the body as several frames; returns the answer's status line.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, chunks: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    for chunk in chunks {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("size");
        s.write_all(chunk).await.expect("chunk");
        s.write_all(b"\r\n").await.expect("crlf");
        s.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The gateway may answer 413 and close before the last chunk: a failed write is fine.
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_joined_byte_for_byte_and_bounded_without_a_length() {
    let up = upstream::start().await;
    let cfg = write_config("chunked", &[up.url()], "");
    let gw = spawn_gateway(&cfg);
    let addr = gw.addr("gateway");
    let (a, b) = CHAT.as_bytes().split_at(20);
    let (b, c) = b.split_at(30);
    let status = post_chunked(addr, "/v1/chat/completions", &[a, b, c]).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        up.state.bodies.lock().expect("lock")[0],
        Bytes::from_static(CHAT.as_bytes()),
        "joined unchanged"
    );
    // Just under the 64 KiB limit, in frames of several KiB: counted once each, it passes.
    let mut big = br#"{"model":"m","prompt":""#.to_vec();
    big.resize(63 * 1024 - 2, b'y');
    big.extend_from_slice(br#""}"#);
    let (a, rest) = big.split_at(25 * 1024);
    let (b, c) = rest.split_at(25 * 1024);
    let status = post_chunked(addr, "/v1/completions", &[a, b, c]).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        up.state.bodies.lock().expect("lock")[1],
        big,
        "joined unchanged"
    );
    // Over the 64 KiB limit with no Content-Length to refuse it early: 413 once it is read.
    let part = vec![b'x'; 30 * 1024];
    let status = post_chunked(
        addr,
        "/v1/completions",
        &[b"{\"prompt\":\"", &part, &part, &part],
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert_eq!(
        up.state.requests.load(Ordering::SeqCst),
        2,
        "the big one never left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_dying_mid_stream_ends_the_stream_with_an_error_event() {
    let up = upstream::start().await;
    let cfg = write_config("midstream", &[up.url()], "");
    let gw = spawn_gateway(&cfg);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    let a = post(&api, CHAT_STREAM, &[("x-test", "stream-die")]).await;
    assert_eq!(a.status, 200);
    let text = a.text();
    assert!(text.contains("\"content\":\"Hello\""), "{text}");
    let error_at = text.find("data: {\"error\":").expect("an SSE error event");
    let event = text[error_at + 6..].split("\n\n").next().expect("event");
    let v: serde_json::Value = serde_json::from_str(event).expect("error JSON");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains(upstream::CHUNKS[2]),
        "nothing after the failure"
    );
    metrics_until(&gw, "a stream error", |p| {
        sample(
            p,
            r#"infergate_upstream_errors_total{pool="p",kind="stream"}"#,
        ) == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_dead_endpoint_on_a_live_one() {
    let up = upstream::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let cfg = write_config("retry", &[dead.clone(), up.url()], "");
    let gw = spawn_gateway(&cfg);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    for _ in 0..6 {
        let a = post(&api, CHAT, &[]).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.endpoint(), up.addr.to_string());
    }
    let page = metrics_until(&gw, "a retry", |p| {
        sample(p, r#"infergate_retries_total{pool="p"}"#).is_some_and(|v| v >= 1.0)
    })
    .await;
    assert!(
        sample(
            &page,
            r#"infergate_upstream_errors_total{pool="p",kind="connect"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_another_endpoint_then_passed_on() {
    let a = upstream::start().await;
    let b = upstream::start().await;
    let cfg = write_config("retry503", &[a.url(), b.url()], "");
    let gw = spawn_gateway(&cfg);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    let r = post(&api, CHAT, &[("x-test", "status-503")]).await;
    // Both endpoints said 503: one retry (the only other endpoint), then the answer as it is.
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "busy");
    let tried = a.state.requests.load(Ordering::SeqCst) + b.state.requests.load(Ordering::SeqCst);
    assert_eq!(tried, 2);
    metrics_until(&gw, "one retry after a 503", |p| {
        sample(p, r#"infergate_retries_total{pool="p"}"#) == Some(1.0)
            && sample(
                p,
                r#"infergate_upstream_errors_total{pool="p",kind="status_503"}"#,
            ) == Some(2.0)
    })
    .await;
}

/// The two deadlines every request carries (on each worker's coarse timer, which fires up to
/// 100 ms late and never early): an upstream that sends nothing gets the client a 504 after
/// `first_byte_timeout`, not sooner, and is not retried (it may be working on the request); a
/// client that never finishes its request head is cut after `header_read_timeout`; one whose body
/// stalls gets a 408 after `body_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_a_504_and_a_stalled_client_is_cut() {
    let a = upstream::start().await;
    let b = upstream::start().await;
    let cfg = write_config_with_limits(
        "deadlines",
        &[a.url(), b.url()],
        "{ max_body_bytes: 65536, first_byte_timeout: 400ms, header_read_timeout: 400ms, body_read_timeout: 400ms }",
        "",
    );
    let gw = spawn_gateway(&cfg);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));

    // A head, part of its body, then silence: 408, then the close.
    let buf = send_then_read_to_close(
        gw.addr("gateway"),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .expect("a clean close");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert_eq!(
        a.state.requests.load(Ordering::SeqCst) + b.state.requests.load(Ordering::SeqCst),
        0,
        "nothing went upstream"
    );
    metrics_until(&gw, "the 408 counted, under no pool and no model", |p| {
        sample(
            p,
            r#"infergate_requests_total{pool="none",model="none",status="408"}"#,
        ) == Some(1.0)
    })
    .await;

    let sent = Instant::now();
    let r = post(&api, CHAT, &[("x-test", "hang")]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "a deadline never fires early: {:?}",
        sent.elapsed()
    );
    let tried = a.state.requests.load(Ordering::SeqCst) + b.state.requests.load(Ordering::SeqCst);
    assert_eq!(tried, 1, "a request that may be running is not sent twice");
    metrics_until(&gw, "the timeout counted", |p| {
        sample(
            p,
            r#"infergate_upstream_errors_total{pool="p",kind="timeout"}"#,
        ) == Some(1.0)
    })
    .await;
    // One timeout does not take the pool out of service: the next request is answered.
    let ok = post(&api, CHAT, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // Half a request head, then silence: the gateway closes the connection.
    let read = send_then_read_to_close(
        gw.addr("gateway"),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n",
    )
    .await;
    // Closed, with nothing or an error before the close (a reset is a close too); never a
    // proxied answer.
    if let Ok(buf) = read {
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains("200 OK"), "{text}");
    }
}

/// Sends `wire` on a new connection to `addr`, then reads what comes until the gateway closes
/// the connection; fails the test if it has not closed within 10 s.
async fn send_then_read_to_close(
    addr: std::net::SocketAddr,
    wire: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(wire).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("the gateway closed the stalled connection")?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_scrape_is_taken_out_of_rotation() {
    let a = upstream::start().await;
    let b = upstream::start().await;
    let cfg = write_config("scrape", &[a.url(), b.url()], "");
    let gw = spawn_gateway(&cfg);
    let (la, lb) = (a.addr.to_string(), b.addr.to_string());
    let age = |l: &str| format!(r#"infergate_scrape_age_seconds{{pool="p",endpoint="{l}"}}"#);
    metrics_until(&gw, "both endpoints scraped", |p| {
        sample(p, &age(&la)).is_some() && sample(p, &age(&lb)).is_some()
    })
    .await;
    a.state.metrics_fail.store(true, Ordering::SeqCst);
    let page = metrics_until(&gw, "endpoint a unready", |p| {
        sample(
            p,
            &format!(r#"infergate_endpoint_ready{{pool="p",endpoint="{la}"}}"#),
        ) == Some(0.0)
    })
    .await;
    assert!(
        sample(
            &page,
            &format!(r#"infergate_scrape_errors_total{{pool="p",endpoint="{la}"}}"#)
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"infergate_pool_ready_endpoints{pool="p"}"#),
        Some(1.0)
    );
    let before = a.state.requests.load(Ordering::SeqCst);
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    for _ in 0..6 {
        let r = post(&api, CHAT, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.endpoint(), lb);
    }
    assert_eq!(a.state.requests.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_queues_then_sheds() {
    let (up, gw) = saturated_gateway(
        "flow",
        "  flow: { saturation_queue: 5, saturation_kv: 0.9, max_queued: 8, queue_timeout: 1500ms, sheddable_timeout: 300ms }",
    )
    .await;
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));

    // Sheddable: refused with 429 after its short wait.
    let shed = post(&api, CHAT, &[("x-infergate-priority", "sheddable")]).await;
    assert_eq!(shed.status, 429, "{}", shed.text());
    assert_eq!(shed.json()["error"]["type"], "rate_limit_error");
    // Standard: 503 with Retry-After after the queue timeout.
    let started = Instant::now();
    let timed_out = post(&api, CHAT, &[]).await;
    assert_eq!(timed_out.status, 503, "{}", timed_out.text());
    assert!(timed_out.headers.contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(up.state.requests.load(Ordering::SeqCst), 0);

    // Held, visible in the queue gauge, then admitted once the endpoint has room.
    let held = tokio::spawn({
        let api = api.clone();
        async move { post(&api, CHAT, &[("x-infergate-priority", "critical")]).await }
    });
    metrics_until(&gw, "one queued request", |p| {
        sample(p, r#"infergate_pool_queued_requests{pool="p"}"#) == Some(1.0)
    })
    .await;
    *up.state.waiting.lock().expect("lock") = (0.0, 0.1);
    let admitted = held.await.expect("join");
    assert_eq!(admitted.status, 200, "{}", admitted.text());
    let page = metrics_until(&gw, "shed counts", |p| {
        sample(
            p,
            r#"infergate_shed_requests_total{pool="p",reason="timeout"}"#,
        ) == Some(2.0)
    })
    .await;
    assert_eq!(
        sample(
            &page,
            r#"infergate_requests_total{pool="p",model="m",status="429"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream_then_exits_zero() {
    let up = upstream::start().await;
    let cfg = write_config("drain", &[up.url()], "");
    let mut gw = spawn_gateway(&cfg);
    let data = gw.addr("gateway");
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    let readyz = format!("{}/readyz", gw.url("admin"));

    // A slow stream is under way...
    let req = Request::post(&api)
        .header("x-test", "slow")
        .body(Full::new(Bytes::from_static(CHAT_STREAM.as_bytes())))
        .expect("request");
    let resp = client().request(req).await.expect("head");
    assert_eq!(resp.status(), 200);
    let mut body: Incoming = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("a frame")
        .expect("ok frame")
        .into_data()
        .expect("data");
    assert!(String::from_utf8_lossy(&first).contains("Hello"));

    // ...when SIGTERM arrives.
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");

    // New connections are refused while the stream drains; the gateway reports not ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect_timeout(&data, Duration::from_millis(200)) {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(_) => panic!("the data port still accepts connections after SIGTERM"),
        }
    }
    if let Ok(Ok(resp)) = tokio::time::timeout(
        Duration::from_secs(2),
        client().request(
            Request::get(&readyz)
                .body(Full::new(Bytes::new()))
                .expect("req"),
        ),
    )
    .await
    {
        assert_eq!(resp.status(), 503, "/readyz while draining");
    }

    // The in-flight stream completes.
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("rest in time")
        .expect("rest")
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains(upstream::CHUNKS[2]), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");

    let status =
        tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(10))).expect("exited");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_field() {
    let config = ConfigFile::new(
        "bad",
        "gateway:\n  flow:\n    saturation_kv: 2.0\npools:\n  - name: p\n    models: [m]\n    discovery: { static: { endpoints: [\"http://127.0.0.1:1\"] } }\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["gateway", "--config"])
        .arg(&config.path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.flow.saturation_kv"), "{stderr}");
    assert!(
        stderr.contains(config.path.to_str().expect("utf-8")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_in_front_of_infergate_sim() {
    let sim = tokio::task::block_in_place(|| {
        Proc::spawn(&["sim", "--port", "0", "--model", "sim-m"], &["sim"])
    });
    let sim_url = sim.url("sim");
    let gw = tokio::task::block_in_place(|| {
        Proc::spawn(
            &[
                "gateway",
                "--model",
                "sim-m",
                "--endpoints",
                &sim_url,
                "--flavor",
                "vllm",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &["gateway", "admin"],
        )
    });
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    let body = r#"{"model":"sim-m","stream":true,"max_tokens":4,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]}"#;
    let s = post(&api, body, &[]).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert!(s.text().ends_with("data: [DONE]\n\n"), "{}", s.text());
    metrics_until(&gw, "usage from the sim's stream", |p| {
        sample(
            p,
            r#"infergate_completion_tokens_total{pool="default",model="sim-m"}"#,
        ) == Some(4.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_held_at_the_drain_timeout_gets_a_503() {
    let (_up, mut gw) = saturated_gateway(
        "drain-held",
        "  flow: { saturation_queue: 5, saturation_kv: 0.9, queue_timeout: 60s }\n  shutdown: { drain_timeout: 300ms }",
    )
    .await;
    let api = format!("{}/v1/chat/completions", gw.url("gateway"));
    let held = tokio::spawn(async move { post(&api, CHAT, &[]).await });
    metrics_until(&gw, "one queued request", |p| {
        sample(p, r#"infergate_pool_queued_requests{pool="p"}"#) == Some(1.0)
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered in time")
        .expect("join");
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.headers.contains_key("retry-after"));
    let status =
        tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(10))).expect("exited");
    assert!(status.success(), "exit status {status:?}");
}
