//! How long one engine step takes: a linear model over the work the step does, with named profiles
//! whose numbers come from public roofline figures.
//!
//! One step of a vLLM-style engine runs the whole model once over a batch that mixes prefill chunks
//! and decode tokens. Its time is, to first order:
//!
//! ```text
//! t = base + a * prefill_tokens + b * decode_seqs + c * kv_tokens_read
//! ```
//!
//! - `base`: reading every weight from HBM once (a step is memory-bound at small batch), plus launch
//!   and scheduling overhead. This is the floor of the inter-token latency.
//! - `a`: the matmul FLOPs of one prompt token (about `2 * parameters`) at sustained tensor throughput.
//! - `b`: the same FLOPs for one decode token; it shows once the batch is large enough for the step
//!   to turn compute-bound. Summed with `base` this gives the classic "flat, then linear" ITL curve.
//! - `c`: attention reads each context token's K and V from HBM once per step: bytes per token of KV
//!   divided by HBM bandwidth. This is what makes long contexts slow to decode.
//!
//! The model ignores the quadratic attention FLOPs of long prefills and any overlap between the
//! terms; both matter less than the four terms above for 8B-70B models under 32k context.

use std::time::Duration;

/// The work one step does, as the step-time model sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepWork {
    /// Prompt (or recomputed) tokens whose KV this step computes.
    pub prefill_tokens: u64,
    /// Sequences that each produce one new token this step.
    pub decode_seqs: u64,
    /// Context tokens whose K and V attention reads this step (summed over the batch).
    pub kv_tokens_read: u64,
}

/// A hardware/model profile: the step-time coefficients and the KV capacity that goes with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name, as given to `--profile`.
    pub name: &'static str,
    /// What it models, for `--help` and logs.
    pub description: &'static str,
    /// Fixed cost of a step, in seconds.
    pub base_s: f64,
    /// Seconds per prefill token.
    pub per_prefill_token_s: f64,
    /// Seconds per decoding sequence.
    pub per_decode_seq_s: f64,
    /// Seconds per context token read by attention.
    pub per_kv_token_s: f64,
    /// KV-cache blocks that fit next to the weights at 0.9 memory utilization.
    pub num_gpu_blocks: u32,
    /// Tokens per KV block (vLLM's default, 16).
    pub block_size: u32,
}

impl Profile {
    /// The time a step with this work takes.
    pub fn step_time(&self, work: &StepWork) -> Duration {
        let secs = self.base_s
            + self.per_prefill_token_s * work.prefill_tokens as f64
            + self.per_decode_seq_s * work.decode_seqs as f64
            + self.per_kv_token_s * work.kv_tokens_read as f64;
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The profile with this name, if there is one.
    pub fn named(name: &str) -> Option<Profile> {
        Self::all().into_iter().find(|p| p.name == name)
    }

    /// Names of every built-in profile.
    pub fn names() -> Vec<&'static str> {
        Self::all().iter().map(|p| p.name).collect()
    }

    /// Every built-in profile; the first is the default.
    pub fn all() -> Vec<Profile> {
        vec![
            Self::llama3_8b_h100(),
            Self::llama3_8b_a100(),
            Self::llama3_70b_h100_tp4(),
        ]
    }

    /// Llama-3-8B in bf16 on one H100 SXM 80 GB: the default.
    ///
    /// Public figures: 8.03 B parameters, so 16.06 GB of bf16 weights; H100 SXM HBM3 bandwidth
    /// 3.35 TB/s; dense bf16 tensor throughput 989 TFLOP/s peak, about 400 TFLOP/s sustained in
    /// real GEMM-heavy serving; KV per token = 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes
    /// = 131,072 bytes (128 KiB).
    /// - `base` = 16.06 GB / 3.35 TB/s = 4.8 ms of weight reads, plus ~1.2 ms of kernel launch and
    ///   scheduler overhead = **6.0 ms** (vLLM's measured batch-1 ITL for this pair is 6-7 ms).
    /// - `a` = `b` = 2 x 8.03 GFLOP / 400 TFLOP/s = **40 us** per token.
    /// - `c` = 131,072 B / 3.35 TB/s = **39 ns** per context token.
    /// - `num_gpu_blocks`: 0.9 x 80 GB = 72 GB, less 16 GB of weights and ~2 GB of activations and
    ///   CUDA graphs = 54 GB; a 16-token block holds 2 MiB, so 54e9 / 2,097,152 = **25,750** blocks
    ///   (412,000 tokens).
    pub fn llama3_8b_h100() -> Profile {
        Profile {
            name: "llama-3-8b-h100",
            description: "Llama-3-8B bf16 on one H100 SXM 80GB",
            base_s: 6.0e-3,
            per_prefill_token_s: 40e-6,
            per_decode_seq_s: 40e-6,
            per_kv_token_s: 39e-9,
            num_gpu_blocks: 25_750,
            block_size: 16,
        }
    }

