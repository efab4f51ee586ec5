//! infergate's loadtest: everything needed to measure an inference gateway without a GPU.
//!
//! - [`sim`]: a vLLM-like model server (continuous batching, paged KV cache, prefix cache, the real
//!   metric names) that runs in real time behind HTTP or in virtual time inside the planner.
//! - [`generate`]: an open-loop load generator with workloads, arrival processes and SLO reports.
//! - [`compare`]: the same schedule through several routers over fresh simulated pods.
//! - [`stepload`]: a step load through `infergate up` against a fixed pool sized for the peak.
//! - [`plan`]: the discrete-event planner, driving the live picker and scaling policy in virtual time.
//! - [`plot`]: the SVG pieces every report draws with.
//! - [`scenario_file`]: reading the YAML scenario files of `compare` and `plan`.
#![forbid(unsafe_code)]

pub mod compare;
pub mod generate;
pub mod plan;
pub mod plot;
pub mod scenario_file;
pub mod sim;
pub mod stepload;
