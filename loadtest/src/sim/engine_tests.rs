//! Engine properties, checked in virtual time.

use super::*;
use crate::sim::tokens::{filler_text, tokenize};

fn config(max_num_seqs: usize, num_gpu_blocks: u32) -> EngineConfig {
    EngineConfig {
        max_num_seqs,
        num_gpu_blocks,
        ..EngineConfig::for_profile(&Profile::default())
    }
}

fn req(id: RequestId, prompt_len: usize, max_tokens: u32) -> EngineRequest {
    EngineRequest {
        id,
        prompt_tokens: tokenize(&filler_text(prompt_len, id)),
        max_tokens,
        ignore_eos: true,
        min_tokens: 0,
    }
}

/// Steps until idle (bounded); returns every update with the step end it happened at.
fn run(engine: &mut Engine, mut now: Duration) -> Vec<(Duration, RequestUpdate)> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(step) = engine.step(now) else {
            return out;
        };
        now = step.ends_at();
        for u in step.updates {
            out.push((now, u));
        }
    }
    panic!("engine did not go idle");
}

fn finished_of(updates: &[(Duration, RequestUpdate)], id: RequestId) -> Finished {
    updates
        .iter()
        .find_map(|(_, u)| (u.id == id).then(|| u.finished.clone()).flatten())
        .expect("finished")
}

fn ttft_of(updates: &[(Duration, RequestUpdate)], id: RequestId) -> Duration {
    updates
        .iter()
        .find_map(|(_, u)| (u.id == id).then_some(u.ttft).flatten())
        .expect("first token")
}

#[test]
fn batch_is_capped_by_max_num_seqs() {
    let mut e = Engine::new(config(4, 25_750), Profile::default(), 1);
    for id in 0..10 {
        e.add_request(req(id, 2000, 500), Duration::ZERO)
            .expect("add");
    }
    assert_eq!((e.stats().running, e.stats().waiting), (0, 10));
    e.step(Duration::ZERO).expect("work");
    let s = e.stats();
    assert_eq!((s.running, s.waiting), (4, 6));
    let updates = run(&mut e, Duration::from_secs(1));
    assert_eq!(
        updates.iter().filter(|(_, u)| u.finished.is_some()).count(),
        10
    );
    assert_eq!(e.stats().kv_usage, 0.0);
}

#[test]
fn chunked_prefill_respects_the_token_budget() {
    let mut cfg = config(8, 25_750);
    cfg.max_num_batched_tokens = 512;
    let mut e = Engine::new(cfg, Profile::default(), 1);
    e.add_request(req(1, 2000, 3), Duration::ZERO).expect("add");
    let mut steps_to_first = 0;
    let mut now = Duration::ZERO;
    loop {
        let step = e.step(now).expect("work");
        assert!(step.work.prefill_tokens <= 512);
        now = step.ends_at();
        steps_to_first += 1;
        if step.updates.iter().any(|u| u.ttft.is_some()) {
            break;
        }
    }
    assert_eq!(steps_to_first, 4, "2000 tokens in chunks of 512");
}

#[test]
fn kv_use_rises_and_preemption_recomputes_when_exhausted() {
    // 64 blocks of 16 = 1024 tokens; four requests of 200 + 200 tokens need 100 blocks together.
    let mut e = Engine::new(config(16, 64), Profile::default(), 1);
    let mut last_usage = 0.0;
    for id in 0..4 {
        e.add_request(req(id, 200, 200), Duration::ZERO)
            .expect("add");
        e.step(Duration::ZERO);
        let usage = e.stats().kv_usage;
        assert!(usage > last_usage, "{usage} after {id}");
        last_usage = usage;
    }
    let updates = run(&mut e, Duration::ZERO);
    let s = e.stats();
    assert!(s.counters.preemptions > 0);
    assert!(updates.iter().any(|(_, u)| u.preempted));
    for id in 0..4 {
        assert_eq!(finished_of(&updates, id).output_tokens, 200);
    }
    assert_eq!(s.used_blocks, 0, "every block is returned");
    assert_eq!(s.counters.generation_tokens, 800);
}

