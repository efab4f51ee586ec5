//! One keep-alive HTTP/1.1 connection to a model server, driven by the request that holds it.
//!
//! Why not hyper's client connection, which the gateway used before: hyper drives each client
//! connection from a task of its own, and a request reaches it through a channel (an mpsc send,
//! a wake-up of the connection's task, a oneshot back with the answer's head, and the body's
//! frames through another channel): two tasks and their wake-ups per request, for a connection
//! that only ever carries one request at a time. Here the request's own task writes the request
//! and reads the answer: the head is encoded straight into the connection's buffer, the answer's
//! head parsed with httparse (the parser hyper uses), and the body read by the answer's body
//! ([`AnswerBody`]) as the client's connection asks for it.
//!
//! The contract is narrow on purpose, and the gateway controls both ends of it: HTTP/1.1 with
//! keep-alive to a model server, one request at a time, a body whose bytes are all known before
//! it is sent. Answers are read as RFC 9112 says: interim 1xx heads are skipped, the body is
//! framed by Transfer-Encoding, else Content-Length, else the connection's close; a connection
//! is reused only after an answer whose end was read exactly and which did not ask to close.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::answer::{AnswerBody, Framing};
use crate::chunked::{ChunkError, ChunkedDecoder};
use crate::framing::{FramingFields, LengthError};

/// Most header lines in an answer's head (hyper's default too).
const MAX_HEADERS: usize = 100;

/// Largest answer head accepted, interim heads included.
pub const MAX_HEAD: usize = 64 * 1024;

/// Free space made in the read buffer before a read: a small answer arrives in one read; a
/// large one, or a stream, in reads of up to this size.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange on a connection failed after the request may have left.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Closed (a FIN or a reset) before any byte of an answer: on a reused connection, the
    /// server's keep-alive timeout passed as the request arrived ([`Self::is_unanswered`]).
    #[error("the connection closed before an answer")]
    ClosedBeforeAnswer,
    #[error("the connection closed mid-answer")]
    ClosedMidAnswer,
    #[error("malformed answer head: {0}")]
    Head(#[from] httparse::Error),
    #[error("answer head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed answer head: {0}")]
    Invalid(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] ChunkError),
}

impl UpstreamError {
    /// Whether the server closed the connection without answering at all. On a connection that
    /// had carried an answer before, that is the keep-alive race: the server's idle timeout
    /// passed just as the request arrived, and it closed without reading it.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, UpstreamError::ClosedBeforeAnswer)
    }
}

