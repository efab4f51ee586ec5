//! One endpoint's live state: what discovery says, what the scraper last read, what this gateway
//! has outstanding there, and whether outlier detection has ejected it.
//!
//! Everything here is atomics or a lock-free swap, because the proxy reads and writes it on every
//! request while the scraper writes it ten times a second.

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use infergate_config::OutlierConfig;

use crate::discovery::DiscoveredEndpoint;
use crate::picker::EndpointId;
use crate::scrape::ScrapedLoad;

/// One model-server endpoint of a pool.
#[derive(Debug)]
pub struct Endpoint {
    id: EndpointId,
    url: String,
    /// Where to connect: the URL's `host:port` (port 80 when the URL has none).
    connect_addr: String,
    /// The `Host` header of requests sent here (the URL's authority).
    host: http::HeaderValue,
    name: Option<String>,
    label: String,
    /// `label` as the `x-infergate-endpoint` answer header (none if it cannot be one).
    label_header: Option<http::HeaderValue>,
    /// Everything a pick reads, on one cache line.
    hot: Hot,
    load: ArcSwapOption<ScrapedLoad>,
    scrape_errors: AtomicU64,
    last_scrape_error: Mutex<Option<String>>,
    outlier: Outlier,
}

impl Endpoint {
    pub(crate) fn new(id: EndpointId, d: &DiscoveredEndpoint) -> Endpoint {
        let url = d.url.trim_end_matches('/').to_string();
        let authority = host_port(&url);
        let label = d.name.clone().unwrap_or_else(|| authority.to_string());
        let host = http::HeaderValue::from_str(authority)
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        let connect_addr = connect_addr(authority);
        Endpoint {
            id,
            connect_addr,
            host,
            url,
            name: d.name.clone(),
            label_header: http::HeaderValue::from_str(&label).ok(),
            label,
            hot: Hot::new(d),
            load: ArcSwapOption::empty(),
            scrape_errors: AtomicU64::new(0),
            last_scrape_error: Mutex::new(None),
            outlier: Outlier::default(),
        }
    }

    /// Base URL, no trailing slash, e.g. `http://10.0.0.7:8000`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` to open connections to.
    pub fn connect_addr(&self) -> &str {
        &self.connect_addr
    }

    /// The `Host` header for requests sent here.
    pub fn host_header(&self) -> &http::HeaderValue {
        &self.host
    }

    pub fn id(&self) -> EndpointId {
        self.id
    }

    /// The pod's name, if discovery knows it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// For metric labels: the pod name, else `host:port`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// [`Endpoint::label`] as a header value, made once.
    pub fn label_header(&self) -> Option<&http::HeaderValue> {
        self.label_header.as_ref()
    }

    /// Requests this gateway has outstanding here now.
    pub fn inflight(&self) -> u32 {
        self.hot.inflight.load(Relaxed)
    }

    /// The last good scrape (possibly stale: compare its `taken_at`).
    pub fn load(&self) -> Option<Arc<ScrapedLoad>> {
        self.load.load_full()
    }

    /// The last good scrape's queue, running count and KV use, read without locks, and when it
    /// was taken, as [`ticks`] (0 = never scraped): ages are compared in integer nanoseconds
    /// ([`age_ns`]), not by rebuilding an `Instant` per endpoint per pick. (Fields of two
    /// consecutive scrapes may mix for an instant: harmless for a heuristic.)
    pub(crate) fn scalars(&self) -> (LoadScalars, u64) {
        self.hot.read()
    }

    /// Failed scrapes since the endpoint appeared.
    pub fn scrape_errors(&self) -> u64 {
        self.scrape_errors.load(Relaxed)
    }

    /// Why the last failed scrape failed (cleared by a good one).
    pub fn last_scrape_error(&self) -> Option<String> {
        self.last_scrape_error.lock().clone()
    }

    /// Requests sent here since the last good scrape was sent.
    pub fn picks_since_scrape(&self) -> u32 {
        let since = self
            .hot
            .picks_total
            .load(Relaxed)
            .saturating_sub(self.hot.picks_at_scrape.load(Relaxed));
        u32::try_from(since).unwrap_or(u32::MAX)
    }

    /// Requests ever sent here (the scraper reads it before each scrape).
    pub fn picks_total(&self) -> u64 {
        self.hot.picks_total.load(Relaxed)
    }

