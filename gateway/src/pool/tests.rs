use super::*;
use crate::discovery::DiscoveredEndpoint;
use infergate_config::Discovery;

fn pool_cfg(policy: PickerPolicy) -> PoolConfig {
    PoolConfig {
        name: "p".into(),
        models: vec!["m".into()],
        flavor: Flavor::Vllm,
        discovery: Discovery::Static { endpoints: vec![] },
        policy: Some(policy),
        autoscaling: None,
    }
}

fn pool_with(policy: PickerPolicy, gw: &GatewayConfig, n: usize) -> Arc<Pool> {
    let pool = Pool::new(&pool_cfg(policy), gw);
    pool.apply_discovery(&set(n));
    pool
}

fn set(n: usize) -> EndpointSet {
    Arc::new(
        (0..n)
            .map(|i| DiscoveredEndpoint::ready(format!("http://127.0.0.1:{}", 9000 + i)))
            .collect(),
    )
}

fn load(waiting: f64, kv: f64, taken_at: Instant) -> ScrapedLoad {
    ScrapedLoad {
        flavor: Flavor::Vllm,
        waiting: Some(waiting),
        running: Some(0.0),
        kv_usage: Some(kv),
        kv_capacity_tokens: None,
        lora: Default::default(),
        prefix_cache: Default::default(),
        taken_at,
    }
}

fn facts(prefix: Vec<u64>) -> RequestFacts {
    RequestFacts {
        model: "m".into(),
        prefix,
        ..RequestFacts::default()
    }
}

fn picked(p: PoolPick) -> (Arc<Endpoint>, InflightGuard, PickReason) {
    match p {
        PoolPick::Endpoint {
            endpoint,
            guard,
            reason,
        } => (endpoint, guard, reason),
        PoolPick::Hold(r) => panic!("held: {r:?}"),
    }
}

#[test]
fn pick_counts_in_flight_until_the_guard_drops() {
    let gw = GatewayConfig::default();
    let pool = pool_with(PickerPolicy::LeastInflight, &gw, 2);
    let (a, ga, _) = picked(pool.pick(&facts(vec![]), &[]));
    let (b, gb, _) = picked(pool.pick(&facts(vec![]), &[]));
    assert_ne!(a.id(), b.id(), "least-inflight spreads");
    assert_eq!(a.inflight() + b.inflight(), 2);
    assert_eq!(a.picks_since_scrape(), 1);
    drop(ga);
    assert_eq!(a.inflight(), 0);
    gb.success();
    assert_eq!(b.inflight(), 0);
}

#[tokio::test]
async fn guard_drop_notifies_capacity_changed() {
    let gw = GatewayConfig::default();
    let pool = pool_with(PickerPolicy::RoundRobin, &gw, 1);
    let (_, guard, _) = picked(pool.pick(&facts(vec![]), &[]));
    let notified = pool.capacity_changed().watch();
    tokio::pin!(notified);
    notified.as_mut().enable();
    drop(guard);
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("notified");
}

#[test]
fn discovery_keeps_state_and_drains_removed_endpoints() {
    let gw = GatewayConfig::default();
    let pool = pool_with(PickerPolicy::RoundRobin, &gw, 2);
    let first = pool.endpoints();
    let (ep, guard, _) = picked(pool.pick(&facts(vec![]), &[first[1].id()]));
    assert_eq!(ep.id(), first[0].id(), "excluded endpoint skipped");

    // Same set: same endpoints, state kept.
    pool.apply_discovery(&set(2));
    assert_eq!(pool.endpoints()[0].id(), first[0].id());
    assert_eq!(pool.endpoints()[0].inflight(), 1);

    // Endpoint 0 disappears while a request is in flight: listed, never picked, dropped at 0.
    let only_second: EndpointSet =
        Arc::new(vec![DiscoveredEndpoint::ready("http://127.0.0.1:9001")]);
    pool.apply_discovery(&only_second);
    assert_eq!(pool.endpoints().len(), 2);
    assert!(pool.endpoints()[1].is_removed());
    assert_eq!(pool.ready_count(), 1);
    for _ in 0..4 {
        let (e, _g, _) = picked(pool.pick(&facts(vec![]), &[]));
        assert_eq!(e.id(), first[1].id());
    }
    drop(guard);
    assert_eq!(pool.endpoints().len(), 1);

    // New endpoints get new ids.
    pool.apply_discovery(&set(3));
    let ids: Vec<_> = pool.endpoints().iter().map(|e| e.id()).collect();
    assert_eq!(ids[1], first[1].id());
    assert!(ids[0] != first[0].id() && ids[2] != first[0].id());
}

