//! Property tests of the pure picker: the guarantees the rest of the gateway relies on, over
//! random pools.

use infergate_config::{PickerPolicy, PickerWeights};
use infergate_gateway::picker::{
    Balance, EndpointView, HoldReason, Pick, PickReason, PoolSnapshot, RequestFacts, Saturation,
    pick, pick_excluding,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Ep {
    ready: bool,
    ejected: bool,
    terminating: bool,
    waiting: Option<f64>,
    running: Option<f64>,
    kv: Option<f64>,
    inflight: u32,
    picks: u32,
    prefix_blocks: u32,
}

impl Ep {
    fn view(&self) -> EndpointView<'static> {
        EndpointView {
            ready: self.ready,
            ejected: self.ejected,
            terminating: self.terminating,
            waiting: self.waiting,
            running: self.running,
            kv_usage: self.kv,
            inflight: self.inflight,
            picks_since_scrape: self.picks,
            prefix_blocks: self.prefix_blocks,
            ..EndpointView::default()
        }
    }
}

fn any_ep() -> impl Strategy<Value = Ep> {
    (
        any::<[bool; 3]>(),
        prop::option::of(0u32..30),
        prop::option::of(0u32..40),
        prop::option::of(0.0f64..=1.0),
        0u32..50,
        0u32..10,
        0u32..10,
    )
        .prop_map(
            |(flags, waiting, running, kv, inflight, picks, prefix_blocks)| Ep {
                // Mostly usable, so that picks (not only holds) are exercised.
                ready: flags[0] || inflight % 3 != 0,
                ejected: flags[1] && inflight % 2 == 0,
                terminating: flags[2] && picks % 2 == 0,
                waiting: waiting.map(f64::from),
                running: running.map(f64::from),
                kv,
                inflight,
                picks,
                prefix_blocks,
            },
        )
}

fn any_policy() -> impl Strategy<Value = PickerPolicy> {
    prop::sample::select(PickerPolicy::ALL.to_vec())
}

fn snapshot<'a>(
    views: &'a [EndpointView<'a>],
    policy: PickerPolicy,
    weights: &'a PickerWeights,
    cursor: usize,
) -> PoolSnapshot<'a> {
    PoolSnapshot {
        endpoints: views,
        rr_cursor: cursor,
        policy,
        weights,
        saturation: Saturation::default(),
        balance: Balance::default(),
    }
}

fn facts(blocks: usize) -> RequestFacts {
    RequestFacts {
        model: "m".into(),
        prefix: (0..blocks as u64).collect(),
        ..RequestFacts::default()
    }
}

