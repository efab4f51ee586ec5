//! A vLLM-like model-server simulator.
//!
//! - [`engine`]: the pure scheduler in virtual time (continuous batching, chunked prefill,
//!   preemption), over [`kv`] (paged blocks, prefix cache) and [`profile`] (step-time model).
//! - [`tokens`]: the deterministic tokenizer that makes shared text prefixes share KV blocks.

pub mod engine;
pub mod kv;
pub mod profile;
pub mod tokens;
