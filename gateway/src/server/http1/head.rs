//! The data port's HTTP/1.x heads, pure and synchronous: a client's request head parsed from the
//! bytes read so far, and the gateway's answer head encoded.
//!
//! The parsing is httparse's (the parser hyper uses); what is decided here is the framing of the
//! request's body (RFC 9112 6.3), strictly, because this is where request smuggling happens: a
//! request whose length two readers could read differently is refused, not guessed at:
//! - Transfer-Encoding and Content-Length together: 400 (RFC 9112 allows reading the chunked
//!   coding and closing afterwards; refusing is the safe side of that);
//! - a Transfer-Encoding whose last coding is not `chunked`, or any in HTTP/1.0: 400;
//! - Content-Length values that are not all the same run of digits: 400.
//!
//! Nothing the client frames reaches a model server anyway: the gateway reads the whole body and
//! writes its own Content-Length upstream (`proxy::upstream::http1`).

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

use crate::framing::{FramingFields, LengthError};
use crate::proxy::ErrorKind;

/// Most bytes of a request head; past it, 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most header lines in a request head; past it, 431.
pub const MAX_HEADERS: usize = 100;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding, up to its last chunk.
    Chunked,
}

/// A client's request head, parsed; its header values share the head's bytes.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers, as the request handed to the service carries them.
    pub parts: Parts,
    pub framing: BodyFraming,
    /// The client will send more requests on this connection if the answer does not say close.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before sending its body. (Other
    /// expectations are ignored, as RFC 9110 10.1.1 allows.)
    pub expect_continue: bool,
}

/// Why a request head was refused; the connection closes after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error(
        "the request head is larger than {MAX_HEAD} bytes or has more than {MAX_HEADERS} headers"
    )]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("the request's body length is ambiguous: {0}")]
    Framing(&'static str),
}

impl HeadError {
    /// The kind of error answer it gets (431 or 400).
    pub fn kind(&self) -> ErrorKind {
        match self {
            HeadError::TooLarge => ErrorKind::HeadTooLarge,
            HeadError::Malformed(_) | HeadError::Framing(_) => ErrorKind::MalformedRequest,
        }
    }
}

/// A header line's name and value, as byte ranges of the head.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the request head at the front of `buf`: `None` until all of it has arrived; then the
/// head, its bytes taken from `buf` (what follows, the body and any pipelined request, stays).
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, method, target, minor, count) = {
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut raw)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Version) => return Err(HeadError::Malformed("HTTP version")),
            Err(_) => return Err(HeadError::Malformed("request line or header syntax")),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        // Offsets into the head, so that the values can share its bytes once it is split off.
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize - base) as u32;
            (start, start + s.len() as u32)
        };
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            span.name = at(h.name.as_bytes());
            span.value = at(h.value);
        }
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| HeadError::Malformed("method"))?;
        let target = at(req.path.unwrap_or_default().as_bytes());
        (
            len,
            method,
            target,
            req.version.unwrap_or(1),
            req.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0 as usize..target.1 as usize))
        .map_err(|_| HeadError::Malformed("request target"))?;
    build(&head, method, uri, minor, &spans[..count]).map(Some)
}

/// The head's header map and what its headers say about framing and the connection.
fn build(
    head: &Bytes,
    method: Method,
    uri: Uri,
    minor: u8,
    spans: &[Span],
) -> Result<RequestHead, HeadError> {
    let range = |(a, b): (u32, u32)| a as usize..b as usize;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut fields = FramingFields::default();
    let mut expect_continue = false;
    for span in spans {
        let name = HeaderName::from_bytes(&head[range(span.name)])
            .map_err(|_| HeadError::Malformed("header name"))?;
        let raw = &head[range(span.value)];
        fields.read(&name, raw).map_err(|e| match e {
            LengthError::Invalid => HeadError::Framing("invalid Content-Length"),
            LengthError::Conflicting => HeadError::Framing("conflicting Content-Length values"),
        })?;
        if name == header::EXPECT {
            expect_continue |= raw.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        let value = HeaderValue::from_maybe_shared(head.slice(range(span.value)))
            .map_err(|_| HeadError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let framing = match (fields.chunked, fields.length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        (Some(_), None) if minor == 0 => {
            return Err(HeadError::Framing("Transfer-Encoding in HTTP/1.0"));
        }
        (Some(false), None) => {
            return Err(HeadError::Framing(
                "a Transfer-Encoding not ending in chunked",
            ));
        }
        (Some(true), None) => BodyFraming::Chunked,
        (None, Some(0) | None) => BodyFraming::Empty,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = headers;
    Ok(RequestHead {
        parts,
        framing,
        keep_alive: fields.persistent(minor),
        expect_continue: expect_continue && framing != BodyFraming::Empty,
    })
}

/// How the gateway's answer is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFraming {
    /// No body may follow (a HEAD request, 1xx, 204, 304).
    Bodiless,
    /// Content-Length.
    Length(u64),
    /// The chunked coding (HTTP/1.1 clients, a body of unknown length: a stream).
    Chunked,
    /// The close ends the body (an HTTP/1.0 client and a body of unknown length).
    Close,
}

impl AnswerFraming {
    /// The framing of an answer with `status` and a body of `exact` length if known, to a
    /// request in `version` (a HEAD request if `head_request`).
    pub fn choose(
        head_request: bool,
        version: Version,
        status: StatusCode,
        exact: Option<u64>,
    ) -> AnswerFraming {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            AnswerFraming::Bodiless
        } else if let Some(n) = exact {
            AnswerFraming::Length(n)
        } else if version == Version::HTTP_10 {
            AnswerFraming::Close
        } else {
            AnswerFraming::Chunked
        }
    }
}

/// Writes an answer head into `dst` (emptied first): the status line, `headers` except those that
/// describe framing or the connection (written here from `framing` and `keep_alive`), and `date`
/// unless the answer has one.
pub fn encode_answer(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: AnswerFraming,
    keep_alive: bool,
    version: Version,
    date: &[u8],
) {
    dst.clear();
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        has_date |= name == header::DATE;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if !has_date {
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(date);
        dst.extend_from_slice(b"\r\n");
    }
    match framing {
        AnswerFraming::Length(n) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        AnswerFraming::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        AnswerFraming::Bodiless | AnswerFraming::Close => {}
    }
    if !keep_alive || framing == AnswerFraming::Close {
        dst.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        dst.extend_from_slice(b"connection: keep-alive\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
