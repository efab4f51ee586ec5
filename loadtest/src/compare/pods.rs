//! The simulated pods of one run, and what their own `/metrics` say about it.
//!
//! Hit rate and load balance are read from the pods, not from the router under test: every
//! contender is then judged by the same instrument, and a router cannot report its own success.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infergate_gateway::scrape::parse;
use serde::{Deserialize, Serialize};

use super::process::{Child, Http, ProcessError};
use super::scenario::PodsConfig;

/// The metric names a pod serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodFlavor {
    /// vLLM names (`vllm:...`), for infergate and nginx.
    Vllm,
    /// SGLang names and routes (`/server_info`, `/get_load`), for the SGLang router.
    Sglang,
}

/// Running pods, killed on drop.
pub struct Pods {
    children: Vec<Child>,
    /// `http://addr` of each pod, in order.
    pub urls: Vec<String>,
    flavor: PodFlavor,
}

/// Cumulative counters of one pod at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PodCounters {
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: f64,
    /// Prompt tokens found there.
    pub prefix_hits: f64,
    /// Requests finished.
    pub requests: f64,
    /// Output tokens generated.
    pub generation_tokens: f64,
    /// Requests waiting in the engine's queue now (a gauge).
    pub waiting: f64,
    /// Sum of the engine's own end-to-end latencies, in engine seconds.
    pub e2e_sum_s: f64,
    /// Their count.
    pub e2e_count: f64,
}

impl PodCounters {
    /// Reads the counters from a `/metrics` page.
    pub fn from_page(page: &str, flavor: PodFlavor) -> PodCounters {
        let mut c = PodCounters::default();
        let mut sglang_prompt = 0.0;
        for s in parse::parse(page) {
            let v = s.value;
            match (flavor, s.name) {
                (PodFlavor::Vllm, "vllm:prefix_cache_queries_total") => c.prefix_queries += v,
                (PodFlavor::Vllm, "vllm:prefix_cache_hits_total") => c.prefix_hits += v,
                (PodFlavor::Vllm, "vllm:request_success_total") => c.requests += v,
                (PodFlavor::Vllm, "vllm:generation_tokens_total") => c.generation_tokens += v,
                (PodFlavor::Vllm, "vllm:num_requests_waiting") => c.waiting += v,
                (PodFlavor::Vllm, "vllm:e2e_request_latency_seconds_sum")
                | (PodFlavor::Sglang, "sglang:e2e_request_latency_seconds_sum") => c.e2e_sum_s += v,
                (PodFlavor::Vllm, "vllm:e2e_request_latency_seconds_count")
                | (PodFlavor::Sglang, "sglang:e2e_request_latency_seconds_count") => {
                    c.e2e_count += v
                }
                (PodFlavor::Sglang, "sglang:prompt_tokens_total") => sglang_prompt += v,
                (PodFlavor::Sglang, "sglang:cached_tokens_total") => c.prefix_hits += v,
                (PodFlavor::Sglang, "sglang:num_requests_total") => c.requests += v,
                (PodFlavor::Sglang, "sglang:generation_tokens_total") => c.generation_tokens += v,
                (PodFlavor::Sglang, "sglang:num_queue_reqs") => c.waiting += v,
                _ => {}
            }
        }
        if flavor == PodFlavor::Sglang {
            // SGLang counts every prompt token as looked up; cached ones are its hits.
            c.prefix_queries = sglang_prompt;
        }
        c
    }

    /// `self - before`, for counters (the gauge is kept as is).
    pub fn since(&self, before: &PodCounters) -> PodCounters {
        PodCounters {
            prefix_queries: self.prefix_queries - before.prefix_queries,
            prefix_hits: self.prefix_hits - before.prefix_hits,
            requests: self.requests - before.requests,
            generation_tokens: self.generation_tokens - before.generation_tokens,
            waiting: self.waiting,
            e2e_sum_s: self.e2e_sum_s - before.e2e_sum_s,
            e2e_count: self.e2e_count - before.e2e_count,
        }
    }
}

/// What the pods saw of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Per pod: the counters' change over the run.
    pub per_pod: Vec<PodCounters>,
    /// Prefix-cache hits over lookups, in tokens, summed over pods (None: no lookups).
    pub prefix_hit_rate: Option<f64>,
    /// Most requests any pod finished over the mean (1 = perfectly even).
    pub imbalance_requests: Option<f64>,
    /// Most output tokens any pod generated over the mean.
    pub imbalance_tokens: Option<f64>,
    /// Mean end-to-end latency as the engines measured it, in engine milliseconds. Compared with
    /// the client's mean e2e times the speed, it shows whether the hosts kept the engine clock (a
    /// CPU-starved host falls behind real time and the client sees more than the engine counted).
    pub engine_e2e_mean_ms: Option<f64>,
}

impl PoolStats {
    /// Sums and ratios over the pods.
    pub fn from_deltas(per_pod: Vec<PodCounters>) -> PoolStats {
        let q: f64 = per_pod.iter().map(|c| c.prefix_queries).sum();
        let h: f64 = per_pod.iter().map(|c| c.prefix_hits).sum();
        let ratio = |f: fn(&PodCounters) -> f64| {
            let n = per_pod.len() as f64;
            let total: f64 = per_pod.iter().map(f).sum();
            let max = per_pod.iter().map(f).fold(0.0, f64::max);
            (total > 0.0).then(|| max / (total / n))
        };
        let (e2e_sum, e2e_n): (f64, f64) = per_pod
            .iter()
            .fold((0.0, 0.0), |(s, n), c| (s + c.e2e_sum_s, n + c.e2e_count));
        PoolStats {
            engine_e2e_mean_ms: (e2e_n > 0.0).then(|| e2e_sum / e2e_n * 1e3),
            prefix_hit_rate: (q > 0.0).then(|| (h / q).clamp(0.0, 1.0)),
            imbalance_requests: ratio(|c| c.requests),
            imbalance_tokens: ratio(|c| c.generation_tokens),
            per_pod,
        }
    }
}

