//! The floor of the gateway's stack, for scripts/bench-proxy.sh: the leanest HTTP/1.1 reverse
//! proxy that tokio and hyper 1 make, with nothing of the gateway in it (no JSON, no pick, no
//! metrics, no flow control, no timeouts, no retries).
//!
//! It has the gateway's data-plane shape, so that the difference between the two is the gateway's
//! own work: one current-thread runtime per worker thread, each on its own SO_REUSEPORT listener
//! of one port, and the request body read whole before it is sent on. It is leaner where it can
//! be: each client connection gets its own upstream connection, opened on its first request, so
//! a request costs one hyper server dispatch, one hyper client dispatch and nothing else. It
//! keeps the gateway's one saving in the kernel: an answer that is not an event stream is read
//! whole before its head is passed on, so that it leaves in one write.
//!
//! `bare_proxy UPSTREAM_ADDR [ADDR] [WORKERS]` (ADDR default 127.0.0.1:0, WORKERS default one per
//! core this process may run on) prints `infergate hyper listening on http://ADDR`. A benchmark
//! baseline, not a product: any failure upstream is a 502 with an empty body.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
/// A client connection's own upstream connection, once opened.
type Upstream = Rc<RefCell<Option<client::SendRequest<Full<Bytes>>>>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bare_proxy UPSTREAM_ADDR [ADDR] [WORKERS]";
    let upstream: SocketAddr = args.first().and_then(|a| a.parse().ok()).expect(usage);
    let addr: SocketAddr = args
        .get(1)
        .map_or(Some(([127, 0, 0, 1], 0).into()), |a| a.parse().ok())
        .expect(usage);
    let workers = args.get(2).map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |w| w.parse().expect(usage),
    );
    // The first listener settles the port (ADDR may say 0); the others share it.
    let first = reuseport_listener(addr);
    let addr = first.local_addr().expect("local address");
    let mut listeners = vec![first];
    listeners.extend((1..workers).map(|_| reuseport_listener(addr)));
    println!("infergate hyper listening on http://{addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .expect("runtime");
                tokio::task::LocalSet::new().block_on(&runtime, serve(listener, upstream));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::net::TcpListener {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    s.bind(&addr.into()).expect("bind");
    s.listen(4096).expect("listen");
    s.set_nonblocking(true).expect("non-blocking");
    s.into()
}

async fn serve(listener: std::net::TcpListener, upstream: SocketAddr) {
    let listener = TcpListener::from_std(listener).expect("listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Upstream::default();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let conn = conn.clone();
                async move { Ok::<_, hyper::Error>(forward(&conn, upstream, req).await) }
            });
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(conn: &Upstream, upstream: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await else {
        return bad_gateway();
    };
    let req = Request::from_parts(parts, Full::new(body.to_bytes()));
    // Taken out for the wait (no borrow across it), put back once the answer's head is in: the
    // client connection's next request comes only after this answer, as HTTP/1.1 without
    // pipelining has it.
    let taken = conn.borrow_mut().take();
    let Some(mut sender) = (match taken {
        Some(s) => Some(s),
        None => open(upstream).await,
    }) else {
        return bad_gateway();
    };
    let resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        // A failed connection is dropped: the next request opens another.
        Err(_) => return bad_gateway(),
    };
    *conn.borrow_mut() = Some(sender);
    if is_sse(&resp) {
        return resp.map(BodyExt::boxed_unsync);
    }
    // The gateway's one saving in the kernel, kept here: a whole answer read before its head is
    // passed on leaves in one write (hyper writes a head on its own when the body is not ready).
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(
            parts,
            Full::new(body.to_bytes())
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
        Err(_) => bad_gateway(),
    }
}

async fn open(upstream: SocketAddr) -> Option<client::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = client::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::task::spawn_local(connection);
    Some(sender)
}

fn is_sse(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
