//! Event-loop tests: determinism, conservation of requests, pod-time accounting, and the actuator.

use std::time::Duration;

use infergate_config::AutoscalingConfig;

use super::day::{Bursts, DayConfig};
use super::*;

/// A small, fast scenario: ten minutes of a bursty ramp on small pods.
fn small(lengths: &str) -> Scenario {
    Scenario {
        seed: 3,
        pods: scenario::PodsConfig {
            max_num_seqs: 16,
            num_gpu_blocks: Some(2_000),
            cold_start: Duration::from_secs(20),
            ..scenario::PodsConfig::default()
        },
        autoscaling: AutoscalingConfig {
            min_replicas: 1,
            max_replicas: 6,
            ..AutoscalingConfig::default()
        },
        workload: WorkloadConfig::Day(DayConfig {
            duration: Duration::from_secs(600),
            period: Duration::from_secs(600),
            peak_at: Duration::from_secs(300),
            peak_rate: 12.0,
            trough_rate: 0.5,
            bursts: Bursts {
                count: 1,
                length: Duration::from_secs(30),
                factor: 2.0,
            },
            lengths: lengths.into(),
            ..DayConfig::default()
        }),
        ..Scenario::default()
    }
}

fn run(sc: &Scenario, pool: PoolMode) -> RunResult {
    let (plan, span) = workload_plan(sc).expect("plan");
    simulate(
        sc,
        &plan,
        &RunSpec {
            name: "t".into(),
            pool,
            span,
            think_time: Duration::from_secs(1),
        },
    )
    .expect("simulate")
}

#[test]
fn same_seed_same_result() {
    let sc = small("fixed:200:50");
    let a = run(&sc, PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())));
    let b = run(&sc, PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())));
    let strip = |mut r: RunResult| {
        r.summary.sim_wall_s = 0.0;
        r
    };
    assert_eq!(strip(a.clone()), strip(b));
    let mut other = sc.clone();
    other.seed = 4;
    let c = run(
        &other,
        PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())),
    );
    assert_ne!(a.summary.requests, c.summary.requests);
}

#[test]
fn every_request_completes_or_fails_exactly_once() {
    // Multi-turn sessions, so skipped turns are counted too.
    let sc = small("shared-prefix:4:512:3:64:32");
    let (plan, _) = workload_plan(&sc).expect("plan");
    for pool in [
        PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())),
        PoolMode::Fixed(1),
        PoolMode::Fixed(4),
    ] {
        let r = run(&sc, pool.clone());
        let s = &r.summary;
        let failed: u64 = s.failed.values().sum();
        assert_eq!(s.requests, s.completed + failed, "{pool:?}");
        assert_eq!(
            s.requests + s.skipped_turns,
            plan.total_requests(),
            "{pool:?}: sent + skipped must be every planned request"
        );
        assert!(s.completed > 0);
    }
}

#[test]
fn overload_fails_requests_at_the_gateway_not_silently() {
    // One tiny pod, a tight queue: some requests must be refused or time out, and still be counted.
    let mut sc = small("fixed:400:200");
    sc.flow.max_queued = 8;
    sc.flow.queue_timeout = Duration::from_secs(2);
    // Saturated as soon as one request waits in the engine, whatever the KV use.
    sc.flow.saturation_queue = 1.0;
    sc.flow.saturation_kv = 0.0;
    sc.pods.max_num_seqs = 2;
    let r = run(&sc, PoolMode::Fixed(1));
    let s = &r.summary;
    let failed: u64 = s.failed.values().sum();
    assert!(failed > 0, "{:?}", s.failed);
    assert_eq!(s.requests, s.completed + failed);
    assert!(s.ttft_attainment < 1.0);
}

#[test]
fn pod_hours_of_a_fixed_pool_are_pods_times_span() {
    let sc = small("fixed:100:20");
    let r = run(&sc, PoolMode::Fixed(3));
    let s = &r.summary;
    let want = 3.0 * s.span_h;
    assert!(
        (s.pod_hours - want).abs() < 1e-9,
        "{} vs {want}",
        s.pod_hours
    );
    assert!(s.span_h >= 600.0 / 3600.0);
    assert_eq!(s.peak_pods, 3);
    assert_eq!(s.scale_events, 0);
}

#[test]
fn autoscaler_scales_up_under_load_and_pays_for_cold_starts() {
    let sc = small("fixed:300:100");
    let r = run(&sc, PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())));
    let s = &r.summary;
    assert!(
        r.events.iter().any(|e| e.to > e.from),
        "no scale-up: {:?}",
        r.events
    );
    assert!(s.peak_pods > 1);
    // Pod-time is at least the one pod that runs all along and at most max_replicas all along.
    assert!(s.pod_hours >= s.span_h - 1e-9);
    assert!(s.pod_hours <= 6.0 * s.span_h);
    // The time series covers the span.
    assert!(r.series.len() >= 10, "{}", r.series.len());
}

#[test]
fn scale_to_zero_holds_requests_and_wakes_the_pool() {
    let mut sc = small("fixed:100:20");
    sc.autoscaling.min_replicas = 0;
    sc.autoscaling.idle_window = Duration::from_secs(30);
    sc.pods.initial = Some(0);
    // Quiet at first, so nothing arrives before the pool is asked to wake.
    let r = run(&sc, PoolMode::Autoscaled(Box::new(sc.autoscaling.clone())));
    let s = &r.summary;
    assert!(
        r.events.iter().any(|e| e.from == 0 && e.to > 0),
        "{:?}",
        r.events
    );
    assert!(s.held_requests > 0);
    // The first requests waited at least a cold start.
    let held = s.held_ms.expect("held requests");
    assert!(held.max >= 19_000.0, "{held:?}");
    assert!(s.completed > 0);
}

#[test]
fn shipped_scenarios_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("scenarios dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("plan-") && name.ends_with(".yaml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected the plan-*.yaml scenarios in {}",
        dir.display()
    );
}

#[test]
fn scenario_rejects_unknown_fields_and_profiles() {
    assert!(Scenario::parse("nmae: x\n").is_err());
    let e = Scenario::parse("pods:\n  profile: tpu-9000\n").expect_err("unknown profile");
    assert!(e.to_string().contains("tpu-9000"), "{e}");
    let sc = Scenario::parse("autoscaling:\n  min_replicas: 0\n  max_replicas: 3\n").expect("ok");
    assert_eq!(sc.autoscaling.max_replicas, 3);
    assert_eq!(sc.scrape_interval, Duration::from_millis(100));
}