#[test]
fn repeated_prefix_hits_the_cache_and_lowers_ttft() {
    let mut e = Engine::new(config(8, 25_750), Profile::default(), 1);
    let system = filler_text(3000, 42);
    let first = EngineRequest {
        id: 1,
        prompt_tokens: tokenize(&format!("{system} first question")),
        max_tokens: 5,
        ignore_eos: true,
        min_tokens: 0,
    };
    e.add_request(first, Duration::ZERO).expect("add");
    let a = run(&mut e, Duration::ZERO);
    let hits_before = e.stats().counters.prefix_hits;
    assert_eq!(hits_before, 0);
    let second = EngineRequest {
        id: 2,
        prompt_tokens: tokenize(&format!("{system} another one")),
        max_tokens: 5,
        ignore_eos: true,
        min_tokens: 0,
    };
    let t0 = Duration::from_secs(10);
    e.add_request(second, t0).expect("add");
    let b = run(&mut e, t0);
    let hits = e.stats().counters.prefix_hits;
    assert!(
        hits >= 2976,
        "{hits}: at least 186 full blocks of the shared 3000 tokens"
    );
    assert_eq!(finished_of(&b, 2).cached_tokens as u64, hits);
    assert!(
        ttft_of(&b, 2) * 3 < ttft_of(&a, 1),
        "{:?} vs {:?}",
        ttft_of(&b, 2),
        ttft_of(&a, 1)
    );
}

#[test]
fn ttft_grows_with_the_queue() {
    let mut e = Engine::new(config(2, 25_750), Profile::default(), 1);
    for id in 0..8 {
        e.add_request(req(id, 500, 20), Duration::ZERO)
            .expect("add");
    }
    let updates = run(&mut e, Duration::ZERO);
    let ttfts: Vec<Duration> = (0..8).map(|id| ttft_of(&updates, id)).collect();
    for pair in ttfts.chunks(2).collect::<Vec<_>>().windows(2) {
        assert!(pair[1][0] > pair[0][1], "{ttfts:?}");
    }
    assert!(finished_of(&updates, 7).queue_time > finished_of(&updates, 0).queue_time);
}

#[test]
fn same_seed_same_lengths() {
    let lengths = |seed: u64| -> Vec<u32> {
        let mut e = Engine::new(config(8, 25_750), Profile::default(), seed);
        (0..50)
            .map(|id| {
                let mut r = req(id, 10, 1000);
                r.ignore_eos = false;
                e.add_request(r, Duration::ZERO).expect("add")
            })
            .collect()
    };
    assert_eq!(lengths(7), lengths(7));
    assert_ne!(lengths(7), lengths(8));
    let l = lengths(7);
    assert!(l.iter().all(|&n| (1..=1000).contains(&n)));
    let mean = l.iter().map(|&n| f64::from(n)).sum::<f64>() / l.len() as f64;
    assert!((80.0..400.0).contains(&mean), "mean {mean}");
}