    /// Ejected by outlier detection at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected(&self.hot.ejection_flagged, now)
    }

    /// Discovery says ready (EndpointSlice `ready`).
    pub fn discovered_ready(&self) -> bool {
        self.hot.discovered_ready.load(Relaxed)
    }

    pub fn is_terminating(&self) -> bool {
        self.hot.terminating.load(Relaxed)
    }

    /// Gone from discovery; still listed while requests to it finish.
    pub fn is_removed(&self) -> bool {
        self.hot.removed.load(Relaxed)
    }

    /// Stores a good scrape that was sent when [`Endpoint::picks_total`] read `picks_at_send`.
    pub fn record_scrape(&self, load: ScrapedLoad, picks_at_send: u64) {
        self.hot.picks_at_scrape.store(picks_at_send, Relaxed);
        self.hot.write(&load);
        self.load.store(Some(Arc::new(load)));
        *self.last_scrape_error.lock() = None;
    }

    /// Counts a failed scrape.
    pub fn record_scrape_error(&self, error: String) {
        self.scrape_errors.fetch_add(1, Relaxed);
        *self.last_scrape_error.lock() = Some(error);
    }

    pub(crate) fn update_from(&self, d: &DiscoveredEndpoint) {
        self.hot.discovered_ready.store(d.ready, Relaxed);
        self.hot.terminating.store(d.terminating, Relaxed);
        self.hot.removed.store(false, Relaxed);
    }

    pub(crate) fn mark_removed(&self) {
        self.hot.removed.store(true, Relaxed);
    }

    pub(crate) fn begin_request(&self) {
        self.hot.inflight.fetch_add(1, Relaxed);
        self.hot.picks_total.fetch_add(1, Relaxed);
    }

    /// Returns the in-flight count left.
    pub(crate) fn end_request(&self) -> u32 {
        self.hot.inflight.fetch_sub(1, Relaxed).saturating_sub(1)
    }

    /// Counts a failed request; true when the failure streak reached the threshold (the pool
    /// decides whether it can afford an ejection, then calls [`Endpoint::eject`]).
    pub(crate) fn record_failure(&self, cfg: &OutlierConfig) -> bool {
        self.outlier.failure(cfg)
    }

    /// Ejects until `now` + the back-off; returns its length.
    pub(crate) fn eject(&self, now: Instant, cfg: &OutlierConfig) -> Duration {
        self.outlier.eject(&self.hot.ejection_flagged, now, cfg)
    }

    /// Counts a successful request; `now` is asked only of an endpoint that was ejected (the
    /// clock is not read on every request's end for the rare case).
    pub(crate) fn record_success(&self, now: impl FnOnce() -> Instant, cfg: &OutlierConfig) {
        self.outlier.success(&self.hot.ejection_flagged, now, cfg);
    }

    /// Ejections so far (for debug output).
    pub(crate) fn ejections(&self) -> u32 {
        self.outlier.ejections(&self.hot.ejection_flagged)
    }
}

/// The scalars of a scrape, as [`Endpoint::scalars`] returns them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LoadScalars {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_usage: Option<f64>,
}

/// The words of an endpoint that every pick reads (or, for the counters, writes), together on
/// one cache line: a pick builds a view of every endpoint of the pool, and spread over the
/// struct these few words cost a cache miss each, 64 endpoints over.
///
/// The scrape's numbers are `Option<f64>` as bits (`None` is one NaN pattern extract never
/// stores) and its instant as nanoseconds since [`epoch`] plus one (0 = never scraped): plain
/// atomics, cheaper than even a reference-count-free `ArcSwap` read of the whole scrape.
#[derive(Debug)]
#[repr(C, align(64))]
struct Hot {
    waiting: AtomicU64,
    running: AtomicU64,
    kv: AtomicU64,
    taken_at: AtomicU64,
    /// Requests ever sent here; the scraper notes its value when it sends a scrape, so the picks
    /// made after that instant are known exactly ([`Endpoint::picks_since_scrape`]).
    picks_total: AtomicU64,
    picks_at_scrape: AtomicU64,
    inflight: AtomicU32,
    discovered_ready: AtomicBool,
    terminating: AtomicBool,
    /// Gone from discovery, kept until its last in-flight request finishes.
    removed: AtomicBool,
    /// Set while an ejection is scheduled or remembered ([`Outlier`]): keeps the ejection check
    /// lock-free for the endpoints that never failed.
    ejection_flagged: AtomicBool,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 64);