fn saturated(e: &Ep, s: Saturation) -> bool {
    match (e.waiting, e.kv) {
        (Some(w), Some(kv)) => w + f64::from(e.picks) >= s.queue && kv >= s.kv,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never an unready, ejected, terminating or excluded endpoint; Hold exactly when nothing is
    /// left or everything left is saturated; the scored policies avoid saturated endpoints.
    #[test]
    fn only_candidates_are_picked_and_hold_iff_none_or_all_saturated(
        eps in prop::collection::vec(any_ep(), 1..16),
        policy in any_policy(),
        exclude_mask in any::<u16>(),
        cursor in 0usize..1000,
        blocks in 0usize..10,
    ) {
        let views: Vec<_> = eps.iter().map(Ep::view).collect();
        let w = PickerWeights::default();
        let snap = snapshot(&views, policy, &w, cursor);
        let exclude: Vec<usize> = (0..eps.len()).filter(|i| exclude_mask & (1 << i) != 0).collect();
        let candidate = |i: usize| {
            let e = &eps[i];
            e.ready && !e.ejected && !e.terminating && !exclude.contains(&i)
        };
        let sat = Saturation::default();
        let candidates: Vec<usize> = (0..eps.len()).filter(|&i| candidate(i)).collect();
        let all_saturated = candidates.iter().all(|&i| saturated(&eps[i], sat));
        match pick_excluding(&snap, &facts(blocks), &exclude) {
            Pick::Endpoint { index, .. } => {
                prop_assert!(candidate(index), "picked non-candidate {index}");
                prop_assert!(!all_saturated);
                if matches!(policy, PickerPolicy::QueueKv | PickerPolicy::Infergate) {
                    prop_assert!(!saturated(&eps[index], sat), "picked a saturated endpoint");
                }
            }
            Pick::Hold { reason: HoldReason::NoReadyEndpoint } => prop_assert!(candidates.is_empty()),
            Pick::Hold { reason: HoldReason::AllSaturated } => {
                prop_assert!(!candidates.is_empty() && all_saturated)
            }
        }
        // Pure: the same question gets the same answer.
        prop_assert_eq!(
            pick_excluding(&snap, &facts(blocks), &exclude),
            pick_excluding(&snap, &facts(blocks), &exclude)
        );
    }

    /// With equal load, the endpoint that was sent the longest run of the prompt's blocks wins.
    #[test]
    fn equal_load_prefix_affinity_wins(
        n in 2usize..16,
        affine in 0usize..16,
        waiting in prop::option::of(0u32..6),
        kv in 0.0f64..0.85,
        inflight in 0u32..6,
        blocks in 1usize..40,
        matched in 1usize..40,
        cursor in 0usize..1000,
        lesser in prop::collection::vec(0usize..40, 16),
    ) {
        let affine = affine % n;
        let matched = matched.min(blocks);
        let eps: Vec<Ep> = (0..n)
            .map(|i| Ep {
                ready: true,
                ejected: false,
                terminating: false,
                waiting: waiting.map(f64::from),
                running: waiting.map(|_| 4.0),
                kv: waiting.map(|_| kv),
                inflight,
                picks: 0,
                // Others may match less, never as much.
                prefix_blocks: if i == affine { matched as u32 } else { (lesser[i] % matched) as u32 },
            })
            .collect();
        let views: Vec<_> = eps.iter().map(Ep::view).collect();
        let w = PickerWeights::default();
        let snap = snapshot(&views, PickerPolicy::Infergate, &w, cursor);
        prop_assert_eq!(
            pick(&snap, &facts(blocks)),
            Pick::Endpoint { index: affine, reason: PickReason::PrefixAffinity }
        );
    }

    /// 100 picks between two scrapes, each counted in flight and since the scrape as the Pool
    /// does: they spread over the endpoints instead of all landing on the one that looked
    /// emptiest. Bound: no endpoint gets more than its fair share plus the head start the scrape
    /// showed (queue spread) plus, with a shared prefix, the imbalance guard's allowance.
    #[test]
    fn a_burst_between_scrapes_spreads(
        n in 2usize..9,
        waiting in prop::collection::vec(0u32..4, 9),
        running in prop::collection::vec(0u32..8, 9),
        kv in 0.05f64..0.5,
        policy in prop::sample::select(vec![PickerPolicy::QueueKv, PickerPolicy::Infergate, PickerPolicy::LeastInflight]),
        shared_prefix in any::<bool>(),
    ) {
        let mut eps: Vec<Ep> = (0..n)
            .map(|i| Ep {
                ready: true,
                ejected: false,
                terminating: false,
                waiting: Some(f64::from(waiting[i])),
                running: Some(f64::from(running[i])),
                kv: Some(kv),
                inflight: 0,
                picks: 0,
                prefix_blocks: 0,
            })
            .collect();
        let blocks = if shared_prefix { 16 } else { 0 };
        let w = PickerWeights::default();
        let mut counts = vec![0u32; n];
        for cursor in 0..100 {
            let views: Vec<_> = eps.iter().map(Ep::view).collect();
            let snap = snapshot(&views, policy, &w, cursor);
            let Pick::Endpoint { index, .. } = pick(&snap, &facts(blocks)) else {
                prop_assert!(false, "held during a burst");
                unreachable!()
            };
            counts[index] += 1;
            eps[index].inflight += 1;
            eps[index].picks += 1;
            if shared_prefix {
                eps[index].prefix_blocks = blocks as u32;
            }
        }
        let spread = |v: &[u32]| f64::from(*v[..n].iter().max().unwrap_or(&0) - *v[..n].iter().min().unwrap_or(&0));
        let head_start = match policy {
            PickerPolicy::LeastInflight => 0.0,
            _ => spread(&waiting) + if shared_prefix { spread(&running) } else { 0.0 },
        };
        let allowance = if shared_prefix && policy == PickerPolicy::Infergate { Balance::default().abs + 1.0 } else { 0.0 };
        let bound = (100.0 / n as f64).ceil() + head_start + allowance + 2.0;
        let max = f64::from(*counts.iter().max().unwrap_or(&0));
        prop_assert!(max <= bound, "{policy:?} counts {counts:?} over bound {bound}");
        // And never one endpoint taking most of the burst (two endpoints: at most 65%).
        let cap = if n == 2 { 0.65 } else { 0.5 };
        prop_assert!(max / 100.0 <= cap, "{policy:?} max share {max}% with {n} endpoints: {counts:?}");
    }

    /// Round-robin visits every candidate equally often, in any window of whole cycles.
    #[test]
    fn round_robin_cycles_evenly(
        eps in prop::collection::vec(any_ep(), 1..12),
        start in 0usize..1000,
        cycles in 1usize..5,
    ) {
        let eps: Vec<Ep> = eps.into_iter().map(|mut e| { e.waiting = None; e }).collect();
        let views: Vec<_> = eps.iter().map(Ep::view).collect();
        let w = PickerWeights::default();
        let candidates: Vec<usize> = (0..eps.len())
            .filter(|&i| eps[i].ready && !eps[i].ejected && !eps[i].terminating)
            .collect();
        prop_assume!(!candidates.is_empty());
        let mut counts = vec![0usize; eps.len()];
        for c in start..start + cycles * candidates.len() {
            let snap = snapshot(&views, PickerPolicy::RoundRobin, &w, c);
            match pick(&snap, &facts(0)) {
                Pick::Endpoint { index, .. } => counts[index] += 1,
                Pick::Hold { reason } => prop_assert!(false, "held: {reason:?}"),
            }
        }
        for i in 0..eps.len() {
            let expect = if candidates.contains(&i) { cycles } else { 0 };
            prop_assert_eq!(counts[i], expect, "endpoint {} in {:?}", i, counts);
        }
    }
}

/// The burst in numbers: 4 equally loaded endpoints, 100 requests between two scrapes.
#[test]
fn burst_of_100_over_4_equal_endpoints() {
    for (policy, shared_prefix, max_share) in [
        (PickerPolicy::QueueKv, false, 26),
        (PickerPolicy::Infergate, false, 26),
        (PickerPolicy::Infergate, true, 35),
    ] {
        let blocks = if shared_prefix { 16 } else { 0 };
        let mut eps: Vec<Ep> = (0..4)
            .map(|_| Ep {
                ready: true,
                ejected: false,
                terminating: false,
                waiting: Some(0.0),
                running: Some(2.0),
                kv: Some(0.2),
                inflight: 0,
                picks: 0,
                prefix_blocks: 0,
            })
            .collect();
        let w = PickerWeights::default();
        let mut counts = [0u32; 4];
        for cursor in 0..100 {
            let views: Vec<_> = eps.iter().map(Ep::view).collect();
            let decision = pick(&snapshot(&views, policy, &w, cursor), &facts(blocks));
            let Pick::Endpoint { index, .. } = decision else {
                panic!("held");
            };
            counts[index] += 1;
            eps[index].inflight += 1;
            eps[index].picks += 1;
            if shared_prefix {
                eps[index].prefix_blocks = blocks as u32;
            }
        }
        println!("{policy:?} shared_prefix={shared_prefix}: {counts:?}");
        let max = counts.iter().copied().max().unwrap_or(0);
        assert!(max <= max_share, "{policy:?} {shared_prefix}: {counts:?}");
        assert_eq!(counts.iter().sum::<u32>(), 100);
    }
}
