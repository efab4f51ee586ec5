//! `infergate loadtest compare`: one workload, several routers, the same pods, side by side.
//!
//! For each offered load, each contender in turn gets fresh simulated pods (cold caches, the same
//! seed) and the identical request schedule (the load generator plans it from the seed before the
//! first request). The contenders: infergate with each picker policy, nginx as the classic Ingress
//! (round robin and `least_conn`), and SGLang's cache-aware router when installed. A contender that
//! is not installed is skipped with a note, never faked.
//!
//! Latencies, throughput and goodput come from the load generator (the client's view); the
//! prefix-cache hit rate and the load imbalance come from the pods' own metrics (the same
//! instrument for every contender). Capacity, when rates are given as fractions of it, is measured
//! by a saturation probe ([`capacity`]).
//!
//! - [`scenario`]: the YAML file.
//! - [`pods`], [`contender`], [`process`]: the processes of a run, killed on drop.
//! - [`run`]: the sequence of runs; [`report`] and [`plot`]: the table, JSON and SVGs.

pub mod capacity;
pub mod contender;
pub mod mixed;
pub mod plot;
pub mod pods;
pub mod process;
pub mod report;
pub mod run;
pub mod scenario;

pub use contender::Programs;
pub use report::{Row, ScenarioReport, Status};
pub use run::{CompareOptions, RunError, compare};
pub use scenario::{Contender, Scenario, ScenarioError};
