//! `/metrics` in the Prometheus text format (0.0.4), with the names, labels and histogram buckets of
//! the real servers, so that a scraper written for vLLM or SGLang reads the simulator unchanged.
//!
//! Sources (checked against the projects' code):
//! - vLLM V1, `vllm/v1/metrics/loggers.py` (`PrometheusStatLogger`): labels `model_name` and `engine`;
//!   `vllm:cache_config_info` is a gauge set to 1 whose labels are the cache config (no
//!   `model_name`); counters are exposed with a `_total` suffix; the TTFT, inter-token and
//!   request-latency bucket lists below are copied from there.
//! - SGLang, `python/sglang/srt/metrics/collector.py` (`SchedulerMetricsCollector`,
//!   `TokenizerMetricsCollector`): label `model_name`; the default TTFT, inter-token and e2e buckets.
//!
//! Counters are written with their `_total` name on the `# TYPE` line (as Go clients do), which
//! every Prometheus parser accepts.

use std::fmt::Write;

use super::engine::{EngineStats, FinishReason, Finished};

/// Which server's metric names to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// vLLM V1 names (`vllm:`).
    Vllm,
    /// SGLang names (`sglang:`).
    Sglang,
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vllm" => Ok(Flavor::Vllm),
            "sglang" => Ok(Flavor::Sglang),
            other => Err(format!("unknown flavor {other:?} (vllm or sglang)")),
        }
    }
}

const VLLM_TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const VLLM_ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const VLLM_REQUEST: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const SGLANG_TTFT: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
];
const SGLANG_ITL: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
    0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
];
const SGLANG_E2E: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0, 600.0, 1200.0, 1800.0, 2400.0,
];

/// vLLM's `build_1_2_5_buckets(max_value)`: 1, 2, 5, 10, 20, 50... up to `max_value`.
pub fn buckets_1_2_5(max_value: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let v = m * scale;
            if v > max_value {
                return out;
            }
            out.push(v);
        }
        scale *= 10.0;
    }
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Latency and length histograms, fed with what each engine step reports.
#[derive(Debug, Clone)]
pub struct Recorder {
    flavor: Flavor,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prompt_len: Histogram,
    output_len: Histogram,
    cached_tokens: u64,
    requests: u64,
}

impl Recorder {
    /// Empty histograms with `flavor`'s buckets.
    pub fn new(flavor: Flavor, max_model_len: usize) -> Recorder {
        let (ttft, itl, e2e) = match flavor {
            Flavor::Vllm => (VLLM_TTFT, VLLM_ITL, VLLM_REQUEST),
            Flavor::Sglang => (SGLANG_TTFT, SGLANG_ITL, SGLANG_E2E),
        };
        let lens = buckets_1_2_5(max_model_len as f64);
        Recorder {
            flavor,
            ttft: Histogram::new(ttft),
            itl: Histogram::new(itl),
            e2e: Histogram::new(e2e),
            queue: Histogram::new(VLLM_REQUEST),
            prompt_len: Histogram::new(&lens),
            output_len: Histogram::new(&lens),
            cached_tokens: 0,
            requests: 0,
        }
    }

    /// A first token after `secs`.
    pub fn observe_ttft(&mut self, secs: f64) {
        self.ttft.observe(secs);
    }

    /// A later token, `secs` after the previous one.
    pub fn observe_itl(&mut self, secs: f64) {
        self.itl.observe(secs);
    }

    /// A finished request.
    pub fn observe_finished(&mut self, f: &Finished) {
        self.e2e.observe(f.e2e.as_secs_f64());
        self.queue.observe(f.queue_time.as_secs_f64());
        self.prompt_len.observe(f64::from(f.prompt_tokens));
        self.output_len.observe(f64::from(f.output_tokens));
        self.cached_tokens += u64::from(f.cached_tokens);
        self.requests += 1;
    }

    /// The time-to-first-token histogram.
    pub fn ttft(&self) -> &Histogram {
        &self.ttft
    }
}

/// Static facts shown in info metrics.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// Served model name (`model_name` label).
    pub model: String,
    /// Most running requests.
    pub max_num_seqs: usize,
    /// Whether prefix caching is on.
    pub enable_prefix_caching: bool,
}

/// Renders the exposition for `flavor`.
pub fn render(model: &ServedModel, stats: &EngineStats, rec: &Recorder) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut w = Writer {
        out: &mut out,
        labels: match rec.flavor {
            Flavor::Vllm => format!("model_name=\"{}\",engine=\"0\"", escape(&model.model)),
            Flavor::Sglang => format!("model_name=\"{}\"", escape(&model.model)),
        },
    };
    match rec.flavor {
        Flavor::Vllm => render_vllm(&mut w, model, stats, rec),
        Flavor::Sglang => render_sglang(&mut w, stats, rec),
    }
    out
}

