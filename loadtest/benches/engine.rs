//! The simulated engine's cost per step: how many simulated pods the planner can drive, and how
//! much CPU the server spends per engine step. Run: `cargo bench -p infergate-loadtest --bench engine`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use infergate_loadtest::sim::tokens::{filler_text, tokenize};
use infergate_loadtest::sim::{Engine, EngineConfig, EngineRequest, Profile};

/// A request with prompt `text_seed`'s 512 tokens and a 1,024-token answer.
fn request(text_seed: u64, id: u64) -> EngineRequest {
    EngineRequest {
        id,
        prompt_tokens: tokenize(&filler_text(512, text_seed)),
        max_tokens: 1024,
        ignore_eos: true,
        min_tokens: 0,
    }
}

/// An engine with `batch` requests decoding (their prefill done).
fn decoding_engine(batch: usize) -> (Engine, Duration) {
    let profile = Profile::default();
    let mut engine = Engine::new(EngineConfig::for_profile(&profile), profile, 1);
    for id in 0..batch as u64 {
        engine
            .add_request(request(id, id), Duration::ZERO)
            .expect("fits");
    }
    let mut now = Duration::ZERO;
    // Run the prefills.
    for _ in 0..200 {
        if let Some(step) = engine.step(now) {
            now = step.ends_at();
        }
        if engine.stats().running == batch
            && engine.stats().counters.prompt_tokens as usize == batch * 512
        {
            break;
        }
    }
    (engine, now)
}

fn decode_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_decode_step");
    for batch in [1usize, 64, 256, 1024] {
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let (mut engine, mut now) = decoding_engine(batch);
            let mut next_id = batch as u64;
            b.iter(|| {
                let step = engine.step(now).expect("busy");
                now = step.ends_at();
                // Steady state: each finished request is replaced by a new one.
                for u in &step.updates {
                    if u.finished.is_some() {
                        next_id += 1;
                        engine
                            .add_request(request(next_id % batch as u64, next_id), now)
                            .expect("fits");
                    }
                }
                black_box(step.updates.len())
            });
        });
    }
    group.finish();
}

fn admit_with_prefix_hits(c: &mut Criterion) {
    let prompt = tokenize(&filler_text(2048, 3));
    c.bench_function("engine_request_2k_prompt_cached_100_tokens", |b| {
        let profile = Profile::default();
        let mut engine = Engine::new(EngineConfig::for_profile(&profile), profile, 1);
        let mut id = 0u64;
        let mut now = Duration::ZERO;
        b.iter(|| {
            id += 1;
            let req = EngineRequest {
                id,
                prompt_tokens: prompt.clone(),
                max_tokens: 100,
                ignore_eos: true,
                min_tokens: 0,
            };
            engine.add_request(req, now).expect("fits");
            while let Some(step) = engine.step(now) {
                now = step.ends_at();
            }
        });
    });
}

criterion_group!(benches, decode_steps, admit_with_prefix_hits);
criterion_main!(benches);
