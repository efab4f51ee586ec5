//! The scored policies, `queue-kv` and `infergate`.
//!
//! Every score is in 0..=1, higher is better, and the weights say how much each counts:
//! - queue: `1 / (1 + q / saturation_queue)`, with `q` = scraped waiting + picks since the scrape
//!   (`infergate`: at least this gateway's in-flight requests there minus the scraped running
//!   ones, see [`known_queue`]). Absolute rather than normalised over the candidates, so that 0 vs
//!   1 waiting is a small difference and 0 vs 20 a large one.
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

use std::cell::Cell;

use super::{
    Balance, EndpointView, Pick, PickReason, PickerPolicy, PickerWeights, PoolSnapshot,
    RequestFacts,
};

/// Aggregates over the eligible endpoints that the per-endpoint scores are relative to.
struct Stats {
    /// Eligible endpoints with a fresh scrape.
    known: usize,
    mean_known_q: f64,
    mean_known_inflight: f64,
    /// The KV use assumed where it is unknown: the scraped candidates' mean, else 0.
    unknown_kv: f64,
    min_load: f64,
    /// KV use of an average running request (scraped KV over scraped running, pool-wide).
    kv_per_request: f64,
    /// Reciprocals, computed once per pick rather than divided by per endpoint.
    inv_q_ref: f64,
    inv_mean_inflight: f64,
    /// The `infergate` policy (prefix, LoRA, in-flight); else `queue-kv`.
    infergate: bool,
}

/// One eligible endpoint as scoring reads it: the view's optional numbers resolved once, in the
/// pass that counts candidates, so that the scoring pass is straight arithmetic over a dense
/// array (no `Option` to test, no ineligible endpoint to skip). One cache line.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lane {
    /// The endpoint's index in the snapshot.
    index: usize,
    /// [`known_queue`] when the scrape is fresh; NaN when not (never NaN otherwise: the
    /// queue is clamped at 0, which turns a NaN into 0).
    q: f64,
    inflight: f64,
    /// Scraped KV use clamped to 0..=1; NaN when unknown.
    kv: f64,
    picks: f64,
    /// [`load_estimate`].
    load: f64,
    /// Prefix affinity before the imbalance guard: leading blocks sent there / the request's.
    prefix_raw: f64,
    lora: f64,
}

