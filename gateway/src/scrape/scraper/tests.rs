//! The scraper against a tiny hyper server on 127.0.0.1 whose behaviour the test switches.

use super::*;
use crate::discovery::DiscoveredEndpoint;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate_config::{Discovery, GatewayConfig, PickerPolicy, PoolConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::net::TcpListener;

const FIXTURE: &str = include_str!("../../../benches/fixtures/vllm_metrics.txt");

const PAGE: u8 = 0;
const FAIL_500: u8 = 1;
const NO_ROUTE: u8 = 2;
const HANG: u8 = 3;

async fn serve(mode: Arc<AtomicU8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mode = mode.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let mode = mode.load(Ordering::SeqCst);
                    async move {
                        let status = match (mode, req.uri().path()) {
                            (PAGE, "/metrics") => 200,
                            (FAIL_500, _) => 500,
                            (HANG, _) => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                500
                            }
                            _ => 404,
                        };
                        let body = if status == 200 { FIXTURE } else { "" };
                        let resp = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .expect("response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn setup(addr: SocketAddr) -> (Arc<Pool>, ScrapeConfig) {
    let gw = GatewayConfig {
        scrape: ScrapeConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(300),
            stale_after: Duration::from_millis(150),
            unready_after: Duration::from_millis(400),
        },
        ..GatewayConfig::default()
    };
    let cfg = PoolConfig {
        name: "p".into(),
        models: vec!["m".into()],
        flavor: Flavor::Auto,
        discovery: Discovery::Static { endpoints: vec![] },
        policy: Some(PickerPolicy::Infergate),
        autoscaling: None,
    };
    let pool = Pool::new(&cfg, &gw);
    pool.apply_discovery(&Arc::new(vec![DiscoveredEndpoint::ready(format!(
        "http://{addr}"
    ))]));
    (pool, gw.scrape)
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Polls `cond` every 10 ms for at most 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn scrapes_then_goes_stale_unready_and_recovers() {
    let mode = Arc::new(AtomicU8::new(PAGE));
    let addr = serve(mode.clone()).await;
    let (pool, cfg) = setup(addr);
    let shutdown = CancellationToken::new();
    let handle = spawn_scraper(pool.clone(), client(), cfg, shutdown.clone());
    let ep = pool.endpoints()[0].clone();

    eventually("a good scrape", || ep.load().is_some()).await;
    let load = ep.load().expect("load");
    assert_eq!(load.flavor, Flavor::Vllm, "auto detected vLLM");
    assert_eq!((load.waiting, load.running), (Some(5.0), Some(37.0)));
    assert!(pool.health(&ep, Instant::now()).usable);

    mode.store(FAIL_500, Ordering::SeqCst);
    eventually("errors counted", || ep.scrape_errors() >= 3).await;
    eventually("stale then unready", || {
        let h = pool.health(&ep, Instant::now());
        h.stale && h.scrape_unready && !h.usable
    })
    .await;
    assert!(ep.last_scrape_error().is_some_and(|e| e.contains("500")));
    assert_eq!(pool.ready_count(), 0);

    mode.store(PAGE, Ordering::SeqCst);
    eventually("ready again", || pool.health(&ep, Instant::now()).usable).await;
    assert_eq!(ep.last_scrape_error(), None);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("scraper stops on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn endpoint_without_metrics_route_stays_usable() {
    let mode = Arc::new(AtomicU8::new(NO_ROUTE));
    let addr = serve(mode).await;
    let (pool, cfg) = setup(addr);
    let shutdown = CancellationToken::new();
    let _handle = spawn_scraper(pool.clone(), client(), cfg, shutdown.clone());
    let ep = pool.endpoints()[0].clone();
    eventually("404s counted", || ep.scrape_errors() >= 3).await;
    assert!(ep.load().is_none());
    let h = pool.health(&ep, Instant::now());
    assert!(h.usable && h.stale && !h.scrape_unready);
    assert!(matches!(
        pool.pick(&crate::picker::RequestFacts::default(), &[]),
        crate::pool::PoolPick::Endpoint { .. }
    ));
    shutdown.cancel();
}

#[tokio::test]
async fn hanging_scrape_times_out() {
    let mode = Arc::new(AtomicU8::new(HANG));
    let addr = serve(mode).await;
    let (pool, mut cfg) = setup(addr);
    cfg.timeout = Duration::from_millis(50);
    let shutdown = CancellationToken::new();
    let _handle = spawn_scraper(pool.clone(), client(), cfg, shutdown.clone());
    let ep = pool.endpoints()[0].clone();
    eventually("a timeout", || {
        ep.last_scrape_error()
            .is_some_and(|e| e.contains("timed out"))
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn removed_endpoints_stop_being_scraped() {
    let mode = Arc::new(AtomicU8::new(FAIL_500));
    let addr = serve(mode).await;
    let (pool, cfg) = setup(addr);
    let shutdown = CancellationToken::new();
    let _handle = spawn_scraper(pool.clone(), client(), cfg, shutdown.clone());
    let ep = pool.endpoints()[0].clone();
    eventually("scraped", || ep.scrape_errors() >= 1).await;
    pool.apply_discovery(&Arc::new(vec![]));
    // Live, it is scraped every 20 ms; removed, its error count must stop moving (checked over
    // 200 ms windows, for at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = ep.scrape_errors();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if ep.scrape_errors() == before {
            break;
        }
        assert!(Instant::now() < deadline, "still scraped after removal");
    }
    shutdown.cancel();
}

#[test]
fn start_offsets_spread_over_the_interval() {
    let interval = Duration::from_millis(100);
    let mut offsets: Vec<_> = (0..64)
        .map(|i| start_offset(&format!("http://10.0.0.{i}:8000"), interval))
        .collect();
    assert!(offsets.iter().all(|o| *o < interval));
    offsets.sort();
    offsets.dedup();
    assert!(offsets.len() > 60);
    let first_half = offsets.iter().filter(|o| **o < interval / 2).count();
    assert!(
        (16..=48).contains(&first_half),
        "{first_half} of 64 in the first half"
    );
}
