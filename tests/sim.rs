//! `infergate sim` over the real process: the API's shape, the engine's behaviour as `/metrics` and
//! clients see it, faults, drain, shutdown, and 1,000 concurrent streams. Engine properties in
//! virtual time are unit-tested in `loadtest/src/sim/engine_tests.rs`; these stay few and fast
//! (high `--speed`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Proc;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const MODEL: &str = "sim-llama-3-8b";
/// Every test finishes well inside this, or fails.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

fn sim(extra: &[&str]) -> Proc {
    let mut args = vec!["sim", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    Proc::spawn(&args, &["sim"])
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn build(addr: SocketAddr, method: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request")
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Reply, String> {
    let mut sender = connect(addr).await?;
    let resp = sender
        .send_request(build(addr, method, path, body))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, "").await.expect("GET")
}

/// A streamed response, event by event.
#[derive(Debug)]
struct Streamed {
    status: u16,
    /// `data:` payloads other than `[DONE]`, parsed.
    events: Vec<Value>,
    done: bool,
    /// The body ended with an error (the server went away mid-stream).
    broken: bool,
    /// Request sent to first non-empty content.
    ttft: Option<Duration>,
    first_content_at: Option<Instant>,
    ended_at: Instant,
}

impl Streamed {
    fn text(&self) -> String {
        self.events.iter().filter_map(content).collect()
    }
}

fn content(ev: &Value) -> Option<String> {
    let choice = ev.get("choices")?.get(0)?;
    choice
        .get("delta")
        .and_then(|d| d.get("content"))
        .or_else(|| choice.get("text"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn stream(addr: SocketAddr, path: &str, body: &str) -> Result<Streamed, String> {
    let mut sender = connect(addr).await?;
    let start = Instant::now();
    let resp = sender
        .send_request(build(addr, "POST", path, body))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Streamed {
        status,
        events: Vec::new(),
        done: false,
        broken: false,
        ttft: None,
        first_content_at: None,
        ended_at: start,
    };
    let mut buf = String::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => {
                out.broken = true;
                break;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(&data));
                while let Some(pos) = buf.find("\n\n") {
                    let event: String = buf.drain(..pos + 2).collect();
                    let Some(payload) = event.trim_end().strip_prefix("data: ") else {
                        out.events.push(json!({"unframed": event}));
                        continue;
                    };
                    if payload == "[DONE]" {
                        out.done = true;
                        continue;
                    }
                    let value: Value = serde_json::from_str(payload)
                        .unwrap_or_else(|_| json!({"invalid": payload}));
                    if out.first_content_at.is_none()
                        && content(&value).is_some_and(|c| !c.is_empty())
                    {
                        out.first_content_at = Some(Instant::now());
                        out.ttft = Some(start.elapsed());
                    }
                    out.events.push(value);
                }
            }
        }
    }
    if !buf.is_empty() {
        out.events.push(json!({"unframed": buf}));
    }
    out.ended_at = Instant::now();
    Ok(out)
}

fn chat(prompt: &str, max_tokens: u32, stream: bool) -> String {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// Text of about `n` tokens, different per seed.
fn words(n: usize, seed: u64) -> String {
    infergate_loadtest::sim::tokens::filler_text(n, seed)
}

/// The value of the first sample of `name` (with `name{` or `name ` as its start).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics").await.body
}

/// Polls `/metrics` until `pred` holds (bounded); returns the text that satisfied it.
async fn wait_metrics(addr: SocketAddr, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(addr).await;
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn with_deadline<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_DEADLINE, f)
        .await
        .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_shapes_and_errors() {
    let p = sim(&["--speed", "50"]);
    let a = p.addr("sim");
    with_deadline(async {
        assert_eq!(get(a, "/health").await.status, 200);
        let models = get(a, "/v1/models").await.json();
        assert_eq!(models["data"][0]["id"], MODEL);

        // Chat stream: role chunk first, content chunks, finish_reason on the last, usage, [DONE].
        let s = stream(a, "/v1/chat/completions", &chat("hello there", 7, true))
            .await
            .expect("stream");
        assert_eq!(s.status, 200);
        assert!(s.done && !s.broken, "{s:?}");
        assert!(
            s.events
                .iter()
                .all(|e| e["object"] == "chat.completion.chunk"),
            "{s:?}"
        );
        assert_eq!(s.events[0]["choices"][0]["delta"]["role"], "assistant");
        let n = s.events.len();
        assert_eq!(s.events[n - 2]["choices"][0]["finish_reason"], "length");
        assert!(
            s.events[..n - 2]
                .iter()
                .all(|e| e["choices"][0]["finish_reason"].is_null())
        );
        assert_eq!(s.events[n - 1]["choices"].as_array().map(Vec::len), Some(0));
        let usage = &s.events[n - 1]["usage"];
        assert_eq!(usage["completion_tokens"], 7);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + 7)
        );
        assert_eq!(
            infergate_loadtest::sim::tokens::count_tokens(&s.text()),
            7,
            "each filler piece is one token"
        );

        // Completions stream without include_usage: no usage chunk.
        let body = json!({"model": MODEL, "prompt": "once upon a time", "max_tokens": 4,
                          "ignore_eos": true, "stream": true})
        .to_string();
        let s = stream(a, "/v1/completions", &body).await.expect("stream");
        assert!(s.done);
        assert!(s.events.iter().all(|e| e["object"] == "text_completion"));
        assert!(s.events.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(
            s.events
                .last()
                .map(|e| e["choices"][0]["finish_reason"].clone()),
            Some(json!("length"))
        );

        // Non-streaming: usage; max_completion_tokens wins over max_tokens.
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 50, "max_completion_tokens": 3, "ignore_eos": true})
        .to_string();
        let r = send(a, "POST", "/v1/chat/completions", &body)
            .await
            .expect("post");
        let v = r.json();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["completion_tokens"], 3);

        // Errors, OpenAI-shaped.
        for (body, status) in [
            ("{not json".to_string(), 400),
            (json!({"model": "nope", "prompt": "x"}).to_string(), 404),
            (
                json!({"model": MODEL, "prompt": "x", "max_tokens": 9000}).to_string(),
                400,
            ),
            (
                json!({"model": MODEL, "prompt": "x", "n": 2}).to_string(),
                400,
            ),
            (json!({"model": MODEL, "prompt": ""}).to_string(), 400),
        ] {
            let r = send(a, "POST", "/v1/completions", &body)
                .await
                .expect("post");
            assert_eq!(r.status, status, "{body}: {}", r.body);
            let e = r.json();
            assert_eq!(e["error"]["code"], status);
            assert!(e["error"]["message"].is_string() && e["error"]["type"].is_string());
            assert!(e["error"].get("param").is_some());
        }
        let r = send(
            a,
            "POST",
            "/v1/completions",
            &json!({"model": MODEL, "prompt": words(8190, 1), "max_tokens": 10}).to_string(),
        )
        .await
        .expect("post");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("maximum context length is 8192 tokens"),
            "{}",
            r.body
        );
        assert_eq!(get(a, "/nope").await.status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_queue_shows_in_metrics() {
    let p = sim(&["--speed", "5", "--max-num-seqs", "4"]);
    let a = p.addr("sim");
    with_deadline(async {
        let mut clients = Vec::new();
        for i in 0..10 {
            let body = chat(&words(1000, i), 2000, true);
            clients.push(tokio::spawn(async move {
                stream(a, "/v1/chat/completions", &body).await
            }));
        }
        let text = wait_metrics(a, "4 running and 6 waiting", |t| {
            metric(t, "vllm:num_requests_running") == Some(4.0)
                && metric(t, "vllm:num_requests_waiting") == Some(6.0)
        })
        .await;
        assert!(metric(&text, "vllm:kv_cache_usage_perc").unwrap_or(0.0) > 0.0);
        for c in clients {
            c.abort();
        }
        // The aborted clients' requests leave the engine and free their blocks.
        wait_metrics(a, "aborted requests to leave", |t| {
            metric(t, "vllm:num_requests_running") == Some(0.0)
                && metric(t, "vllm:num_requests_waiting") == Some(0.0)
                && metric(t, "vllm:kv_cache_usage_perc") == Some(0.0)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_use_rises_then_preemption_when_exhausted() {
    // 200 blocks x 16 = 3,200 tokens; six requests of 400 + 600 tokens need 378 blocks together.
    let p = sim(&["--speed", "20", "--num-gpu-blocks", "200"]);
    let a = p.addr("sim");
    with_deadline(async {
        let mut clients = Vec::new();
        let mut usage_seen = vec![0.0];
        for i in 0..6 {
            let body = chat(&words(400, 100 + i), 600, true);
            clients.push(tokio::spawn(async move {
                stream(a, "/v1/chat/completions", &body).await
            }));
            let last = *usage_seen.last().unwrap_or(&0.0);
            let text = wait_metrics(a, "KV use to rise", |t| {
                metric(t, "vllm:kv_cache_usage_perc").unwrap_or(0.0) > last
                    || metric(t, "vllm:num_preemptions_total").unwrap_or(0.0) > 0.0
            })
            .await;
            usage_seen.push(metric(&text, "vllm:kv_cache_usage_perc").unwrap_or(0.0));
        }
        assert!(usage_seen[1] > 0.0, "{usage_seen:?}");
        wait_metrics(a, "a preemption", |t| {
            metric(t, "vllm:num_preemptions_total").unwrap_or(0.0) > 0.0
        })
        .await;
        for c in clients {
            let s = c.await.expect("join").expect("stream");
            assert!(s.done, "{s:?}");
            let usage = &s.events.last().expect("usage chunk")["usage"];
            assert_eq!(usage["completion_tokens"], 600, "recompute loses no tokens");
        }
        let text = metrics(a).await;
        assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), Some(0.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prefix_hits_the_cache_with_lower_ttft() {
    // Real time (speed 1): a 3,000-token prefill takes ~0.13 s, a cached one ~7 ms.
    let p = sim(&[]);
    let a = p.addr("sim");
    with_deadline(async {
        let system = words(3000, 77);
        let ask = |q: &str| {
            json!({"model": MODEL, "max_tokens": 2, "ignore_eos": true, "stream": true,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
            .to_string()
        };
        let first = stream(a, "/v1/chat/completions", &ask("what is a cat")).await.expect("first");
        let before = metrics(a).await;
        let second = stream(a, "/v1/chat/completions", &ask("and a dog")).await.expect("second");
        let after = metrics(a).await;
        let hits = |t: &str| metric(t, "vllm:prefix_cache_hits_total").unwrap_or(0.0);
        assert_eq!(hits(&before), 0.0);
        assert!(hits(&after) >= 2976.0, "hits {}", hits(&after));
        let sum = |t: &str| metric(t, "vllm:time_to_first_token_seconds_sum").unwrap_or(0.0);
        let ttft_first = sum(&before);
        let ttft_second = sum(&after) - sum(&before);
        assert!(ttft_second * 3.0 < ttft_first, "engine TTFT {ttft_second} vs {ttft_first}");
        let (t1, t2) = (first.ttft.expect("ttft"), second.ttft.expect("ttft"));
        assert!(t2 < t1, "client TTFT {t2:?} vs {t1:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_grows_with_the_queue() {
    let p = sim(&["--speed", "10", "--max-num-seqs", "1"]);
    let a = p.addr("sim");
    with_deadline(async {
        let alone = stream(a, "/v1/chat/completions", &chat("probe", 2, true))
            .await
            .expect("alone");
        let mut ahead = Vec::new();
        for i in 0..3 {
            let body = chat(&words(50, i), 300, true);
            ahead.push(tokio::spawn(async move {
                stream(a, "/v1/chat/completions", &body).await
            }));
        }
        wait_metrics(a, "1 running and 2 waiting", |t| {
            metric(t, "vllm:num_requests_waiting") == Some(2.0)
        })
        .await;
        let queued = stream(a, "/v1/chat/completions", &chat("probe", 2, true))
            .await
            .expect("queued");
        let (t_alone, t_queued) = (alone.ttft.expect("ttft"), queued.ttft.expect("ttft"));
        assert!(t_queued > t_alone * 5, "{t_queued:?} vs {t_alone:?}");
        for c in ahead {
            assert!(c.await.expect("join").expect("stream").done);
        }
        let text = metrics(a).await;
        assert_eq!(
            metric(&text, "vllm:time_to_first_token_seconds_count"),
            Some(5.0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_same_token_counts() {
    async fn counts(seed: &str) -> Vec<u64> {
        let p = sim(&[
            "--speed",
            "100",
            "--seed",
            seed,
            "--mean-output-tokens",
            "40",
        ]);
        let a = p.addr("sim");
        let mut out = Vec::new();
        for i in 0..12 {
            let body =
                json!({"model": MODEL, "prompt": words(20, i), "max_tokens": 120}).to_string();
            let r = send(a, "POST", "/v1/completions", &body)
                .await
                .expect("post");
            let v = r.json();
            let n = v["usage"]["completion_tokens"].as_u64().expect("usage");
            let reason = v["choices"][0]["finish_reason"].as_str().unwrap_or("");
            assert_eq!(
                reason,
                if n == 120 { "length" } else { "stop" },
                "{}",
                r.body
            );
            out.push(n);
        }
        out
    }
    with_deadline(async {
        let a = counts("7").await;
        assert_eq!(a, counts("7").await);
        assert_ne!(a, counts("8").await);
        assert!(
            a.iter().any(|&n| n < 120),
            "output lengths are drawn, not all max: {a:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_in_both_flavors() {
    for flavor in ["vllm", "sglang"] {
        let p = sim(&["--speed", "50", "--flavor", flavor]);
        let a = p.addr("sim");
        with_deadline(async {
            let s = stream(a, "/v1/chat/completions", &chat("warm up", 5, true))
                .await
                .expect("stream");
            assert!(s.done);
            let text = metrics(a).await;
            check_exposition(&text);
            if flavor == "vllm" {
                for name in [
                    "vllm:num_requests_running",
                    "vllm:num_requests_waiting",
                    "vllm:kv_cache_usage_perc",
                    "vllm:cache_config_info",
                    "vllm:prefix_cache_queries_total",
                    "vllm:prefix_cache_hits_total",
                    "vllm:num_preemptions_total",
                    "vllm:prompt_tokens_total",
                    "vllm:generation_tokens_total",
                    "vllm:request_success_total",
                    "vllm:time_to_first_token_seconds_bucket",
                    "vllm:inter_token_latency_seconds_bucket",
                    "vllm:e2e_request_latency_seconds_bucket",
                ] {
                    assert!(metric(&text, name).is_some(), "{name} missing");
                }
                assert!(text.contains("model_name=\"sim-llama-3-8b\",engine=\"0\""));
                assert!(text.contains("vllm:cache_config_info{block_size=\"16\""));
                assert!(text.contains("num_gpu_blocks=\"25750\""));
                assert_eq!(metric(&text, "vllm:generation_tokens_total"), Some(5.0));
                assert_eq!(get(a, "/get_load").await.status, 404);
            } else {
                for name in [
                    "sglang:num_running_reqs",
                    "sglang:num_queue_reqs",
                    "sglang:token_usage",
                    "sglang:cache_hit_rate",
                    "sglang:time_to_first_token_seconds_bucket",
                    "sglang:inter_token_latency_seconds_bucket",
                    "sglang:e2e_request_latency_seconds_bucket",
                ] {
                    assert!(metric(&text, name).is_some(), "{name} missing");
                }
                assert!(!text.contains("vllm:"));
                let load = get(a, "/get_load").await.json();
                assert_eq!(load["num_reqs"], 0);
                let info = get(a, "/server_info").await.json();
                assert_eq!(info["max_total_num_tokens"], 25750 * 16);
                let model = get(a, "/model_info").await.json();
                assert!(model.get("model_path").is_none());
                assert_eq!(model["is_generation"], true);
            }
        })
        .await;
    }
}

/// Pipes the exposition through `promtool check metrics` when it is installed (exit 1 is a parse
/// error; 3 is lint only, e.g. the colons real vLLM names have); otherwise checks the format here.
fn check_exposition(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("write to promtool");
        }
        let out = child.wait_with_output().expect("promtool");
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(3)),
            "promtool: {code:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Our own check of the text format, always.
    let mut typed = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().expect("name");
            let kind = parts.next().expect("kind");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "duplicate TYPE {name}"
            );
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("name value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().expect("name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample {name} without TYPE");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                assert!(!v.trim_end_matches('"').contains('"'), "{line:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_by_flag_and_at_run_time() {
    let p = sim(&["--speed", "50", "--fault-error-rate", "1"]);
    let a = p.addr("sim");
    with_deadline(async {
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
            .await
            .expect("post");
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["error"]["code"], 500);
        assert_eq!(get(a, "/admin/faults").await.json()["error_rate"], 1.0);

        let r = send(
            a,
            "POST",
            "/admin/faults",
            r#"{"error_rate": 0, "fail_health": true}"#,
        )
        .await
        .expect("post");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(get(a, "/health").await.status, 503);
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
            .await
            .expect("post");
        assert_eq!(r.status, 200);

        let bad = send(a, "POST", "/admin/faults", r#"{"error_rate": 7}"#)
            .await
            .expect("post");
        assert_eq!(bad.status, 400);
        let faults = get(a, "/admin/faults").await.json();
        assert_eq!(
            (
                faults["error_rate"].as_f64(),
                faults["fail_health"].as_bool()
            ),
            (Some(0.0), Some(true))
        );

        send(
            a,
            "POST",
            "/admin/faults",
            r#"{"fail_health": false, "latency_ms": 300}"#,
        )
        .await
        .expect("post");
        assert_eq!(get(a, "/health").await.status, 200);
        let t = Instant::now();
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
            .await
            .expect("post");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "added latency {:?}",
            t.elapsed()
        );

        send(
            a,
            "POST",
            "/admin/faults",
            r#"{"latency_ms": 0, "hang_rate": 1}"#,
        )
        .await
        .expect("post");
        let hung = tokio::time::timeout(
            Duration::from_millis(500),
            send(a, "POST", "/v1/chat/completions", &chat("x", 2, false)),
        )
        .await;
        assert!(hung.is_err(), "a hanging request never answers");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_after_n_requests_and_mid_stream() {
    with_deadline(async {
        let mut p = sim(&["--speed", "50", "--crash-after", "2"]);
        let a = p.addr("sim");
        for _ in 0..2 {
            let r = send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
                .await
                .expect("post");
            assert_eq!(r.status, 200);
        }
        assert!(
            send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
                .await
                .is_err()
        );
        let status = p.terminate(Duration::from_secs(10)).expect("exited");
        assert_eq!(status.code(), Some(1), "a crash, not a clean exit");

        let mut p = sim(&["--speed", "5", "--crash-mid-stream-after", "2"]);
        let a = p.addr("sim");
        let ok = stream(a, "/v1/chat/completions", &chat("x", 3, true))
            .await
            .expect("first");
        assert!(ok.done);
        let cut = stream(a, "/v1/chat/completions", &chat("x", 200, true)).await;
        if let Ok(s) = cut {
            assert!(!s.done, "the second stream is cut before [DONE]: {s:?}");
        }
        let status = p.terminate(Duration::from_secs(10)).expect("exited");
        assert_eq!(status.code(), Some(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_sigterm_lets_streams_finish() {
    let mut p = sim(&["--speed", "10"]);
    let a = p.addr("sim");
    with_deadline(async {
        let long = tokio::spawn(async move {
            stream(a, "/v1/chat/completions", &chat("long", 300, true)).await
        });
        wait_metrics(a, "the stream to run", |t| {
            metric(t, "vllm:num_requests_running") == Some(1.0)
        })
        .await;
        let r = send(a, "POST", "/admin/drain", "").await.expect("drain");
        assert_eq!(r.status, 200);
        assert_eq!(get(a, "/health").await.status, 503);
        let refused = send(a, "POST", "/v1/chat/completions", &chat("x", 2, false))
            .await
            .expect("post");
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"]["code"], 503);
        // SIGTERM while the stream runs: it still finishes, then the process exits 0.
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
        let s = long.await.expect("join").expect("stream");
        assert!(s.done && !s.broken, "{s:?}");
        assert_eq!(
            s.events.last().expect("usage")["usage"]["completion_tokens"],
            300
        );
    })
    .await;
    let status = p.terminate(Duration::from_secs(20)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_answers_503_until_ready() {
    let p = sim(&["--startup-delay-ms", "700"]);
    let a = p.addr("sim");
    with_deadline(async {
        assert_eq!(get(a, "/health").await.status, 503);
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 1, false))
            .await
            .expect("post");
        assert_eq!(r.status, 503);
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(a, "/health").await.status != 200 {
            assert!(Instant::now() < deadline, "never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 1, false))
            .await
            .expect("post");
        assert_eq!(r.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_bound_answers_503() {
    let p = sim(&["--speed", "2", "--max-num-seqs", "1", "--max-waiting", "2"]);
    let a = p.addr("sim");
    with_deadline(async {
        let mut held = Vec::new();
        let hold = |i: u64| {
            let body = chat(&words(10, i), 2000, true);
            tokio::spawn(async move { stream(a, "/v1/chat/completions", &body).await })
        };
        // The first must be running before the other two queue: three arriving within one
        // engine step would all count as waiting, and the third would be refused.
        held.push(hold(0));
        wait_metrics(a, "1 running", |t| {
            metric(t, "vllm:num_requests_running") == Some(1.0)
        })
        .await;
        held.push(hold(1));
        held.push(hold(2));
        wait_metrics(a, "1 running and 2 waiting", |t| {
            metric(t, "vllm:num_requests_running") == Some(1.0)
                && metric(t, "vllm:num_requests_waiting") == Some(2.0)
        })
        .await;
        let r = send(a, "POST", "/v1/chat/completions", &chat("x", 1, false))
            .await
            .expect("post");
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"]["type"], "ServiceUnavailableError");
        for h in held {
            h.abort();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_thousand_concurrent_streams() {
    // Test clients need 1,000 sockets too.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    // 200 decode steps of ~50 ms at a batch of 1,000, at speed 4: about 2.5 s of streaming.
    let p = sim(&["--speed", "4"]);
    let a = p.addr("sim");
    with_deadline(async {
        const N: usize = 1000;
        let mut clients = Vec::with_capacity(N);
        for i in 0..N {
            let body = chat(&words(20, i as u64), 200, true);
            clients.push(tokio::spawn(async move {
                stream(a, "/v1/chat/completions", &body).await
            }));
        }
        let mut results = Vec::with_capacity(N);
        for c in clients {
            results.push(c.await.expect("join").expect("stream"));
        }
        for s in &results {
            assert!(s.status == 200 && s.done && !s.broken, "{s:?}");
            assert_eq!(
                s.events.last().expect("usage")["usage"]["completion_tokens"],
                200
            );
        }
        // Held at once: every stream had its first token before any stream ended.
        let last_first = results
            .iter()
            .filter_map(|s| s.first_content_at)
            .max()
            .expect("firsts");
        let first_end = results.iter().map(|s| s.ended_at).min().expect("ends");
        assert!(last_first < first_end, "streams did not overlap");
        let text = metrics(a).await;
        assert_eq!(
            metric(&text, "vllm:generation_tokens_total"),
            Some((N * 200) as f64)
        );
    })
    .await;
}
