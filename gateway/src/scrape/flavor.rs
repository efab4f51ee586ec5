//! From a `/metrics` page to the load the picker needs, in each model server's dialect.
//!
//! | meaning | vLLM (V1) | SGLang | TGI |
//! |---|---|---|---|
//! | waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `tgi_queue_size` |
//! | running | `vllm:num_requests_running` | `sglang:num_running_reqs` | `tgi_batch_current_size` |
//! | KV use 0..1 | `vllm:kv_cache_usage_perc` (older `vllm:gpu_cache_usage_perc`) | `sglang:token_usage` | |
//! | KV capacity | `vllm:cache_config_info{block_size,num_gpu_blocks}` | `sglang:max_total_num_tokens` | |
//! | LoRA | `vllm:lora_requests_info{running_lora_adapters,waiting_lora_adapters,max_lora}` | | |
//! | prefix cache | `vllm:prefix_cache_{queries,hits}_total` (older `vllm:gpu_prefix_cache_*`) | `sglang:cache_hit_rate` | |
//!
//! A metric with several label sets (several engines behind one server, data parallel) is summed
//! when it counts requests or tokens, and maxed when it is a usage: the fullest engine is the one a
//! new request may land on. `auto` takes the dialect of the first known name on the page.

use infergate_config::Flavor;
use std::cell::Cell;
use std::time::Instant;

use super::parse::{Sample, parse_filtered};

/// What one scrape of one endpoint says about its load.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapedLoad {
    /// The dialect the page was read in (never `Auto`).
    pub flavor: Flavor,
    /// Requests waiting in the engine's queue.
    pub waiting: Option<f64>,
    /// Requests in the engine's running batch.
    pub running: Option<f64>,
    /// KV-cache use, 0..=1.
    pub kv_usage: Option<f64>,
    /// KV-cache capacity in tokens.
    pub kv_capacity_tokens: Option<f64>,
    pub lora: LoraInfo,
    pub prefix_cache: PrefixCacheStats,
    /// When the scrape was sent (not when it was read): the in-flight correction counts the
    /// requests sent after this instant.
    pub taken_at: Instant,
}

/// LoRA adapters as vLLM reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraInfo {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    pub max_lora: Option<u32>,
}

/// The engine's own prefix-cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefixCacheStats {
    /// Tokens looked up in the prefix cache, since the engine started (vLLM).
    pub queries: Option<f64>,
    /// Tokens found there (vLLM).
    pub hits: Option<f64>,
    /// Hit rate 0..=1 as the engine computes it (SGLang).
    pub hit_rate: Option<f64>,
}

impl PrefixCacheStats {
    /// Hits over queries since the engine started, or the engine's own rate.
    pub fn hit_ratio(&self) -> Option<f64> {
        match (self.hits, self.queries) {
            (Some(h), Some(q)) if q > 0.0 => Some(h / q),
            _ => self.hit_rate,
        }
    }
}

/// Why a page gave no load.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("no {flavor} load metrics (waiting, running or KV use) on the page")]
    NoKnownMetrics { flavor: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Waiting,
    Running,
    KvUsage,
    KvUsageOld,
    CacheConfig,
    MaxTokens,
    Lora,
    PrefixQueries,
    PrefixHits,
    PrefixQueriesOld,
    PrefixHitsOld,
    HitRate,
}

fn field_of(name: &str) -> Option<(Flavor, Field)> {
    use Field::*;
    let (flavor, field) = match name.as_bytes().first()? {
        b'v' => (
            Flavor::Vllm,
            match name {
                "vllm:num_requests_waiting" => Waiting,
                "vllm:num_requests_running" => Running,
                "vllm:kv_cache_usage_perc" => KvUsage,
                "vllm:gpu_cache_usage_perc" => KvUsageOld,
                "vllm:cache_config_info" => CacheConfig,
                "vllm:lora_requests_info" => Lora,
                "vllm:prefix_cache_queries_total" => PrefixQueries,
                "vllm:prefix_cache_hits_total" => PrefixHits,
                "vllm:gpu_prefix_cache_queries_total" => PrefixQueriesOld,
                "vllm:gpu_prefix_cache_hits_total" => PrefixHitsOld,
                _ => return None,
            },
        ),
        b's' => (
            Flavor::Sglang,
            match name {
                "sglang:num_queue_reqs" => Waiting,
                "sglang:num_running_reqs" => Running,
                "sglang:token_usage" => KvUsage,
                "sglang:max_total_num_tokens" => MaxTokens,
                "sglang:cache_hit_rate" => HitRate,
                _ => return None,
            },
        ),
        b't' => (
            Flavor::Tgi,
            match name {
                "tgi_queue_size" => Waiting,
                "tgi_batch_current_size" => Running,
                _ => return None,
            },
        ),
        _ => return None,
    };
    Some((flavor, field))
}