/// How to start the pods of a run.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The `infergate` binary.
    pub program: PathBuf,
    /// The scenario's pod settings.
    pub pods: PodsConfig,
    /// Served model name.
    pub model: String,
    /// Engine seed.
    pub seed: u64,
    /// Where logs go.
    pub log_dir: PathBuf,
}

impl Pods {
    /// Starts `count` pods (fresh processes: cold caches), multiplying the batch and KV limits by
    /// `scale` (the one-big-pod reference uses the pool's total).
    pub async fn start(
        spec: &PodSpec,
        count: u32,
        scale: u32,
        flavor: PodFlavor,
        tag: &str,
    ) -> Result<Pods, ProcessError> {
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for i in 0..count {
            let args = sim_args(spec, scale, flavor, i);
            let log = spec.log_dir.join(format!("{tag}-sim{i}.log"));
            let (child, addrs) = Child::spawn_infergate(
                &format!("sim {i}"),
                &spec.program,
                &args,
                &["sim"],
                &log,
                Duration::from_secs(30),
            )
            .await?;
            children.push(child);
            urls.push(format!("http://{}", addrs["sim"]));
        }
        Ok(Pods {
            children,
            urls,
            flavor,
        })
    }

    /// Reads every pod's counters now.
    pub async fn counters(&self, http: &Http) -> Result<Vec<PodCounters>, ProcessError> {
        let mut out = Vec::with_capacity(self.urls.len());
        for u in &self.urls {
            let url = format!("{u}/metrics");
            let (status, body) = http.call(&url, None).await?;
            if status != 200 {
                return Err(ProcessError::Http {
                    url,
                    message: format!("status {status}"),
                });
            }
            out.push(PodCounters::from_page(&body, self.flavor));
        }
        Ok(out)
    }

    /// Whether any pod died.
    pub fn any_exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .enumerate()
            .find_map(|(i, c)| c.exited().map(|s| format!("sim {i} exited with {s}")))
    }

    /// Stops every pod.
    pub async fn stop(self) {
        for c in self.children {
            c.stop(Duration::from_secs(2)).await;
        }
    }
}

fn sim_args(spec: &PodSpec, scale: u32, flavor: PodFlavor, index: u32) -> Vec<String> {
    let p = &spec.pods;
    let mut a: Vec<String> = [
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        &spec.model,
        "--profile",
        &p.profile,
        "--shutdown-grace-s",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--speed".into(), p.speed.to_string()]);
    // Same seed on every pod and for every contender: the same request draws the same length.
    a.extend(["--seed".into(), (spec.seed ^ u64::from(index)).to_string()]);
    a.extend([
        "--flavor".into(),
        match flavor {
            PodFlavor::Vllm => "vllm",
            PodFlavor::Sglang => "sglang",
        }
        .into(),
    ]);
    if let Some(n) = p.max_num_seqs {
        a.extend(["--max-num-seqs".into(), (n * scale).to_string()]);
    } else if scale > 1 {
        a.extend(["--max-num-seqs".into(), (1024 * scale).to_string()]);
    }
    if let Some(n) = p.num_gpu_blocks {
        a.extend(["--num-gpu-blocks".into(), (n * scale).to_string()]);
    }
    if let Some(n) = p.max_num_batched_tokens {
        a.extend(["--max-num-batched-tokens".into(), n.to_string()]);
    }
    if let Some(n) = p.max_model_len {
        a.extend(["--max-model-len".into(), n.to_string()]);
    }
    a
}

/// The log directory, created.
pub fn log_dir(out: &Path) -> std::io::Result<PathBuf> {
    let d = out.join("logs");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_and_ratios() {
        let page = "\
vllm:prefix_cache_queries_total{model_name=\"m\",engine=\"0\"} 1000
vllm:prefix_cache_hits_total{model_name=\"m\",engine=\"0\"} 250
vllm:request_success_total{finished_reason=\"stop\"} 3
vllm:request_success_total{finished_reason=\"length\"} 7
vllm:generation_tokens_total 500
vllm:num_requests_waiting 2
";
        let c = PodCounters::from_page(page, PodFlavor::Vllm);
        assert_eq!(c.requests, 10.0);
        assert_eq!(c.prefix_hits, 250.0);
        let zero = PodCounters::default();
        let stats = PoolStats::from_deltas(vec![
            c.since(&zero),
            PodCounters {
                requests: 30.0,
                ..zero
            },
        ]);
        assert_eq!(stats.prefix_hit_rate, Some(0.25));
        assert_eq!(stats.imbalance_requests, Some(30.0 / 20.0));
        assert_eq!(stats.imbalance_tokens, Some(2.0));
        let sg = "sglang:prompt_tokens_total 400\nsglang:cached_tokens_total 100\nsglang:num_requests_total 4\n";
        let c = PodCounters::from_page(sg, PodFlavor::Sglang);
        assert_eq!(
            (c.prefix_queries, c.prefix_hits, c.requests),
            (400.0, 100.0, 4.0)
        );
    }
}
