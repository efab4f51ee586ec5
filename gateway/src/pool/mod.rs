//! The live state of one pool, shared by the scraper (writes load), the proxy (picks, counts
//! in-flight, reports outcomes), discovery (adds and removes endpoints) and telemetry (reads).
//!
//! [`Pool::pick`] is the only place where that live state becomes a [`PoolSnapshot`]: it reads the
//! clock once, decides what is stale, unready or ejected, asks the pure [`picker::pick`], and applies
//! the answer (records the prompt's prefix against the endpoint, counts the request in flight and
//! hands back an [`InflightGuard`] that un-counts it).

mod endpoint;
mod guard;

pub use endpoint::Endpoint;
pub use guard::InflightGuard;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::json;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use crate::flow::CapacitySignal;
use std::time::{Duration, Instant};

use infergate_config::{
    Flavor, GatewayConfig, OutlierConfig, PickerPolicy, PickerWeights, PoolConfig, ScrapeConfig,
};

use crate::discovery::EndpointSet;
use crate::picker::{
    self, Balance, EndpointId, EndpointView, HoldReason, Pick, PickReason, PoolSnapshot,
    PrefixIndex, PrefixMatch, RequestFacts, Saturation,
};
use crate::scrape::ScrapedLoad;

thread_local! {
    /// [`Pool::pick`]'s views when they borrow nothing (no adapter named), reused across picks.
    static VIEWS: RefCell<Vec<EndpointView<'static>>> = const { RefCell::new(Vec::new()) };
}

/// What [`Pool::pick`] decided.
#[derive(Debug)]
pub enum PoolPick {
    /// Send the request to `endpoint`; keep `guard` alive until the response is finished.
    Endpoint {
        endpoint: Arc<Endpoint>,
        guard: InflightGuard,
        reason: PickReason,
    },
    /// Nowhere now: wait on [`Pool::capacity_changed`] (flow control) and pick again.
    Hold(HoldReason),
}

/// How usable an endpoint is at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointHealth {
    /// The picker may choose it.
    pub usable: bool,
    /// Its scraped load is too old to use (in-flight accounting instead).
    pub stale: bool,
    /// No good scrape for `unready_after` after having had one.
    pub scrape_unready: bool,
    pub ejected: bool,
}

