//! Is the load generator the bottleneck? Its scheduling lag at 2,000 requests a second.
//!
//! A trivial hyper server on 127.0.0.1 (its own single-threaded runtime on its own thread, standing in
//! for a separate process) answers every request at once with a tiny SSE stream. The generator runs
//! an open-loop Poisson schedule at 2,000 req/s for a few seconds, several times; each run prints how
//! late its arrivals started against their scheduled instants (p50/p99/max), the arrival rate it
//! achieved, and whether every request completed. The last line gives the medians over the runs.
//!
//! Run with `cargo bench -p infergate-loadtest --bench schedule_lag` (release profile).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use infergate_loadtest::generate::arrival::ArrivalProcess;
use infergate_loadtest::generate::workload::WorkloadSpec;
use infergate_loadtest::generate::{self, RunConfig, RunReport};

const RATE: f64 = 2000.0;
const SECONDS: u64 = 4;
const RUNS: usize = 3;

const SSE: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" ok\"}}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1,\"total_tokens\":9}}\n\n",
    "data: [DONE]\n\n",
);

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body, as a real server must, then answer at once.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(Full::new(Bytes::from_static(SSE.as_bytes())))
        .unwrap_or_default())
}

/// Starts the trivial server on its own thread; returns its address.
fn start_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("report the address");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                        .await;
                });
            }
        });
    });
    rx.recv().expect("server address")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let addr = start_server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("generator runtime");
    println!(
        "schedule_lag: open-loop poisson at {RATE} req/s for {SECONDS} s x {RUNS} runs against a trivial SSE server on {addr}"
    );
    let mut reports: Vec<RunReport> = Vec::new();
    for run in 0..RUNS {
        let mut config = RunConfig::new(
            format!("http://{addr}"),
            "bench",
            WorkloadSpec::Fixed {
                input: 8,
                output: 1,
            },
        );
        config.arrival = Some(ArrivalProcess::Poisson);
        config.rate = Some(RATE);
        config.duration = Some(Duration::from_secs(SECONDS));
        config.seed = run as u64;
        config.timeout = Duration::from_secs(10);
        let report = rt.block_on(generate::run(config)).expect("run");
        let lag = report.late_start_ms.expect("arrivals started");
        let e2e = report.e2e_ms.map_or(f64::NAN, |s| s.p50);
        println!(
            "run {run}: {} requests, {} completed, achieved {:.1} arrivals/s; late start p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; e2e p50 {:.3} ms",
            report.requests, report.completed, report.achieved_rate, lag.p50, lag.p99, lag.max, e2e
        );
        reports.push(report);
    }
    let lag = |f: fn(&generate::report::Summary) -> f64| {
        median(
            reports
                .iter()
                .filter_map(|r| r.late_start_ms.as_ref().map(f))
                .collect(),
        )
    };
    println!(
        "median of {RUNS} runs: late start p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; achieved {:.1} arrivals/s (asked {RATE}); completed {:.4} of requests",
        lag(|s| s.p50),
        lag(|s| s.p99),
        lag(|s| s.max),
        median(reports.iter().map(|r| r.achieved_rate).collect()),
        median(
            reports
                .iter()
                .map(|r| r.completed as f64 / r.requests.max(1) as f64)
                .collect()
        ),
    );
}
