//! infergate's autoscaler: turns each pool's load signals into a replica count and applies it.
//!
//! - [`signals`]: what the pool's pods and gateways report, with staleness made explicit.
//! - [`policy`]: the pure decision `(&ScalerState, &Signals, now) -> Recommendation`.
//! - [`actuate`]: applying a replica count (Kubernetes scale subresource, or local processes).
//! - [`lease`]: leader election, so only one autoscaler replica writes.
//! - [`service`]: the run loop (signals, policy, actuator every interval) and the admin port.
#![forbid(unsafe_code)]

pub mod actuate;
pub mod lease;
pub mod policy;
pub mod service;
pub mod signals;
