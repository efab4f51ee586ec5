use super::*;

fn view(waiting: f64, kv: f64) -> EndpointView<'static> {
    EndpointView {
        ready: true,
        waiting: Some(waiting),
        running: Some(0.0),
        kv_usage: Some(kv),
        ..EndpointView::default()
    }
}

fn snap<'a>(
    eps: &'a [EndpointView<'a>],
    policy: PickerPolicy,
    weights: &'a PickerWeights,
) -> PoolSnapshot<'a> {
    PoolSnapshot {
        endpoints: eps,
        rr_cursor: 0,
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

fn index(p: Pick) -> usize {
    match p {
        Pick::Endpoint { index, .. } => index,
        Pick::Hold { reason } => panic!("held: {reason:?}"),
    }
}

#[test]
fn holds_without_candidates() {
    let w = PickerWeights::default();
    let mut eps = vec![view(0.0, 0.0), view(0.0, 0.0), view(0.0, 0.0)];
    eps[0].ready = false;
    eps[1].ejected = true;
    eps[2].terminating = true;
    for policy in PickerPolicy::ALL {
        assert_eq!(
            pick(&snap(&eps, policy, &w), &facts(0)),
            Pick::Hold {
                reason: HoldReason::NoReadyEndpoint
            }
        );
    }
    let ok = [view(0.0, 0.0)];
    assert_eq!(
        pick_excluding(&snap(&ok, PickerPolicy::Infergate, &w), &facts(0), &[0]),
        Pick::Hold {
            reason: HoldReason::NoReadyEndpoint
        }
    );
}

#[test]
fn holds_when_all_saturated_and_avoids_saturated_ones() {
    let w = PickerWeights::default();
    let full = [view(8.0, 0.95), view(20.0, 0.9)];
    assert_eq!(
        pick(&snap(&full, PickerPolicy::Infergate, &w), &facts(0)),
        Pick::Hold {
            reason: HoldReason::AllSaturated
        }
    );
    // Queue over but KV under: not saturated.
    let half = [view(8.0, 0.95), view(20.0, 0.5)];
    assert_eq!(
        index(pick(&snap(&half, PickerPolicy::QueueKv, &w), &facts(0))),
        1
    );
}

#[test]
fn only_candidate_reason() {
    let w = PickerWeights::default();
    let mut eps = [view(0.0, 0.0), view(0.0, 0.0)];
    eps[0].ready = false;
    assert_eq!(
        pick(&snap(&eps, PickerPolicy::Infergate, &w), &facts(0)),
        Pick::Endpoint {
            index: 1,
            reason: PickReason::OnlyCandidate
        }
    );
}

#[test]
fn queue_kv_prefers_short_queue_and_counts_recent_picks() {
    let w = PickerWeights::default();
    let mut eps = [view(3.0, 0.5), view(1.0, 0.5)];
    assert_eq!(
        index(pick(&snap(&eps, PickerPolicy::QueueKv, &w), &facts(0))),
        1
    );
    eps[1].picks_since_scrape = 5;
    assert_eq!(
        index(pick(&snap(&eps, PickerPolicy::QueueKv, &w), &facts(0))),
        0
    );
}

#[test]
fn prefix_affinity_wins_at_equal_load_but_not_when_overloaded() {
    let w = PickerWeights::default();
    let mut eps = vec![view(1.0, 0.3); 4];
    eps[2].prefix_blocks = 6;
    eps[3].prefix_blocks = 2;
    let s = snap(&eps, PickerPolicy::Infergate, &w);
    assert_eq!(
        pick(&s, &facts(8)),
        Pick::Endpoint {
            index: 2,
            reason: PickReason::PrefixAffinity
        }
    );
    // Endpoint 2 gets 30 more requests than the others: balance wins.
    eps[2].running = Some(30.0);
    eps[2].inflight = 30;
    let s = snap(&eps, PickerPolicy::Infergate, &w);
    let p = pick(&s, &facts(8));
    assert_ne!(index(p), 2);
}

#[test]
fn lora_affinity() {
    let w = PickerWeights::default();
    let adapters = vec!["sql".to_string()];
    let mut eps = vec![view(0.0, 0.2); 3];
    eps[1].loras = &adapters;
    let mut f = facts(0);
    f.lora = Some("sql".into());
    assert_eq!(
        pick(&snap(&eps, PickerPolicy::Infergate, &w), &f),
        Pick::Endpoint {
            index: 1,
            reason: PickReason::LoraAffinity
        }
    );
}

#[test]
fn unknown_load_falls_back_to_inflight() {
    let w = PickerWeights::default();
    let mut eps = vec![
        EndpointView {
            ready: true,
            ..EndpointView::default()
        };
        3
    ];
    eps[0].inflight = 4;
    eps[1].inflight = 1;
    eps[2].inflight = 3;
    for policy in [PickerPolicy::QueueKv, PickerPolicy::Infergate] {
        assert_eq!(
            pick(&snap(&eps, policy, &w), &facts(0)),
            Pick::Endpoint {
                index: 1,
                reason: PickReason::LeastInflight
            },
            "{policy:?}"
        );
    }
}

#[test]
fn round_robin_and_least_inflight() {
    let w = PickerWeights::default();
    let mut eps = vec![view(0.0, 0.0); 3];
    eps[1].ejected = true;
    let mut s = snap(&eps, PickerPolicy::RoundRobin, &w);
    let got: Vec<usize> = (0..4)
        .map(|c| {
            s.rr_cursor = c;
            index(pick(&s, &facts(0)))
        })
        .collect();
    assert_eq!(got, vec![0, 2, 0, 2]);

    let mut eps = vec![view(0.0, 0.0); 3];
    eps[0].inflight = 2;
    eps[2].inflight = 1;
    eps[1].inflight = 5;
    let s = snap(&eps, PickerPolicy::LeastInflight, &w);
    assert_eq!(
        pick(&s, &facts(0)),
        Pick::Endpoint {
            index: 2,
            reason: PickReason::LeastInflight
        }
    );
}

#[test]
fn ties_rotate_with_the_cursor() {
    let w = PickerWeights::default();
    let eps = vec![view(0.0, 0.0); 4];
    let mut s = snap(&eps, PickerPolicy::Infergate, &w);
    let mut seen = [0; 4];
    for c in 0..8 {
        s.rr_cursor = c;
        seen[index(pick(&s, &facts(0)))] += 1;
    }
    assert_eq!(seen, [2, 2, 2, 2]);
}

#[test]
fn reasons_have_distinct_labels() {
    let mut labels: Vec<_> = PickReason::ALL.iter().map(|r| r.as_str()).collect();
    labels.extend(HoldReason::ALL.iter().map(|r| r.as_str()));
    let n = labels.len();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), n);
}