#[test]
fn terminating_and_unready_endpoints_get_nothing() {
    let gw = GatewayConfig::default();
    let pool = Pool::new(&pool_cfg(PickerPolicy::RoundRobin), &gw);
    let mut a = DiscoveredEndpoint::ready("http://127.0.0.1:1");
    a.terminating = true;
    let mut b = DiscoveredEndpoint::ready("http://127.0.0.1:2");
    b.ready = false;
    pool.apply_discovery(&Arc::new(vec![a, b]));
    assert!(matches!(
        pool.pick(&facts(vec![]), &[]),
        PoolPick::Hold(HoldReason::NoReadyEndpoint)
    ));
    assert_eq!(pool.ready_count(), 0);
}

#[test]
fn stale_load_is_ignored_and_silence_makes_unready() {
    let mut gw = GatewayConfig::default();
    gw.scrape.stale_after = Duration::from_secs(1);
    gw.scrape.unready_after = Duration::from_secs(5);
    let pool = pool_with(PickerPolicy::QueueKv, &gw, 2);
    let eps = pool.endpoints();
    let now = Instant::now();
    // Endpoint 0 looks idle but its scrape is 2 s old (stale): only in-flight counts.
    eps[0].record_scrape(load(0.0, 0.0, now - Duration::from_secs(2)), 0);
    eps[1].record_scrape(load(0.0, 0.0, now), 0);
    let h0 = pool.health(&eps[0], now);
    assert!(h0.stale && h0.usable && !h0.scrape_unready);
    // Endpoint 1 never scraped: usable.
    pool.apply_discovery(&set(3));
    let h2 = pool.health(&pool.endpoints()[2], now);
    assert!(h2.stale && h2.usable);
    // Endpoint 0 silent for 6 s: unready; a good scrape brings it back.
    eps[0].record_scrape(load(0.0, 0.0, now - Duration::from_secs(6)), 0);
    assert!(!pool.health(&eps[0], now).usable);
    assert_eq!(pool.ready_count(), 2);
    pool.record_scrape(&eps[0], load(0.0, 0.0, Instant::now()), 0);
    assert!(pool.health(&eps[0], Instant::now()).usable);
}

#[test]
fn all_saturated_holds() {
    let gw = GatewayConfig::default();
    let pool = pool_with(PickerPolicy::Infergate, &gw, 2);
    for e in pool.endpoints() {
        e.record_scrape(load(50.0, 0.99, Instant::now()), 0);
    }
    assert!(matches!(
        pool.pick(&facts(vec![]), &[]),
        PoolPick::Hold(HoldReason::AllSaturated)
    ));
}

#[test]
fn prefix_affinity_follows_what_was_sent() {
    let gw = GatewayConfig::default();
    let pool = pool_with(PickerPolicy::Infergate, &gw, 4);
    let prefix: Vec<u64> = (100..120).collect();
    let (first, g1, _) = picked(pool.pick(&facts(prefix.clone()), &[]));
    drop(g1);
    for _ in 0..5 {
        let (e, g, reason) = picked(pool.pick(&facts(prefix.clone()), &[]));
        assert_eq!(e.id(), first.id());
        assert_eq!(reason, PickReason::PrefixAffinity);
        drop(g);
    }
    let json = pool.debug_json();
    assert_eq!(json["prefix_index"]["entries"], 20);
    assert_eq!(json["endpoints"].as_array().map(Vec::len), Some(4));
}

#[test]
fn consecutive_failures_eject_but_never_past_the_ratio() {
    let mut gw = GatewayConfig::default();
    gw.outlier.consecutive_failures = 2;
    gw.outlier.max_ejected_ratio = 0.5;
    let pool = pool_with(PickerPolicy::RoundRobin, &gw, 4);
    let eps = pool.endpoints();
    let fail = |i: usize, times: usize| {
        for _ in 0..times {
            let (_, g, _) = picked(pool.pick(&facts(vec![]), &[]));
            // Route the outcome to endpoint i regardless of which one was picked.
            drop(g);
            pool.report_failure(&eps[i]);
        }
    };
    fail(0, 2);
    fail(1, 2);
    fail(2, 2);
    let now = Instant::now();
    let ejected: Vec<bool> = eps.iter().map(|e| e.is_ejected(now)).collect();
    assert_eq!(ejected, vec![true, true, false, false], "half of 4 at most");
    assert_eq!(pool.ready_count(), 2);
    // A success resets the streak.
    pool.report_failure(&eps[3]);
    pool.report_success(&eps[3]);
    pool.report_failure(&eps[3]);
    assert!(!eps[3].is_ejected(Instant::now()));
}
