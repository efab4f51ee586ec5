//! The data port's HTTP/1.x connections, served by the gateway's own loop.
//!
//! Why not hyper's server, which served them before: per request it runs a dispatcher that hands
//! the body through a channel (`Incoming`, a `want` signal and an mpsc channel) to the service,
//! encodes the answer through its own buffers, and reads the socket once more after each answer
//! for keep-alive: about 5,900 of the gateway's 34,800 instructions per request, 17%. With it
//! replaced, the gateway's throughput on the benchmark went from 0.83 of nginx's to
//! parity (docs/BENCHMARKS.md, 2026-12-03 13:36). The gateway serves one narrow kind of
//! exchange (a JSON request, read whole, then an answer that may stream), and this loop serves
//! that and nothing else:
//! - the head is parsed by httparse (the parser hyper uses) and its framing decided strictly
//!   ([`head`]); a head that is malformed, too large or ambiguous gets its error and the close;
//! - the body is read whole, up to `limits.max_body_bytes` (Content-Length, or chunked with the
//!   decoder the upstream side uses), after a `100 Continue` if the client asked for one;
//! - while the service works on a request, and while its answer streams, the socket is watched:
//!   a client that leaves drops the service's future, which cancels the upstream request;
//! - the answer's head and first frame leave in one `writev`; a stream's frames (SSE events)
//!   are written as they come, each in one chunk, never batched;
//! - keep-alive as the version and `Connection` say; pipelined requests are answered in turn;
//! - the header-read timeout covers the wait for each head, the idle time between requests
//!   included; the body-read timeout, each wait for more of a body (408 past it); the send
//!   timeout, each wait for a client to take more of its answer (the close past it, which
//!   cancels the upstream request). Without the last two, a client that trickles its body or
//!   stops reading its stream holds a connection (and, for the stream, a pod's slot) for ever;
//! - the drain closes an idle connection at once and a busy one after its answer.
//!
//! HTTP/2 (prior knowledge, h2c) is told apart by its preface and served by hyper
//! (`server.rs`); so is the admin port.

mod head;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chunked::{ChunkedDecoder, Step};
use crate::coarse_timer::{CoarseTimer, Elapsed};
use crate::proxy::{ErrorKind, ProxyError};
use head::{AnswerFraming, BodyFraming, RequestHead};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// How long, and how many bytes, a connection closed under a client still sending is read and
/// dropped for ([`linger`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Most bytes of pipelined requests read ahead while an answer is pending; past it, the socket
/// is not read (nor watched) until the answer is out.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// What a connection is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `limits.max_body_bytes`.
    pub max_body: usize,
    /// `limits.header_read_timeout`.
    pub header_read: Duration,
    /// `limits.body_read_timeout`.
    pub body_read: Duration,
    /// `limits.send_timeout`.
    pub send: Duration,
}

/// The client's socket, with the deadlines its body reads and its writes run under. Both are
/// armed only when the socket makes the connection wait: a body that came with its head, and
/// an answer the socket takes at once (nearly every one), arm nothing.
struct Client {
    stream: TcpStream,
    timer: CoarseTimer,
    limits: Limits,
}

impl Client {
    /// More bytes of a request body into `buf`: the client has `limits.body_read` to send them.
    async fn read_body_bytes(&mut self, buf: &mut BytesMut) -> Result<(), Unserved> {
        let more = read_some(&mut self.stream, buf);
        match self.timer.timeout(self.limits.body_read, more).await {
            Ok(Ok(0)) => Err(Unserved::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Unserved::Io(e)),
            Err(Elapsed) => Err(Unserved::Refused(ProxyError::body_stalled(
                self.limits.body_read,
            ))),
        }
    }

