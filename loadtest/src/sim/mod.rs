//! (being written) A vLLM-like model-server simulator.

pub mod tokens;
