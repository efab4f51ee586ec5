//! The simulated engine: a pure, synchronous state machine in virtual time that schedules like
//! vLLM V1, so that the same code can run behind the HTTP server in real time and inside the
//! discrete-event planner for thousands of pods.
//!
//! The caller owns the clock. It adds requests with [`Engine::add_request`], then calls
//! [`Engine::step`] with the current time; the step returns how long it takes (from the
//! [`Profile`]'s step-time model) and what happened to each request. The engine's state already
//! reflects the step's end when `step` returns; a real-time caller sleeps for the duration before
//! delivering the tokens, a virtual-time caller advances its clock.
//!
//! One step, as in vLLM V1's scheduler:
//! 1. Running requests first, in arrival order: each gets the tokens it still needs (a prefill chunk,
//!    or one decode token) up to the remaining token budget (`max_num_batched_tokens`), which is
//!    chunked prefill. If the KV cache cannot grow to hold them, the most recently admitted running
//!    request is preempted (its blocks freed; it goes back to the front of the queue and recomputes
//!    its prompt and output so far when readmitted), until the allocation fits.
//! 2. Then, if nothing was preempted this step, waiting requests in order, while the batch has room
//!    (`max_num_seqs`), the budget has tokens and the KV cache has blocks; each first looks up its
//!    prompt's leading full blocks in the prefix cache and only computes the rest.
//! 3. A request whose tokens are all computed samples one token. It finishes when it has as many as
//!    its drawn output length.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Geometric};

use super::kv::{BlockId, BlockPool, block_hashes};
use super::profile::{Profile, StepWork};
pub use super::report::{Counters, EngineStats, FinishReason, Finished, RequestUpdate, Step};

/// The caller's name for a request; unique among the engine's live requests.
pub type RequestId = u64;

/// Engine limits, as vLLM's flags of the same names.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most requests in the running batch (vLLM V1's default on a >= 70 GiB GPU: 1024).
    pub max_num_seqs: usize,
    /// Token budget of one step, prefill chunks and decode tokens together (vLLM V1: 8192).
    pub max_num_batched_tokens: usize,
    /// KV blocks in the cache.
    pub num_gpu_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Context length: prompt plus output may not exceed it.
    pub max_model_len: usize,
    /// Whether prompts' full blocks are cached and shared.
    pub enable_prefix_caching: bool,
    /// Mean of the output-length distribution when `ignore_eos` is off (see [`Engine::add_request`]).
    pub mean_output_tokens: f64,
}

impl EngineConfig {
    /// vLLM's defaults with the KV geometry of `profile`.
    pub fn for_profile(profile: &Profile) -> EngineConfig {
        EngineConfig {
            max_num_seqs: 1024,
            max_num_batched_tokens: 8192,
            num_gpu_blocks: profile.num_gpu_blocks,
            block_size: profile.block_size,
            max_model_len: 8192,
            enable_prefix_caching: true,
            mean_output_tokens: DEFAULT_MEAN_OUTPUT_TOKENS,
        }
    }
}

/// Default mean output length: about the mean reply length of ShareGPT conversations.
pub const DEFAULT_MEAN_OUTPUT_TOKENS: f64 = 200.0;

/// A request as the engine sees it: tokens and limits, no text.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    /// The caller's id.
    pub id: RequestId,
    /// The tokenized prompt (see [`super::tokens`]).
    pub prompt_tokens: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Generate exactly `max_tokens` (no end-of-sequence).
    pub ignore_eos: bool,
    /// Fewest tokens to generate before an end-of-sequence may stop it.
    pub min_tokens: u32,
}

/// Why a request cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The id is already live.
    #[error("request id {0} is already in the engine")]
    DuplicateId(RequestId),
    /// No prompt tokens.
    #[error("the prompt cannot be empty")]
    EmptyPrompt,
    /// `max_tokens` of zero.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// Prompt plus output over the context length.
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
        *prompt_tokens as u64 + *max_tokens as u64
    )]
    ContextTooLong {
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Requested output tokens.
        max_tokens: u32,
        /// The context length.
        max_model_len: usize,
    },
    /// The whole KV cache could not hold this one request.
    #[error("the request needs {needed} KV blocks but the cache has only {available}")]
    ExceedsKvCache {
        /// Blocks the request needs at its longest.
        needed: usize,
        /// Blocks in the cache.
        available: u32,
    },
}