#[test]
fn eos_respects_min_and_max_tokens() {
    let mut e = Engine::new(config(8, 25_750), Profile::default(), 3);
    for id in 0..50 {
        let mut r = req(id, 10, 30);
        r.ignore_eos = false;
        r.min_tokens = 10;
        let n = e.add_request(r, Duration::ZERO).expect("add");
        assert!((10..=30).contains(&n), "{n}");
    }
    let updates = run(&mut e, Duration::ZERO);
    for (_, u) in &updates {
        if let Some(f) = &u.finished {
            let expect = if f.output_tokens == 30 {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            assert_eq!(f.reason, expect);
        }
    }
}

#[test]
fn rejects_what_cannot_run() {
    let mut e = Engine::new(config(8, 10), Profile::default(), 1);
    assert!(matches!(
        e.add_request(req(1, 8000, 500), Duration::ZERO),
        Err(AddError::ContextTooLong { .. })
    ));
    assert!(matches!(
        e.add_request(req(2, 150, 20), Duration::ZERO),
        Err(AddError::ExceedsKvCache { .. })
    ));
    assert!(matches!(
        e.add_request(req(3, 0, 20), Duration::ZERO),
        Err(AddError::EmptyPrompt)
    ));
    e.add_request(req(4, 10, 20), Duration::ZERO).expect("fits");
    assert_eq!(
        e.add_request(req(4, 10, 20), Duration::ZERO),
        Err(AddError::DuplicateId(4))
    );
}

#[test]
fn abort_frees_blocks() {
    let mut e = Engine::new(config(8, 100), Profile::default(), 1);
    e.add_request(req(1, 300, 100), Duration::ZERO)
        .expect("add");
    e.add_request(req(2, 300, 100), Duration::ZERO)
        .expect("add");
    e.step(Duration::ZERO);
    assert!(e.stats().used_blocks > 0);
    assert!(e.abort(1));
    assert!(e.abort(2));
    assert!(!e.abort(2));
    assert_eq!(e.stats().used_blocks, 0);
    assert!(!e.has_work());
    assert!(e.step(Duration::ZERO).is_none());
}

#[test]
fn decode_steps_follow_the_profile() {
    let mut e = Engine::new(config(8, 25_750), Profile::default(), 1);
    e.add_request(req(1, 100, 3), Duration::ZERO).expect("add");
    let first = e.step(Duration::ZERO).expect("prefill");
    assert_eq!(first.work.prefill_tokens, 100);
    let second = e.step(first.ends_at()).expect("decode");
    assert_eq!(
        second.work,
        StepWork {
            prefill_tokens: 0,
            decode_seqs: 1,
            kv_tokens_read: 101
        }
    );
    assert_eq!(second.duration, Profile::default().step_time(&second.work));
    assert_eq!(second.updates[0].itl, Some(second.duration));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever the load and however small the cache, every request finishes with its drawn
        /// length, tokens are never lost, and every block comes back.
        #[test]
        fn every_request_finishes_and_blocks_return(
            reqs in prop::collection::vec((1usize..300, 1u32..120, any::<bool>(), 0u64..4), 1..30),
            blocks in 30u32..200,
            seqs in 1usize..12,
            budget in 16usize..1024,
        ) {
            let mut cfg = config(seqs, blocks);
            cfg.max_num_batched_tokens = budget;
            let mut e = Engine::new(cfg, Profile::default(), 9);
            let mut expected = HashMap::new();
            let mut now = Duration::ZERO;
            let mut updates = Vec::new();
            for (id, (plen, max, eos, prefix)) in reqs.into_iter().enumerate() {
                // A few shared prefixes so the cache is exercised.
                let text = format!("{}{}", filler_text(plen / 2, prefix), filler_text(plen - plen / 2, id as u64));
                let r = EngineRequest { id: id as u64, prompt_tokens: tokenize(&text), max_tokens: max, ignore_eos: eos, min_tokens: 0 };
                match e.add_request(r, now) {
                    Ok(n) => { expected.insert(id as u64, n); }
                    Err(AddError::ExceedsKvCache { .. } | AddError::EmptyPrompt) => {}
                    Err(other) => prop_assert!(false, "{other}"),
                }
                if id % 3 == 0 && let Some(step) = e.step(now) {
                    now = step.ends_at();
                    updates.extend(step.updates.into_iter().map(|u| (now, u)));
                }
            }
            updates.extend(run(&mut e, now));
            let mut tokens: HashMap<u64, u32> = HashMap::new();
            for (_, u) in &updates {
                *tokens.entry(u.id).or_default() += u.new_tokens;
                if let Some(f) = &u.finished {
                    prop_assert_eq!(f.output_tokens, expected[&u.id]);
                }
            }
            for (id, n) in &expected {
                prop_assert_eq!(tokens.get(id).copied().unwrap_or(0), *n, "id {}", id);
            }
            prop_assert_eq!(e.stats().used_blocks, 0);
        }
    }
}