const NONE_BITS: u64 = u64::MAX;

impl Hot {
    fn new(d: &DiscoveredEndpoint) -> Hot {
        Hot {
            waiting: AtomicU64::new(NONE_BITS),
            running: AtomicU64::new(NONE_BITS),
            kv: AtomicU64::new(NONE_BITS),
            taken_at: AtomicU64::new(0),
            picks_total: AtomicU64::new(0),
            picks_at_scrape: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            discovered_ready: AtomicBool::new(d.ready),
            terminating: AtomicBool::new(d.terminating),
            removed: AtomicBool::new(false),
            ejection_flagged: AtomicBool::new(false),
        }
    }

    fn write(&self, l: &ScrapedLoad) {
        let bits = |v: Option<f64>| v.filter(|v| !v.is_nan()).map_or(NONE_BITS, f64::to_bits);
        self.waiting.store(bits(l.waiting), Relaxed);
        self.running.store(bits(l.running), Relaxed);
        self.kv.store(bits(l.kv_usage), Relaxed);
        self.taken_at.store(ticks(l.taken_at), Relaxed);
    }

    /// The scalars, and the raw stamp (nanoseconds since [`epoch`] plus one; 0 = never scraped).
    fn read(&self) -> (LoadScalars, u64) {
        let value = |a: &AtomicU64| {
            let b = a.load(Relaxed);
            (b != NONE_BITS).then(|| f64::from_bits(b))
        };
        let t = self.taken_at.load(Relaxed);
        let scalars = LoadScalars {
            waiting: value(&self.waiting),
            running: value(&self.running),
            kv_usage: value(&self.kv),
        };
        (scalars, t)
    }
}

/// How long ago a scrape stamped `stamp` (a [`ticks`] value, 0 = never) was taken, at `now_ticks`.
pub(crate) fn age_ns(stamp: u64, now_ticks: u64) -> Option<u64> {
    (stamp != 0).then(|| now_ticks.saturating_sub(stamp))
}

/// `now` in the stamps' scale: nanoseconds since [`epoch`] plus one, like a stamp taken now.
pub(crate) fn ticks(now: Instant) -> u64 {
    let nanos = now.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
}

/// Origin of the nanosecond timestamps: well before any instant this process handles (tests
/// make scrapes "taken" seconds ago), so none saturates to it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        [86_400 * 365, 86_400, 3_600, 60]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now)
    })
}

/// `host:port` of a URL (or the URL itself when it has no scheme).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// `host:port` to connect to, port 80 when `authority` names none (`host`, `[::1]`). An
/// authority `http` cannot parse is passed on as it is: the connect then fails and says so.
fn connect_addr(authority: &str) -> String {
    match authority.parse::<http::uri::Authority>() {
        Ok(a) => format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)),
        Err(_) => authority.to_string(),
    }
}

/// Consecutive-failure outlier detection with exponential back-off, after Envoy's.
#[derive(Debug, Default)]
///
/// Its flag (set while an ejection is scheduled or remembered, so that endpoints that never
/// failed are checked without a lock) lives on the endpoint's hot line, and is passed in.
pub(crate) struct Outlier {
    consecutive: AtomicU32,
    state: Mutex<EjectionState>,
}

#[derive(Debug, Default)]
struct EjectionState {
    /// Ejections so far; the next lasts `base * 2^ejections` (capped).
    ejections: u32,
    until: Option<Instant>,
}

impl Outlier {
    pub(crate) fn is_ejected(&self, flagged: &AtomicBool, now: Instant) -> bool {
        flagged.load(Relaxed) && self.state.lock().until.is_some_and(|u| now < u)
    }

    /// A success resets the failure streak; a long healthy stretch after the last ejection
    /// (`max_ejection` past its end) forgets the back-off too.
    pub(crate) fn success(
        &self,
        flagged: &AtomicBool,
        now: impl FnOnce() -> Instant,
        cfg: &OutlierConfig,
    ) {
        // Written only when there is a streak to end: every worker's requests to this endpoint
        // end here, and an unconditional store would move the cache line between their cores
        // on every request.
        if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
        if !flagged.load(Relaxed) {
            return;
        }
        let now = now();
        let mut s = self.state.lock();
        if s.until.is_some_and(|u| now >= u + cfg.max_ejection) {
            *s = EjectionState::default();
            flagged.store(false, Relaxed);
        }
    }