    /// Writes every byte of `parts`, in as few `writev`s as the socket takes. A client that takes
    /// none of them for `limits.send` (its socket's buffers full: it is not reading) fails the
    /// write with `TimedOut`.
    async fn write_all(&mut self, parts: &mut [&[u8]]) -> io::Result<()> {
        let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
        let mut count = 0;
        for p in parts.iter().filter(|p| !p.is_empty()) {
            slices[count] = IoSlice::new(p);
            count += 1;
        }
        let mut slices = &mut slices[..count];
        while !slices.is_empty() {
            let n = match self.stream.try_write_vectored(slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let room = self.stream.writable();
                    match self.timer.timeout(self.limits.send, room).await {
                        Ok(ready) => ready?,
                        Err(Elapsed) => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the client took no byte of its answer within the send timeout",
                            ));
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }
}

/// One client connection being served; a future that ends when the connection does.
/// [`Connection::graceful_shutdown`] asks it to close after the answer in progress (at once if
/// it is between requests).
pub struct Connection {
    closing: Arc<AtomicBool>,
    run: Pin<Box<dyn Future<Output = io::Result<()>> + Send>>,
}

impl Connection {
    /// `service` answers one request whose body has been read whole; `refused` is told the
    /// status of each answer the connection gives itself (a head or a body it could not take),
    /// which `service` never sees.
    pub fn new<S, F, B, R>(
        stream: TcpStream,
        service: S,
        refused: R,
        limits: Limits,
        timer: CoarseTimer,
    ) -> Connection
    where
        S: Fn(Request<Full<Bytes>>) -> F + Send + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        R: Fn(StatusCode) + Send + 'static,
    {
        let closing = Arc::new(AtomicBool::new(false));
        let client = Client {
            stream,
            timer,
            limits,
        };
        let run = Box::pin(serve(client, service, refused, closing.clone()));
        Connection { closing, run }
    }

    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.closing.store(true, Ordering::SeqCst);
    }
}

impl Future for Connection {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.run.as_mut().poll(cx)
    }
}

