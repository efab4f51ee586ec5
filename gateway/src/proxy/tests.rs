//! Unit tests of the facts phase and the shed answers.
use super::*;
use infergate_config::{Discovery, PoolConfig};
use tokio_util::sync::CancellationToken;

fn proxy() -> Proxy {
    let config = Config {
        pools: vec![
            PoolConfig {
                name: "a".into(),
                models: vec!["base".into(), "lora:sql".into()],
                flavor: Default::default(),
                discovery: Discovery::Static {
                    endpoints: vec!["http://127.0.0.1:1".into()],
                },
                policy: None,
                autoscaling: None,
            },
            PoolConfig {
                name: "b".into(),
                models: vec!["other".into()],
                flavor: Default::default(),
                discovery: Discovery::Static {
                    endpoints: vec!["http://127.0.0.1:2".into()],
                },
                policy: None,
                autoscaling: None,
            },
        ],
        ..Config::default()
    };
    let metrics = Metrics::new();
    let cancel = CancellationToken::new();
    let routes = config
        .pools
        .iter()
        .map(|pc| {
            let pool = Pool::new(pc, &config.gateway);
            PoolRoute {
                flow: FlowControl::start(
                    Arc::new(PoolCapacity(pool.clone())),
                    config.gateway.flow.clone(),
                    cancel.clone(),
                ),
                metrics: metrics.pool(&pc.name),
                pool,
            }
        })
        .collect();
    Proxy::new(&config, routes, &metrics)
}

fn parts(priority: Option<&str>) -> Parts {
    let mut req = Request::post("/v1/chat/completions");
    if let Some(p) = priority {
        req = req.header(Priority::HEADER, p);
    }
    req.body(()).expect("request").into_parts().0
}

fn ctx(p: &Proxy) -> RequestCtx<'_> {
    RequestCtx {
        started: Instant::now(),
        model: &p.unrouted,
        pool: &p.unrouted_pool,
        answered: true,
    }
}

#[tokio::test]
async fn facts_route_models_adapters_and_priority() {
    let p = proxy();
    let long = "x".repeat(600);
    let body = format!(
        r#"{{"model":"sql","max_tokens":7,"messages":[{{"role":"user","content":"{long}"}}]}}"#
    );
    let (pool, facts) = p
        .facts(&parts(Some("sheddable")), body.as_bytes(), &mut ctx(&p))
        .expect("facts");
    assert_eq!(pool, 0);
    assert_eq!(facts.model, "sql");
    assert_eq!(facts.lora.as_deref(), Some("sql"));
    assert_eq!(facts.priority, Priority::Sheddable);
    assert_eq!(facts.max_tokens, Some(7));
    assert_eq!(facts.prompt_chars, "user".len() + 600);
    assert_eq!(
        facts.prefix.len(),
        2,
        "604 characters are two full 256-char blocks"
    );

    let (pool, facts) = p
        .facts(
            &parts(None),
            br#"{"model":"other","prompt":"hi"}"#,
            &mut ctx(&p),
        )
        .expect("facts");
    assert_eq!(pool, 1);
    assert_eq!(facts.lora, None);
    assert_eq!(facts.priority, Priority::Standard);
}

#[tokio::test]
async fn facts_errors() {
    let p = proxy();
    let kind = |body: &[u8]| {
        p.facts(&parts(None), body, &mut ctx(&p))
            .map(|_| ())
            .expect_err("an error")
            .kind
    };
    assert_eq!(kind(br#"{"model":"nope"}"#), ErrorKind::ModelNotFound);
    assert_eq!(kind(br#"{"model":"lora:sql"}"#), ErrorKind::ModelNotFound);
    assert_eq!(kind(br#"{"prompt":"x"}"#), ErrorKind::MissingField);
    assert_eq!(kind(b"{"), ErrorKind::InvalidJson);
}

#[test]
fn shed_answers() {
    let shed = Urgency {
        rank: 2,
        sheddable: true,
    };
    let std = Urgency {
        rank: 1,
        sheddable: false,
    };
    assert_eq!(shed_error(Shed::Timeout, shed).status().as_u16(), 429);
    assert_eq!(shed_error(Shed::QueueFull, shed).status().as_u16(), 429);
    assert_eq!(shed_error(Shed::Timeout, std).status().as_u16(), 503);
    assert_eq!(shed_error(Shed::Evicted, std).status().as_u16(), 503);
    assert_eq!(shed_error(Shed::ShuttingDown, shed).status().as_u16(), 503);
    assert!(shed_error(Shed::Timeout, std).retry_after.is_some());
}

#[tokio::test]
async fn a_body_that_stalls_between_frames_is_a_408_and_one_that_flows_is_read() {
    let timer = CoarseTimer::new();
    tokio::spawn(timer.clone().tick());
    let limits = LimitsConfig {
        body_read_timeout: Duration::from_millis(300),
        ..LimitsConfig::default()
    };
    let parts = parts(None);

    // Frames that keep coming within the bound, however long the whole body takes.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let feeder = tokio::spawn(async move {
        for part in ["{\"model\":", "\"base\"", "}"] {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(Bytes::from(part)).expect("send");
        }
    });
    let body = read_body(&parts, crate::test_body::from_channel(rx), &limits, &timer)
        .await
        .expect("a flowing body is read");
    assert_eq!(body, Bytes::from("{\"model\":\"base\"}"));
    feeder.await.expect("feeder");

    // One frame, then nothing: refused once the bound has passed, not before.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::from("{\"model\":")).expect("send");
    let started = Instant::now();
    let e = read_body(&parts, crate::test_body::from_channel(rx), &limits, &timer)
        .await
        .expect_err("a stalled body is refused");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(e.kind, ErrorKind::RequestTimeout);
    assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(e.code(), "request_timeout");
    drop(tx);

    // A body that is all there (HTTP/1's, read whole by its connection) never waits.
    let whole = http_body_util::Full::new(Bytes::from("{}"));
    let body = read_body(&parts, whole, &limits, &timer)
        .await
        .expect("read");
    assert_eq!(body, Bytes::from("{}"));
}
