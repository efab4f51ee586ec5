//! Keep-alive HTTP/1.1 connections to the model servers, one set per data-plane worker.
//!
//! Why not hyper-util's pooled client, which the gateway used before: per request it goes
//! through a checkout future, a pool lock shared by every host with a SipHash of the host key,
//! an absolute URL built and parsed again, and for HTTP/1 a task spawned to put the connection
//! back once the answer ends. Here the data path itself knows when an answer ends (its body's
//! last frame, [`super::body::ObservedBody`]), so it hands the connection back then, and a
//! request takes the newest idle connection to its endpoint: no task per request, one lookup in
//! a map that only this worker's thread touches. Each worker has its own [`Upstreams`], so a
//! connection is driven by the thread that serves its client (see `server.rs`).
//!
//! Each connection is driven by the request that holds it, not by a task of its own
//! ([`http1`] says why and what HTTP/1.1 it speaks); its answer's body owns it until the end
//! ([`AnswerBody`]).
//!
//! A connection is reused only after an answer ended cleanly. An answer cut short (the client
//! left, a timeout, an error) drops its connection, which closes it: for a model server, closing
//! is how a generation is cancelled.

use http::Response;
use parking_lot::Mutex;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

mod answer;
mod http1;

pub use answer::AnswerBody;
pub use http1::{Conn, Outgoing, UpstreamError, is_hop_by_hop};

use crate::coarse_timer::CoarseTimer;
use crate::pool::Endpoint;
use infergate_config::UpstreamConfig;

/// TCP keepalive probes start after this much silence (a pod that vanished without a FIN).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: the request never left (safe to send elsewhere).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    /// A new connection failed before the request was written whole: it never reached the
    /// server as a request.
    #[error("cannot send to {addr}: {source}")]
    Write {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed after the request may have left.
    #[error("{0}")]
    Protocol(#[source] UpstreamError),
}

impl SendError {
    /// Whether the request surely never reached the model server.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Protocol(_))
    }
}

/// One idle connection and when it became idle.
struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Whether it has idled `max_idle` or longer by `now`: past it, its server may be closing it
    /// at this very moment, so it is neither taken nor kept.
    fn idled_past(&self, now: Instant, max_idle: Duration) -> bool {
        now.duration_since(self.since) >= max_idle
    }
}

/// One worker's upstream connections, by endpoint URL.
pub struct Upstreams {
    /// Newest last (taken first: a few warm connections serve a steady load, the rest age out).
    /// Looked up twice per request: foldhash, not SipHash (the keys are discovered endpoint URLs,
    /// not client input).
    idle: Mutex<foldhash::HashMap<String, Vec<Idle>>>,
    /// `gateway.upstream`: connect timeout, idle timeout, idle connections kept.
    config: UpstreamConfig,
    /// The worker's timer, for the wait for an answer's head ([`Upstreams::timer`]).
    timer: CoarseTimer,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.lock().values().map(Vec::len).sum();
        f.debug_struct("Upstreams").field("idle", &idle).finish()
    }
}

/// Where a connection lent to one request goes back when its answer ends cleanly (the
/// connection itself is in the answer's body, [`AnswerBody::take_idle`]).
pub struct Lease {
    endpoint: Arc<Endpoint>,
    upstreams: Arc<Upstreams>,
}

impl Lease {
    /// The answer on `conn` has ended cleanly, at `now`: it may carry the next request.
    pub fn release(self, conn: Conn, now: Instant) {
        self.upstreams.put(&self.endpoint, conn, now);
    }
}