/// A request as it goes to a model server, borrowed from the client's: nothing is copied or
/// rebuilt per attempt, and a retry sends the same borrowed parts again.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Sent in origin form (path and query), whatever form the client used.
    pub uri: &'a Uri,
    /// The client's headers; those that describe its hop ([`is_hop_by_hop`]), its `Host` and its
    /// Content-Length are not sent (the endpoint's `Host` and the body's length are).
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1), plus those the client sets.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == header::TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// One connection: the socket, the bytes read from it and not yet consumed, and the buffer the
/// next request's head is written into (kept, so that a connection's requests reuse it).
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    pub(super) read: BytesMut,
    head: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::new(),
            head: Vec::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing has arrived on it since its last
    /// answer. Something arriving on an idle connection is its server closing it (or bytes no
    /// request asked for; either way it is done). No system call while nothing arrived: tokio
    /// knows the socket was drained by the last read (a short read) and has had no event since.
    pub fn poll_idle_open(&self, cx: &mut Context<'_>) -> bool {
        match self.stream.poll_read_ready(cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // An event, or a read that filled its buffer exactly: one look settles it.
            Poll::Ready(Ok(())) => self.probe_open(),
        }
    }

    /// Whether the socket has nothing to read and no end: one non-blocking read.
    pub fn probe_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes `req` to the server whose `Host` is `host`: its head, then its body. On an
    /// error, the request did not reach the server whole, so the server cannot have acted on it.
    pub async fn write_request(
        &mut self,
        req: &Outgoing<'_>,
        host: &HeaderValue,
    ) -> io::Result<()> {
        encode_head(&mut self.head, req, host);
        let mut head: &[u8] = &self.head;
        let mut body: &[u8] = req.body;
        // One `writev` for both in the common case; the body is not copied.
        while !head.is_empty() || !body.is_empty() {
            let n = self
                .stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        Ok(())
    }

    /// Reads the answer's head; its body is read by the returned answer's [`AnswerBody`],
    /// which owns the connection from here.
    pub async fn read_answer(
        mut self,
        method: &Method,
    ) -> Result<Response<AnswerBody>, UpstreamError> {
        let head_request = method == Method::HEAD;
        loop {
            if !self.read.is_empty()
                && let Some(head) = parse_head(&mut self.read, head_request)?
            {
                let mut resp = Response::new(AnswerBody::new(self, head.framing, head.keep_alive));
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                return Ok(resp);
            }
            let unanswered = self.read.is_empty();
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if unanswered => return Err(UpstreamError::ClosedBeforeAnswer),
                Err(e) if unanswered && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(UpstreamError::ClosedBeforeAnswer);
                }
                Ok(0) => return Err(UpstreamError::ClosedMidAnswer),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what has arrived into the read buffer: the number of bytes, 0 at the end.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// Writes `req`'s head into `dst` (emptied first): the request line with the origin-form
/// target, `host`, the client's end-to-end headers as they are, and the body's length. Any
/// Content-Length of the client's is not copied: the framing sent always matches the bytes sent.
pub fn encode_head(dst: &mut Vec<u8>, req: &Outgoing<'_>, host: &HeaderValue) {
    dst.clear();
    dst.extend_from_slice(req.method.as_str().as_bytes());
    dst.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    dst.extend_from_slice(host.as_bytes());
    dst.extend_from_slice(b"\r\n");
    for (name, value) in req.headers {
        if name == header::HOST || name == header::CONTENT_LENGTH || is_hop_by_hop(name) {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let len = req.body.len();
    // As hyper does: no length for an empty body of a method that does not expect one.
    let bodiless = matches!(
        *req.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if len > 0 || !bodiless {
        dst.extend_from_slice(b"content-length: ");
        dst.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// An answer's head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The end-to-end headers, as passed on to the client: the hop-by-hop ones
    /// ([`is_hop_by_hop`]) decide the framing and the reuse and are not kept.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has ended.
    pub keep_alive: bool,
}

/// Where one header line is in the head: name and value, as byte ranges.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the answer's head from the front of `buf`, consuming it (interim 1xx heads
/// included); `None` until all of it has arrived. The header values share the head's bytes.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, UpstreamError> {
    loop {
        let mut spans = [Span::default(); MAX_HEADERS];
        let (len, code, minor, count) = {
            let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)?
            {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial if buf.len() > MAX_HEAD => {
                    return Err(UpstreamError::HeadTooLarge);
                }
                httparse::Status::Partial => return Ok(None),
            };
            let base = buf.as_ptr() as usize;
            let at = |s: &[u8]| {
                let start = (s.as_ptr() as usize - base) as u32;
                (start, start + s.len() as u32)
            };
            for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
                span.name = at(h.name.as_bytes());
                span.value = at(h.value);
            }
            let code = resp.code.ok_or(UpstreamError::Invalid("no status"))?;
            (len, code, resp.version.unwrap_or(1), resp.headers.len())
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(UpstreamError::Invalid("protocol switch not asked for"));
            }
            // An interim answer (100 Continue, 103 Early Hints): the final one follows.
            buf.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| UpstreamError::Invalid("status code"))?;
        let head = buf.split_to(len).freeze();
        return build_head(&head, &spans[..count], status, minor, head_request).map(Some);
    }
}

/// The head's header map and framing, from the header lines found in `head`.
fn build_head(
    head: &Bytes,
    spans: &[Span],
    status: StatusCode,
    minor: u8,
    head_request: bool,
) -> Result<Head, UpstreamError> {
    let slice = |(a, b): (u32, u32)| a as usize..b as usize;
    // One more than the head has: the gateway adds its `x-infergate-endpoint`, and an insert
    // into a map at its capacity grows it (a new table, every entry hashed again).
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    let mut fields = FramingFields::default();
    for span in spans {
        let name = HeaderName::from_bytes(&head[slice(span.name)])
            .map_err(|_| UpstreamError::Invalid("header name"))?;
        fields
            .read(&name, &head[slice(span.value)])
            .map_err(|e| match e {
                LengthError::Invalid => UpstreamError::Invalid("content-length"),
                LengthError::Conflicting => UpstreamError::Invalid("conflicting content-length"),
            })?;
        // Read for the framing and the reuse above; they describe this hop, not the answer.
        if is_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(slice(span.value)))
            .map_err(|_| UpstreamError::Invalid("header value"))?;
        headers.append(name, value);
    }
    let bodiless =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, fields.chunked, fields.length) {
        (true, _, _) | (false, None, Some(0)) => Framing::Ended,
        (false, Some(true), _) => Framing::Chunked(ChunkedDecoder::new()),
        // Another coding than chunked last: only the close can end it.
        (false, Some(false), _) => Framing::Close,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::Close,
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Both framings at once is how request smuggling starts: such a connection is not reused.
    let keep_alive =
        fields.persistent(minor) && !fields.ambiguous() && !matches!(framing, Framing::Close);
    Ok(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

#[cfg(test)]
mod tests;