/// Sums, maxima and the newest LoRA sample, accumulated over the page.
#[derive(Default)]
struct Acc<'a> {
    waiting: Option<f64>,
    running: Option<f64>,
    kv: Option<f64>,
    kv_old: Option<f64>,
    kv_capacity: Option<f64>,
    queries: Option<f64>,
    hits: Option<f64>,
    queries_old: Option<f64>,
    hits_old: Option<f64>,
    hit_rate: (f64, u32),
    lora: Option<Sample<'a>>,
}

fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

fn max(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.map_or(v, |s| s.max(v)));
}

impl<'a> Acc<'a> {
    fn take(&mut self, field: Field, s: Sample<'a>) {
        // A NaN gauge (an engine not yet initialised) says nothing.
        if s.value.is_nan() {
            return;
        }
        let v = s.value;
        match field {
            Field::Waiting => add(&mut self.waiting, v),
            Field::Running => add(&mut self.running, v),
            Field::KvUsage => max(&mut self.kv, v),
            Field::KvUsageOld => max(&mut self.kv_old, v),
            Field::MaxTokens => add(&mut self.kv_capacity, v),
            Field::CacheConfig => {
                let num = |k: &str| s.label(k).and_then(|v| v.trim().parse::<f64>().ok());
                if let (Some(bs), Some(blocks)) = (num("block_size"), num("num_gpu_blocks")) {
                    add(&mut self.kv_capacity, bs * blocks);
                }
            }
            Field::Lora => {
                // vLLM sets this gauge to the time of the latest update; several label sets
                // linger, and the newest is the current one.
                if self.lora.is_none_or(|old| v > old.value) {
                    self.lora = Some(s);
                }
            }
            Field::PrefixQueries => add(&mut self.queries, v),
            Field::PrefixHits => add(&mut self.hits, v),
            Field::PrefixQueriesOld => add(&mut self.queries_old, v),
            Field::PrefixHitsOld => add(&mut self.hits_old, v),
            Field::HitRate => {
                self.hit_rate.0 += v;
                self.hit_rate.1 += 1;
            }
        }
    }
}

