//! A vLLM-like model-server simulator (`infergate sim`); see `docs/SIMULATOR.md`.
//!
//! Pure, synchronous, virtual time (what the planner reuses):
//! - [`engine`]: the scheduler (continuous batching, chunked prefill, admission when KV allows,
//!   preemption by recompute), over [`kv`] (paged blocks, prefix cache with LRU eviction) and
//!   [`profile`] (the step-time model and its calibrated profiles); [`report`] is what it returns.
//! - [`tokens`]: the deterministic tokenizer that makes shared text prefixes share KV blocks.
//!
//! Real time and HTTP:
//! - [`host`]: one engine task per process, stepping in (scaled) real time and delivering tokens.
//! - [`server`]: the hyper server, routes, health, admin and graceful shutdown; [`completion`]: one
//!   completion request; [`api`]: OpenAI JSON; [`metrics`]: Prometheus exposition; [`faults`].

pub mod api;
mod completion;
pub mod engine;
pub mod faults;
pub mod host;
pub mod kv;
pub mod metrics;
pub mod profile;
pub mod report;
pub mod server;
pub mod tokens;

pub use engine::{
    AddError, Counters, Engine, EngineConfig, EngineRequest, EngineStats, FinishReason, Finished,
    RequestId, RequestUpdate, Step,
};
pub use metrics::Flavor;
pub use profile::{Profile, StepWork};
pub use server::{SimConfig, SimError, SimServer, raise_nofile_limit};
