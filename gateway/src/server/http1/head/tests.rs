use super::*;
use crate::proxy::ProxyError;

fn status(e: HeadError) -> StatusCode {
    ProxyError::new(e.kind(), e.to_string()).status()
}

fn parse(wire: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse_request(&mut BytesMut::from(wire))
}

fn head(wire: &[u8]) -> RequestHead {
    parse(wire).expect("valid").expect("complete")
}

#[test]
fn a_post_with_a_length_leaves_its_body_and_the_next_request_in_the_buffer() {
    let mut buf = BytesMut::from(
        &b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
           X-Infergate-Priority: critical\r\n\r\n{}GET /v1/models HTTP/1.1\r\n\r\n"[..],
    );
    let h = parse_request(&mut buf).expect("valid").expect("complete");
    assert_eq!(h.parts.method, Method::POST);
    assert_eq!(h.parts.uri.path(), "/v1/chat/completions");
    assert_eq!(h.parts.uri.query(), Some("x=1"));
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.framing, BodyFraming::Length(2));
    assert!(h.keep_alive);
    assert!(!h.expect_continue);
    assert_eq!(h.parts.headers["x-infergate-priority"], "critical");
    assert_eq!(h.parts.headers.len(), 3);
    assert_eq!(&buf[..], b"{}GET /v1/models HTTP/1.1\r\n\r\n");
}

#[test]
fn a_head_not_yet_whole_is_waited_for_and_nothing_is_taken() {
    let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Le"[..]);
    assert!(parse_request(&mut buf).expect("valid so far").is_none());
    assert_eq!(buf.len(), 27);
}

#[test]
fn every_split_of_a_head_parses_to_the_same_request() {
    let wire =
        b"POST /v1/completions HTTP/1.1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    let head_len = wire.len() - 5;
    for cut in 0..head_len {
        assert!(parse(&wire[..cut]).expect("valid").is_none(), "cut {cut}");
    }
    let h = head(wire);
    assert_eq!(h.framing, BodyFraming::Length(5));
    assert!(!h.keep_alive);
}

#[test]
fn ambiguous_body_lengths_are_refused() {
    let cases: [&[u8]; 7] = [
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 3 3\r\n\r\n",
    ];
    for wire in cases {
        let err = parse(wire).expect_err(std::str::from_utf8(wire).expect("utf8"));
        assert!(matches!(err, HeadError::Framing(_)), "{err}");
        assert_eq!(status(err), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn equal_lengths_and_a_chunked_last_coding_are_read() {
    let h = head(b"POST / HTTP/1.1\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Length(3));
    let h = head(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Chunked);
    let h = head(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Empty);
    let h = head(b"GET /v1/models HTTP/1.1\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Empty);
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    assert!(head(b"GET / HTTP/1.1\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.1\r\nconnection: upgrade, Close\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    let h = head(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
    assert!(h.keep_alive);
    assert_eq!(h.parts.version, Version::HTTP_10);
}

#[test]
fn expect_continue_only_when_a_body_is_coming() {
    let h = head(b"POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 9\r\n\r\n");
    assert!(h.expect_continue);
    let h = head(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n");
    assert!(!h.expect_continue, "no body: nothing to wait for");
    let h = head(b"POST / HTTP/1.1\r\nexpect: something-else\r\ncontent-length: 9\r\n\r\n");
    assert!(!h.expect_continue);
}

#[test]
fn oversized_and_malformed_heads_are_refused() {
    let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    assert_eq!(parse(&big).expect_err("too large"), HeadError::TooLarge);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let err = parse(&many).expect_err("too many");
    assert_eq!(err, HeadError::TooLarge);
    assert_eq!(status(err), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    for wire in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"GET  HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let err = parse(wire).expect_err("malformed");
        assert!(matches!(err, HeadError::Malformed(_)), "{err}");
        assert_eq!(status(err), StatusCode::BAD_REQUEST);
    }
}

fn encoded(
    framing: AnswerFraming,
    keep_alive: bool,
    version: Version,
    headers: &HeaderMap,
) -> String {
    let mut dst = Vec::new();
    encode_answer(
        &mut dst,
        StatusCode::OK,
        headers,
        framing,
        keep_alive,
        version,
        b"Thu, 03 Dec 2026 13:00:00 GMT",
    );
    String::from_utf8(dst).expect("utf8")
}

#[test]
fn an_answer_head_carries_its_framing_and_never_the_body_s_own() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    assert_eq!(
        encoded(AnswerFraming::Length(2), true, Version::HTTP_11, &headers),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
         date: Thu, 03 Dec 2026 13:00:00 GMT\r\ncontent-length: 2\r\n\r\n"
    );
    headers.insert(header::DATE, HeaderValue::from_static("upstream's"));
    assert_eq!(
        encoded(AnswerFraming::Chunked, false, Version::HTTP_11, &headers),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: upstream's\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let text = encoded(
        AnswerFraming::Close,
        true,
        Version::HTTP_10,
        &HeaderMap::new(),
    );
    assert!(text.ends_with("\r\nconnection: close\r\n\r\n"), "{text}");
    let text = encoded(
        AnswerFraming::Length(0),
        true,
        Version::HTTP_10,
        &HeaderMap::new(),
    );
    assert!(
        text.ends_with("content-length: 0\r\nconnection: keep-alive\r\n\r\n"),
        "{text}"
    );
}

#[test]
fn the_framing_follows_the_request_the_status_and_the_body() {
    let f = |m: Method, v, s, exact| AnswerFraming::choose(m == Method::HEAD, v, s, exact);
    use Version as V;
    assert_eq!(
        f(Method::POST, V::HTTP_11, StatusCode::OK, Some(5)),
        AnswerFraming::Length(5)
    );
    assert_eq!(
        f(Method::POST, V::HTTP_11, StatusCode::OK, None),
        AnswerFraming::Chunked
    );
    assert_eq!(
        f(Method::POST, V::HTTP_10, StatusCode::OK, None),
        AnswerFraming::Close
    );
    assert_eq!(
        f(Method::HEAD, V::HTTP_11, StatusCode::OK, Some(5)),
        AnswerFraming::Bodiless
    );
    assert_eq!(
        f(Method::POST, V::HTTP_11, StatusCode::NO_CONTENT, None),
        AnswerFraming::Bodiless
    );
}