#[test]
fn requests_stuck_before_the_engine_count_as_queue() {
    // A pod slowed in front of its engine: its engine admits less, so its scraped queue, running
    // count and KV use look lighter than a healthy pod's, while this gateway's requests pile up
    // there (12 in flight, 2 running). The healthy pod (9 in flight: 8 running, 1 waiting) must
    // win under `infergate`; `queue-kv` sees only the engine and keeps the stale pod.
    let w = PickerWeights::default();
    let slow = EndpointView {
        running: Some(2.0),
        inflight: 12,
        ..view(0.0, 0.1)
    };
    let healthy = EndpointView {
        running: Some(8.0),
        inflight: 9,
        ..view(1.0, 0.5)
    };
    let eps = [slow, healthy];
    assert_eq!(
        index(pick(&snap(&eps, PickerPolicy::Infergate, &w), &facts(0))),
        1
    );
    assert_eq!(
        index(pick(&snap(&eps, PickerPolicy::QueueKv, &w), &facts(0))),
        0
    );
    // A healthy pool is unchanged: in flight = running + waiting adds nothing.
    let even = [
        EndpointView {
            running: Some(4.0),
            inflight: 5,
            ..view(1.0, 0.3)
        },
        EndpointView {
            running: Some(4.0),
            inflight: 7,
            ..view(3.0, 0.3)
        },
    ];
    assert_eq!(
        index(pick(&snap(&even, PickerPolicy::Infergate, &w), &facts(0))),
        0
    );
}

#[test]
fn a_reason_index_is_its_place_in_all() {
    for (i, reason) in PickReason::ALL.into_iter().enumerate() {
        assert_eq!(reason.index(), i, "{reason:?}");
    }
}
