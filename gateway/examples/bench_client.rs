//! Load for scripts/bench-proxy.sh where `wrk` cannot help:
//!
//! - `bench_client rate URL RPS SECONDS`: open-loop POSTs of a 1 KiB JSON body at a fixed rate.
//!   Latency is measured from each request's scheduled start, so a stall is charged to every
//!   request it delays (no coordinated omission). Prints `rate=... sent=... ok=... p50_us p99_us
//!   max_us`.
//! - `bench_client sse URL STREAMS CHUNKS INTERVAL_MS`: that many concurrent SSE streams from
//!   `echo_upstream`; each event carries its send time, so receive minus send is the delivery
//!   delay of every chunk. Prints `streams=... chunks=... p50_us p99_us max_us`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type C = Client<HttpConnector, Full<Bytes>>;

fn body_1k() -> Bytes {
    let head = r#"{"model":"m","max_tokens":16,"messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    Bytes::from(format!(
        "{head}{}{tail}",
        "y".repeat(1024 - head.len() - tail.len())
    ))
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn rate(client: C, url: String, rps: f64, secs: f64) {
    let body = body_1k();
    let lat = Arc::new(Mutex::new(Vec::with_capacity((rps * secs) as usize)));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / rps);
    let start = Instant::now();
    let total = (rps * secs) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url, body, lat, ok) = (
            client.clone(),
            url.clone(),
            body.clone(),
            lat.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            if let Ok(resp) = client.request(req).await {
                let good = resp.status().is_success();
                if resp.into_body().collect().await.is_ok() && good {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let us = scheduled.elapsed().as_micros() as u64;
            lat.lock().expect("lock").push(us);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut v = lat.lock().expect("lock").clone();
    println!(
        "rate={rps:.0} achieved={:.0} sent={total} ok={} p50_us={} p99_us={} max_us={}",
        total as f64 / elapsed,
        ok.load(std::sync::atomic::Ordering::Relaxed),
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        pct(&mut v, 1.0)
    );
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn sse(client: C, url: String, streams: usize, chunks: u64, interval_ms: u64) {
    let lat = Arc::new(Mutex::new(Vec::with_capacity(streams * chunks as usize)));
    let complete = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (client, url, lat, complete) =
            (client.clone(), url.clone(), lat.clone(), complete.clone());
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .header("x-chunks", chunks.to_string())
                .header("x-interval-ms", interval_ms.to_string())
                .body(Full::new(Bytes::from_static(
                    br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
                )))
                .expect("request");
            let Ok(resp) = client.request(req).await else {
                return;
            };
            let mut body = resp.into_body();
            let mut mine = Vec::with_capacity(chunks as usize);
            let mut carry = String::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let now = now_nanos();
                carry.push_str(&String::from_utf8_lossy(data));
                while let Some(end) = carry.find("\n\n") {
                    let event: String = carry.drain(..end + 2).collect();
                    if let Some(t) = event
                        .trim()
                        .strip_prefix("data: {\"t\":")
                        .and_then(|r| r.strip_suffix('}'))
                        .and_then(|t| t.parse::<u128>().ok())
                    {
                        mine.push((now.saturating_sub(t) / 1000) as u64);
                    } else if event.contains("[DONE]") {
                        complete.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            lat.lock().expect("lock").extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = lat.lock().expect("lock").clone();
    println!(
        "streams={streams} complete={} chunks={} p50_us={} p99_us={} max_us={}",
        complete.load(std::sync::atomic::Ordering::Relaxed),
        v.len(),
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        pct(&mut v, 1.0)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_client rate URL RPS SECONDS | sse URL STREAMS CHUNKS INTERVAL_MS";
    let num = |i: usize| -> f64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: C = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    match args.get(1).map(String::as_str) {
        Some("rate") => rate(client, args[2].clone(), num(3), num(4)).await,
        Some("sse") => {
            sse(
                client,
                args[2].clone(),
                num(3) as usize,
                num(4) as u64,
                num(5) as u64,
            )
            .await
        }
        _ => eprintln!("{usage}"),
    }
}
