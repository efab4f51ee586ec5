//! The head codec on byte strings, and the connection over real loopback sockets to raw TCP
//! servers that write exactly the bytes a test gives them (a real HTTP server would not send
//! the malformed, interim or cut-short answers these tests need).

use super::*;
use crate::proxy::upstream::answer::AnswerBody;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A client's request, owning what [`Outgoing`] borrows.
struct Client {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

fn post(body: &'static str) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("gateway:8080"));
    Client {
        method: Method::POST,
        uri: Uri::from_static("/v1/completions?x=1"),
        headers,
        body: Bytes::from_static(body.as_bytes()),
    }
}

const HOST: HeaderValue = HeaderValue::from_static("pod:8000");

fn head_of(req: &Client) -> String {
    let mut dst = b"left over".to_vec();
    encode_head(&mut dst, &req.outgoing(), &HOST);
    String::from_utf8(dst).expect("ascii")
}

#[test]
fn a_request_head_has_origin_form_the_pods_host_end_to_end_headers_and_the_body_length() {
    let mut req = post("{\"a\":1}");
    let h = &mut req.headers;
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-hop"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    h.append("x-tag", HeaderValue::from_static("one"));
    h.append("x-tag", HeaderValue::from_static("two"));
    // A stale length in the map is not copied: the body's own is written.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    assert_eq!(
        head_of(&req),
        "POST /v1/completions?x=1 HTTP/1.1\r\nhost: pod:8000\r\nauthorization: Bearer x\r\n\
         x-tag: one\r\nx-tag: two\r\ncontent-length: 7\r\n\r\n",
        "the client's Host and hop-by-hop headers stay behind; repeated headers keep their order"
    );
    // An absolute-form target (HTTP/2's, or a proxy-style request) goes out in origin form.
    req.uri = Uri::from_static("http://gateway:8080/v1/chat/completions");
    assert!(head_of(&req).starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: pod:8000\r\n"));
}

#[test]
fn a_bodiless_get_has_no_length_and_an_empty_post_has_zero() {
    let get = Client {
        method: Method::GET,
        uri: Uri::from_static("/v1/models"),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    assert_eq!(
        head_of(&get),
        "GET /v1/models HTTP/1.1\r\nhost: pod:8000\r\n\r\n"
    );
    assert!(head_of(&post("")).ends_with("content-length: 0\r\n\r\n"));
}

/// Parses `wire` whole; the head and what is left in the buffer.
fn parse(wire: &str, head_request: bool) -> Result<Option<(Head, String)>, UpstreamError> {
    let mut buf = BytesMut::from(wire.as_bytes());
    Ok(parse_head(&mut buf, head_request)?
        .map(|h| (h, String::from_utf8(buf.to_vec()).expect("utf8"))))
}

fn complete(wire: &str) -> (Head, String) {
    parse(wire, false).expect("valid").expect("complete")
}

#[test]
fn a_length_framed_answer_keeps_its_connection_and_leaves_its_body() {
    let (head, rest) = complete(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.headers["content-type"], "application/json");
    assert!(matches!(head.framing, Framing::Length(2)));
    assert!(head.keep_alive);
    assert_eq!(rest, "{}");
}

#[test]
fn an_answer_keeps_its_end_to_end_headers_only() {
    let (head, _) = complete(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
         connection: keep-alive\r\nkeep-alive: timeout=5\r\nset-cookie: a=1\r\n\
         x-request-id: r1\r\nset-cookie: b=2\r\n\r\n",
    );
    let mut names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-type", "set-cookie", "x-request-id"]);
    let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated headers kept, in order");
    assert!(
        matches!(head.framing, Framing::Chunked(_)) && head.keep_alive,
        "the hop-by-hop headers still decided the framing and the reuse"
    );
}

#[test]
fn an_unfinished_head_is_not_an_answer_yet() {
    assert!(
        parse("HTTP/1.1 200 OK\r\ncontent-le", false)
            .expect("valid")
            .is_none()
    );
    let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
    assert!(matches!(
        parse(&long, false),
        Err(UpstreamError::HeadTooLarge)
    ));
}

#[test]
fn interim_answers_are_skipped() {
    let (head, rest) = complete(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
         HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(head.status, StatusCode::CREATED);
    assert!(
        !head.headers.contains_key("link"),
        "the interim head's headers are not kept"
    );
    assert_eq!(rest, "");
    assert!(matches!(
        parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        Err(UpstreamError::Invalid(_))
    ));
}

#[test]
fn framing_follows_rfc_9112() {
    let framing = |wire: &str, head_request: bool| {
        let (head, _) = parse(wire, head_request).expect("valid").expect("complete");
        (head.framing, head.keep_alive)
    };
    let chunked = framing(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
        false,
    );
    assert!(matches!(chunked, (Framing::Chunked(_), true)));
    // Transfer-Encoding wins over Content-Length, and such a connection is not reused.
    let both = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
    assert!(matches!(framing(both, false), (Framing::Chunked(_), false)));
    let not_chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n";
    assert!(matches!(
        framing(not_chunked, false),
        (Framing::Close, false)
    ));
    let unframed = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
    assert!(matches!(framing(unframed, false), (Framing::Close, false)));
    let no_content = "HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n";
    assert!(matches!(framing(no_content, false), (Framing::Ended, true)));
    let zero = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    assert!(matches!(framing(zero, false), (Framing::Ended, true)));
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n";
    assert!(matches!(framing(head, true), (Framing::Ended, true)));
    let same_twice = "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n";
    assert!(matches!(
        framing(same_twice, false),
        (Framing::Length(3), true)
    ));
}

#[test]
fn the_connection_header_and_the_version_decide_reuse() {
    let reuse = |wire: &str| complete(wire).0.keep_alive;
    assert!(!reuse(
        "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(!reuse(
        "HTTP/1.1 200 OK\r\nconnection: te, close\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(!reuse("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(reuse(
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
    ));
    assert_eq!(
        complete("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .0
            .version,
        Version::HTTP_10
    );
}

#[test]
fn malformed_heads_are_errors() {
    for wire in [
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "SMTP ready\r\n\r\n",
    ] {
        assert!(parse(wire, false).is_err(), "{wire:?}");
    }
}

/// A raw server: accepts one connection, then for each message on `script` writes its bytes
/// (an empty message closes the connection). What the gateway wrote comes back on the second
/// receiver, read until the connection ends.
async fn raw_server() -> (
    String,
    mpsc::UnboundedSender<Vec<u8>>,
    mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (script, mut steps) = mpsc::unbounded_channel::<Vec<u8>>();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 || seen_tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
            let _ = seen_tx.send(Vec::new());
        });
        while let Some(bytes) = steps.recv().await {
            if bytes.is_empty() {
                break;
            }
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    (addr, script, seen)
}

/// The gateway's side of a raw server's connection, `POST {}` written on it; the server's
/// script (an empty message closes the connection) and what it read.
struct Sent {
    conn: Conn,
    script: mpsc::UnboundedSender<Vec<u8>>,
    seen: mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn sent() -> Sent {
    let (addr, script, seen) = raw_server().await;
    let mut conn = Conn::new(TcpStream::connect(&addr).await.expect("connect"));
    conn.write_request(&post("{}").outgoing(), &HOST)
        .await
        .expect("write");
    Sent { conn, script, seen }
}

/// As [`sent`], the server then answering `wire`: the answer's body, the script and what the
/// server read.
async fn answered(
    wire: &[u8],
) -> (
    AnswerBody,
    mpsc::UnboundedSender<Vec<u8>>,
    mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let Sent { conn, script, seen } = sent().await;
    script.send(wire.to_vec()).expect("script");
    let resp = conn.read_answer(&Method::POST).await.expect("answer");
    (resp.into_body(), script, seen)
}

async fn next_frame(body: &mut AnswerBody) -> Option<Result<Bytes, UpstreamError>> {
    body.frame()
        .await
        .map(|f| f.map(|f| f.into_data().expect("data frame")))
}

async fn data(body: &mut AnswerBody) -> Bytes {
    next_frame(body).await.expect("a frame").expect("data")
}

#[tokio::test]
async fn the_request_goes_out_whole_and_a_length_framed_answer_comes_back() {
    let (addr, script, mut seen) = raw_server().await;
    let mut conn = Conn::new(TcpStream::connect(&addr).await.expect("connect"));
    let req = post("{\"prompt\":\"hi\"}");
    conn.write_request(&req.outgoing(), &HOST)
        .await
        .expect("write");
    let mut got = seen.recv().await.expect("request bytes");
    while !got.ends_with(b"{\"prompt\":\"hi\"}") {
        got.extend(seen.recv().await.expect("more"));
    }
    assert!(got.starts_with(b"POST /v1/completions?x=1 HTTP/1.1\r\nhost: pod:8000\r\n"));
    script
        .send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel".to_vec())
        .expect("script");
    let resp = conn.read_answer(&Method::POST).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert_eq!(data(&mut body).await, "hel");
    assert!(body.take_idle().is_none(), "not ended yet");
    script.send(b"lo".to_vec()).expect("script");
    assert_eq!(data(&mut body).await, "lo");
    assert!(body.is_end_stream());
    assert!(body.take_idle().is_some(), "reusable after an exact end");
}

#[tokio::test]
async fn a_chunked_stream_passes_each_event_as_it_arrives() {
    let (mut body, script, _seen) = answered(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    // The second event is written only after the first has come out of the body.
    script
        .send(b"9\r\ndata: 1\n\n\r\n".to_vec())
        .expect("script");
    assert_eq!(data(&mut body).await, "data: 1\n\n");
    script
        .send(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n".to_vec())
        .expect("script");
    assert_eq!(data(&mut body).await, "data: 2\n\n");
    assert!(next_frame(&mut body).await.is_none());
    assert!(body.take_idle().is_some());
}

#[tokio::test]
async fn a_connection_closed_mid_answer_is_an_error_and_not_reused() {
    let (mut body, script, _seen) =
        answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ndata").await;
    script.send(Vec::new()).expect("close");
    assert_eq!(data(&mut body).await, "data");
    assert!(matches!(
        next_frame(&mut body).await,
        Some(Err(UpstreamError::ClosedMidAnswer))
    ));
    assert!(
        next_frame(&mut body).await.is_none(),
        "nothing after the error"
    );
    assert!(body.take_idle().is_none());
}

#[tokio::test]
async fn a_close_before_any_answer_is_an_error() {
    let Sent { conn, script, .. } = sent().await;
    script.send(Vec::new()).expect("close");
    let err = conn.read_answer(&Method::POST).await.expect_err("closed");
    assert!(matches!(err, UpstreamError::ClosedBeforeAnswer), "{err}");
    assert!(err.is_unanswered());
}

#[tokio::test]
async fn a_close_after_part_of_a_head_is_mid_answer_not_unanswered() {
    let Sent { conn, script, .. } = sent().await;
    script
        .send(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec())
        .expect("part of a head");
    script.send(Vec::new()).expect("close");
    let err = conn.read_answer(&Method::POST).await.expect_err("cut");
    assert!(matches!(err, UpstreamError::ClosedMidAnswer), "{err}");
    assert!(
        !err.is_unanswered(),
        "the server began to answer: not sent again"
    );
}

#[tokio::test]
async fn a_close_delimited_answer_ends_at_the_close_and_is_not_reused() {
    let (mut body, script, _seen) = answered(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
    script.send(Vec::new()).expect("close");
    let mut all = Vec::new();
    while let Some(frame) = next_frame(&mut body).await {
        all.extend_from_slice(&frame.expect("ok"));
    }
    assert_eq!(all, b"all of it");
    assert!(body.is_end_stream());
    assert!(body.take_idle().is_none());
}

#[tokio::test]
async fn bytes_past_the_answer_mean_the_connection_is_not_reused() {
    let (mut body, _script, _seen) =
        answered(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n").await;
    assert_eq!(data(&mut body).await, "{}");
    assert!(body.is_end_stream());
    assert!(body.take_idle().is_none());
}

#[tokio::test]
async fn dropping_an_unfinished_body_closes_the_connection() {
    let (body, _script, mut seen) =
        answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
    drop(body);
    // The server reads the request, then the end of the connection: how it learns to stop.
    while let Some(bytes) = seen.recv().await {
        if bytes.is_empty() {
            return;
        }
    }
    panic!("the server never saw the connection end");
}

#[tokio::test]
async fn an_idle_connection_its_server_closed_is_seen_closed() {
    let (mut body, script, _seen) = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    assert!(next_frame(&mut body).await.is_none());
    let conn = body.take_idle().expect("reusable");
    let open = || std::future::poll_fn(|cx| Poll::Ready(conn.poll_idle_open(cx)));
    assert!(open().await, "open while its server keeps it");
    script.send(Vec::new()).expect("close");
    // The close reaches the gateway's side a moment later.
    for _ in 0..200 {
        if !open().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the close was never seen");
}
