//! What the engine reports: each step's outcome per request, and its cumulative statistics. Plain
//! data, shared by the HTTP host, the metrics and the planner.

use std::time::Duration;

use super::engine::RequestId;
use super::profile::StepWork;

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// Drawn end-of-sequence before `max_tokens`.
    Stop,
    /// Reached `max_tokens`.
    Length,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine knows about a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Why it finished.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// Prompt tokens found in the prefix cache at first admission.
    pub cached_tokens: u32,
    /// Arrival to last token.
    pub e2e: Duration,
    /// Arrival to first admission into the batch.
    pub queue_time: Duration,
    /// How often it was preempted.
    pub preemptions: u32,
}

/// What one step did to one request. Requests that only advanced a prefill chunk get none.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestUpdate {
    /// Which request.
    pub id: RequestId,
    /// Tokens generated this step (0 or 1).
    pub new_tokens: u32,
    /// Set on the step that produced its first token: arrival to the step's end.
    pub ttft: Option<Duration>,
    /// Set on later tokens: time since the previous token.
    pub itl: Option<Duration>,
    /// Preempted this step (back in the queue, will recompute).
    pub preempted: bool,
    /// Set when it finished this step (its blocks are already freed).
    pub finished: Option<Finished>,
}

/// One engine step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When the step started, on the caller's clock.
    pub started_at: Duration,
    /// How long it takes, from the step-time model.
    pub duration: Duration,
    /// The work the step did.
    pub work: StepWork,
    /// Per-request outcomes.
    pub updates: Vec<RequestUpdate>,
}

impl Step {
    /// When the step ends (its tokens become visible).
    pub fn ends_at(&self) -> Duration {
        self.started_at + self.duration
    }
}

/// Cumulative counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Prompt tokens looked up in the prefix cache (vLLM's `prefix_cache_queries`).
    pub prefix_queries: u64,
    /// Of those, tokens found (vLLM's `prefix_cache_hits`).
    pub prefix_hits: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prompt tokens of requests whose prefill completed (counted once per request).
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub generation_tokens: u64,
    /// Requests finished by end-of-sequence.
    pub finished_stop: u64,
    /// Requests finished by reaching `max_tokens`.
    pub finished_length: u64,
    /// Requests aborted by the caller.
    pub aborted: u64,
    /// Steps taken.
    pub steps: u64,
}

/// A snapshot of the engine's state, what `/metrics` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineStats {
    /// Requests in the running batch.
    pub running: usize,
    /// Requests waiting (including preempted ones).
    pub waiting: usize,
    /// Share of KV blocks held by requests, 0..=1.
    pub kv_usage: f64,
    /// KV blocks held by requests.
    pub used_blocks: u32,
    /// KV blocks in the cache.
    pub num_gpu_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// Cumulative counters.
    pub counters: Counters,
}