impl Upstreams {
    /// The connections of the worker whose timer is `timer`.
    pub fn new(config: UpstreamConfig, timer: CoarseTimer) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            idle: Mutex::default(),
            config,
            timer,
        })
    }

    /// The worker's timer: the first-byte timeout is one of its deadlines.
    pub fn timer(&self) -> &CoarseTimer {
        &self.timer
    }

    /// Sends `req` to `endpoint` on an idle connection, or on a new one, and waits for the
    /// answer's head. The caller bounds the wait.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        req: &Outgoing<'_>,
    ) -> Result<(Response<AnswerBody>, Lease), SendError> {
        let host = endpoint.host_header();
        while let Some(mut conn) = self.take(endpoint) {
            // Closed by its server meanwhile (its idle timeout, a restart): the next one.
            if !std::future::poll_fn(|cx| Poll::Ready(conn.poll_idle_open(cx))).await {
                continue;
            }
            // A write that fails did not deliver the request whole: safe on another.
            if conn.write_request(req, host).await.is_err() {
                continue;
            }
            match self.answer(conn, req, endpoint).await {
                // Closed without a byte of answer: its server's keep-alive timeout passed as
                // the request arrived (the check above cannot see a close that is still on its
                // way). The request goes again on another connection: this one's server read
                // nothing, or it died, in which case the new connection is refused and the
                // forward phase sends the request elsewhere. A new connection that closes this
                // way is an error (below): a server that closes every request unanswered is not
                // tried again and again.
                Err(SendError::Protocol(e)) if e.is_unanswered() => {
                    tracing::debug!(endpoint = %endpoint.url(), "reused connection closed unanswered");
                    continue;
                }
                answered => return answered,
            }
        }
        // Boxed: a new connection is the rare case, and its future (name resolution, connect,
        // their timeout) would otherwise be carried inline in every request's future, which is
        // moved whole more than once per request.
        let mut conn = Box::pin(connect(
            endpoint.connect_addr(),
            self.config.connect_timeout,
        ))
        .await?;
        if let Err(source) = conn.write_request(req, host).await {
            return Err(SendError::Write {
                addr: endpoint.connect_addr().to_string(),
                source,
            });
        }
        self.answer(conn, req, endpoint).await
    }

    async fn answer(
        self: &Arc<Self>,
        conn: Conn,
        req: &Outgoing<'_>,
        endpoint: &Arc<Endpoint>,
    ) -> Result<(Response<AnswerBody>, Lease), SendError> {
        let resp = conn
            .read_answer(req.method)
            .await
            .map_err(SendError::Protocol)?;
        let lease = Lease {
            endpoint: endpoint.clone(),
            upstreams: self.clone(),
        };
        Ok((resp, lease))
    }

    /// The newest idle connection to `endpoint` that has not idled past the idle timeout
    /// (past it, the server may be closing it at this very moment). Whether its server closed
    /// it meanwhile is the caller's check ([`Conn::poll_idle_open`]), which needs the task.
    fn take(&self, endpoint: &Endpoint) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        let list = idle.get_mut(endpoint.url())?;
        let newest = list.pop()?;
        if newest.idled_past(now, self.config.idle_timeout) {
            // The rest are older still.
            list.clear();
            return None;
        }
        Some(newest.conn)
    }

    fn put(&self, endpoint: &Endpoint, conn: Conn, now: Instant) {
        let mut idle = self.idle.lock();
        let list = match idle.get_mut(endpoint.url()) {
            Some(list) => list,
            None => idle.entry(endpoint.url().to_string()).or_default(),
        };
        if list.len() < self.config.max_idle_per_endpoint {
            list.push(Idle { conn, since: now });
        }
    }

    /// Closes connections idle for longer than the idle timeout or closed by their server, and
    /// forgets endpoints with none left (an endpoint that left discovery leaves no trace).
    pub fn sweep(&self) {
        self.sweep_older_than(self.config.idle_timeout);
    }

    fn sweep_older_than(&self, max_idle: Duration) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        idle.retain(|_, list| {
            list.retain(|c| !c.idled_past(now, max_idle) && c.conn.probe_open());
            !list.is_empty()
        });
    }

    /// Sweeps until the worker's runtime stops, every half idle timeout (at most every 30 s, at
    /// least every 100 ms): a connection past its idle timeout is never taken, the sweep only
    /// frees its socket.
    pub async fn sweep_periodically(self: Arc<Self>) {
        let period = (self.config.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

/// A new connection to `addr` (`host:port`).
async fn connect(addr: &str, timeout: Duration) -> Result<Conn, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(SendError::Connect {
                addr: addr.to_string(),
                source,
            });
        }
        Err(_) => {
            return Err(SendError::ConnectTimeout {
                addr: addr.to_string(),
                timeout,
            });
        }
    };
    // Small requests and SSE events must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    Ok(Conn::new(stream))
}

#[cfg(test)]
mod tests {
    //! Over real loopback connections to an in-process hyper server that counts the connections
    //! it accepts.
    use super::*;
    use crate::discovery::DiscoveredEndpoint;
    use crate::picker::EndpointId;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener on loopback: it, its URL, and a count of the connections it accepts.
    async fn listener() -> (tokio::net::TcpListener, String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        (listener, url, Arc::new(AtomicUsize::new(0)))
    }

    /// A server answering "ok"; with `close`, each answer also closes its connection.
    async fn server(close: bool) -> (String, Arc<AtomicUsize>) {
        let (listener, url, accepted) = listener().await;
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    assert_eq!(req.uri(), "/v1/models");
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if close {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().expect("hv"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (url, accepted)
    }

    fn endpoint(url: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            EndpointId(1),
            &DiscoveredEndpoint::ready(url),
        ))
    }

    /// `GET /v1/models`, with the parts it borrows.
    struct Get {
        uri: http::Uri,
        headers: http::HeaderMap,
        body: Bytes,
    }

    impl Get {
        fn new() -> Get {
            Get {
                uri: http::Uri::from_static("/v1/models"),
                headers: http::HeaderMap::new(),
                body: Bytes::new(),
            }
        }

