//! Tests of the client and the driver against a canned server: raw HTTP/1.1 bytes written by hand,
//! so that broken streams (cut short, error events, silence) can be produced on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::client::{Client, ClientConfig, Endpoint, Message, Outcome};
use super::report::Slo;
use super::run::{RunConfig, run};
use super::workload::WorkloadSpec;

/// What the canned server writes after reading a request. `None`: it never answers.
type Canned = Option<&'static str>;

/// Serves `canned` to every connection (one request each, then close); counts requests read.
async fn canned_server(canned: Canned) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await.is_none() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                match canned {
                    Some(bytes) => {
                        let _ = stream.write_all(bytes.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    None => {
                        // Hold the connection open, silent, until the client gives up.
                        let mut sink = [0u8; 64];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one request (headers and a Content-Length body).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(());
            }
        }
    }
}

const HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn client(addr: SocketAddr, stream: bool, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        target: format!("http://{addr}"),
        model: "m".into(),
        endpoint: Endpoint::Chat,
        stream,
        ignore_eos: true,
        headers: Vec::new(),
        timeout,
    })
    .unwrap()
}

async fn outcome_of(canned: Canned, stream: bool) -> super::client::Exchange {
    let (addr, _) = canned_server(canned).await;
    let c = client(addr, stream, Duration::from_millis(500));
    let msgs = [Message {
        role: "user",
        content: Arc::from(" hi"),
    }];
    c.send(c.body(&msgs, 2, "session-0"), true).await
}

macro_rules! leak {
    ($($part:expr),* $(,)?) => {
        Some(Box::leak(format!($($part),*).into_boxed_str()) as &'static str)
    };
}

#[tokio::test]
async fn a_whole_stream_is_ok_with_ttft_gaps_usage_and_text() {
    let ex = outcome_of(
        leak!(
            "{HEAD}data: {{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}}}}]}}\n\n\
             data: {{\"choices\":[{{\"delta\":{{\"content\":\" ab\"}}}}]}}\n\n\
             data: {{\"choices\":[{{\"delta\":{{\"content\":\" cd\"}}}}]}}\n\n\
             data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\n\
             data: [DONE]\n\n"
        ),
        true,
    )
    .await;
    assert_eq!(ex.outcome, Outcome::Ok, "{:?}", ex.error);
    assert_eq!(ex.token_times.len(), 2);
    assert_eq!(ex.ttft, Some(ex.token_times[0]));
    assert!(ex.e2e >= ex.token_times[1]);
    assert_eq!(ex.output_tokens(), 2);
    assert_eq!(ex.text.as_deref(), Some(" ab cd"));
}

#[tokio::test]
async fn broken_streams_and_statuses_are_classified() {
    let cut = outcome_of(
        leak!("{HEAD}data: {{\"choices\":[{{\"delta\":{{\"content\":\" ab\"}}}}]}}\n\n"),
        true,
    )
    .await;
    assert_eq!(cut.outcome, Outcome::Truncated);
    assert!(cut.ttft.is_some());

    let err = outcome_of(
        leak!(
            "{HEAD}data: {{\"choices\":[{{\"delta\":{{\"content\":\" ab\"}}}}]}}\n\n\
             data: {{\"error\":{{\"message\":\"pod died\",\"type\":\"x\",\"param\":null,\"code\":502}}}}\n\n"
        ),
        true,
    )
    .await;
    assert_eq!(err.outcome, Outcome::StreamError);
    assert_eq!(err.error.as_deref(), Some("pod died"));

    let busy = outcome_of(
        Some("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"),
        true,
    )
    .await;
    assert_eq!(busy.outcome, Outcome::Http(503));

    let silent = outcome_of(None, true).await;
    assert_eq!(silent.outcome, Outcome::Timeout);
    assert!(silent.e2e >= Duration::from_millis(500));

    const JSON: &str =
        r#"{"choices":[{"message":{"content":"x y"}}],"usage":{"completion_tokens":2}}"#;
    let whole = outcome_of(
        leak!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
            JSON.len()
        ),
        false,
    )
    .await;
    assert_eq!(whole.outcome, Outcome::Ok, "{:?}", whole.error);
    assert_eq!(whole.output_tokens(), 2);

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let c = client(addr, true, Duration::from_secs(5));
    let refused = c.send(c.body(&[], 1, "s"), false).await;
    assert_eq!(refused.outcome, Outcome::Connect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_the_schedule_and_reports_what_ran() {
    let (addr, seen) = canned_server(None).await;
    let mut config = RunConfig::new(
        format!("http://{addr}"),
        "m",
        WorkloadSpec::Fixed {
            input: 4,
            output: 1,
        },
    );
    config.rate = Some(5.0);
    config.requests = Some(1000); // 200 s of schedule: only cancellation ends this run early
    config.slo = Slo {
        ttft: Some(Duration::from_secs(1)),
        itl: None,
    };
    let cancel = config.cancel.clone();
    let handle = tokio::spawn(run(config));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no request arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the run ends soon after cancellation")
        .unwrap()
        .unwrap();
    assert!(report.sessions >= 1 && report.sessions < 1000, "{report:?}");
    assert!(
        report.statuses.get("cancelled").copied().unwrap_or(0) >= 1,
        "{report:?}"
    );
    assert_eq!(report.completed, 0);
    assert_eq!(report.slo.goodput, 0.0);
}
