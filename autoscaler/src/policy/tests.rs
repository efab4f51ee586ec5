//! Scenarios, one behaviour each, in virtual time.

use std::time::Duration;

use infergate_config::AutoscalingConfig;

use super::*;
use crate::signals::{GatewayReading, PodLoad, PodLoads, Replicas, Signals};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn config(min: u32, max: u32) -> AutoscalingConfig {
    AutoscalingConfig {
        min_replicas: min,
        max_replicas: max,
        ..AutoscalingConfig::default()
    }
}

/// A pool of `ready` pods (plus `starting`) each reporting `load`, behind a gateway holding `held`.
fn signals(wanted: u32, ready: u32, starting: u32, load: PodLoad, held: f64) -> Signals {
    let mut pods = PodLoads::default();
    for _ in 0..ready {
        pods.add(Some(load));
    }
    Signals {
        replicas: Replicas {
            wanted,
            ready,
            starting,
        },
        pods,
        gateway: GatewayLoad::Known(GatewayReading {
            held,
            ..GatewayReading::default()
        }),
    }
}

fn load(waiting: f64, running: f64, kv: f64) -> PodLoad {
    PodLoad {
        waiting,
        running,
        kv_usage: kv,
    }
}

#[test]
fn a_burst_scales_up_in_one_decision() {
    let state = ScalerState::new(config(1, 4));
    let rec = recommend(
        &state,
        &signals(1, 1, 0, load(36.0, 4.0, 0.3), 0.0),
        secs(0),
    );
    assert_eq!(rec.replicas, 4);
    assert_eq!(rec.reason, Reason::ScaleUpPanic);
    assert_eq!(rec.mode, Mode::Panic);
}

#[test]
fn scale_up_is_rate_limited_per_period() {
    let mut state = ScalerState::new(config(1, 20));
    // 1 pod, demand for 12: the larger of +100% or +4 pods -> 5.
    let rec = state.step(&signals(1, 1, 0, load(36.0, 4.0, 0.3), 0.0), secs(0));
    assert_eq!(rec.replicas, 5);
    // Still within the 15 s period, the same demand adds nothing more.
    let rec = state.step(&signals(5, 1, 4, load(36.0, 4.0, 0.3), 0.0), secs(5));
    assert_eq!((rec.replicas, rec.reason), (5, Reason::HoldRateLimited));
    // A new period: 5 -> 10 (+100%).
    let rec = state.step(&signals(5, 5, 0, load(7.2, 4.0, 0.3), 0.0), secs(16));
    assert_eq!(rec.replicas, 10);
}

#[test]
fn starting_pods_count_as_capacity_on_the_way() {
    let mut state = ScalerState::new(config(1, 8));
    let burst = load(9.0, 4.0, 0.3); // waiting 9 per pod: 3x the target of 3
    let rec = state.step(&signals(1, 1, 0, burst, 0.0), secs(0));
    assert_eq!(rec.replicas, 3);
    // A cold start of minutes: the one ready pod stays just as loaded, yet nothing more is asked.
    for t in (1..180).step_by(1) {
        let rec = state.step(&signals(3, 1, 2, burst, 0.0), secs(t));
        assert_eq!(rec.replicas, 3, "at {t}s: {rec:?}");
        assert_eq!(rec.reason, Reason::HoldStarting);
    }
}

#[test]
fn within_tolerance_nothing_changes() {
    let mut state = ScalerState::new(config(1, 8));
    let rec = state.step(&signals(2, 2, 0, load(3.2, 4.0, 0.3), 0.0), secs(0));
    assert_eq!((rec.replicas, rec.reason), (2, Reason::HoldStable));
}

#[test]
fn scale_down_waits_for_the_window_then_steps_by_the_rate_limit() {
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(60);
    cfg.panic.enabled = false;
    let mut state = ScalerState::new(cfg);
    let quiet = load(0.0, 1.0, 0.05);
    let mut wanted = 4;
    let mut changes = Vec::new();
    for t in 0..400 {
        let rec = state.step(&signals(wanted, wanted, 0, quiet, 0.0), secs(t));
        if rec.is_change() {
            changes.push((t, rec.from, rec.replicas, rec.reason));
            wanted = rec.replicas;
        }
    }
    assert_eq!(
        changes,
        vec![
            (60, 4, 3, Reason::ScaleDown),
            (120, 3, 2, Reason::ScaleDown),
            (180, 2, 1, Reason::ScaleDown),
        ]
    );
}

