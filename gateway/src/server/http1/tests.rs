//! Over real loopback connections: a raw client writes exact bytes to a [`Connection`] whose
//! service is a closure, and reads what comes back.

use super::*;
use crate::server::drain::Drain;
use http_body_util::combinators::UnsyncBoxBody;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

type Answer = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;

const LIMITS: Limits = Limits {
    max_body: 1024,
    header_read: Duration::from_secs(5),
    body_read: Duration::from_secs(5),
    send: Duration::from_secs(5),
};

/// What the service saw of each request: method, target, body.
type Seen = mpsc::UnboundedReceiver<(String, String, Bytes)>;

/// A service answering each request with `{"n":<body length>}`, or, for `/stream`, with the
/// frames sent on the returned sender (an answer of unknown length).
fn echo_service(
    seen: mpsc::UnboundedSender<(String, String, Bytes)>,
    stream: Arc<parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
) -> impl Fn(Request<Full<Bytes>>) -> Answer + Send + 'static {
    move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        let stream = stream.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("full").to_bytes();
            let _ = seen.send((
                parts.method.to_string(),
                parts.uri.to_string(),
                body.clone(),
            ));
            if parts.uri.path() == "/stream" {
                let rx = stream.lock().take().expect("one stream");
                let body = crate::test_body::from_channel(rx);
                return Response::new(BodyExt::boxed_unsync(body));
            }
            let json = Bytes::from(format!("{{\"n\":{}}}", body.len()));
            Response::new(BodyExt::boxed_unsync(Full::new(json)))
        })
    }
}

struct Server {
    addr: std::net::SocketAddr,
    seen: Seen,
    frames: mpsc::UnboundedSender<Bytes>,
    /// The connection task of the first connection accepted, and the drain watching it.
    conn: tokio::sync::oneshot::Receiver<(JoinHandle<io::Result<()>>, Drain)>,
    /// The statuses of the answers the connection gave itself.
    refused: Arc<parking_lot::Mutex<Vec<u16>>>,
}

async fn server(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let stream_slot = Arc::new(parking_lot::Mutex::new(Some(frames_rx)));
    let (conn_tx, conn) = tokio::sync::oneshot::channel();
    let timer = CoarseTimer::new();
    tokio::spawn(timer.clone().tick());
    let refused = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let count = {
        let refused = refused.clone();
        move |status: http::StatusCode| refused.lock().push(status.as_u16())
    };
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let service = echo_service(seen_tx, stream_slot);
        let connection = Connection::new(stream, service, count, limits, timer);
        let drain = Drain::new();
        let _ = conn_tx.send((tokio::spawn(drain.watch(connection)), drain));
    });
    Server {
        addr,
        seen,
        frames,
        conn,
        refused,
    }
}

/// A client connected to `s` that has written `wire`.
async fn send(s: &Server, wire: &[u8]) -> TcpStream {
    let mut client = TcpStream::connect(s.addr).await.expect("connect");
    client.write_all(wire).await.expect("write");
    client
}

