//! The graceful drain of a worker's client connections.
//!
//! hyper-util's `GracefulShutdown`, which this replaces, wraps every connection in a future that
//! polls a `watch` channel's `changed()` on each poll of the connection, that is on every
//! request and every streamed chunk: about 800 instructions of each proxied request
//! (docs/BENCHMARKS.md, 2026-12-03). Here a connection registers its task's waker once and
//! afterwards reads one atomic flag per poll; starting the drain sets the flag and wakes every
//! registered connection, which then asks its server (the gateway's own HTTP/1 loop, or hyper's
//! HTTP/2) to finish its in-flight requests and close.

use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

/// A connection that can be asked to finish what it is doing and close.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// hyper's connections (HTTP/2 on the data port; the tests' HTTP/1).
impl<C: GracefulConnection> Graceful for C {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
    }
}

impl Graceful for super::http1::Connection {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        super::http1::Connection::graceful_shutdown(self);
    }
}

/// One worker's drain signal; [`Drain::watch`] wraps a connection in it.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    /// The tasks of the live connections that have not begun to close, by connection.
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// `conn`, closed gracefully once the drain starts (at once if it has started).
    pub fn watch<C: Graceful>(&self, conn: C) -> Draining<C> {
        Draining {
            conn,
            inner: self.inner.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
            closing: false,
        }
    }

    /// Starts the drain: every watched connection finishes its in-flight request, then closes.
    pub fn start(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.inner.wakers.lock());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Watched connections not yet told to close.
    pub fn open(&self) -> usize {
        self.inner.wakers.lock().len()
    }
}

pin_project! {
    /// A connection under a [`Drain`].
    pub struct Draining<C> {
        #[pin]
        conn: C,
        inner: Arc<Inner>,
        id: u64,
        // The waker registered with the drain, to notice a task that changed its waker.
        waker: Option<Waker>,
        closing: bool,
    }

    impl<C> PinnedDrop for Draining<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.waker.is_some() {
                this.inner.wakers.lock().remove(this.id);
            }
        }
    }
}

impl<C: Graceful> Future for Draining<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.closing {
            let stale = this.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
            if stale && !this.inner.draining.load(Ordering::SeqCst) {
                // Registered before the flag is read again: a drain that starts in between
                // either finds this waker or is seen below.
                this.inner
                    .wakers
                    .lock()
                    .insert(*this.id, cx.waker().clone());
                *this.waker = Some(cx.waker().clone());
            }
            if this.inner.draining.load(Ordering::SeqCst) {
                *this.closing = true;
                if this.waker.take().is_some() {
                    this.inner.wakers.lock().remove(this.id);
                }
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Over real loopback connections served by hyper.
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A server whose answers take `delay`; each connection watched by `drain`.
    async fn server(
        drain: Drain,
        delay: Duration,
    ) -> (std::net::SocketAddr, tokio::task::JoinSet<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut conns = tokio::task::JoinSet::new();
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let svc = service_fn(move |_req| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, Infallible>(hyper::Response::new(
                    Empty::<bytes::Bytes>::new().map_err(|never| match never {}),
                ))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = drain.watch(conn).await;
        });
        conns.spawn(async move {
            let _ = accepted.await;
        });
        (addr, conns)
    }

    async fn request(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn an_idle_connection_closes_when_the_drain_starts() {
        let drain = Drain::new();
        let (addr, mut conns) = server(drain.clone(), Duration::ZERO).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(request(&mut stream).await.starts_with("HTTP/1.1 200"));
        assert_eq!(drain.open(), 1, "registered");
        drain.start();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        assert_eq!(n, 0, "closed without another byte");
        tokio::time::timeout(Duration::from_secs(5), conns.join_next())
            .await
            .expect("the connection's task ended");
        assert_eq!(drain.open(), 0);
    }

    #[tokio::test]
    async fn a_request_in_flight_is_answered_before_the_close() {
        let drain = Drain::new();
        let (addr, _conns) = server(drain.clone(), Duration::from_millis(300)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let answer = tokio::spawn(async move {
            let head = request(&mut stream).await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            head
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain.start();
        let head = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("in time")
            .expect("task");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_connection_watched_after_the_start_closes_at_once() {
        let drain = Drain::new();
        drain.start();
        let (addr, mut conns) = server(drain.clone(), Duration::ZERO).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        tokio::time::timeout(Duration::from_secs(5), conns.join_next())
            .await
            .expect("the connection's task ended");
        assert_eq!(drain.open(), 0);
    }
}
