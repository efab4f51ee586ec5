//! The scored policies, `queue-kv` and `infergate`.
//!
//! Every score is in 0..=1, higher is better, and the weights say how much each counts:
//! - queue: `1 / (1 + q / saturation_queue)`, with `q` = scraped waiting + picks since the scrape.
//!   Absolute rather than normalised over the candidates, so that 0 vs 1 waiting is a small
//!   difference and 0 vs 20 a large one.
//! - kv: `1 - kv_usage`, where the requests sent since the scrape are each assumed to take the
//!   KV of an average running request.
//! - in-flight (`infergate` only): `1 / (1 + inflight / mean inflight)`, scale-free.
//! - prefix (`infergate` only): leading blocks this endpoint was sent / the request's blocks,
//!   zeroed by the imbalance guard ([`super::Balance`]) when the endpoint is far more loaded than
//!   the least-loaded candidate.
//! - LoRA (`infergate` only, when the request names an adapter): 1 if the adapter runs there,
//!   0.6 if the engine has room to load it, 0.4 if requests for it already wait there.
//!
//! An endpoint without a fresh scrape is not assumed idle (nor full): its queue is imputed as the
//! mean queue of the scraped candidates, shifted by how far its in-flight count is from theirs,
//! and its KV use as their mean. With no scraped candidate at all, the queue is the in-flight
//! count, and the decision is plain in-flight accounting.

use super::{EndpointView, Pick, PickReason, PickerPolicy, PoolSnapshot, RequestFacts};

/// Aggregates over the eligible endpoints that the per-endpoint scores are relative to.
struct Stats {
    /// Eligible endpoints with a fresh scrape.
    known: usize,
    mean_known_q: f64,
    mean_known_inflight: f64,
    mean_known_kv: Option<f64>,
    min_load: f64,
    /// KV use of an average running request (scraped KV over scraped running, pool-wide).
    kv_per_request: f64,
    /// Reciprocals, computed once per pick rather than divided by per endpoint.
    inv_q_ref: f64,
    inv_mean_inflight: f64,
    /// 1 / the request's block count (0 without blocks).
    inv_blocks: f64,
}

/// One endpoint's scores before weighting.
#[derive(Clone, Copy, Debug)]
struct Parts {
    queue: f64,
    kv: f64,
    inflight: f64,
    /// Prefix affinity after the imbalance guard.
    prefix: f64,
    /// Prefix affinity before it.
    prefix_raw: f64,
    lora: f64,
}

fn queue_estimate(v: &EndpointView<'_>, st: &Stats) -> f64 {
    match v.waiting {
        Some(w) => w.max(0.0) + f64::from(v.picks_since_scrape),
        None if st.known > 0 => {
            (st.mean_known_q + f64::from(v.inflight) - st.mean_known_inflight).max(0.0)
        }
        None => f64::from(v.inflight),
    }
}

/// KV use with the in-flight correction: each request sent since the scrape is assumed to take
/// the KV of an average running request of the pool, so a burst raises the estimate before the
/// next scrape shows it. Pool-wide, not per endpoint, so that every endpoint pays the same for
/// the same request.
fn kv_estimate(v: &EndpointView<'_>, kv_per_request: f64) -> Option<f64> {
    let kv = v.kv_usage?.clamp(0.0, 1.0);
    Some((kv + kv_per_request * f64::from(v.picks_since_scrape)).min(1.0))
}

/// Requests at the endpoint: what the engine reported plus what was sent since, and never less
/// than what this gateway alone has outstanding there.
fn load_estimate(v: &EndpointView<'_>) -> f64 {
    let inflight = f64::from(v.inflight);
    match v.waiting {
        Some(w) => {
            let scraped =
                w.max(0.0) + v.running.unwrap_or(0.0).max(0.0) + f64::from(v.picks_since_scrape);
            scraped.max(inflight)
        }
        None => inflight,
    }
}

fn lora_score(v: &EndpointView<'_>, lora: Option<&str>) -> f64 {
    let Some(name) = lora else { return 0.0 };
    if v.loras.iter().any(|l| l == name) {
        1.0
    } else if v
        .max_lora
        .is_some_and(|m| (v.loras.len() as u64) < u64::from(m))
    {
        0.6
    } else if v.waiting_loras.iter().any(|l| l == name) {
        0.4
    } else {
        0.0
    }
}

fn parts(
    snap: &PoolSnapshot<'_>,
    facts: &RequestFacts,
    st: &Stats,
    i: usize,
    infergate: bool,
) -> Parts {
    let v = &snap.endpoints[i];
    let queue = 1.0 / (1.0 + queue_estimate(v, st) * st.inv_q_ref);
    let kv_use = kv_estimate(v, st.kv_per_request)
        .or(st.mean_known_kv)
        .unwrap_or(0.0);
    let kv = 1.0 - kv_use.clamp(0.0, 1.0);
    if !infergate {
        return Parts {
            queue,
            kv,
            inflight: 0.0,
            prefix: 0.0,
            prefix_raw: 0.0,
            lora: 0.0,
        };
    }
    let inflight = 1.0 / (1.0 + f64::from(v.inflight) * st.inv_mean_inflight);
    let blocks = facts.prefix.len() as f64;
    let prefix_raw = f64::from(v.prefix_blocks).min(blocks) * st.inv_blocks;
    let load = load_estimate(v);
    let bal = snap.balance;
    let overloaded = load - st.min_load > bal.abs && load > bal.rel * st.min_load;
    let prefix = if overloaded { 0.0 } else { prefix_raw };
    Parts {
        queue,
        kv,
        inflight,
        prefix,
        prefix_raw,
        lora: lora_score(v, facts.lora.as_deref()),
    }
}