#[derive(Debug)]
struct Seq {
    prompt: Vec<u32>,
    hashes: Vec<u64>,
    max_tokens: u32,
    target_output: u32,
    num_output: u32,
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Leading blocks already registered in the prefix cache.
    registered: usize,
    arrival: Duration,
    admitted_at: Option<Duration>,
    last_token_at: Option<Duration>,
    cached_tokens: u32,
    preemptions: u32,
    prompt_counted: bool,
}

impl Seq {
    fn total_tokens(&self) -> usize {
        self.prompt.len() + self.num_output as usize
    }
}

/// The engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    profile: Profile,
    kv: BlockPool,
    rng: ChaCha8Rng,
    seqs: HashMap<RequestId, Seq>,
    running: Vec<RequestId>,
    waiting: VecDeque<RequestId>,
    clock: Duration,
    counters: Counters,
}

impl Engine {
    /// An idle engine. `seed` fixes the output lengths drawn for requests, in the order they are added.
    pub fn new(config: EngineConfig, profile: Profile, seed: u64) -> Engine {
        Engine {
            kv: BlockPool::new(config.num_gpu_blocks, config.block_size),
            config,
            profile,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            clock: Duration::ZERO,
            counters: Counters::default(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The step-time profile it runs with.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Queues a request that arrived at `now`; returns the number of tokens it will generate.
    ///
    /// Output length: `max_tokens` when `ignore_eos`; otherwise drawn from a geometric distribution
    /// (a constant chance of end-of-sequence after each token) with mean
    /// [`EngineConfig::mean_output_tokens`], then clamped to `[max(min_tokens, 1), max_tokens]`. The
    /// draw uses the engine's seeded generator, so the same seed and the same sequence of requests
    /// give the same lengths.
    pub fn add_request(&mut self, req: EngineRequest, now: Duration) -> Result<u32, AddError> {
        if self.seqs.contains_key(&req.id) {
            return Err(AddError::DuplicateId(req.id));
        }
        if req.prompt_tokens.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(AddError::ZeroMaxTokens);
        }
        let longest = req.prompt_tokens.len() + req.max_tokens as usize;
        if longest > self.config.max_model_len {
            return Err(AddError::ContextTooLong {
                prompt_tokens: req.prompt_tokens.len(),
                max_tokens: req.max_tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        let needed = self.kv.blocks_for(longest);
        if needed > self.kv.num_blocks() as usize {
            return Err(AddError::ExceedsKvCache {
                needed,
                available: self.kv.num_blocks(),
            });
        }
        let target_output = if req.ignore_eos {
            req.max_tokens
        } else {
            let drawn = self.draw_output_len();
            drawn.clamp(req.min_tokens.clamp(1, req.max_tokens), req.max_tokens)
        };
        let hashes = if self.config.enable_prefix_caching {
            block_hashes(&req.prompt_tokens, self.config.block_size as usize)
        } else {
            Vec::new()
        };
        self.seqs.insert(
            req.id,
            Seq {
                prompt: req.prompt_tokens,
                hashes,
                max_tokens: req.max_tokens,
                target_output,
                num_output: 0,
                num_computed: 0,
                blocks: Vec::new(),
                registered: 0,
                arrival: now,
                admitted_at: None,
                last_token_at: None,
                cached_tokens: 0,
                preemptions: 0,
                prompt_counted: false,
            },
        );
        self.waiting.push_back(req.id);
        Ok(target_output)
    }

    fn draw_output_len(&mut self) -> u32 {
        let p = (1.0 / self.config.mean_output_tokens.max(1.0)).clamp(1e-9, 1.0);
        match Geometric::new(p) {
            // Geometric counts failures before the first success; +1 makes it a length >= 1.
            Ok(g) => g
                .sample(&mut self.rng)
                .saturating_add(1)
                .min(u64::from(u32::MAX)) as u32,
            Err(_) => 1,
        }
    }

    /// Removes a request wherever it is (a client went away) and frees its blocks. Returns whether
    /// it was live.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.kv.free(&seq.blocks);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
        self.counters.aborted += 1;
        true
    }

    /// The end of the last step: the engine's own clock (a step asked to start earlier starts here).
    pub fn clock(&self) -> Duration {
        self.clock
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Whether `id` is live (waiting or running).
    pub fn contains(&self, id: RequestId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// A snapshot for metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_usage: self.kv.usage(),
            used_blocks: self.kv.num_blocks() - self.kv.num_free(),
            num_gpu_blocks: self.kv.num_blocks(),
            block_size: self.kv.block_size(),
            counters: self.counters,
        }
    }

    /// Runs one step starting at `now` (or at the end of the previous step, if later). `None` when
    /// there is nothing to do.
    pub fn step(&mut self, now: Duration) -> Option<Step> {
        if !self.has_work() {
            return None;
        }
        let start = now.max(self.clock);
        let mut budget = self.config.max_num_batched_tokens;
        let mut scheduled: Vec<(RequestId, usize)> = Vec::new();
        let mut updates = Vec::new();

        // 1. Running requests, in order; preempt from the tail when the KV cache is full.
        let mut preempted_any = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let num_new = (seq.total_tokens() - seq.num_computed).min(budget);
            let needed = self
                .kv
                .blocks_for(seq.num_computed + num_new)
                .saturating_sub(seq.blocks.len());
            let mut self_preempted = false;
            // Allocate, preempting from the tail until it fits (or this request itself goes).
            while needed > 0 && !self_preempted {
                if let Some(blocks) = self.kv.allocate(needed) {
                    if let Some(seq) = self.seqs.get_mut(&id) {
                        seq.blocks.extend(blocks);
                    }
                    break;
                }
                let Some(victim) = self.running.pop() else {
                    break;
                };
                self.preempt(victim);
                preempted_any = true;
                updates.push(RequestUpdate {
                    id: victim,
                    new_tokens: 0,
                    ttft: None,
                    itl: None,
                    preempted: true,
                    finished: None,
                });
                self_preempted = victim == id;
            }
            if self_preempted {
                break;
            }
            scheduled.push((id, num_new));
            budget -= num_new;
            i += 1;
        }

        // 2. Waiting requests, unless this step had to preempt.
        if !preempted_any {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                let Some(num_new) = self.try_admit(id, budget, start) else {
                    break;
                };
                self.waiting.pop_front();
                self.running.push(id);
                scheduled.push((id, num_new));
                budget -= num_new;
            }
        }

        // 3. The step's work and time.
        let mut work = StepWork::default();
        for &(id, num_new) in &scheduled {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let is_decode =
                num_new == 1 && seq.num_output > 0 && seq.num_computed + 1 == seq.total_tokens();
            if is_decode {
                work.decode_seqs += 1;
            } else {
                work.prefill_tokens += num_new as u64;
            }
            work.kv_tokens_read += (seq.num_computed + num_new) as u64;
        }
        let duration = self.profile.step_time(&work);
        let end = start + duration;
        self.clock = end;
        self.counters.steps += 1;

        // 4. Advance each scheduled request to the step's end.
        let mut finished_ids = Vec::new();
        for (id, num_new) in scheduled {
            if let Some(update) = self.advance(id, num_new, end) {
                if update.finished.is_some() {
                    finished_ids.push(id);
                }
                updates.push(update);
            }
        }
        if !finished_ids.is_empty() {
            self.running.retain(|r| !finished_ids.contains(r));
            for id in finished_ids {
                if let Some(seq) = self.seqs.remove(&id) {
                    self.kv.free(&seq.blocks);
                }
            }
        }
        Some(Step {
            started_at: start,
            duration,
            work,
            updates,
        })
    }

    /// Tries to give the waiting request `id` blocks and a first chunk; returns the chunk's size.
    fn try_admit(&mut self, id: RequestId, budget: usize, now: Duration) -> Option<usize> {
        let bs = self.config.block_size as usize;
        let seq = self.seqs.get(&id)?;
        let total = seq.total_tokens();
        // At least one token must be computed to sample from, so a full hit backs off a block.
        let max_hit_blocks = ((total - 1) / bs).min(seq.hashes.len());
        let hit = self.kv.cached_prefix(&seq.hashes[..max_hit_blocks]);
        let num_cached = hit.len() * bs;
        let num_new = (total - num_cached).min(budget);
        let new_blocks = self.kv.blocks_for(num_cached + num_new) - hit.len();
        let free_after_hits = self.kv.num_free() - self.kv.count_free(&hit);
        if new_blocks > free_after_hits as usize {
            return None;
        }
        self.kv.touch(&hit);
        let Some(fresh) = self.kv.allocate(new_blocks) else {
            self.kv.free(&hit);
            return None;
        };
        if self.config.enable_prefix_caching {
            self.counters.prefix_queries += total as u64;
            self.counters.prefix_hits += num_cached as u64;
        }
        let seq = self.seqs.get_mut(&id)?;
        seq.registered = hit.len();
        seq.blocks = hit;
        seq.blocks.extend(fresh);
        seq.num_computed = num_cached;
        if seq.admitted_at.is_none() {
            seq.admitted_at = Some(now);
            seq.cached_tokens = num_cached as u32;
        }
        Some(num_new)
    }

    fn preempt(&mut self, id: RequestId) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.kv.free(&seq.blocks);
            seq.blocks.clear();
            seq.num_computed = 0;
            seq.registered = 0;
            seq.preemptions += 1;
            self.counters.preemptions += 1;
            self.waiting.push_front(id);
        }
    }

