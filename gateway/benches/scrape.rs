//! Reading a real-sized vLLM `/metrics` page (two engines, full histograms: see
//! `fixtures/make_vllm_metrics.py`). Target: under 100 us per page.
//!
//! `cargo bench -p infergate-gateway --bench scrape -- --warm-up-time 1 --measurement-time 3`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infergate_config::Flavor;
use infergate_gateway::scrape::{extract, parse};
use std::hint::black_box;
use std::time::Instant;

const PAGE: &str = include_str!("fixtures/vllm_metrics.txt");

fn bench_scrape(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape");
    g.throughput(Throughput::Bytes(PAGE.len() as u64));
    let now = Instant::now();
    g.bench_function("extract_vllm_page", |b| {
        b.iter(|| extract(black_box(PAGE), Flavor::Vllm, now))
    });
    g.bench_function("extract_vllm_page_auto", |b| {
        b.iter(|| extract(black_box(PAGE), Flavor::Auto, now))
    });
    // Every sample parsed (names, labels, values): the cost without the name filter.
    g.bench_function("parse_every_sample", |b| {
        b.iter(|| parse::parse(black_box(PAGE)).count())
    });
    g.finish();
}

criterion_group!(benches, bench_scrape);
criterion_main!(benches);