/// Reads from `client` until `want` bytes have come or the connection closes.
async fn read_until(client: &mut TcpStream, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !pred(&got) {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("no stall")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Waits (at most 5 s) for a connection's task to end without an error.
async fn ended(task: JoinHandle<io::Result<()>>) {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the connection ends")
        .expect("join")
        .expect("no error");
}

async fn closed(client: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn keep_alive_requests_and_pipelined_ones_are_answered_in_turn() {
    let mut s = server(LIMITS).await;
    let mut client = send(
        &s,
        b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    let got = text(&read_until(&mut client, |b| b.ends_with(b"{\"n\":5}")).await);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("\r\ncontent-length: 7\r\n"), "{got}");
    assert!(got.contains("\r\ndate: "), "{got}");
    assert!(!got.contains("connection: close"), "{got}");
    // Two more in one write: a pipelined pair.
    client
        .write_all(
            b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nabPOST /b?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
        )
        .await
        .expect("write");
    let got = text(&read_until(&mut client, |b| text(b).contains("{\"n\":3}")).await);
    assert_eq!(count(&got, "HTTP/1.1 200 OK"), 2, "{got}");
    assert!(
        got.find("{\"n\":2}") < got.find("{\"n\":3}"),
        "in order: {got}"
    );
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(s.seen.recv().await.expect("seen"));
    }
    assert_eq!(
        order[0],
        (
            "POST".into(),
            "/v1/completions".into(),
            Bytes::from("hello")
        )
    );
    assert_eq!(order[1].1, "/a");
    assert_eq!(
        order[2],
        ("POST".into(), "/b?q=1".into(), Bytes::from("abc"))
    );
}

#[tokio::test]
async fn a_chunked_body_is_read_whole_and_one_over_the_limit_is_refused() {
    let s = server(LIMITS).await;
    let mut client = send(&s, b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n").await;
    let got = text(&read_until(&mut client, |b| b.ends_with(b"{\"n\":5}")).await);
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    let mut big = b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        big.extend_from_slice(b"200\r\n");
        big.extend_from_slice(&[b'x'; 0x200]);
        big.extend_from_slice(b"\r\n");
    }
    client.write_all(&big).await.expect("write");
    let got = text(&read_until(&mut client, |b| text(b).contains("}}")).await);
    assert!(got.starts_with("HTTP/1.1 413 Payload Too Large"), "{got}");
    assert!(got.contains("\"code\":\"request_too_large\""), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(closed(&mut client).await);
    assert_eq!(
        *s.refused.lock(),
        [413],
        "counted as the connection's own answer"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_by_its_length_is_not_read_and_the_connection_closes() {
    let mut s = server(LIMITS).await;
    let client = TcpStream::connect(s.addr).await.expect("connect");
    let (mut rx, mut tx) = client.into_split();
    // The client sends its whole body without waiting for an answer, more than the server
    // reads ahead: closing with those bytes unread would reset the connection under the
    // answer, so they are read and dropped first.
    let writer = tokio::spawn(async move {
        let mut wire = b"POST /big HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n".to_vec();
        wire.resize(wire.len() + 1_000_000, b'x');
        tx.write_all(&wire).await
    });
    // The service is asked with no body (the gateway's answers 413 by the Content-Length).
    assert_eq!(s.seen.recv().await.expect("seen").2, Bytes::new());
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(&mut got)).await;
    let got = text(&got);
    assert!(
        matches!(read, Ok(Ok(_))),
        "a clean close, not a reset: {read:?} after {got}"
    );
    assert!(got.ends_with("{\"n\":0}"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(
        s.refused.lock().is_empty(),
        "the service's answer, not the connection's"
    );
    writer
        .await
        .expect("join")
        .expect("the whole body was taken");
}

#[tokio::test]
async fn malformed_or_ambiguous_heads_get_an_openai_error_and_the_close() {
    for (wire, status) in [
        (
            &b"POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nab"[..],
            "400 Bad Request",
        ),
        (b"NOT A REQUEST\r\n\r\n", "400 Bad Request"),
    ] {
        let s = server(LIMITS).await;
        let mut client = send(&s, wire).await;
        let got = text(&read_until(&mut client, |b| text(b).contains("}}")).await);
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
        assert!(got.contains("\"type\":\"invalid_request_error\""), "{got}");
        assert!(closed(&mut client).await);
        assert_eq!(*s.refused.lock(), [400]);
    }
}

#[tokio::test]
async fn expect_continue_gets_a_go_ahead_before_the_body() {
    let s = server(LIMITS).await;
    let mut client = send(
        &s,
        b"POST /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await;
    let got = text(&read_until(&mut client, |b| b.ends_with(b"\r\n\r\n")).await);
    assert_eq!(got, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"body").await.expect("write");
    let got = text(&read_until(&mut client, |b| b.ends_with(b"{\"n\":4}")).await);
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
}

#[tokio::test]
async fn a_stream_goes_out_chunk_by_chunk_as_its_frames_come() {
    let s = server(LIMITS).await;
    let mut client = send(&s, b"POST /stream HTTP/1.1\r\ncontent-length: 0\r\n\r\n").await;
    s.frames.send(Bytes::from("data: 1\n\n")).expect("frame");
    let got = text(&read_until(&mut client, |b| b.ends_with(b"data: 1\n\n\r\n")).await);
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\n"),
        "the first event alone: {got}"
    );
    s.frames
        .send(Bytes::from("data: [DONE]\n\n"))
        .expect("frame");
    let got = text(&read_until(&mut client, |b| b.ends_with(b"\r\n")).await);
    assert_eq!(got, "e\r\ndata: [DONE]\n\n\r\n");
    drop(s.frames);
    let got = text(&read_until(&mut client, |b| b.ends_with(b"0\r\n\r\n")).await);
    assert_eq!(got, "0\r\n\r\n");
}

#[tokio::test]
async fn a_client_that_leaves_mid_answer_ends_the_connection_and_drops_the_answer() {
    let s = server(LIMITS).await;
    let mut client = send(&s, b"POST /stream HTTP/1.1\r\ncontent-length: 0\r\n\r\n").await;
    s.frames.send(Bytes::from("data: 1\n\n")).expect("frame");
    read_until(&mut client, |b| b.ends_with(b"data: 1\n\n\r\n")).await;
    drop(client);
    let (task, _) = s.conn.await.expect("conn");
    ended(task).await;
    // The answer's body was dropped: its frames' receiver is gone.
    assert!(s.frames.send(Bytes::from("late")).is_err());
}

#[tokio::test]
async fn http_1_0_closes_after_the_answer_unless_kept_alive() {
    let s = server(LIMITS).await;
    let mut client = send(
        &s,
        b"POST /x HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    let got = text(&read_until(&mut client, |b| b.ends_with(b"{\"n\":1}")).await);
    assert!(got.contains("connection: keep-alive\r\n"), "{got}");
    client
        .write_all(b"POST /x HTTP/1.0\r\ncontent-length: 1\r\n\r\nx")
        .await
        .expect("write");
    let got = text(&read_until(&mut client, |b| b.ends_with(b"{\"n\":1}")).await);
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(closed(&mut client).await);
}

#[tokio::test]
async fn the_drain_closes_a_busy_connection_after_its_answer() {
    let s = server(LIMITS).await;
    let mut client = send(&s, b"POST /stream HTTP/1.1\r\ncontent-length: 0\r\n\r\n").await;
    s.frames.send(Bytes::from("data: 1\n\n")).expect("frame");
    read_until(&mut client, |b| b.ends_with(b"data: 1\n\n\r\n")).await;
    let (task, drain) = s.conn.await.expect("conn");
    drain.start();
    // Busy: the stream goes on to its end.
    s.frames.send(Bytes::from("data: 2\n\n")).expect("frame");
    drop(s.frames);
    let got = text(&read_until(&mut client, |b| b.ends_with(b"0\r\n\r\n")).await);
    assert!(got.contains("data: 2"), "{got}");
    assert!(closed(&mut client).await, "closed after the answer");
    ended(task).await;
}

#[tokio::test]
async fn the_drain_closes_an_idle_connection_at_once() {
    let s = server(LIMITS).await;
    let mut client = send(&s, b"POST /x HTTP/1.1\r\ncontent-length: 1\r\n\r\nx").await;
    read_until(&mut client, |b| b.ends_with(b"{\"n\":1}")).await;
    // Between requests: the drain wakes the connection's task, which closes.
    let (task, drain) = s.conn.await.expect("conn");
    drain.start();
    assert!(closed(&mut client).await);
    ended(task).await;
}

#[tokio::test]
async fn a_head_not_finished_within_the_timeout_closes_the_connection() {
    let limits = Limits {
        header_read: Duration::from_millis(300),
        ..LIMITS
    };
    let s = server(limits).await;
    let mut client = send(&s, b"POST /slow HTTP/1.1\r\nconte").await;
    assert!(closed(&mut client).await);
    let (task, _) = s.conn.await.expect("conn");
    task.await.expect("join").expect("ok");
}

#[tokio::test]
async fn a_body_that_stalls_gets_a_408_and_the_close() {
    let limits = Limits {
        body_read: Duration::from_millis(300),
        ..LIMITS
    };
    for wire in [
        &b"POST /slow HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc"[..],
        b"POST /slow HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
    ] {
        let mut s = server(limits).await;
        let sent = std::time::Instant::now();
        let mut client = send(&s, wire).await;
        let got = text(&read_until(&mut client, |b| text(b).contains("}}")).await);
        assert!(sent.elapsed() >= Duration::from_millis(300), "not early");
        assert!(got.starts_with("HTTP/1.1 408 Request Timeout"), "{got}");
        assert!(got.contains("\"code\":\"request_timeout\""), "{got}");
        assert!(got.contains("connection: close"), "{got}");
        assert!(closed(&mut client).await);
        assert!(s.seen.try_recv().is_err(), "the service never saw it");
        assert_eq!(*s.refused.lock(), [408]);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_stream_is_cut_after_the_send_timeout() {
    let limits = Limits {
        send: Duration::from_millis(300),
        ..LIMITS
    };
    let s = server(limits).await;
    // The client asks for a stream and then reads nothing; the answer outgrows what the
    // sockets' buffers hold.
    let _client = send(&s, b"POST /stream HTTP/1.1\r\ncontent-length: 0\r\n\r\n").await;
    let frame = Bytes::from(vec![b'x'; 1 << 20]);
    for _ in 0..64 {
        s.frames
            .send(frame.clone())
            .expect("the answer is still wanted");
    }
    let (task, _) = s.conn.await.expect("conn");
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection ends")
        .expect("join");
    let e = ended.expect_err("cut, not finished");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    // The answer's body was dropped with the connection: upstream, that cancels the request.
    assert!(s.frames.send(Bytes::from("more")).is_err());
}

#[test]
fn chunk_size_lines_are_lowercase_hex() {
    let mut dst = [0u8; 18];
    assert_eq!(chunk_size_line(&mut dst, 0), b"0\r\n");
    assert_eq!(chunk_size_line(&mut dst, 9), b"9\r\n");
    assert_eq!(chunk_size_line(&mut dst, 0x1a2f), b"1a2f\r\n");
    assert_eq!(
        chunk_size_line(&mut dst, usize::MAX),
        b"ffffffffffffffff\r\n"
    );
}
