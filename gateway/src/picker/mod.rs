//! The picker: which endpoint gets this request, as a pure function of what the gateway knows.
//!
//! `pick(&PoolSnapshot, &RequestFacts) -> Pick` does no I/O and reads no clock: the [`crate::pool`]
//! builds the snapshot (scraped load, its own in-flight counts, prefix matches, ejections) and
//! applies the decision. The same function then runs in the live gateway, in property tests, and in
//! the load-test planner's virtual time.
//!
//! Policies ([`PickerPolicy`]):
//! - `round-robin`: what a Kubernetes Service does; the baseline.
//! - `least-inflight`: fewest requests this gateway has outstanding there.
//! - `queue-kv`: the engine's waiting queue and KV-cache use, as last scraped, with the requests
//!   sent since that scrape added to the queue (the scrape cannot know about them yet).
//! - `infergate`: `queue-kv` plus prefix affinity, LoRA affinity and the in-flight count, weighted
//!   ([`PickerWeights`]), with a load-imbalance guard so that a hot prefix cannot pile onto one
//!   endpoint (see [`score`]).
//!
//! Whatever the policy, an unready, ejected, terminating or excluded endpoint is never picked, and
//! when every remaining endpoint is saturated (queue AND KV at their thresholds) the answer is
//! [`Pick::Hold`]: the request waits in flow control instead of making a full engine fuller.

pub mod facts;
pub mod prefix;
mod score;

pub use facts::{Priority, PromptHasher, RequestFacts};
pub use prefix::{ENDPOINTS_PER_BLOCK, EndpointId, PrefixIndex, PrefixMatch};

use infergate_config::{FlowConfig, PickerPolicy, PickerWeights};

/// One endpoint as the picker sees it at the moment of the pick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointView<'a> {
    /// Discovery says ready, and the scraper has not given up on it.
    pub ready: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Going away: finishes what it has, gets nothing new.
    pub terminating: bool,
    /// Engine's waiting requests at the last fresh scrape; `None` = unknown or stale.
    pub waiting: Option<f64>,
    /// Engine's running requests at the last fresh scrape.
    pub running: Option<f64>,
    /// KV-cache use (0..=1) at the last fresh scrape.
    pub kv_usage: Option<f64>,
    /// Requests this gateway has outstanding there now.
    pub inflight: u32,
    /// Requests this gateway sent there after the last scrape was taken: the scrape cannot count
    /// them, so they are added to its waiting queue (the in-flight correction).
    pub picks_since_scrape: u32,
    /// LoRA adapters running there (from `vllm:lora_requests_info`).
    pub loras: &'a [String],
    /// LoRA adapters with requests waiting there (being loaded).
    pub waiting_loras: &'a [String],
    /// Most adapters the engine holds at once, if it says.
    pub max_lora: Option<u32>,
    /// Leading blocks of this request's prompt that the prefix index says were sent here.
    pub prefix_blocks: u32,
}

/// When an endpoint counts as saturated: its waiting queue AND its KV use at these thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Saturation {
    pub queue: f64,
    pub kv: f64,
}

impl From<&FlowConfig> for Saturation {
    fn from(f: &FlowConfig) -> Self {
        Saturation {
            queue: f.saturation_queue,
            kv: f.saturation_kv,
        }
    }
}

impl Default for Saturation {
    fn default() -> Self {
        Saturation::from(&FlowConfig::default())
    }
}

/// The load-imbalance guard of the `infergate` policy, after SGLang's cache-aware router: prefix
/// affinity for an endpoint is ignored when its load exceeds the least-loaded candidate's by more
/// than `abs` requests AND by more than `rel` times. Prefix hits save prefill time; they are not
/// worth queueing behind a pile of other requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Balance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for Balance {
    fn default() -> Self {
        Balance { abs: 8.0, rel: 1.5 }
    }
}

/// Everything the picker decides on, besides the request's facts.
#[derive(Clone, Copy, Debug)]
pub struct PoolSnapshot<'a> {
    pub endpoints: &'a [EndpointView<'a>],
    /// Advanced by the pool on every pick: the round-robin position and the tie-breaker of the
    /// other policies, so equal endpoints take turns instead of the first always winning.
    pub rr_cursor: usize,
    pub policy: PickerPolicy,
    pub weights: &'a PickerWeights,
    pub saturation: Saturation,
    pub balance: Balance,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Send it to `endpoints[index]`.
    Endpoint { index: usize, reason: PickReason },
    /// Send it nowhere now: wait in flow control.
    Hold { reason: HoldReason },
}

/// Why an endpoint was picked (a metric label and a debug field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PickReason {
    RoundRobin,
    LeastInflight,
    /// Lowest queue / KV / in-flight score.
    LeastLoaded,
    /// It was recently sent the longest run of this prompt's leading blocks.
    PrefixAffinity,
    /// It already runs the requested LoRA adapter.
    LoraAffinity,
    /// An endpoint with prefix affinity was skipped because it was far more loaded.
    ImbalanceOverride,
    /// Only one endpoint could take it.
    OnlyCandidate,
}

impl PickReason {
    pub const ALL: [PickReason; 7] = [
        PickReason::RoundRobin,
        PickReason::LeastInflight,
        PickReason::LeastLoaded,
        PickReason::PrefixAffinity,
        PickReason::LoraAffinity,
        PickReason::ImbalanceOverride,
        PickReason::OnlyCandidate,
    ];