fn adapters(list: Option<std::borrow::Cow<'_, str>>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Reads the load out of a `/metrics` page in `flavor` (or the detected one for `Auto`).
pub fn extract(text: &str, flavor: Flavor, taken_at: Instant) -> Result<ScrapedLoad, ExtractError> {
    let mut detected = match flavor {
        Flavor::Auto => None,
        f => Some(f),
    };
    let mut acc = Acc::default();
    // The field of the line being read: set by the name filter, used by the sample callback.
    let pending: Cell<Option<Field>> = Cell::new(None);
    parse_filtered(
        text,
        |name| {
            pending.set(None);
            let Some((f, field)) = field_of(name) else {
                return false;
            };
            match detected {
                Some(d) if d != f => return false,
                Some(_) => {}
                None => detected = Some(f),
            }
            pending.set(Some(field));
            true
        },
        |sample| {
            if let Some(field) = pending.get() {
                acc.take(field, sample);
            }
        },
    );
    let flavor = detected.unwrap_or(flavor);
    let kv_usage = acc.kv.or(acc.kv_old);
    if acc.waiting.is_none() && acc.running.is_none() && kv_usage.is_none() {
        return Err(ExtractError::NoKnownMetrics {
            flavor: flavor.as_str(),
        });
    }
    let lora = match acc.lora {
        Some(s) => LoraInfo {
            running: adapters(s.label("running_lora_adapters")),
            waiting: adapters(s.label("waiting_lora_adapters")),
            max_lora: s
                .label("max_lora")
                .and_then(|m| m.trim().parse::<f64>().ok())
                .map(|m| m.max(0.0) as u32),
        },
        None => LoraInfo::default(),
    };
    Ok(ScrapedLoad {
        flavor,
        waiting: acc.waiting,
        running: acc.running,
        kv_usage,
        kv_capacity_tokens: acc.kv_capacity,
        lora,
        prefix_cache: PrefixCacheStats {
            queries: acc.queries.or(acc.queries_old),
            hits: acc.hits.or(acc.hits_old),
            hit_rate: (acc.hit_rate.1 > 0).then(|| acc.hit_rate.0 / f64::from(acc.hit_rate.1)),
        },
        taken_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../benches/fixtures/vllm_metrics.txt");

    #[test]
    fn real_sized_vllm_page() {
        assert!(FIXTURE.len() > 20_000, "fixture is {} bytes", FIXTURE.len());
        let now = Instant::now();
        for flavor in [Flavor::Vllm, Flavor::Auto] {
            let load = extract(FIXTURE, flavor, now).expect("load");
            assert_eq!(load.flavor, Flavor::Vllm);
            // Two engines (data parallel): counts sum, usage is the fuller engine's.
            assert_eq!(load.waiting, Some(5.0));
            assert_eq!(load.running, Some(37.0));
            assert_eq!(load.kv_usage, Some(0.62));
            assert_eq!(load.kv_capacity_tokens, Some(2.0 * 16.0 * 27_000.0));
            assert_eq!(load.lora.running, vec!["sql-lora", "chat-lora"]);
            assert_eq!(load.lora.waiting, vec!["math-lora"]);
            assert_eq!(load.lora.max_lora, Some(4));
            assert_eq!(load.prefix_cache.queries, Some(3_000_000.0));
            assert_eq!(load.prefix_cache.hits, Some(1_500_000.0));
            assert_eq!(load.prefix_cache.hit_ratio(), Some(0.5));
        }
        assert!(matches!(
            extract(FIXTURE, Flavor::Sglang, now),
            Err(ExtractError::NoKnownMetrics { flavor: "sglang" })
        ));
    }

    #[test]
    fn older_vllm_names() {
        let page = "vllm:num_requests_waiting{model_name=\"m\"} 1\n\
                    vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n\
                    vllm:gpu_prefix_cache_queries_total{model_name=\"m\"} 10\n\
                    vllm:gpu_prefix_cache_hits_total{model_name=\"m\"} 4\n";
        let load = extract(page, Flavor::Auto, Instant::now()).expect("load");
        assert_eq!(load.kv_usage, Some(0.25));
        assert_eq!(load.prefix_cache.hit_ratio(), Some(0.4));
        assert_eq!(load.running, None);
    }

    #[test]
    fn sglang_and_tgi() {
        let sg = "# TYPE sglang:num_queue_reqs gauge\n\
                  sglang:num_queue_reqs{model_name=\"m\"} 3\n\
                  sglang:num_running_reqs{model_name=\"m\"} 12\n\
                  sglang:token_usage{model_name=\"m\"} 0.5\n\
                  sglang:cache_hit_rate{model_name=\"m\"} 0.75\n\
                  sglang:max_total_num_tokens{model_name=\"m\"} 100000\n";
        let load = extract(sg, Flavor::Auto, Instant::now()).expect("sglang");
        assert_eq!(load.flavor, Flavor::Sglang);
        assert_eq!(
            (load.waiting, load.running, load.kv_usage),
            (Some(3.0), Some(12.0), Some(0.5))
        );
        assert_eq!(load.prefix_cache.hit_ratio(), Some(0.75));
        assert_eq!(load.kv_capacity_tokens, Some(100_000.0));

        let tgi = "tgi_queue_size 2\ntgi_batch_current_size 7\n";
        let load = extract(tgi, Flavor::Tgi, Instant::now()).expect("tgi");
        assert_eq!(
            (load.waiting, load.running, load.kv_usage),
            (Some(2.0), Some(7.0), None)
        );
    }

    #[test]
    fn auto_sticks_to_the_first_dialect_seen() {
        let page = "tgi_queue_size 2\nvllm:num_requests_waiting 9\n";
        let load = extract(page, Flavor::Auto, Instant::now()).expect("load");
        assert_eq!((load.flavor, load.waiting), (Flavor::Tgi, Some(2.0)));
    }

    #[test]
    fn nan_gauges_and_foreign_pages() {
        let page = "vllm:num_requests_waiting NaN\nvllm:num_requests_running 1\n";
        let load = extract(page, Flavor::Vllm, Instant::now()).expect("load");
        assert_eq!((load.waiting, load.running), (None, Some(1.0)));
        assert!(
            extract(
                "process_cpu_seconds_total 3\n",
                Flavor::Auto,
                Instant::now()
            )
            .is_err()
        );
        assert!(extract("", Flavor::Vllm, Instant::now()).is_err());
    }
}