    /// Applies `num_new` computed tokens to `id` at the step's end; samples a token when all its
    /// tokens are computed.
    fn advance(&mut self, id: RequestId, num_new: usize, end: Duration) -> Option<RequestUpdate> {
        let bs = self.config.block_size as usize;
        let seq = self.seqs.get_mut(&id)?;
        seq.num_computed += num_new;
        let full = (seq.num_computed / bs).min(seq.hashes.len());
        for i in seq.registered..full {
            self.kv.cache_full_block(seq.blocks[i], seq.hashes[i]);
        }
        seq.registered = seq.registered.max(full);
        if seq.num_computed < seq.total_tokens() {
            return None;
        }
        if !seq.prompt_counted {
            seq.prompt_counted = true;
            self.counters.prompt_tokens += seq.prompt.len() as u64;
        }
        seq.num_output += 1;
        self.counters.generation_tokens += 1;
        let (ttft, itl) = match seq.last_token_at {
            None => (Some(end.saturating_sub(seq.arrival)), None),
            Some(prev) => (None, Some(end.saturating_sub(prev))),
        };
        seq.last_token_at = Some(end);
        let finished = (seq.num_output >= seq.target_output).then(|| {
            let reason = if seq.num_output >= seq.max_tokens {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            Finished {
                reason,
                prompt_tokens: seq.prompt.len() as u32,
                output_tokens: seq.num_output,
                cached_tokens: seq.cached_tokens,
                e2e: end.saturating_sub(seq.arrival),
                queue_time: seq.admitted_at.unwrap_or(end).saturating_sub(seq.arrival),
                preemptions: seq.preemptions,
            }
        });
        match finished.as_ref().map(|f| f.reason) {
            Some(FinishReason::Stop) => self.counters.finished_stop += 1,
            Some(FinishReason::Length) => self.counters.finished_length += 1,
            None => {}
        }
        Some(RequestUpdate {
            id,
            new_tokens: 1,
            ttft,
            itl,
            preempted: false,
            finished,
        })
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
