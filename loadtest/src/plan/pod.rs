//! One simulated pod: a simulator [`Engine`] plus what the gateway and the actuator know about it.

use std::time::Duration;

use infergate_autoscaler::signals::PodLoad;
use infergate_gateway::picker::EndpointId;

use crate::sim::{Engine, RequestUpdate};

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Requested, not ready yet (scheduling, image pull, weights load): costs, serves nothing.
    Starting,
    /// Serving.
    Ready,
    /// Scaled down: gets no new requests, finishes the ones it has, then goes.
    Draining,
    /// Removed.
    Gone,
}

/// A pod.
#[derive(Debug)]
pub struct Pod {
    /// Its identity in the gateway's prefix index (never reused).
    pub id: EndpointId,
    /// Its engine.
    pub engine: Engine,
    /// Where it is in its life.
    pub state: PodState,
    /// When it was requested (pod-time counts from here: the GPU is held while it starts).
    pub created: Duration,
    /// When it went away.
    pub removed: Option<Duration>,
    /// A step is under way; its outcomes land at its end.
    pub stepping: bool,
    /// The outcomes of the step under way.
    pub pending: Vec<RequestUpdate>,
    /// Requests the gateway has sent here and not seen finish.
    pub inflight: u32,
    /// Requests ever sent here.
    pub picks_total: u64,
    /// `picks_total` when the last scrape was taken.
    pub picks_at_scrape: u64,
    /// The engine's load at the last scrape (`None` before the first one).
    pub scraped: Option<PodLoad>,
}

impl Pod {
    /// A pod requested at `now`.
    pub fn new(id: EndpointId, engine: Engine, state: PodState, now: Duration) -> Pod {
        Pod {
            id,
            engine,
            state,
            created: now,
            removed: None,
            stepping: false,
            pending: Vec::new(),
            inflight: 0,
            picks_total: 0,
            picks_at_scrape: 0,
            scraped: None,
        }
    }

    /// The engine's load now, as its `/metrics` would say.
    pub fn load(&self) -> PodLoad {
        let s = self.engine.stats();
        PodLoad {
            waiting: s.waiting as f64,
            running: s.running as f64,
            kv_usage: s.kv_usage,
        }
    }

    /// Pod-seconds used up to `end`.
    pub fn seconds(&self, end: Duration) -> f64 {
        self.removed
            .unwrap_or(end)
            .min(end)
            .saturating_sub(self.created)
            .as_secs_f64()
    }

    /// Counts as a replica the actuator manages (not draining, not gone).
    pub fn is_replica(&self) -> bool {
        matches!(self.state, PodState::Starting | PodState::Ready)
    }

    /// Costs money now.
    pub fn is_alive(&self) -> bool {
        self.state != PodState::Gone
    }
}
