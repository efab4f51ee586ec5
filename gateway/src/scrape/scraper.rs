//! The scrape loop: every endpoint of a pool polled on its own timer.
//!
//! One task per endpoint, so a slow or hanging pod delays nobody else's scrape, and a supervisor
//! that follows the pool's membership (starting tasks for new endpoints, stopping those of removed
//! ones). Each task starts after a delay derived from the endpoint's URL, spread over one
//! interval, so 64 endpoints are not polled in lockstep and their pages do not all arrive at once.
//!
//! A good scrape is stored on the endpoint with the instant it was SENT and the endpoint's pick
//! count at that instant: the picker adds the requests sent after it to the scraped queue. A failed
//! one is only counted: the last good load stays, and the pool decides from its age whether it is
//! still fresh, stale (in-flight accounting instead) or so old that the endpoint is unready.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use infergate_config::{Flavor, ScrapeConfig};

use super::{ExtractError, extract};
use crate::picker::EndpointId;
use crate::pool::{Endpoint, Pool};

/// The scrapers' pooled client: keep-alive HTTP/1.1 to the model servers' `/metrics`, shared by
/// every pool's scrapers. (The data path has its own per-worker connections,
/// `proxy::upstream::Upstreams`.)
pub type ScrapeClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

/// A client tuned for many long-lived keep-alive connections to a few endpoints.
pub fn scrape_client() -> ScrapeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// Largest `/metrics` page read; a real vLLM page is well under 1 MiB.
const MAX_PAGE_BYTES: usize = 8 << 20;

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("invalid metrics URL `{0}`")]
    InvalidUrl(String),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("HTTP status {0}")]
    Status(http::StatusCode),
    #[error("reading the page failed: {0}")]
    Body(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

/// Starts scraping every endpoint of `pool` until `shutdown` is cancelled.
pub fn spawn_scraper<B>(
    pool: Arc<Pool>,
    client: Client<HttpConnector, B>,
    cfg: ScrapeConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    B: http_body::Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let interval = cfg.interval.max(Duration::from_millis(1));
        let mut tasks: HashMap<EndpointId, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let endpoints = pool.endpoints();
            tasks.retain(|id, (token, _)| {
                let keep = endpoints.iter().any(|e| e.id() == *id && !e.is_removed());
                if !keep {
                    token.cancel();
                }
                keep
            });
            for ep in endpoints.iter().filter(|e| !e.is_removed()) {
                if tasks.contains_key(&ep.id()) {
                    continue;
                }
                let token = shutdown.child_token();
                let handle = tokio::spawn(scrape_loop(
                    pool.clone(),
                    ep.clone(),
                    client.clone(),
                    cfg.clone(),
                    token.clone(),
                ));
                tasks.insert(ep.id(), (token, handle));
            }
        }
        for (_, (token, handle)) in tasks {
            token.cancel();
            let _ = handle.await;
        }
    })
}

/// Delay before an endpoint's first scrape: a fixed point in the interval derived from its URL.
fn start_offset(url: &str, interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(xxhash_rust::xxh3::xxh3_64(url.as_bytes()) % nanos)
}

async fn scrape_loop<B>(
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    client: Client<HttpConnector, B>,
    cfg: ScrapeConfig,
    token: CancellationToken,
) where
    B: http_body::Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let interval = cfg.interval.max(Duration::from_millis(1));
    tokio::select! {
        _ = token.cancelled() => return,
        _ = tokio::time::sleep(start_offset(ep.url(), interval)) => {}
    }
    let url = format!("{}/metrics", ep.url());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The dialect detected on an earlier page, so `auto` looks only once.
        let flavor = match pool.flavor() {
            Flavor::Auto => ep.load().map_or(Flavor::Auto, |l| l.flavor),
            f => f,
        };
        let picks = ep.picks_total();
        let sent = Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => return,
            r = tokio::time::timeout(cfg.timeout, scrape_once(&client, &url, flavor, sent)) => r,
        };
        match result.unwrap_or(Err(ScrapeError::Timeout(cfg.timeout))) {
            Ok(load) => pool.record_scrape(&ep, load, picks),
            Err(e) => {
                tracing::debug!(pool = %pool.name(), endpoint = %ep.label(), error = %e, "scrape failed");
                pool.record_scrape_error(&ep, e.to_string());
            }
        }
    }
}

/// One GET of `url`, read and extracted.
pub async fn scrape_once<B>(
    client: &Client<HttpConnector, B>,
    url: &str,
    flavor: Flavor,
    sent: Instant,
) -> Result<super::ScrapedLoad, ScrapeError>
where
    B: http_body::Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ScrapeError::InvalidUrl(url.to_string()))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "text/plain;version=0.0.4")
        .body(B::default())
        .map_err(|_| ScrapeError::InvalidUrl(url.to_string()))?;
    let resp = client.request(req).await?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status(resp.status()));
    }
    let body: Bytes = Limited::new(resp.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| ScrapeError::Body(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok(extract(&text, flavor, sent)?)
}

#[cfg(test)]
mod tests;