/// Serves requests on `client` until it closes, an error, or the drain.
async fn serve<S, F, B, R>(
    mut client: Client,
    service: S,
    refused: R,
    closing: Arc<AtomicBool>,
) -> io::Result<()>
where
    S: Fn(Request<Full<Bytes>>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    R: Fn(StatusCode),
{
    let limits = client.limits;
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(512);
    loop {
        let head = client
            .timer
            .timeout(
                limits.header_read,
                read_head(&mut client.stream, &mut buf, &closing),
            )
            .await
            // The header-read timeout (the idle time between requests included): no answer.
            .unwrap_or(Err(Unserved::Closed));
        let RequestHead {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = match head {
            Ok(head) => head,
            Err(why) => return give_up(&mut client, &mut out, refused, why).await,
        };
        // The body, whole. One that is over the limit by its Content-Length is not read: the
        // service refuses it by that header (413), and the connection closes after the answer.
        let mut unread = false;
        let body = match framing {
            BodyFraming::Length(n) if n > limits.max_body as u64 => {
                keep_alive = false;
                unread = true;
                Bytes::new()
            }
            framing => match read_body(&mut client, &mut buf, framing, expect_continue).await {
                Ok(body) => body,
                Err(why) => return give_up(&mut client, &mut out, refused, why).await,
            },
        };
        let mut ex = Exchange {
            head_request: parts.method == http::Method::HEAD,
            version: parts.version,
            keep_alive,
        };
        let req = Request::from_parts(parts, Full::new(body));
        // A client that leaves now drops the service's future: the upstream request is cancelled.
        let Some(resp) = until_client_leaves(&mut client.stream, &mut buf, service(req)).await
        else {
            return Ok(());
        };
        ex.keep_alive &= !closing.load(Ordering::SeqCst);
        let again = write_answer(&mut client, &mut buf, &mut out, resp, ex).await?;
        if unread {
            linger(&mut client.stream).await;
            return Ok(());
        }
        if !again || closing.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

/// Why a request was not read whole (its head or its body), so the connection ends.
enum Unserved {
    /// The client closed (or, between requests, the drain started or the header-read timeout
    /// passed): there is no one to answer.
    Closed,
    /// Answered with this error (a malformed or oversized head; a broken, oversized or stalled
    /// body), then the close.
    Refused(ProxyError),
    Io(io::Error),
}

impl From<io::Error> for Unserved {
    fn from(e: io::Error) -> Self {
        Unserved::Io(e)
    }
}

/// Ends a connection whose request could not be read: its own answer (counted through
/// `refused`, since the service never sees it) if there is one to give.
async fn give_up(
    client: &mut Client,
    out: &mut Vec<u8>,
    refused: impl Fn(StatusCode),
    why: Unserved,
) -> io::Result<()> {
    match why {
        Unserved::Closed => Ok(()),
        Unserved::Io(e) => Err(e),
        Unserved::Refused(e) => {
            refused(e.status());
            refuse(client, out, e).await
        }
    }
}

/// The body `framing` announces, read whole (after a `100 Continue` if the client asked).
async fn read_body(
    client: &mut Client,
    buf: &mut BytesMut,
    framing: BodyFraming,
    expect_continue: bool,
) -> Result<Bytes, Unserved> {
    match framing {
        BodyFraming::Empty => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            go_ahead(client, buf, expect_continue).await?;
            read_exact(client, buf, n as usize).await
        }
        BodyFraming::Chunked => {
            go_ahead(client, buf, expect_continue).await?;
            read_chunked(client, buf).await
        }
    }
}

/// Reads until a whole request head is in `buf`; `Closed` if the connection closed (or the
/// drain started) before the first byte of one.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    closing: &AtomicBool,
) -> Result<RequestHead, Unserved> {
    loop {
        if !buf.is_empty() {
            let parsed = head::parse_request(buf)
                .map_err(|e| Unserved::Refused(ProxyError::new(e.kind(), e.to_string())))?;
            if let Some(head) = parsed {
                return Ok(head);
            }
        }
        let idle = buf.is_empty();
        let read = tokio::select! {
            biased;
            () = drain_started(closing), if idle => return Err(Unserved::Closed),
            read = read_some(stream, buf) => read?,
        };
        if read == 0 {
            // Part of a head and then the close: nothing can be answered.
            return Err(Unserved::Closed);
        }
    }
}

/// Resolves once the drain has asked this connection to close. The drain wakes the connection's
/// task when it starts (`drain::Draining`), so the flag is read on that poll.
fn drain_started(closing: &AtomicBool) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if closing.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    stream.read_buf(buf).await
}

/// `100 Continue`, if the client waits for it and has not begun to send its body anyway.
async fn go_ahead(client: &mut Client, buf: &BytesMut, asked: bool) -> io::Result<()> {
    if asked && buf.is_empty() {
        client
            .write_all(&mut [&b"HTTP/1.1 100 Continue\r\n\r\n"[..]])
            .await?;
    }
    Ok(())
}

/// The next `n` bytes.
async fn read_exact(client: &mut Client, buf: &mut BytesMut, n: usize) -> Result<Bytes, Unserved> {
    if buf.len() < n {
        buf.reserve(n - buf.len());
    }
    while buf.len() < n {
        client.read_body_bytes(buf).await?;
    }
    Ok(buf.split_to(n).freeze())
}

/// A chunked body, decoded whole; refused if its coding is broken (400) or it is over
/// `limits.max_body` (413).
async fn read_chunked(client: &mut Client, buf: &mut BytesMut) -> Result<Bytes, Unserved> {
    let max = client.limits.max_body;
    let mut decoder = ChunkedDecoder::new();
    let mut body = BytesMut::new();
    loop {
        match decoder.decode(buf) {
            Ok(Step::Data(data)) => {
                if body.len() + data.len() > max {
                    return Err(Unserved::Refused(ProxyError::body_too_large(max)));
                }
                body.extend_from_slice(&data);
            }
            Ok(Step::End) => return Ok(body.freeze()),
            Ok(Step::NeedMore) => client.read_body_bytes(buf).await?,
            Err(e) => {
                return Err(Unserved::Refused(ProxyError::new(
                    ErrorKind::BodyRead,
                    format!("malformed chunked request body: {e}"),
                )));
            }
        }
    }
}

/// Waits for `fut` while watching the socket: `None` if the client closed (or reset) first.
/// Bytes that arrive meanwhile (a pipelined request) are kept in `buf`, up to
/// [`MAX_READ_AHEAD`]; past it the socket is left alone until `fut` is done.
async fn until_client_leaves<F: Future>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    fut: F,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    loop {
        let watch = buf.len() < MAX_READ_AHEAD;
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            read = read_some(stream, buf), if watch => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// What the answer needs to know of its request.
struct Exchange {
    head_request: bool,
    version: Version,
    keep_alive: bool,
}

/// Writes `resp` as its frames come; whether the connection can carry another request.
async fn write_answer<B: Body<Data = Bytes>>(
    client: &mut Client,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Response<B>,
    ex: Exchange,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let mut body = pin!(body);
    let framing = AnswerFraming::choose(
        ex.head_request,
        ex.version,
        parts.status,
        body.size_hint().exact(),
    );
    head::encode_answer(
        out,
        parts.status,
        &parts.headers,
        framing,
        ex.keep_alive,
        ex.version,
        &date(),
    );
    let again = ex.keep_alive && framing != AnswerFraming::Close;
    if framing == AnswerFraming::Bodiless {
        client.write_all(&mut [out]).await?;
        return Ok(again);
    }
    let chunked = framing == AnswerFraming::Chunked;
    // The head goes out with the first frame, then is empty.
    let mut head: &[u8] = out;
    loop {
        let frame = match until_client_leaves(&mut client.stream, buf, body.frame()).await {
            // The client left: dropping the body cancels the upstream request.
            None => return Ok(false),
            Some(None) => break,
            // The answer broke mid-way (the gateway's body already turned an upstream failure
            // into an SSE error event where it could): the close tells the client it is cut.
            Some(Some(Err(_))) => return Ok(false),
            Some(Some(Ok(frame))) => frame,
        };
        // Trailers are not passed on.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut size = [0u8; 18];
            let size = chunk_size_line(&mut size, data.len());
            client.write_all(&mut [head, size, &data, b"\r\n"]).await?;
        } else {
            client.write_all(&mut [head, &data]).await?;
        }
        head = &[];
        if body.is_end_stream() {
            break;
        }
    }
    let last: &[u8] = if chunked { b"0\r\n\r\n" } else { &[] };
    client.write_all(&mut [head, last]).await?;
    Ok(again)
}

/// `{size in hex}\r\n`, written into `dst`.
fn chunk_size_line(dst: &mut [u8; 18], n: usize) -> &[u8] {
    use std::io::Write as _;
    let mut rest = &mut dst[..];
    // 16 hex digits and CRLF always fit in 18 bytes.
    let _ = write!(rest, "{n:x}\r\n");
    let written = 18 - rest.len();
    &dst[..written]
}

/// An error answer made here (the head or the body could not be read), then the close.
async fn refuse(client: &mut Client, out: &mut Vec<u8>, e: ProxyError) -> io::Result<()> {
    let resp = e.to_response();
    let (parts, body) = resp.into_parts();
    head::encode_answer(
        out,
        parts.status,
        &parts.headers,
        AnswerFraming::Length(body.len() as u64),
        false,
        Version::HTTP_11,
        &date(),
    );
    client.write_all(&mut [out, &body]).await?;
    linger(&mut client.stream).await;
    Ok(())
}

/// Closes a connection whose client may still be sending (a body that was not read): the write
/// side first, then what still arrives is read and dropped, for at most [`LINGER`] and
/// [`LINGER_BYTES`]. Closing with unread bytes would reset the connection, and a reset can
/// discard the answer before the client reads it (RFC 9112 9.6).
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The `Date` of an answer (RFC 9110 6.6.1), formatted once a second per thread.
fn date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        fresh.copy_from_slice(&formatted.as_bytes()[..29]);
        c.set((secs, fresh));
        fresh
    })
}

#[cfg(test)]
mod tests;