#[test]
fn the_window_maximum_wins() {
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(60);
    cfg.panic.enabled = false;
    let mut state = ScalerState::new(cfg);
    let mut wanted = 4;
    let mut changes = Vec::new();
    for t in 0..200 {
        // One busier instant (KV 0.5 of a 0.8 target: 3 replicas' worth) at 30 s; quiet otherwise.
        let l = if t == 30 {
            load(0.0, 2.0, 0.5)
        } else {
            load(0.0, 1.0, 0.05)
        };
        let rec = state.step(&signals(wanted, wanted, 0, l, 0.0), secs(t));
        if rec.is_change() {
            changes.push((t, rec.replicas));
            wanted = rec.replicas;
        }
    }
    // At 60 s the window (0..60) holds the 3 from 30 s: down to 3, not further.
    assert_eq!(changes, vec![(60, 3), (120, 2), (180, 1)]);
}

#[test]
fn unknown_metrics_never_mean_zero_load() {
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(10);
    let mut state = ScalerState::new(cfg);
    // Everything unknown: hold.
    let mut s = signals(4, 4, 0, load(0.0, 0.0, 0.0), 0.0);
    s.pods = PodLoads::default();
    for _ in 0..4 {
        s.pods.add(None);
    }
    for t in 0..100 {
        let rec = state.step(&s, secs(t));
        assert_eq!((rec.replicas, rec.reason), (4, Reason::HoldUnknown));
    }
    // Half unknown and the known half idle: still no scale-down.
    s.pods = PodLoads::default();
    s.pods.add(None);
    s.pods.add(None);
    s.pods.add(Some(load(0.0, 0.0, 0.0)));
    s.pods.add(Some(load(0.0, 0.0, 0.0)));
    for t in 100..200 {
        let rec = state.step(&s, secs(t));
        assert_eq!(rec.replicas, 4);
    }
    // A gateway that stopped answering: no scale-down either.
    let mut s = signals(4, 4, 0, load(0.0, 0.0, 0.0), 0.0);
    s.gateway = GatewayLoad::Unknown;
    let rec = state.step(&s, secs(300));
    assert_eq!((rec.replicas, rec.reason), (4, Reason::HoldUnknown));
}

#[test]
fn one_held_request_at_zero_wakes_the_pool_at_once() {
    let state = ScalerState::new(config(0, 4));
    let rec = recommend(&state, &signals(0, 0, 0, load(0.0, 0.0, 0.0), 1.0), secs(0));
    assert_eq!((rec.replicas, rec.reason), (1, Reason::WakeFromZero));
    // Nothing held at zero: stay at zero.
    let rec = recommend(&state, &signals(0, 0, 0, load(0.0, 0.0, 0.0), 0.0), secs(0));
    assert_eq!((rec.replicas, rec.reason), (0, Reason::HoldStable));
}

#[test]
fn held_requests_while_the_first_pod_starts_hold_steady() {
    let state = ScalerState::new(config(0, 4));
    let rec = recommend(&state, &signals(1, 0, 1, load(0.0, 0.0, 0.0), 2.0), secs(1));
    assert_eq!(rec.replicas, 1, "{rec:?}");
}

#[test]
fn scale_to_zero_only_after_the_idle_window() {
    let mut cfg = config(0, 4);
    cfg.idle_window = secs(30);
    cfg.scale_down.stabilization_window = secs(10);
    let mut state = ScalerState::new(cfg);
    let idle = load(0.0, 0.0, 0.0);
    for t in 0..30 {
        let rec = state.step(&signals(1, 1, 0, idle, 0.0), secs(t));
        assert_eq!(rec.replicas, 1, "at {t}s");
    }
    let rec = state.step(&signals(1, 1, 0, idle, 0.0), secs(30));
    assert_eq!((rec.replicas, rec.reason), (0, Reason::ScaleToZero));
}

#[test]
fn activity_restarts_the_idle_window() {
    let mut cfg = config(0, 4);
    cfg.idle_window = secs(30);
    let mut state = ScalerState::new(cfg);
    for t in 0..20 {
        state.step(&signals(1, 1, 0, load(0.0, 0.0, 0.0), 0.0), secs(t));
    }
    state.step(&signals(1, 1, 0, load(0.0, 1.0, 0.01), 0.0), secs(20));
    for t in 21..50 {
        let rec = state.step(&signals(1, 1, 0, load(0.0, 0.0, 0.0), 0.0), secs(t));
        assert_eq!(rec.replicas, 1, "at {t}s");
    }
}