    /// The reason's place in [`PickReason::ALL`] (which lists them in declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PickReason::RoundRobin => "round_robin",
            PickReason::LeastInflight => "least_inflight",
            PickReason::LeastLoaded => "least_loaded",
            PickReason::PrefixAffinity => "prefix_affinity",
            PickReason::LoraAffinity => "lora_affinity",
            PickReason::ImbalanceOverride => "imbalance_override",
            PickReason::OnlyCandidate => "only_candidate",
        }
    }
}

/// Why no endpoint was picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// No endpoint is ready, non-ejected, non-terminating (and not excluded).
    NoReadyEndpoint,
    /// Every candidate's queue and KV use are at the saturation thresholds.
    AllSaturated,
}

impl HoldReason {
    pub const ALL: [HoldReason; 2] = [HoldReason::NoReadyEndpoint, HoldReason::AllSaturated];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::NoReadyEndpoint => "no_ready_endpoint",
            HoldReason::AllSaturated => "all_saturated",
        }
    }
}

/// Picks an endpoint for a request. Pure: same snapshot and facts, same answer.
pub fn pick(snapshot: &PoolSnapshot<'_>, facts: &RequestFacts) -> Pick {
    pick_excluding(snapshot, facts, &[])
}

/// [`pick`], never choosing the endpoints at the indexes in `exclude` (those a retry already
/// tried).
pub fn pick_excluding(
    snapshot: &PoolSnapshot<'_>,
    facts: &RequestFacts,
    exclude: &[usize],
) -> Pick {
    let eps = snapshot.endpoints;
    let is_candidate = |i: usize| {
        let v = &eps[i];
        v.ready && !v.ejected && !v.terminating && !exclude.contains(&i)
    };
    let sat = snapshot.saturation;
    let saturated = |i: usize| is_saturated(&eps[i], sat);
    let scored = matches!(
        snapshot.policy,
        PickerPolicy::QueueKv | PickerPolicy::Infergate
    );
    let (mut candidates, mut unsaturated, mut last) = (0usize, 0usize, 0usize);
    // The scored policies' sums ride along this pass rather than needing one of their own
    // (the other policies get no lanes to fill).
    let lanes = if scored { eps.len() } else { 0 };
    let mut totals = score::Totals::new(snapshot.policy, facts, lanes);
    for (i, v) in eps.iter().enumerate() {
        if is_candidate(i) {
            candidates += 1;
            last = i;
            if !saturated(i) {
                unsaturated += 1;
                if scored {
                    totals.add(i, v);
                }
            }
        }
    }
    if candidates == 0 {
        return Pick::Hold {
            reason: HoldReason::NoReadyEndpoint,
        };
    }
    if unsaturated == 0 {
        return Pick::Hold {
            reason: HoldReason::AllSaturated,
        };
    }
    if candidates == 1 {
        return Pick::Endpoint {
            index: last,
            reason: PickReason::OnlyCandidate,
        };
    }
    let cursor = snapshot.rr_cursor;
    match snapshot.policy {
        PickerPolicy::RoundRobin => {
            let nth = cursor % candidates;
            let index = (0..eps.len())
                .filter(|&i| is_candidate(i))
                .nth(nth)
                .unwrap_or(0);
            Pick::Endpoint {
                index,
                reason: PickReason::RoundRobin,
            }
        }
        PickerPolicy::LeastInflight => {
            let index = rotated_best(eps.len(), cursor, |i| {
                is_candidate(i).then(|| -f64::from(eps[i].inflight))
            });
            Pick::Endpoint {
                index,
                reason: PickReason::LeastInflight,
            }
        }
        PickerPolicy::QueueKv | PickerPolicy::Infergate => {
            // Saturated endpoints are filtered out as long as another can take the request:
            // the totals hold the candidates that are not.
            score::pick_scored(snapshot, &totals)
        }
    }
}

/// Saturated: the engine's queue (with the picks sent since the scrape) and its KV use are both
/// at their thresholds. Unknown load is never saturated: the gateway cannot tell, and holding
/// requests for a pod that has no metrics route would hold them forever.
fn is_saturated(v: &EndpointView<'_>, sat: Saturation) -> bool {
    match (v.waiting, v.kv_usage) {
        (Some(w), Some(kv)) => w + f64::from(v.picks_since_scrape) >= sat.queue && kv >= sat.kv,
        _ => false,
    }
}

/// The index with the highest score, scanning from `start` so that ties rotate with the cursor.
/// `score` returns `None` for endpoints that may not be picked; at least one must return `Some`.
fn rotated_best(len: usize, start: usize, mut score: impl FnMut(usize) -> Option<f64>) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for i in rotated(len, start) {
        if let Some(s) = score(i)
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i).unwrap_or(0)
}

/// The indexes `0..len` starting at `start % len` and wrapping around: the scan order that makes
/// ties rotate. One division per pick, not one per endpoint (an integer division costs as much
/// as the rest of an endpoint's score).
fn rotated(len: usize, start: usize) -> impl Iterator<Item = usize> {
    let start = if len == 0 { 0 } else { start % len };
    (start..len).chain(0..start)
}

#[cfg(test)]
mod tests;