    /// Llama-3-8B in bf16 on one A100 SXM 80 GB.
    ///
    /// Public figures: A100 SXM HBM2e 2.04 TB/s; bf16 dense 312 TFLOP/s peak, about 250 sustained.
    /// - `base` = 16.06 GB / 2.04 TB/s = 7.9 ms, plus ~1.1 ms overhead = **9.0 ms**.
    /// - `a` = `b` = 16.06 GFLOP / 250 TFLOP/s = **64 us** per token.
    /// - `c` = 131,072 B / 2.04 TB/s = **64 ns** per context token.
    /// - `num_gpu_blocks`: same memory budget as the H100 (80 GB), so **25,750**.
    pub fn llama3_8b_a100() -> Profile {
        Profile {
            name: "llama-3-8b-a100",
            description: "Llama-3-8B bf16 on one A100 SXM 80GB",
            base_s: 9.0e-3,
            per_prefill_token_s: 64e-6,
            per_decode_seq_s: 64e-6,
            per_kv_token_s: 64e-9,
            num_gpu_blocks: 25_750,
            block_size: 16,
        }
    }

    /// Llama-3-70B in bf16 on four H100 SXM 80 GB with tensor parallelism 4.
    ///
    /// Public figures: 70.6 B parameters, 141 GB of bf16 weights (35.3 GB a GPU); four GPUs give
    /// 13.4 TB/s and ~1,600 TFLOP/s sustained; KV per token = 80 layers x 8 KV heads x 128 x 2 x 2 B
    /// = 327,680 bytes (320 KiB), split across the four GPUs.
    /// - `base` = 141 GB / 13.4 TB/s = 10.5 ms, plus ~3.5 ms of launch and all-reduce = **14 ms**.
    /// - `a` = `b` = 141 GFLOP / 1,600 TFLOP/s = **88 us** per token.
    /// - `c` = 327,680 B / 13.4 TB/s = **24 ns** per context token.
    /// - `num_gpu_blocks`: 4 x (72 - 35.3 - 2) GB = 139 GB; a 16-token block holds 5 MiB, so
    ///   139e9 / 5,242,880 = **26,500** blocks.
    pub fn llama3_70b_h100_tp4() -> Profile {
        Profile {
            name: "llama-3-70b-h100-tp4",
            description: "Llama-3-70B bf16 on four H100 SXM 80GB (tensor parallel 4)",
            base_s: 14.0e-3,
            per_prefill_token_s: 88e-6,
            per_decode_seq_s: 88e-6,
            per_kv_token_s: 24e-9,
            num_gpu_blocks: 26_500,
            block_size: 16,
        }
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self::llama3_8b_h100()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_gives_plausible_latencies() {
        let p = Profile::default();
        // Batch-1 decode at 1k context: close to the 6-7 ms vLLM measures for Llama-3-8B on an H100.
        let itl = p.step_time(&StepWork {
            prefill_tokens: 0,
            decode_seqs: 1,
            kv_tokens_read: 1000,
        });
        assert!((0.005..0.008).contains(&itl.as_secs_f64()), "{itl:?}");
        // A 2k-token prefill: about 90 ms.
        let ttft = p.step_time(&StepWork {
            prefill_tokens: 2048,
            decode_seqs: 0,
            kv_tokens_read: 2048,
        });
        assert!((0.05..0.15).contains(&ttft.as_secs_f64()), "{ttft:?}");
    }

    #[test]
    fn profiles_are_found_by_name() {
        for name in Profile::names() {
            assert_eq!(Profile::named(name).map(|p| p.name), Some(name));
        }
        assert!(Profile::named("nope").is_none());
    }
}
