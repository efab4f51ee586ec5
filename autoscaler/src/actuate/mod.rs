//! Actuators: how a replica count becomes pods.
//!
//! The policy says "this pool wants N"; an [`Actuator`] reports what the pool has and makes it N.
//! Two implementations: [`local`] starts and stops `infergate sim` processes on this machine (for
//! `infergate up` and the tests), and `kubernetes` patches a Deployment's or StatefulSet's scale
//! subresource. The autoscaler's loop is written against the trait only.
//!
//! A scale-down names its victims: the loop knows each pod's load from the signals, so it passes
//! the idlest pods first ([`choose_victims`]); an actuator removes those when it can (the local one
//! drains exactly them; Kubernetes gets them as pod-deletion-cost hints).

pub mod kube_pools;
pub mod kubernetes;
pub mod local;

use std::collections::HashMap;
use std::future::Future;

use crate::signals::{PodLoad, Replicas};

/// What an actuator knows about one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolStatus {
    /// Asked for, ready, and starting.
    pub replicas: Replicas,
    /// The pods, when the actuator knows them (the local one always does).
    pub pods: Vec<PodStatus>,
}

/// One pod as the actuator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodStatus {
    /// Unique within the pool: the Kubernetes pod name, or `<pool>-<n>` for a local process.
    pub name: String,
    /// Base URL, once known (a local process reports it a moment after it starts).
    pub url: Option<String>,
    pub phase: PodPhase,
}

/// Where a pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Exists, not serving yet (cold start).
    Starting,
    /// Serving.
    Ready,
    /// Being removed: takes no new requests, finishing what it has.
    Draining,
}

impl PodPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Starting => "starting",
            PodPhase::Ready => "ready",
            PodPhase::Draining => "draining",
        }
    }
}

/// Why an actuator could not read or write a pool.
#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("pool `{0}` is not managed by this actuator")]
    UnknownPool(String),
    #[error("cannot start a pod for pool `{pool}`: {reason}")]
    Spawn { pool: String, reason: String },
    /// The orchestrator refused or failed the call (Kubernetes API errors, conflicts, outages).
    #[error("{action} for pool `{pool}` failed: {reason}")]
    Api {
        pool: String,
        action: &'static str,
        reason: String,
    },
    #[error("the actuator is shutting down")]
    ShuttingDown,
}

/// Reads and sets a pool's replica count. Implementations are cheap to share (`Arc`) and safe to
/// call from one task per pool.
pub trait Actuator: Send + Sync + 'static {
    /// `local` or `kubernetes`: used in logs and metrics.
    fn name(&self) -> &'static str;

    /// The pool's size and pods now.
    fn status(&self, pool: &str) -> impl Future<Output = Result<PoolStatus, ActuateError>> + Send;

    /// Makes the pool `replicas` strong. On a scale-down, `victims` lists pod names to remove
    /// first, idlest first; the actuator may use it, or pick by its own rule when it cannot.
    fn set_replicas(
        &self,
        pool: &str,
        replicas: u32,
        victims: &[String],
    ) -> impl Future<Output = Result<(), ActuateError>> + Send;
}

/// The `count` pods to remove from a pool, best first: starting pods (they carry no work and may be
/// minutes from serving), then ready pods by least known load (running + waiting; a pod whose load
/// is unknown counts as busy), newest first among equals. Draining pods are already going.
pub fn choose_victims(
    pods: &[PodStatus],
    loads: &HashMap<String, PodLoad>,
    count: usize,
) -> Vec<String> {
    let mut candidates: Vec<(u8, f64, usize, &PodStatus)> = pods
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p.phase {
            PodPhase::Draining => None,
            PodPhase::Starting => Some((0, 0.0, i, p)),
            PodPhase::Ready => {
                let load = p
                    .url
                    .as_ref()
                    .and_then(|u| loads.get(u))
                    .map_or(f64::INFINITY, |l| l.running + l.waiting);
                Some((1, load, i, p))
            }
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(b.2.cmp(&a.2)));
    candidates
        .into_iter()
        .take(count)
        .map(|(_, _, _, p)| p.name.clone())
        .collect()
}

/// The `count` pods an actuator that can pick exactly removes: the caller's `hint` first (it knows
/// the loads), skipping names that are unknown or already draining, then [`choose_victims`]'s order
/// (starting pods, then newest) for the rest.
pub fn honour_hint(pods: &[PodStatus], hint: &[String], count: usize) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::with_capacity(count);
    let eligible = |name: &String| {
        pods.iter()
            .any(|p| &p.name == name && p.phase != PodPhase::Draining)
    };
    for name in hint
        .iter()
        .chain(choose_victims(pods, &HashMap::new(), pods.len()).iter())
    {
        if chosen.len() == count {
            break;
        }
        if eligible(name) && !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: PodPhase) -> PodStatus {
        PodStatus {
            name: name.into(),
            url: Some(format!("http://{name}")),
            phase,
        }
    }

    #[test]
    fn victims_are_starting_then_idlest_then_unknown() {
        let pods = vec![
            pod("a", PodPhase::Ready),
            pod("b", PodPhase::Ready),
            pod("c", PodPhase::Starting),
            pod("d", PodPhase::Draining),
            pod("e", PodPhase::Ready),
        ];
        let load = |r: f64| PodLoad {
            waiting: 0.0,
            running: r,
            kv_usage: 0.0,
        };
        let loads = HashMap::from([
            ("http://a".to_string(), load(5.0)),
            ("http://b".to_string(), load(1.0)),
        ]);
        assert_eq!(choose_victims(&pods, &loads, 1), ["c"]);
        assert_eq!(choose_victims(&pods, &loads, 3), ["c", "b", "a"]);
        assert_eq!(choose_victims(&pods, &loads, 9), ["c", "b", "a", "e"]);
    }

    #[test]
    fn the_hint_comes_first_and_the_rest_is_filled_in() {
        let pods = vec![
            pod("a", PodPhase::Ready),
            pod("b", PodPhase::Ready),
            pod("c", PodPhase::Starting),
            pod("d", PodPhase::Draining),
        ];
        let hint = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(honour_hint(&pods, &hint(&["a"]), 1), ["a"]);
        // Unknown and draining names are skipped; the starting pod fills in, then the newest.
        assert_eq!(
            honour_hint(&pods, &hint(&["zz", "d", "a"]), 3),
            ["a", "c", "b"]
        );
        assert_eq!(honour_hint(&pods, &[], 2), ["c", "b"]);
        assert_eq!(honour_hint(&pods, &hint(&["a", "a"]), 5), ["a", "c", "b"]);
    }
}