#[test]
fn no_scale_to_zero_without_a_gateway_to_wake_the_pool() {
    let mut cfg = config(0, 4);
    cfg.idle_window = secs(5);
    let mut state = ScalerState::new(cfg);
    let mut s = signals(1, 1, 0, load(0.0, 0.0, 0.0), 0.0);
    s.gateway = GatewayLoad::NotConfigured;
    for t in 0..100 {
        assert_eq!(state.step(&s, secs(t)).replicas, 1);
    }
}

#[test]
fn panic_holds_replicas_for_a_stable_window_after_the_burst() {
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(60);
    let mut state = ScalerState::new(cfg);
    // Warm up a full window so only panic can stop a scale-down.
    for t in 0..60 {
        state.step(&signals(4, 4, 0, load(1.0, 4.0, 0.3), 0.0), secs(t));
    }
    // A burst sustained over the 6 s panic window (its mean ratio decides, not one scrape).
    let mut wanted = 4;
    for t in 60..67 {
        let rec = state.step(
            &signals(wanted, 4, wanted - 4, load(20.0, 4.0, 0.3), 0.0),
            secs(t),
        );
        wanted = rec.replicas;
    }
    assert_eq!(wanted, 8);
    let rec = state.step(&signals(8, 8, 0, load(20.0, 4.0, 0.3), 0.0), secs(67));
    assert_eq!(rec.mode, Mode::Panic);
    for t in 68..127 {
        let rec = state.step(&signals(8, 8, 0, load(0.0, 0.0, 0.0), 0.0), secs(t));
        assert_eq!(rec.replicas, 8, "at {t}s: {rec:?}");
        assert_eq!(rec.mode, Mode::Panic, "at {t}s");
    }
    let rec = state.step(&signals(8, 8, 0, load(0.0, 0.0, 0.0), 0.0), secs(140));
    assert_eq!(rec.mode, Mode::Stable);
}

#[test]
fn held_requests_block_scale_down() {
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(5);
    cfg.panic.enabled = false;
    let mut state = ScalerState::new(cfg);
    for t in 0..20 {
        let mut s = signals(4, 4, 0, load(0.0, 0.0, 0.0), 0.0);
        if let GatewayLoad::Known(r) = &mut s.gateway {
            r.held = 0.5;
        }
        let rec = state.step(&s, secs(t));
        assert_eq!(rec.replicas, 4, "{rec:?}");
    }
}

#[test]
fn bounds_are_enforced_both_ways() {
    let state = ScalerState::new(config(2, 4));
    let rec = recommend(&state, &signals(0, 0, 0, load(0.0, 0.0, 0.0), 0.0), secs(0));
    assert_eq!((rec.replicas, rec.reason), (2, Reason::ClampMin));
    let rec = recommend(&state, &signals(6, 6, 0, load(3.0, 4.0, 0.5), 0.0), secs(0));
    assert_eq!((rec.replicas, rec.reason), (4, Reason::ClampMax));
    let rec = recommend(
        &state,
        &signals(4, 4, 0, load(30.0, 4.0, 0.5), 0.0),
        secs(0),
    );
    assert_eq!((rec.replicas, rec.reason), (4, Reason::ClampMax));
}

#[test]
fn learned_capacity_finds_the_size_where_the_queue_stays_away() {
    // 24 requests in flight, pods that run 8 at a time: the waiting queue alone reads zero at 3 pods
    // and would invite a scale-down to 2, where the queue is back. The learned concurrency keeps 3.
    let mut cfg = config(1, 8);
    cfg.scale_down.stabilization_window = secs(30);
    cfg.targets.kv_usage = 0.8;
    let mut state = ScalerState::new(cfg);
    let mut wanted = 2;
    let mut changes = 0;
    for t in 0..600 {
        let per = 24.0 / f64::from(wanted);
        let running = per.min(8.0);
        let l = load(per - running, running, running * 0.05);
        let rec = state.step(&signals(wanted, wanted, 0, l, 0.0), secs(t));
        if rec.is_change() {
            changes += 1;
            wanted = rec.replicas;
        }
    }
    assert_eq!(wanted, 3);
    assert_eq!(changes, 1, "one scale-up from 2 to 3, then nothing");
    assert_eq!(state.learned_capacity(), Some(8.0));
}