fn render_vllm(w: &mut Writer<'_>, model: &ServedModel, s: &EngineStats, rec: &Recorder) {
    let c = &s.counters;
    w.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        s.running as f64,
    );
    w.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        s.waiting as f64,
    );
    w.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        s.kv_usage,
    );
    w.gauge(
        "vllm:gpu_cache_usage_perc",
        "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        s.kv_usage,
    );
    let _ = writeln!(
        w.out,
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"{}\",engine=\"0\"}} 1",
        s.block_size,
        if model.enable_prefix_caching {
            "True"
        } else {
            "False"
        },
        s.num_gpu_blocks,
    );
    w.counter(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        c.prefix_queries,
    );
    w.counter(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        c.prefix_hits,
    );
    w.counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        c.preemptions,
    );
    w.counter(
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        c.prompt_tokens,
    );
    w.counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        c.generation_tokens,
    );
    w.header(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        "counter",
    );
    for (reason, n) in [
        (FinishReason::Stop.as_str(), c.finished_stop),
        (FinishReason::Length.as_str(), c.finished_length),
        ("abort", c.aborted),
    ] {
        let _ = writeln!(
            w.out,
            "vllm:request_success_total{{{},finished_reason=\"{reason}\"}} {n}",
            w.labels
        );
    }
    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &rec.ttft,
    );
    w.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &rec.itl,
    );
    w.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &rec.e2e,
    );
    w.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &rec.queue,
    );
    w.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &rec.prompt_len,
    );
    w.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &rec.output_len,
    );
}

fn render_sglang(w: &mut Writer<'_>, s: &EngineStats, rec: &Recorder) {
    let c = &s.counters;
    let used_tokens = u64::from(s.used_blocks) * u64::from(s.block_size);
    let hit_rate = if c.prefix_queries == 0 {
        0.0
    } else {
        c.prefix_hits as f64 / c.prefix_queries as f64
    };
    w.gauge(
        "sglang:num_running_reqs",
        "The number of running requests.",
        s.running as f64,
    );
    w.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        s.waiting as f64,
    );
    w.gauge(
        "sglang:num_used_tokens",
        "The number of used tokens.",
        used_tokens as f64,
    );
    w.gauge("sglang:token_usage", "The token usage.", s.kv_usage);
    w.gauge(
        "sglang:cache_hit_rate",
        "The prefix cache hit rate.",
        hit_rate,
    );
    w.gauge(
        "sglang:max_total_num_tokens",
        "Maximum total number of tokens in the KV cache pool.",
        f64::from(s.num_gpu_blocks) * f64::from(s.block_size),
    );
    w.counter(
        "sglang:prompt_tokens_total",
        "Number of prefill tokens processed.",
        c.prompt_tokens,
    );
    w.counter(
        "sglang:generation_tokens_total",
        "Number of generation tokens processed.",
        c.generation_tokens,
    );
    w.counter(
        "sglang:cached_tokens_total",
        "Number of cached prompt tokens.",
        rec.cached_tokens,
    );
    w.counter(
        "sglang:num_requests_total",
        "Number of requests processed.",
        rec.requests,
    );
    w.counter(
        "sglang:num_aborted_requests_total",
        "Number of requests aborted.",
        c.aborted,
    );
    w.counter(
        "sglang:num_retracted_requests_total",
        "Number of retracted (preempted) requests.",
        c.preemptions,
    );
    w.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &rec.ttft,
    );
    w.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &rec.itl,
    );
    w.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        &rec.e2e,
    );
}

struct Writer<'a> {
    out: &'a mut String,
    labels: String,
}

impl Writer<'_> {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name}{{{}}} {}", self.labels, fmt_f64(v));
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name}{{{}}} {v}", self.labels);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let mut cum = 0;
        for (b, n) in h.bounds.iter().zip(&h.counts) {
            cum += n;
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{},le=\"{b:?}\"}} {cum}",
                self.labels
            );
        }
        let _ = writeln!(
            self.out,
            "{name}_bucket{{{},le=\"+Inf\"}} {}\n{name}_sum{{{}}} {}\n{name}_count{{{}}} {}",
            self.labels,
            h.count,
            self.labels,
            fmt_f64(h.sum),
            self.labels,
            h.count
        );
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else {
        "NaN".to_string()
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::engine::Counters;

    fn stats() -> EngineStats {
        EngineStats {
            running: 4,
            waiting: 6,
            kv_usage: 0.25,
            used_blocks: 100,
            num_gpu_blocks: 400,
            block_size: 16,
            counters: Counters {
                prefix_queries: 100,
                prefix_hits: 40,
                ..Counters::default()
            },
        }
    }

    fn model() -> ServedModel {
        ServedModel {
            model: "m\"x".into(),
            max_num_seqs: 4,
            enable_prefix_caching: true,
        }
    }

    #[test]
    fn one_two_five_buckets_match_vllm() {
        assert_eq!(
            buckets_1_2_5(100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }

    #[test]
    fn vllm_exposition_has_the_contract_names() {
        let mut rec = Recorder::new(Flavor::Vllm, 8192);
        rec.observe_ttft(0.03);
        rec.observe_ttft(3.0);
        let text = render(&model(), &stats(), &rec);
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\\\"x\",engine=\"0\"} 6.0"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\",engine=\"0\"} 0.25"));
        assert!(text.contains("num_gpu_blocks=\"400\""));
        assert!(text.contains("# TYPE vllm:prefix_cache_hits_total counter"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",engine=\"0\",le=\"0.04\"} 1"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",engine=\"0\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_count{model_name=\"m\\\"x\",engine=\"0\"} 2"
        ));
    }

    #[test]
    fn sglang_exposition_has_its_names() {
        let rec = Recorder::new(Flavor::Sglang, 8192);
        let text = render(&model(), &stats(), &rec);
        assert!(text.contains("sglang:num_queue_reqs{model_name=\"m\\\"x\"} 6.0"));
        assert!(text.contains("sglang:cache_hit_rate{model_name=\"m\\\"x\"} 0.4"));
        assert!(text.contains("sglang:max_total_num_tokens{model_name=\"m\\\"x\"} 6400.0"));
        assert!(!text.contains("vllm:"));
    }
}
