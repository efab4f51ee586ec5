//! End-to-end tests of `infergate loadtest run`: the real binary against small OpenAI-like servers
//! written here (hyper on 127.0.0.1:0), checking the JSON report it writes.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

/// A response body fed from a channel, so the test server can pace its SSE chunks.
struct ChunkBody(mpsc::Receiver<Bytes>);

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// How the test server answers.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Every `fail_every`-th request (1-based) gets a 503; 0 never.
    fail_every: u64,
    /// Held this long before the first byte.
    hold: Duration,
    /// Content chunks per answer.
    tokens: usize,
}

struct Server {
    behaviour: Behaviour,
    seen: AtomicU64,
    /// Every request's parsed JSON body and its `x-test` header.
    requests: Mutex<Vec<(Value, Option<String>)>>,
}

async fn serve(behaviour: Behaviour) -> (SocketAddr, Arc<Server>) {
    let server = Arc::new(Server {
        behaviour,
        seen: AtomicU64::new(0),
        requests: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, server)
}

async fn handle(s: Arc<Server>, req: Request<Incoming>) -> Result<Response<ChunkBody>, Infallible> {
    let n = s.seen.fetch_add(1, Ordering::SeqCst) + 1;
    let header = req
        .headers()
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.requests.lock().await.push((json, header));
    let (tx, rx) = mpsc::channel(16);
    let b = s.behaviour;
    if b.fail_every > 0 && n.is_multiple_of(b.fail_every) {
        let _ = tx.try_send(Bytes::from_static(
            br#"{"error":{"message":"overloaded","type":"ServiceUnavailable","param":null,"code":503}}"#,
        ));
        return Ok(Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .body(ChunkBody(rx))
            .unwrap());
    }
    let chat = path == "/v1/chat/completions";
    tokio::spawn(async move {
        tokio::time::sleep(b.hold).await;
        if chat {
            let role =
                r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
            let _ = tx.send(Bytes::from(format!("{role}\n\n"))).await;
        }
        for i in 0..b.tokens {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let chunk = if chat {
                format!(r#"data: {{"choices":[{{"index":0,"delta":{{"content":" t{n}x{i}"}}}}]}}"#)
            } else {
                format!(r#"data: {{"choices":[{{"index":0,"text":" t{n}x{i}"}}]}}"#)
            };
            // Split each event across two writes, as TCP may.
            let (a, z) = chunk.split_at(chunk.len() / 2);
            let _ = tx.send(Bytes::from(a.to_string())).await;
            let _ = tx.send(Bytes::from(format!("{z}\n\n"))).await;
        }
        let usage = format!(
            r#"data: {{"choices":[],"usage":{{"prompt_tokens":11,"completion_tokens":{},"total_tokens":0}}}}"#,
            b.tokens
        );
        let _ = tx
            .send(Bytes::from(format!("{usage}\n\ndata: [DONE]\n\n")))
            .await;
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(ChunkBody(rx))
        .unwrap())
}

/// Runs `infergate loadtest run <args> --json FILE --plot FILE` (bounded to 120 s), checks the plot
/// is an SVG, and returns the report and the stdout table.
fn loadtest(args: &[&str]) -> (Value, String) {
    let dir = std::env::temp_dir().join(format!(
        "infergate-loadtest-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let plot_path = dir.join("run.svg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["loadtest", "run", "--progress", "lines", "--json"])
        .arg(&json_path)
        .arg("--plot")
        .arg(&plot_path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn infergate");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadtest run did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "loadtest run failed: {status}\n{stdout}");
    let svg = std::fs::read_to_string(&plot_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("time to first token"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (report, stdout)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

async fn loadtest_async(args: Vec<String>) -> (Value, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        loadtest(&args)
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_statuses_ttft_and_goodput_against_a_streaming_server() {
    let (addr, server) = serve(Behaviour {
        fail_every: 4,
        hold: Duration::from_millis(5),
        tokens: 3,
    })
    .await;
    let target = format!("http://{addr}");
    let (report, table) = loadtest_async(strings(&[
        "--target",
        &target,
        "--model",
        "test-model",
        "--rate",
        "200",
        "--requests",
        "40",
        "--arrival",
        "constant",
        "--workload",
        "fixed:16:3",
        "--slo-ttft",
        "30s",
        "--slo-itl",
        "30s",
        "--header",
        "x-test: yes",
    ]))
    .await;

    assert_eq!(report["requests"], 40, "{report:#}");
    assert_eq!(report["completed"], 30);
    assert_eq!(report["failed"], 10);
    assert_eq!(report["statuses"]["200"], 30);
    assert_eq!(report["statuses"]["503"], 10);
    assert_eq!(
        report["output_tokens"], 90,
        "usage: 3 tokens per completed answer"
    );
    assert_eq!(report["input_tokens"], 30 * 11, "the server's prompt count");
    let ttft = &report["ttft_ms"];
    assert_eq!(ttft["count"], 30);
    assert!(ttft["p50"].as_f64().unwrap() > 0.0);
    assert!(ttft["p50"].as_f64().unwrap() <= ttft["p99"].as_f64().unwrap());
    assert_eq!(
        report["itl_ms"]["count"], 60,
        "two gaps per three-token answer"
    );
    let goodput = report["slo"]["goodput"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&goodput));
    assert!(
        (goodput - 0.75).abs() < 1e-9,
        "every completed request is inside a 30 s SLO"
    );
    assert_eq!(report["late_start_ms"]["count"], 40);
    assert!(table.contains("goodput"), "{table}");
    assert!(table.contains("503: 10"), "{table}");

    let requests = server.requests.lock().await;
    assert_eq!(requests.len(), 40);
    for (body, header) in requests.iter() {
        assert_eq!(header.as_deref(), Some("yes"));
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["max_tokens"], 3);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"][0]["role"], "user");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_sessions_resend_their_history_with_the_real_answers() {
    let (addr, server) = serve(Behaviour {
        fail_every: 0,
        hold: Duration::ZERO,
        tokens: 2,
    })
    .await;
    let target = format!("http://{addr}");
    let (report, _) = loadtest_async(strings(&[
        "--target",
        &target,
        "--rate",
        "50",
        "--requests",
        "4",
        "--workload",
        "shared-prefix:2:30:3:5:2",
        "--think-time",
        "0s",
        "--seed",
        "3",
    ]))
    .await;
    assert_eq!(report["sessions"], 4);
    assert_eq!(report["requests"], 12);
    assert_eq!(report["completed"], 12);

    let requests = server.requests.lock().await;
    let mut systems = std::collections::BTreeSet::new();
    let mut by_session: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for (body, _) in requests.iter() {
        let user = body["user"].as_str().unwrap().to_string();
        by_session
            .entry(user)
            .or_default()
            .push(body["messages"].clone());
    }
    assert_eq!(by_session.len(), 4);
    for turns in by_session.values() {
        assert_eq!(turns.len(), 3);
        for (k, msgs) in turns.iter().enumerate() {
            let msgs = msgs.as_array().unwrap();
            // system, then (user, assistant) per earlier turn, then the new user message.
            assert_eq!(msgs.len(), 2 + 2 * k);
            assert_eq!(msgs[0]["role"], "system");
            systems.insert(msgs[0]["content"].as_str().unwrap().to_string());
            if k > 0 {
                // The previous turn's messages are a prefix of this one's.
                let prev = turns[k - 1].as_array().unwrap();
                assert_eq!(&msgs[..prev.len()], &prev[..]);
                let answer = msgs[prev.len()]["content"].as_str().unwrap();
                assert_eq!(msgs[prev.len()]["role"], "assistant");
                assert!(
                    answer.starts_with(" t") && answer.contains("x1"),
                    "{answer:?}"
                );
            }
        }
    }
    assert!(systems.len() <= 2, "sessions share two system prompts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_past_the_in_flight_cap_fail_as_client_overload() {
    let (addr, _server) = serve(Behaviour {
        fail_every: 0,
        hold: Duration::from_secs(3),
        tokens: 1,
    })
    .await;
    let target = format!("http://{addr}");
    let (report, _) = loadtest_async(strings(&[
        "--target",
        &target,
        "--rate",
        "100",
        "--requests",
        "10",
        "--arrival",
        "constant",
        "--workload",
        "fixed:4:1",
        "--max-in-flight",
        "2",
        "--endpoint",
        "completions",
    ]))
    .await;
    assert_eq!(report["requests"], 10);
    assert_eq!(report["statuses"]["200"], 2);
    assert_eq!(report["statuses"]["client-overload"], 8);
    assert_eq!(
        report["late_start_ms"]["count"], 10,
        "overloaded arrivals still had a start"
    );
    assert!((report["slo"]["goodput"].as_f64().unwrap() - 0.2).abs() < 1e-9);
}

#[test]
fn rejects_conflicting_and_missing_options() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["loadtest", "run", "--target", "http://127.0.0.1:9"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(!run(&["--requests", "1"]).success(), "--rate is required");
    assert!(!run(&["--rate", "1"]).success(), "a bound is required");
    assert!(!run(&["--rate", "1", "--requests", "1", "--workload", "zipf"]).success());
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/loadtest/traces/azure-llm-2023-conv.csv"
    );
    let spec = format!("trace:{trace}");
    assert!(
        !run(&[
            "--requests",
            "1",
            "--workload",
            &spec,
            "--arrival",
            "poisson"
        ])
        .success(),
        "a trace carries its own arrivals"
    );
}

/// Sums the samples of a metric in a Prometheus text page (plain GET over a std socket).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn measures_the_simulator_with_exact_lengths_and_shared_prefixes() {
    let sim = common::Proc::spawn(&["sim", "--port", "0", "--speed", "10"], &["sim"]);
    let target = sim.url("sim");

    let (report, _) = loadtest(&[
        "--target",
        &target,
        "--rate",
        "20",
        "--requests",
        "20",
        "--arrival",
        "constant",
        "--workload",
        "fixed:64:16",
        "--slo-ttft",
        "30s",
    ]);
    assert_eq!(report["statuses"]["200"], 20, "{report:#}");
    assert_eq!(report["completed"], 20);
    assert_eq!(
        report["output_tokens"],
        20 * 16,
        "ignore_eos: outputs are as planned"
    );
    let input = report["input_tokens"].as_u64().unwrap();
    assert!(
        input >= 20 * 64,
        "the chat template only adds tokens: {input}"
    );
    assert!(
        input <= 20 * (64 + 32),
        "filler lengths are the simulator's lengths: {input}"
    );
    assert_eq!(report["ttft_ms"]["count"], 20);
    assert!(report["itl_ms"]["count"].as_u64().unwrap() > 0);
    assert_eq!(report["slo"]["goodput"], 1.0);

    let hits_before = metric(sim.addr("sim"), "vllm:prefix_cache_hits_total");
    let (report, _) = loadtest(&[
        "--target",
        &target,
        "--rate",
        "20",
        "--requests",
        "6",
        "--workload",
        "shared-prefix:2:256:2:16:8",
        "--think-time",
        "0s",
        "--endpoint",
        "completions",
    ]);
    assert_eq!(report["completed"], 12, "{report:#}");
    assert_eq!(report["output_tokens"], 12 * 8);
    let hits = metric(sim.addr("sim"), "vllm:prefix_cache_hits_total") - hits_before;
    // Six sessions over two 256-token system prompts, and second turns that resend the first:
    // at least 4 sessions x 256 tokens of system prompt are cache hits.
    assert!(hits >= 4.0 * 256.0, "prefix cache hits {hits}");
}