fn weighted(snap: &PoolSnapshot<'_>, p: &Parts) -> f64 {
    let w = snap.weights;
    w.queue * p.queue
        + w.kv * p.kv
        + w.inflight * p.inflight
        + w.prefix * p.prefix
        + w.lora * p.lora
}

pub(super) fn pick_scored(
    snap: &PoolSnapshot<'_>,
    facts: &RequestFacts,
    eligible: impl Fn(usize) -> bool,
) -> Pick {
    let eps = snap.endpoints;
    let infergate = snap.policy == PickerPolicy::Infergate;

    let (mut n, mut known, mut kv_n) = (0usize, 0usize, 0usize);
    let (mut sum_q, mut sum_kv, mut sum_inf_known, mut sum_inf) = (0.0, 0.0, 0.0, 0.0);
    let mut min_load = f64::INFINITY;
    let (mut sum_kv_running, mut sum_running, mut sum_kv_picks) = (0.0, 0.0, 0.0);
    for (i, v) in eps.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        n += 1;
        sum_inf += f64::from(v.inflight);
        min_load = min_load.min(load_estimate(v));
        if let Some(w) = v.waiting {
            known += 1;
            sum_q += w.max(0.0) + f64::from(v.picks_since_scrape);
            sum_inf_known += f64::from(v.inflight);
        }
        if let Some(kv) = v.kv_usage {
            let kv = kv.clamp(0.0, 1.0);
            kv_n += 1;
            sum_kv += kv;
            sum_kv_picks += f64::from(v.picks_since_scrape);
            if let Some(r) = v.running {
                sum_kv_running += kv;
                sum_running += r.max(0.0);
            }
        }
    }
    let kv_per_request = if sum_running >= 1.0 {
        sum_kv_running / sum_running
    } else {
        0.0
    };
    // Mean of the corrected KV estimates: linear in the picks (the cap at 1 is ignored here).
    sum_kv += kv_per_request * sum_kv_picks;
    let mean = |sum: f64, k: usize| if k == 0 { 0.0 } else { sum / k as f64 };
    let st = Stats {
        known,
        mean_known_q: mean(sum_q, known),
        mean_known_inflight: mean(sum_inf_known, known),
        mean_known_kv: (kv_n > 0).then(|| (sum_kv / kv_n as f64).min(1.0)),
        min_load: if min_load.is_finite() { min_load } else { 0.0 },
        kv_per_request,
        inv_q_ref: 1.0 / snap.saturation.queue.max(1.0),
        inv_mean_inflight: 1.0 / mean(sum_inf, n).max(1.0),
        inv_blocks: if facts.prefix.is_empty() {
            0.0
        } else {
            1.0 / facts.prefix.len() as f64
        },
    };

    // One pass: the best score, and the spread of the affinity scores (an affinity only explains
    // a pick when it differed between candidates).
    let (mut max_prefix, mut min_prefix, mut max_lora, mut min_lora) =
        (0.0f64, 1.0f64, 0.0f64, 1.0f64);
    // The strongest affinity the imbalance guard removed.
    let mut max_suppressed = 0.0f64;
    let mut best: Option<(usize, f64, Parts)> = None;
    for k in 0..eps.len() {
        let i = (snap.rr_cursor + k) % eps.len();
        if !eligible(i) {
            continue;
        }
        let p = parts(snap, facts, &st, i, infergate);
        max_prefix = max_prefix.max(p.prefix);
        min_prefix = min_prefix.min(p.prefix);
        max_lora = max_lora.max(p.lora);
        min_lora = min_lora.min(p.lora);
        if p.prefix < p.prefix_raw {
            max_suppressed = max_suppressed.max(p.prefix_raw);
        }
        let s = weighted(snap, &p);
        if best.is_none_or(|(_, b, _)| s > b) {
            best = Some((i, s, p));
        }
    }
    let Some((index, _, won)) = best else {
        // The caller checked that an eligible endpoint exists; stay total anyway.
        return Pick::Hold {
            reason: super::HoldReason::NoReadyEndpoint,
        };
    };

    let load_reason = if known == 0 {
        PickReason::LeastInflight
    } else {
        PickReason::LeastLoaded
    };
    let reason = if !infergate {
        load_reason
    } else if won.prefix > 0.0 && won.prefix >= max_prefix && max_prefix > min_prefix {
        PickReason::PrefixAffinity
    } else if won.lora > 0.0 && won.lora >= max_lora && max_lora > min_lora {
        PickReason::LoraAffinity
    } else if max_suppressed > won.prefix {
        PickReason::ImbalanceOverride
    } else {
        load_reason
    };
    Pick::Endpoint { index, reason }
}