/// `a.max(b)` for the per-endpoint passes, where `b` is never NaN: one `maxsd` instead of the
/// NaN-aware sequence `f64::max` compiles to (it tests both operands). The same result: a NaN
/// `a` gives `b`, as with `f64::max`.
#[inline(always)]
fn max(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// `a.min(b)` likewise, `b` never NaN.
#[inline(always)]
fn min(a: f64, b: f64) -> f64 {
    if a < b { a } else { b }
}

/// The queue of an endpoint with a fresh scrape: the engine's waiting requests plus those sent
/// since the scrape. Under `infergate`, never less than the requests this gateway has outstanding
/// there beyond what the engine says it is running: those wait where the engine's metrics cannot
/// see them (a slow host or sidecar in front of the engine, a stalled path), and a pod slowed that
/// way looks *less* loaded to its own metrics, since its engine is admitting less. For a healthy
/// pod the two agree (what this gateway has outstanding is running, waiting, or on its way).
fn known_queue(v: &EndpointView<'_>, waiting: f64, infergate: bool) -> f64 {
    let reported = max(waiting, 0.0) + f64::from(v.picks_since_scrape);
    if !infergate {
        return reported;
    }
    let unseen = f64::from(v.inflight) - max(v.running.unwrap_or(0.0), 0.0);
    max(reported, unseen)
}

impl Lane {
    const EMPTY: Lane = Lane {
        index: 0,
        q: f64::NAN,
        inflight: 0.0,
        kv: f64::NAN,
        picks: 0.0,
        load: 0.0,
        prefix_raw: 0.0,
        lora: 0.0,
    };

    /// The queue: [`known_queue`] with a fresh scrape. Without one, the queue is imputed as the
    /// mean queue of the scraped candidates, shifted by how far this endpoint's in-flight count
    /// is from theirs; with no scraped candidate at all, it is the in-flight count.
    fn queue(&self, st: &Stats) -> f64 {
        if !self.q.is_nan() {
            self.q
        } else if st.known > 0 {
            max(
                st.mean_known_q + self.inflight - st.mean_known_inflight,
                0.0,
            )
        } else {
            self.inflight
        }
    }

    /// KV use with the in-flight correction: each request sent since the scrape is assumed to
    /// take the KV of an average running request of the pool, so a burst raises the estimate
    /// before the next scrape shows it. Pool-wide, not per endpoint, so that every endpoint pays
    /// the same for the same request. Unknown: the scraped candidates' mean.
    fn kv_use(&self, st: &Stats) -> f64 {
        if self.kv.is_nan() {
            st.unknown_kv
        } else {
            min(self.kv + st.kv_per_request * self.picks, 1.0)
        }
    }
}

/// Requests at the endpoint: what the engine reported plus what was sent since, and never less
/// than what this gateway alone has outstanding there.
fn load_estimate(v: &EndpointView<'_>) -> f64 {
    let inflight = f64::from(v.inflight);
    match v.waiting {
        Some(w) => {
            let scraped =
                max(w, 0.0) + max(v.running.unwrap_or(0.0), 0.0) + f64::from(v.picks_since_scrape);
            max(scraped, inflight)
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

/// One endpoint's weighted score, and its prefix and LoRA affinities (what explains a pick).
#[derive(Clone, Copy, Debug)]
struct Scored {
    score: f64,
    /// Prefix affinity after the imbalance guard.
    prefix: f64,
    /// Prefix affinity before it.
    prefix_raw: f64,
    lora: f64,
}

/// The hot loop of every pick, once per eligible endpoint: plain arithmetic on a [`Lane`], no
/// branch that depends on the endpoint but the two selects of the estimates. The queue and
/// in-flight terms are both of the form `w / (1 + x)`; they are summed over one common
/// denominator, so an endpoint costs one division instead of two.
fn score(l: &Lane, st: &Stats, w: &PickerWeights, bal: Balance) -> Scored {
    let kv = 1.0 - min(max(l.kv_use(st), 0.0), 1.0);
    // queue = 1 / dq, in-flight = 1 / di: w.queue / dq + w.inflight / di, over dq * di.
    let dq = 1.0 + l.queue(st) * st.inv_q_ref;
    if !st.infergate {
        return Scored {
            score: w.queue / dq + w.kv * kv,
            prefix: 0.0,
            prefix_raw: 0.0,
            lora: 0.0,
        };
    }
    let di = 1.0 + l.inflight * st.inv_mean_inflight;
    // The imbalance guard (a no-op where there is no affinity to guard).
    let overloaded = l.load - st.min_load > bal.abs && l.load > bal.rel * st.min_load;
    let prefix = if overloaded { 0.0 } else { l.prefix_raw };
    Scored {
        score: (w.queue * di + w.inflight * dq) / (dq * di)
            + w.kv * kv
            + w.prefix * prefix
            + w.lora * l.lora,
        prefix,
        prefix_raw: l.prefix_raw,
        lora: l.lora,
    }
}

thread_local! {
    /// [`Totals`]' lanes, reused from pick to pick: a pick allocates nothing.
    static LANES: Cell<Vec<Lane>> = const { Cell::new(Vec::new()) };
}

/// The eligible endpoints as [`Lane`]s and the sums over them, gathered in the picker's first
/// pass (the one that counts candidates), so that scoring needs only one more, over the lanes.
#[derive(Debug)]
pub(super) struct Totals<'f> {
    /// The `infergate` policy, else `queue-kv`: what an endpoint's queue counts.
    infergate: bool,
    /// The request's block count, and 1 / it (0 without blocks).
    blocks: f64,
    inv_blocks: f64,
    lora: Option<&'f str>,
    /// In endpoint order: the first `n` are the eligible endpoints'.
    lanes: Vec<Lane>,
    n: usize,
    known: usize,
    kv_n: usize,
    sum_q: f64,
    sum_kv: f64,
    sum_inf_known: f64,
    sum_inf: f64,
    min_load: f64,
    sum_kv_running: f64,
    sum_running: f64,
    sum_kv_picks: f64,
}

impl Drop for Totals<'_> {
    fn drop(&mut self) {
        LANES.set(std::mem::take(&mut self.lanes));
    }
}

impl<'f> Totals<'f> {
    /// Empty sums for a scored policy and this request, over at most `endpoints` endpoints.
    pub(super) fn new(
        policy: PickerPolicy,
        facts: &'f RequestFacts,
        endpoints: usize,
    ) -> Totals<'f> {
        // Sized up front, so that `add` writes in place: a `push` that might grow the vector is
        // a call the compiler cannot see through, and around it every sum would go back to
        // memory on every endpoint.
        let mut lanes = LANES.take();
        lanes.clear();
        lanes.resize(endpoints, Lane::EMPTY);
        let blocks = facts.prefix.len() as f64;
        Totals {
            infergate: policy == PickerPolicy::Infergate,
            blocks,
            inv_blocks: if facts.prefix.is_empty() {
                0.0
            } else {
                1.0 / blocks
            },
            lora: facts.lora.as_deref(),
            lanes,
            n: 0,
            known: 0,
            kv_n: 0,
            sum_q: 0.0,
            sum_kv: 0.0,
            sum_inf_known: 0.0,
            sum_inf: 0.0,
            min_load: f64::INFINITY,
            sum_kv_running: 0.0,
            sum_running: 0.0,
            sum_kv_picks: 0.0,
        }
    }

    /// Counts the eligible endpoint at `index`. Call in endpoint order.
    pub(super) fn add(&mut self, index: usize, v: &EndpointView<'_>) {
        let inflight = f64::from(v.inflight);
        let picks = f64::from(v.picks_since_scrape);
        let load = load_estimate(v);
        self.sum_inf += inflight;
        self.min_load = min(self.min_load, load);
        let q = match v.waiting {
            Some(w) => {
                let q = known_queue(v, w, self.infergate);
                self.known += 1;
                self.sum_q += q;
                self.sum_inf_known += inflight;
                q
            }
            None => f64::NAN,
        };
        // A NaN from a broken scrape counts as unknown, not as a number that poisons the sums.
        let kv = match v.kv_usage.filter(|kv| !kv.is_nan()) {
            Some(kv) => {
                let kv = min(max(kv, 0.0), 1.0);
                self.kv_n += 1;
                self.sum_kv += kv;
                self.sum_kv_picks += picks;
                if let Some(r) = v.running {
                    self.sum_kv_running += kv;
                    self.sum_running += max(r, 0.0);
                }
                kv
            }
            None => f64::NAN,
        };
        let (prefix_raw, lora) = if self.infergate {
            (
                min(f64::from(v.prefix_blocks), self.blocks) * self.inv_blocks,
                lora_score(v, self.lora),
            )
        } else {
            (0.0, 0.0)
        };
        if let Some(lane) = self.lanes.get_mut(self.n) {
            *lane = Lane {
                index,
                q,
                inflight,
                kv,
                picks,
                load,
                prefix_raw,
                lora,
            };
            self.n += 1;
        }
    }

    fn stats(&self, snap: &PoolSnapshot<'_>) -> Stats {
        let kv_per_request = if self.sum_running >= 1.0 {
            self.sum_kv_running / self.sum_running
        } else {
            0.0
        };
        // Mean of the corrected KV estimates: linear in the picks (the cap at 1 is ignored here).
        let sum_kv = self.sum_kv + kv_per_request * self.sum_kv_picks;
        let mean = |sum: f64, k: usize| if k == 0 { 0.0 } else { sum / k as f64 };
        let n = self.n;
        Stats {
            known: self.known,
            mean_known_q: mean(self.sum_q, self.known),
            mean_known_inflight: mean(self.sum_inf_known, self.known),
            unknown_kv: if self.kv_n > 0 {
                (sum_kv / self.kv_n as f64).min(1.0)
            } else {
                0.0
            },
            min_load: if n == 0 { 0.0 } else { self.min_load },
            kv_per_request,
            inv_q_ref: 1.0 / snap.saturation.queue.max(1.0),
            inv_mean_inflight: 1.0 / mean(self.sum_inf, n).max(1.0),
            infergate: self.infergate,
        }
    }
}

/// The best eligible endpoint by weighted score, given the [`Totals`] over the eligible ones.
pub(super) fn pick_scored(snap: &PoolSnapshot<'_>, totals: &Totals<'_>) -> Pick {
    let st = totals.stats(snap);
    let (infergate, known) = (st.infergate, st.known);
    let (w, bal) = (snap.weights, snap.balance);

    // The scan starts at the cursor's endpoint and wraps, so that ties rotate: the lanes are in
    // endpoint order, and those from the cursor on come first.
    let lanes = &totals.lanes[..totals.n];
    let start = super::rotated(snap.endpoints.len(), snap.rr_cursor)
        .next()
        .unwrap_or(0);
    let split = lanes.partition_point(|l| l.index < start);

    // One pass: the best score, and the spread of the affinity scores (an affinity only explains
    // a pick when it differed between candidates).
    let (mut max_prefix, mut min_prefix, mut max_lora, mut min_lora) =
        (0.0f64, 1.0f64, 0.0f64, 1.0f64);
    // The strongest affinity the imbalance guard removed.
    let mut max_suppressed = 0.0f64;
    let mut best: Option<(usize, Scored)> = None;
    for part in [&lanes[split..], &lanes[..split]] {
        for l in part {
            let p = score(l, &st, w, bal);
            max_prefix = max(max_prefix, p.prefix);
            min_prefix = min(min_prefix, p.prefix);
            max_lora = max(max_lora, p.lora);
            min_lora = min(min_lora, p.lora);
            if p.prefix < p.prefix_raw {
                max_suppressed = max(max_suppressed, p.prefix_raw);
            }
            if best.is_none_or(|(_, b)| p.score > b.score) {
                best = Some((l.index, p));
            }
        }
    }
    let Some((index, won)) = best else {
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
