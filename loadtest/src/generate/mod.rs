//! The open-loop load generator behind `infergate loadtest run`.
//!
//! A run is planned before it starts ([`workload::Plan`]: when each session arrives, per the
//! [`arrival`] process, and what it asks for), then [`run::run`] follows the plan on the wall clock
//! whatever the server does, measuring how late each start was. Streaming responses are parsed as
//! they arrive ([`sse`], [`client`]) and folded into histograms ([`report`]).

pub mod arrival;
pub mod sse;
pub mod trace;
pub mod workload;