/// One pool of endpoints.
pub struct Pool {
    me: Weak<Pool>,
    name: String,
    models: Vec<String>,
    flavor: Flavor,
    policy: PickerPolicy,
    weights: PickerWeights,
    saturation: Saturation,
    balance: Balance,
    scrape: ScrapeConfig,
    /// `scrape.stale_after` and `scrape.unready_after` in nanoseconds, for [`Pool::health_at`].
    stale_after_ns: u64,
    unready_after_ns: u64,
    outlier: OutlierConfig,
    members: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Serialises the writers of `members` (discovery, pruning of drained endpoints).
    membership: Mutex<()>,
    prefix: Mutex<PrefixIndex>,
    rr: AtomicUsize,
    next_id: AtomicU32,
    capacity: CapacitySignal,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("endpoints", &self.members.load().len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// An empty pool; endpoints arrive with [`Pool::apply_discovery`].
    pub fn new(cfg: &PoolConfig, gw: &GatewayConfig) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            me: me.clone(),
            name: cfg.name.clone(),
            models: cfg.models.clone(),
            flavor: cfg.flavor,
            policy: cfg.policy.unwrap_or(gw.picker.policy),
            weights: gw.picker.weights.clone(),
            saturation: Saturation::from(&gw.flow),
            balance: Balance::default(),
            scrape: gw.scrape.clone(),
            stale_after_ns: nanos(gw.scrape.stale_after),
            unready_after_ns: nanos(gw.scrape.unready_after),
            outlier: gw.outlier.clone(),
            members: ArcSwap::from_pointee(Vec::new()),
            membership: Mutex::new(()),
            prefix: Mutex::new(PrefixIndex::new(gw.picker.prefix.capacity)),
            rr: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            capacity: CapacitySignal::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn models(&self) -> &[String] {
        &self.models
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn policy(&self) -> PickerPolicy {
        self.policy
    }

    pub fn scrape_config(&self) -> &ScrapeConfig {
        &self.scrape
    }

    /// Raised when an in-flight request ends, a scrape lands, or the endpoints change: whatever
    /// may let a held request go.
    pub fn capacity_changed(&self) -> &CapacitySignal {
        &self.capacity
    }

    /// The endpoints now, draining ones (removed, requests still in flight) included.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.members.load().as_ref().clone()
    }

    /// Replaces the pool's endpoints with `set`. Endpoints that stay (same URL) keep their state:
    /// in-flight count, scraped load, ejection. Removed ones with requests in flight stay listed,
    /// never picked, until the last one finishes.
    pub fn apply_discovery(&self, set: &EndpointSet) {
        let _writer = self.membership.lock();
        let old = self.members.load_full();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(set.len());
        for d in set.iter() {
            let url = d.url.trim_end_matches('/');
            if next.iter().any(|e| e.url() == url) {
                continue;
            }
            match old.iter().find(|e| e.url() == url) {
                Some(e) => {
                    e.update_from(d);
                    next.push(e.clone());
                }
                None => {
                    let id = EndpointId(self.next_id.fetch_add(1, Relaxed));
                    next.push(Arc::new(Endpoint::new(id, d)));
                }
            }
        }
        for e in old.iter() {
            if !next.iter().any(|n| n.id() == e.id()) && e.inflight() > 0 {
                e.mark_removed();
                next.push(e.clone());
            }
        }
        self.members.store(Arc::new(next));
        self.capacity.raise();
    }

    /// Drops removed endpoints whose last request finished.
    pub(crate) fn prune_drained(&self) {
        let _writer = self.membership.lock();
        let old = self.members.load_full();
        if !old.iter().any(|e| e.is_removed() && e.inflight() == 0) {
            return;
        }
        let next: Vec<_> = old
            .iter()
            .filter(|e| !(e.is_removed() && e.inflight() == 0))
            .cloned()
            .collect();
        self.members.store(Arc::new(next));
    }

    /// How usable `ep` is at `now`.
    pub fn health(&self, ep: &Endpoint, now: Instant) -> EndpointHealth {
        let (_, stamp) = ep.scalars();
        self.health_at(ep, endpoint::age_ns(stamp, endpoint::ticks(now)), now)
    }

    /// [`Pool::health`] for an endpoint whose last good scrape is `age_ns` nanoseconds old
    /// (`None`: never). In integer nanoseconds because a pick asks this of every endpoint, and
    /// building a `Duration` costs a division.
    #[inline]
    fn health_at(&self, ep: &Endpoint, age_ns: Option<u64>, now: Instant) -> EndpointHealth {
        let stale = age_ns.is_none_or(|a| a > self.stale_after_ns);
        // Never scraped successfully: usable on in-flight accounting (a pod without a metrics
        // route must still work); scraped once, then silent for too long: unready.
        let scrape_unready = age_ns.is_some_and(|a| a > self.unready_after_ns);
        let ejected = ep.is_ejected(now);
        let usable = ep.discovered_ready()
            && !ep.is_terminating()
            && !ep.is_removed()
            && !scrape_unready
            && !ejected;
        EndpointHealth {
            usable,
            stale,
            scrape_unready,
            ejected,
        }
    }

    /// Endpoints the picker may choose now.
    pub fn ready_count(&self) -> usize {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .filter(|e| self.health(e, now).usable)
            .count()
    }

    /// Picks an endpoint for a request, never one in `exclude` (those a retry already tried).
    pub fn pick(&self, facts: &RequestFacts, exclude: &[EndpointId]) -> PoolPick {
        let Some(me) = self.me.upgrade() else {
            return PoolPick::Hold(HoldReason::NoReadyEndpoint);
        };
        let members = self.members.load();
        let now = Instant::now();
        let exclude: Vec<usize> = exclude
            .iter()
            .filter_map(|id| members.iter().position(|e| e.id() == *id))
            .collect();

        // The prefix index is locked three times, briefly, rather than across the whole pick:
        // building the views and scoring them need no index, and two threads picking for the
        // same pool should not queue behind each other for that long. A record of another pick
        // landing in between is as if that pick had come just before this one.
        //
        // The prefetch goes first and the lookup after the views: in an index of megabytes each
        // of a long prompt's blocks is a cache miss, and building the views is work for those
        // misses to hide behind. The lookup prefetches again: a core keeps only a couple of
        // dozen misses in flight, and a 64-block prompt asks for more lines than that at once,
        // so some of the first hints may have gone unserved. Asked again, those go out while
        // the pick is scored, before the record needs them; lines already in cache cost a hit.
        // (Measured: the pick figure 3.79 against 4.00 us, median of six alternated runs.)
        let has_prefix = !facts.prefix.is_empty();
        if has_prefix {
            self.prefix.lock().prefetch(&facts.prefix);
        }
        let now_ticks = endpoint::ticks(now);
        let pick_with_prefix = |views: &mut [EndpointView<'_>]| {
            if has_prefix {
                let mut matches: Vec<PrefixMatch> = Vec::new();
                let mut index = self.prefix.lock();
                index.prefetch(&facts.prefix);
                index.lookup(&facts.prefix, &mut matches);
                drop(index);
                // At most ENDPOINTS_PER_BLOCK matches: a scan of the members for each.
                for m in &matches {
                    if let Some(i) = members.iter().position(|e| e.id() == m.endpoint) {
                        views[i].prefix_blocks = m.blocks;
                    }
                }
            }
            self.pick_among(views, facts, &exclude)
        };
        let pick = if facts.lora.is_some() {
            // Adapter lists are borrowed by the views, so their owners must outlive them; only
            // requests that name an adapter pay for holding them.
            let loads: Vec<Option<Arc<ScrapedLoad>>> = members.iter().map(|e| e.load()).collect();
            let mut views: Vec<EndpointView<'_>> = members
                .iter()
                .zip(&loads)
                .map(|(e, l)| self.view(e, now, now_ticks, l.as_deref()))
                .collect();
            pick_with_prefix(&mut views)
        } else {
            // Without adapters the views borrow nothing: build them in this thread's reused
            // buffer rather than allocating some 8 KB per pick.
            VIEWS.with(|cell| match cell.try_borrow_mut() {
                Ok(mut views) => {
                    views.clear();
                    views.extend(members.iter().map(|e| self.view(e, now, now_ticks, None)));
                    let pick = pick_with_prefix(&mut views);
                    views.clear();
                    pick
                }
                Err(_) => {
                    let mut views: Vec<EndpointView<'static>> = members
                        .iter()
                        .map(|e| self.view(e, now, now_ticks, None))
                        .collect();
                    pick_with_prefix(&mut views)
                }
            })
        };
        match pick {
            Pick::Endpoint { index, reason } => {
                let endpoint = members[index].clone();
                if !facts.prefix.is_empty() {
                    self.prefix.lock().record(&facts.prefix, endpoint.id());
                }
                endpoint.begin_request();
                let guard = InflightGuard::new(me, endpoint.clone());
                PoolPick::Endpoint {
                    endpoint,
                    guard,
                    reason,
                }
            }
            Pick::Hold { reason } => PoolPick::Hold(reason),
        }
    }

    /// One endpoint as the picker sees it now (`now_ticks` is `now` as scrape stamps count):
    /// load older than `stale_after` is withheld, and adapters are read from `load` when given.
    // Always inlined: out of line it returns a 100-byte view through memory, 64 times a pick.
    #[inline(always)]
    fn view<'a>(
        &self,
        e: &Endpoint,
        now: Instant,
        now_ticks: u64,
        load: Option<&'a ScrapedLoad>,
    ) -> EndpointView<'a> {
        let (scalars, stamp) = e.scalars();
        let h = self.health_at(e, endpoint::age_ns(stamp, now_ticks), now);
        let fresh = !h.stale;
        let lora = load.filter(|_| fresh).map(|l| &l.lora);
        EndpointView {
            ready: e.discovered_ready() && !e.is_removed() && !h.scrape_unready,
            ejected: h.ejected,
            terminating: e.is_terminating(),
            waiting: scalars.waiting.filter(|_| fresh),
            running: scalars.running.filter(|_| fresh),
            kv_usage: scalars.kv_usage.filter(|_| fresh),
            inflight: e.inflight(),
            picks_since_scrape: if fresh { e.picks_since_scrape() } else { 0 },
            loras: lora.map_or(&[], |l| &l.running),
            waiting_loras: lora.map_or(&[], |l| &l.waiting),
            max_lora: lora.and_then(|l| l.max_lora),
            // Filled in by the pick from the prefix index.
            prefix_blocks: 0,
        }
    }

    /// The pure pick over `views` (advancing the round-robin cursor).
    fn pick_among(
        &self,
        views: &[EndpointView<'_>],
        facts: &RequestFacts,
        exclude: &[usize],
    ) -> Pick {
        let snapshot = PoolSnapshot {
            endpoints: views,
            rr_cursor: self.rr.fetch_add(1, Relaxed),
            policy: self.policy,
            weights: &self.weights,
            saturation: self.saturation,
            balance: self.balance,
        };
        picker::pick_excluding(&snapshot, facts, exclude)
    }

    /// Stores a good scrape on `ep` and wakes held requests.
    pub fn record_scrape(&self, ep: &Endpoint, load: ScrapedLoad, picks_at_send: u64) {
        ep.record_scrape(load, picks_at_send);
        self.capacity.raise();
    }

    /// Counts a failed scrape of `ep`.
    pub fn record_scrape_error(&self, ep: &Endpoint, error: String) {
        ep.record_scrape_error(error);
    }

    /// A request to `ep` failed (connect error, 5xx): ejects it after enough consecutive
    /// failures, unless that would eject more than `max_ejected_ratio` of the pool.
    pub(crate) fn report_failure(&self, ep: &Endpoint) {
        if !ep.record_failure(&self.outlier) {
            return;
        }
        let now = Instant::now();
        let members = self.members.load();
        let live = members.iter().filter(|e| !e.is_removed()).count();
        let ejected = members.iter().filter(|e| e.is_ejected(now)).count();
        let allowed =
            (self.outlier.max_ejected_ratio.clamp(0.0, 1.0) * live as f64).floor() as usize;
        if ejected < allowed && !ep.is_ejected(now) {
            let length = ep.eject(now, &self.outlier);
            tracing::warn!(pool = %self.name, endpoint = %ep.label(), ?length, "endpoint ejected after consecutive failures");
        }
    }

    pub(crate) fn report_success(&self, ep: &Endpoint) {
        ep.record_success(Instant::now, &self.outlier);
    }

    /// Called by the guard when a request ends.
    pub(crate) fn request_ended(&self, ep: &Endpoint) {
        let left = ep.end_request();
        if left == 0 && ep.is_removed() {
            self.prune_drained();
        }
        self.capacity.raise();
    }

    /// A JSON picture of the pool for `/debug/pools`.
    pub fn debug_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let endpoints: Vec<_> = self
            .members
            .load()
            .iter()
            .map(|e| {
                let h = self.health(e, now);
                let load = e.load().map(|l| {
                    json!({
                        "flavor": l.flavor.as_str(),
                        "age_ms": millis(now.saturating_duration_since(l.taken_at)),
                        "waiting": l.waiting,
                        "running": l.running,
                        "kv_usage": l.kv_usage,
                        "kv_capacity_tokens": l.kv_capacity_tokens,
                        "loras_running": l.lora.running,
                        "loras_waiting": l.lora.waiting,
                        "max_lora": l.lora.max_lora,
                        "prefix_cache_hit_ratio": l.prefix_cache.hit_ratio(),
                    })
                });
                json!({
                    "id": e.id().0,
                    "url": e.url(),
                    "label": e.label(),
                    "usable": h.usable,
                    "discovered_ready": e.discovered_ready(),
                    "terminating": e.is_terminating(),
                    "removed": e.is_removed(),
                    "ejected": h.ejected,
                    "ejections": e.ejections(),
                    "stale": h.stale,
                    "scrape_unready": h.scrape_unready,
                    "inflight": e.inflight(),
                    "picks_since_scrape": e.picks_since_scrape(),
                    "scrape_errors": e.scrape_errors(),
                    "last_scrape_error": e.last_scrape_error(),
                    "load": load,
                })
            })
            .collect();
        let index = self.prefix.lock();
        json!({
            "name": self.name,
            "models": self.models,
            "flavor": self.flavor.as_str(),
            "policy": self.policy.as_str(),
            "ready": endpoints.iter().filter(|e| e["usable"] == true).count(),
            "endpoints": endpoints,
            "prefix_index": {
                "entries": index.len(),
                "capacity": index.capacity(),
                "evictions": index.evictions(),
            },
        })
    }
}

/// `d` in whole nanoseconds, saturating (585 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
