//! Properties over random inputs, and a long run against a fake pool to show the policy settles.

use std::time::Duration;

use infergate_config::AutoscalingConfig;
use proptest::prelude::*;

use super::*;
use crate::signals::{GatewayReading, PodLoad, PodLoads, Replicas, Signals};

fn arb_config() -> impl Strategy<Value = AutoscalingConfig> {
    (
        0u32..4,
        1u32..12,
        1u64..120,
        any::<bool>(),
        1u64..60,
        0u64..30,
    )
        .prop_map(|(min, span, window, panic, idle, period)| {
            let mut c = AutoscalingConfig {
                min_replicas: min,
                max_replicas: min + span,
                ..AutoscalingConfig::default()
            };
            c.scale_down.stabilization_window = Duration::from_secs(window);
            c.scale_down.period = Duration::from_secs(period);
            c.panic.enabled = panic;
            c.idle_window = Duration::from_secs(idle);
            c
        })
}

/// One interval's observation, before the pool's size is filled in.
#[derive(Clone, Debug)]
struct Tick {
    /// Per-pod load, `None` for a pod whose metrics are unknown.
    loads: Vec<Option<(f64, f64, f64)>>,
    /// 0: no gateway; 1: gateway unknown; 2: known.
    gateway: u8,
    held: f64,
    starting: u32,
    advance: u64,
}

fn arb_tick() -> impl Strategy<Value = Tick> {
    (
        prop::collection::vec(
            prop::option::weighted(0.9, (0.0f64..40.0, 0.0f64..16.0, 0.0f64..1.0)),
            0..10,
        ),
        0u8..3,
        prop_oneof![3 => Just(0.0), 1 => 0.0f64..50.0],
        0u32..4,
        1u64..20,
    )
        .prop_map(|(loads, gateway, held, starting, advance)| Tick {
            loads,
            gateway,
            held,
            starting,
            advance,
        })
}

fn observe(tick: &Tick, wanted: u32) -> Signals {
    let mut pods = PodLoads::default();
    let ready = (tick.loads.len() as u32).min(wanted);
    for l in tick.loads.iter().take(ready as usize) {
        pods.add(l.map(|(waiting, running, kv_usage)| PodLoad {
            waiting,
            running,
            kv_usage,
        }));
    }
    let gateway = match tick.gateway {
        0 => GatewayLoad::NotConfigured,
        1 => GatewayLoad::Unknown,
        _ => GatewayLoad::Known(GatewayReading {
            held: tick.held,
            ..GatewayReading::default()
        }),
    };
    Signals {
        replicas: Replicas {
            wanted,
            ready,
            starting: tick.starting.min(wanted - ready),
        },
        pods,
        gateway,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the signals, the safety rules hold at every step of a run.
    #[test]
    fn safety_rules_hold_over_random_runs(
        cfg in arb_config(),
        start in 0u32..14,
        ticks in prop::collection::vec(arb_tick(), 1..80),
    ) {
        let (min, max) = (cfg.min_replicas, cfg.max_replicas);
        let mut state = ScalerState::new(cfg);
        let mut wanted = start;
        let mut now = Duration::ZERO;
        for tick in &ticks {
            now += Duration::from_secs(tick.advance);
            let s = observe(tick, wanted);
            let rec = state.step(&s, now);
            // Never outside the bounds.
            prop_assert!(rec.replicas >= min && rec.replicas <= max, "{rec:?}");
            // "Down" only counts from within the bounds: a pool above max is brought back to it.
            let floor = wanted.min(max);
            let held = s.gateway.held();
            if rec.mode == Mode::Panic {
                prop_assert!(rec.replicas >= floor, "down while panicking: {rec:?}");
            }
            if held.is_some_and(|h| h > 0.0) {
                prop_assert!(rec.replicas >= floor, "down while requests are held: {rec:?}");
            }
            if s.pods.unknown > 0 || held.is_none() {
                prop_assert!(rec.replicas >= floor, "down on missing data: {rec:?} {s:?}");
            }
            if rec.replicas == 0 && wanted > 0 {
                prop_assert_eq!(min, 0);
                prop_assert!(matches!(s.gateway, GatewayLoad::Known(_)));
            }
            wanted = rec.replicas;
        }
    }

    /// A pure model of a pool under a constant load: `demand` requests always in flight, spread over
    /// the ready pods; each pod runs at most `slots` at once and queues the rest; pods take
    /// `cold_start` seconds to become ready. The replica count must settle: no scale event in the
    /// second half of the run, and few direction changes before. Starting from one pod (the ramp),
    /// the count goes up, then at most down: one reversal. Starting larger, the policy may shrink
    /// once below the size where queues appear before it has seen a pod queue (it cannot know a
    /// pod's concurrency before that), come back up, then settle: at most two reversals.
    #[test]
    fn constant_load_does_not_oscillate(
        demand in 1.0f64..80.0,
        slots in 2u32..16,
        kv_full in 0.05f64..1.0,
        cold_start in 0u64..60,
        running_target in prop::option::of(0.5f64..1.0),
        start in 1u32..6,
    ) {
        let mut cfg = AutoscalingConfig {
            min_replicas: 1,
            max_replicas: 40,
            ..AutoscalingConfig::default()
        };
        cfg.scale_down.stabilization_window = Duration::from_secs(60);
        cfg.targets.running_per_replica = running_target.map(|r| r * f64::from(slots));
        let slots = f64::from(slots);
        let mut state = ScalerState::new(cfg);
        let mut pods: Vec<u64> = vec![0; start as usize]; // each pod's ready time
        let mut changes: Vec<(u64, i64)> = Vec::new();
        let horizon = 2_400u64;
        for t in 0..horizon {
            let ready = pods.iter().filter(|&&r| r <= t).count() as u32;
            let wanted = pods.len() as u32;
            let mut loads = PodLoads::default();
            let held = if ready == 0 { demand } else { 0.0 };
            if ready > 0 {
                let per = demand / f64::from(ready);
                let running = per.min(slots);
                for _ in 0..ready {
                    loads.add(Some(PodLoad {
                        waiting: per - running,
                        running,
                        kv_usage: running / slots * kv_full,
                    }));
                }
            }
            let s = Signals {
                replicas: Replicas { wanted, ready, starting: wanted - ready },
                pods: loads,
                gateway: GatewayLoad::Known(GatewayReading {
                    held,
                    in_flight: Some(demand - held),
                    ..GatewayReading::default()
                }),
            };
            let rec = state.step(&s, Duration::from_secs(t));
            if rec.is_change() {
                let delta = i64::from(rec.replicas) - i64::from(wanted);
                changes.push((t, delta));
                if delta > 0 {
                    pods.extend(std::iter::repeat_n(t + cold_start, delta as usize));
                } else {
                    // Remove starting pods first (latest ready time), as the local actuator does.
                    pods.sort_unstable();
                    pods.truncate(rec.replicas as usize);
                }
            }
        }
        let reversals = changes
            .windows(2)
            .filter(|w| (w[0].1 > 0) != (w[1].1 > 0))
            .count();
        let allowed = if start == 1 { 1 } else { 2 };
        prop_assert!(reversals <= allowed, "direction changed {reversals} times: {changes:?}");
        prop_assert!(
            changes.iter().all(|&(t, _)| t < horizon / 2),
            "still changing late: {changes:?}"
        );
    }
}
