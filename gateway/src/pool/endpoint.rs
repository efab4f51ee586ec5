//! One endpoint's live state: what discovery says, what the scraper last read, what this gateway
//! has outstanding there, and whether outlier detection has ejected it.
//!
//! Everything here is atomics or a lock-free swap, because the proxy reads and writes it on every
//! request while the scraper writes it ten times a second.

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
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
    name: Option<String>,
    label: String,
    inflight: AtomicU32,
    /// Requests ever sent here; the scraper notes its value when it sends a scrape, so the picks
    /// made after that instant are known exactly ([`Endpoint::picks_since_scrape`]).
    picks_total: AtomicU64,
    picks_at_scrape: AtomicU64,
    load: ArcSwapOption<ScrapedLoad>,
    scrape_errors: AtomicU64,
    last_scrape_error: Mutex<Option<String>>,
    discovered_ready: AtomicBool,
    terminating: AtomicBool,
    /// Gone from discovery, kept until its last in-flight request finishes.
    removed: AtomicBool,
    outlier: Outlier,
}

impl Endpoint {
    pub(crate) fn new(id: EndpointId, d: &DiscoveredEndpoint) -> Endpoint {
        let url = d.url.trim_end_matches('/').to_string();
        let label = d
            .name
            .clone()
            .unwrap_or_else(|| host_port(&url).to_string());
        Endpoint {
            id,
            url,
            name: d.name.clone(),
            label,
            inflight: AtomicU32::new(0),
            picks_total: AtomicU64::new(0),
            picks_at_scrape: AtomicU64::new(0),
            load: ArcSwapOption::empty(),
            scrape_errors: AtomicU64::new(0),
            last_scrape_error: Mutex::new(None),
            discovered_ready: AtomicBool::new(d.ready),
            terminating: AtomicBool::new(d.terminating),
            removed: AtomicBool::new(false),
            outlier: Outlier::default(),
        }
    }

    /// Base URL, no trailing slash, e.g. `http://10.0.0.7:8000`.
    pub fn url(&self) -> &str {
        &self.url
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

    /// Requests this gateway has outstanding here now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// The last good scrape (possibly stale: compare its `taken_at`).
    pub fn load(&self) -> Option<Arc<ScrapedLoad>> {
        self.load.load_full()
    }

    /// Runs `f` on the last good scrape without taking a reference count: the pick reads every
    /// endpoint's load on every request, and 64 atomic increments and decrements per pick on
    /// shared cache lines is what this avoids.
    pub(crate) fn with_load<R>(&self, f: impl FnOnce(Option<&ScrapedLoad>) -> R) -> R {
        let guard = self.load.load();
        f(guard.as_deref())
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
            .picks_total
            .load(Relaxed)
            .saturating_sub(self.picks_at_scrape.load(Relaxed));
        u32::try_from(since).unwrap_or(u32::MAX)
    }

    /// Requests ever sent here (the scraper reads it before each scrape).
    pub fn picks_total(&self) -> u64 {
        self.picks_total.load(Relaxed)
    }

    /// Ejected by outlier detection at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected(now)
    }

    /// Discovery says ready (EndpointSlice `ready`).
    pub fn discovered_ready(&self) -> bool {
        self.discovered_ready.load(Relaxed)
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Relaxed)
    }

    /// Gone from discovery; still listed while requests to it finish.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }

    /// Stores a good scrape that was sent when [`Endpoint::picks_total`] read `picks_at_send`.
    pub fn record_scrape(&self, load: ScrapedLoad, picks_at_send: u64) {
        self.picks_at_scrape.store(picks_at_send, Relaxed);
        self.load.store(Some(Arc::new(load)));
        *self.last_scrape_error.lock() = None;
    }

    /// Counts a failed scrape.
    pub fn record_scrape_error(&self, error: String) {
        self.scrape_errors.fetch_add(1, Relaxed);
        *self.last_scrape_error.lock() = Some(error);
    }

    pub(crate) fn update_from(&self, d: &DiscoveredEndpoint) {
        self.discovered_ready.store(d.ready, Relaxed);
        self.terminating.store(d.terminating, Relaxed);
        self.removed.store(false, Relaxed);
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Relaxed);
    }

    pub(crate) fn begin_request(&self) {
        self.inflight.fetch_add(1, Relaxed);
        self.picks_total.fetch_add(1, Relaxed);
    }

    /// Returns the in-flight count left.
    pub(crate) fn end_request(&self) -> u32 {
        self.inflight.fetch_sub(1, Relaxed).saturating_sub(1)
    }

    pub(crate) fn outlier(&self) -> &Outlier {
        &self.outlier
    }
}

/// `host:port` of a URL (or the URL itself when it has no scheme).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Consecutive-failure outlier detection with exponential back-off, after Envoy's.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    consecutive: AtomicU32,
    /// Set while an ejection is scheduled or remembered: keeps `is_ejected` lock-free for the
    /// endpoints that never failed.
    flagged: AtomicBool,
    state: Mutex<EjectionState>,
}

#[derive(Debug, Default)]
struct EjectionState {
    /// Ejections so far; the next lasts `base * 2^ejections` (capped).
    ejections: u32,
    until: Option<Instant>,
}

impl Outlier {
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.flagged.load(Relaxed) && self.state.lock().until.is_some_and(|u| now < u)
    }

    /// A success resets the failure streak; a long healthy stretch after the last ejection
    /// (`max_ejection` past its end) forgets the back-off too.
    pub(crate) fn success(&self, now: Instant, cfg: &OutlierConfig) {
        self.consecutive.store(0, Relaxed);
        if !self.flagged.load(Relaxed) {
            return;
        }
        let mut s = self.state.lock();
        if s.until.is_some_and(|u| now >= u + cfg.max_ejection) {
            *s = EjectionState::default();
            self.flagged.store(false, Relaxed);
        }
    }

    /// Counts a failure; returns true when the streak reached the threshold (the caller decides
    /// whether the pool can afford an ejection and then calls [`Outlier::eject`]).
    pub(crate) fn failure(&self, cfg: &OutlierConfig) -> bool {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        cfg.consecutive_failures > 0 && n >= cfg.consecutive_failures
    }

    /// Ejects until `now` + the back-off; returns its length.
    pub(crate) fn eject(&self, now: Instant, cfg: &OutlierConfig) -> Duration {
        let mut s = self.state.lock();
        let factor = 1u32.checked_shl(s.ejections.min(31)).unwrap_or(u32::MAX);
        let length = cfg
            .base_ejection
            .checked_mul(factor)
            .unwrap_or(cfg.max_ejection)
            .min(cfg.max_ejection);
        s.ejections = s.ejections.saturating_add(1);
        s.until = Some(now + length);
        self.flagged.store(true, Relaxed);
        self.consecutive.store(0, Relaxed);
        length
    }

    /// Ejections so far (for debug output).
    pub(crate) fn ejections(&self) -> u32 {
        if self.flagged.load(Relaxed) {
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
    fn ejection_backs_off_exponentially_up_to_the_cap() {
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_ratio: 1.0,
        };
        let o = Outlier::default();
        let t0 = Instant::now();
        assert!(!o.failure(&cfg));
        assert!(o.failure(&cfg));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(10));
        assert!(o.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected(t0 + Duration::from_secs(10)));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(20));
        assert_eq!(o.eject(t0, &cfg), Duration::from_secs(35));
        // A success long after the last ejection ended forgets the back-off.
        o.success(t0 + Duration::from_secs(35 + 35), &cfg);
        assert_eq!(o.ejections(), 0);
        assert!(!o.failure(&cfg), "the streak restarted");
    }
}