        fn outgoing(&self) -> Outgoing<'_> {
            Outgoing {
                method: &http::Method::GET,
                uri: &self.uri,
                headers: &self.headers,
                body: &self.body,
            }
        }
    }

    /// One exchange; the body is read to its end, then the connection released (if its
    /// answer allows) or dropped.
    async fn exchange(up: &Arc<Upstreams>, ep: &Arc<Endpoint>, release: bool) {
        let get = Get::new();
        let (resp, lease) = up.send(ep, &get.outgoing()).await.expect("send");
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            data.extend_from_slice(&frame.expect("frame").into_data().expect("data"));
        }
        assert_eq!(data, b"ok");
        if release && let Some(conn) = body.take_idle() {
            lease.release(conn, Instant::now());
        }
    }

    #[tokio::test]
    async fn a_released_connection_carries_the_next_request() {
        let (url, accepted) = server(false).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        for _ in 0..5 {
            exchange(&up, &ep, true).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_idle_timeout_is_not_reused() {
        let (url, accepted) = server(false).await;
        // Wide margins: the two first exchanges take well under a millisecond on loopback.
        let config = UpstreamConfig {
            idle_timeout: Duration::from_millis(500),
            ..UpstreamConfig::default()
        };
        let (up, ep) = (Upstreams::new(config, CoarseTimer::new()), endpoint(&url));
        exchange(&up, &ep, true).await;
        exchange(&up, &ep, true).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "reused within the timeout"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        exchange(&up, &ep, true).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new one past it");
        assert_eq!(up.idle_count(), 1, "only the new connection is kept");
    }

    #[tokio::test]
    async fn no_idle_connections_kept_means_a_new_connection_per_request() {
        let (url, accepted) = server(false).await;
        let config = UpstreamConfig {
            max_idle_per_endpoint: 0,
            ..UpstreamConfig::default()
        };
        let (up, ep) = (Upstreams::new(config, CoarseTimer::new()), endpoint(&url));
        for _ in 0..3 {
            exchange(&up, &ep, true).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(up.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_not_released_is_not_reused() {
        let (url, accepted) = server(false).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        exchange(&up, &ep, false).await;
        exchange(&up, &ep, false).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_its_server_closed_is_replaced_without_an_error() {
        let (url, accepted) = server(true).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        for _ in 0..3 {
            exchange(&up, &ep, true).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_its_server_closed_silently_is_replaced_without_an_error() {
        // A server that answers one request per connection and closes it, without saying so
        // in the answer (as a server does when its keep-alive timeout passes).
        let (listener, url, accepted) = listener().await;
        let count = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        for _ in 0..3 {
            exchange(&up, &ep, true).await;
            assert_eq!(up.idle_count(), 1, "kept: its answer did not say close");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A raw server that answers the first `answered` requests of each connection with "ok"
    /// (keep-alive), then reads the next one and closes without a byte of answer.
    async fn closing_server(answered: usize) -> (String, Arc<AtomicUsize>) {
        let (listener, url, accepted) = listener().await;
        let count = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    for _ in 0..answered {
                        let _ = stream.read(&mut buf).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    // The request is read whole before the close: a FIN, not a reset.
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_reused_connection_closed_unanswered_is_replaced_without_an_error() {
        let (url, accepted) = closing_server(1).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        exchange(&up, &ep, true).await;
        assert_eq!(up.idle_count(), 1);
        // The idle connection looks open; its server closes it on the next request.
        exchange(&up, &ep, true).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "sent again on a new one"
        );
    }

    #[tokio::test]
    async fn a_new_connection_closed_unanswered_is_an_error_not_a_loop() {
        let (url, accepted) = closing_server(0).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        let get = Get::new();
        let err = up
            .send(&ep, &get.outgoing())
            .await
            .err()
            .expect("unanswered");
        assert!(
            matches!(&err, SendError::Protocol(e) if e.is_unanswered()),
            "{err}"
        );
        assert!(!err.is_connect(), "the request may have been read");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&format!("http://127.0.0.1:{port}")),
        );
        let get = Get::new();
        let err = up.send(&ep, &get.outgoing()).await.err().expect("refused");
        assert!(err.is_connect(), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_sweep_closes_idle_connections_and_forgets_their_endpoint() {
        let (url, _) = server(false).await;
        let (up, ep) = (
            Upstreams::new(UpstreamConfig::default(), CoarseTimer::new()),
            endpoint(&url),
        );
        exchange(&up, &ep, true).await;
        up.sweep();
        assert_eq!(up.idle_count(), 1, "young: kept");
        up.sweep_older_than(Duration::ZERO);
        assert_eq!(up.idle_count(), 0);
        assert!(up.idle.lock().is_empty());
    }
}