    /// Counts a failure; returns true when the streak reached the threshold (the caller decides
    /// whether the pool can afford an ejection and then calls [`Outlier::eject`]).
    pub(crate) fn failure(&self, cfg: &OutlierConfig) -> bool {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        cfg.consecutive_failures > 0 && n >= cfg.consecutive_failures
    }

    /// Ejects until `now` + the back-off; returns its length.
    pub(crate) fn eject(
        &self,
        flagged: &AtomicBool,
        now: Instant,
        cfg: &OutlierConfig,
    ) -> Duration {
        let mut s = self.state.lock();
        let factor = 1u32.checked_shl(s.ejections.min(31)).unwrap_or(u32::MAX);
        let length = cfg
            .base_ejection
            .checked_mul(factor)
            .unwrap_or(cfg.max_ejection)
            .min(cfg.max_ejection);
        s.ejections = s.ejections.saturating_add(1);
        s.until = Some(now + length);
        flagged.store(true, Relaxed);
        self.consecutive.store(0, Relaxed);
        length
    }

    /// Ejections so far (for debug output).
    pub(crate) fn ejections(&self, flagged: &AtomicBool) -> u32 {
        if flagged.load(Relaxed) {
            self.state.lock().ejections
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_name_or_host_port() {
        let mut d = DiscoveredEndpoint::ready("http://10.0.0.7:8000/");
        assert_eq!(Endpoint::new(EndpointId(1), &d).label(), "10.0.0.7:8000");
        assert_eq!(
            Endpoint::new(EndpointId(1), &d).url(),
            "http://10.0.0.7:8000"
        );
        d.name = Some("vllm-0".into());
        assert_eq!(Endpoint::new(EndpointId(1), &d).label(), "vllm-0");
    }

    #[test]
    fn connect_address_and_host_header_come_from_the_url() {
        let at = |url: &str| Endpoint::new(EndpointId(1), &DiscoveredEndpoint::ready(url));
        let e = at("http://10.0.0.7:8000/");
        assert_eq!(e.connect_addr(), "10.0.0.7:8000");
        assert_eq!(e.host_header(), "10.0.0.7:8000");
        let e = at("http://model-server");
        assert_eq!(e.connect_addr(), "model-server:80");
        assert_eq!(e.host_header(), "model-server");
        assert_eq!(at("http://[::1]:9000").connect_addr(), "[::1]:9000");
        assert_eq!(at("http://[::1]").connect_addr(), "[::1]:80");
    }

    #[test]
    fn scalars_follow_the_last_scrape() {
        let e = Endpoint::new(EndpointId(1), &DiscoveredEndpoint::ready("http://a:1"));
        assert_eq!(e.scalars().1, 0, "never scraped");
        assert_eq!(e.scalars().0.waiting, None);
        let taken_at = Instant::now() - Duration::from_secs(30);
        e.record_scrape(
            ScrapedLoad {
                flavor: infergate_config::Flavor::Vllm,
                waiting: Some(3.0),
                running: None,
                kv_usage: Some(0.5),
                kv_capacity_tokens: None,
                lora: Default::default(),
                prefix_cache: Default::default(),
                taken_at,
            },
            0,
        );
        let (s, stamp) = e.scalars();
        assert_eq!(
            (s.waiting, s.running, s.kv_usage),
            (Some(3.0), None, Some(0.5))
        );
        assert_eq!(stamp, ticks(taken_at));
        let age = age_ns(stamp, ticks(taken_at + Duration::from_secs(30))).expect("scraped");
        assert_eq!(age, 30_000_000_000);
    }

    #[test]
    fn ejection_backs_off_exponentially_up_to_the_cap() {
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_ratio: 1.0,
        };
        let o = Endpoint::new(EndpointId(1), &DiscoveredEndpoint::ready("http://a:1"));
        let t0 = Instant::now();
        assert!(!o.record_failure(&cfg));
        assert!(o.record_failure(&cfg));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(10));
        assert!(o.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected(t0 + Duration::from_secs(10)));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(20));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(35));
        assert_eq!(o.ejections(), 3);
        // A success long after the last ejection ended forgets the back-off.
        o.record_success(|| t0 + Duration::from_secs(35 + 35), &cfg);
        assert_eq!(o.ejections(), 0);
        assert!(!o.is_ejected(t0 + Duration::from_secs(71)));
        assert!(!o.record_failure(&cfg), "the streak restarted");
    }
}
