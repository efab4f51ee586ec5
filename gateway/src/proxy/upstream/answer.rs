//! An upstream answer's body, read from its connection as the client's side asks for it.
//!
//! Each read is handed on as it arrives (a chunked body: each chunk as it arrives), as
//! refcounted slices of the connection's read buffer, without copies. The body owns the
//! connection: dropping it unfinished closes the connection, which is how a model server learns
//! that the client has gone and stops the generation. At a clean end, [`AnswerBody::take_idle`]
//! hands the connection back for the next request.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::http1::{Conn, UpstreamError};
use crate::chunked::{ChunkedDecoder, Step};

/// How the body's end is known (RFC 9112 6.3), and whether it has been reached.
#[derive(Debug)]
pub enum Framing {
    /// Nothing left to read: the answer has no body (a HEAD request's, 204, 304, a zero
    /// Content-Length), or its end has been read.
    Ended,
    /// Content-Length: this many bytes left, at least one.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked(ChunkedDecoder),
    /// Neither: the body ends when the server closes the connection.
    Close,
}

/// The body of an upstream answer.
#[derive(Debug)]
pub struct AnswerBody {
    /// `None` once failed (the connection was dropped, so closed) or handed back.
    conn: Option<Conn>,
    framing: Framing,
    /// Whether the answer allows another request on the connection after it.
    keep_alive: bool,
}

impl AnswerBody {
    pub(super) fn new(conn: Conn, framing: Framing, keep_alive: bool) -> AnswerBody {
        AnswerBody {
            conn: Some(conn),
            framing,
            keep_alive,
        }
    }

    /// The connection, if the body has ended cleanly and the connection may carry another
    /// request: its answer allowed it, and nothing was read past the answer's end (bytes that
    /// no request asked for mean the server and the gateway no longer agree on the framing).
    pub fn take_idle(&mut self) -> Option<Conn> {
        let reusable = self.keep_alive
            && self.is_end_stream()
            && self.conn.as_ref().is_some_and(|c| c.read.is_empty());
        if reusable { self.conn.take() } else { None }
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the bytes already read give, if anything.
            match &mut this.framing {
                Framing::Ended => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = (conn.read.len() as u64).min(*left);
                        *left -= n;
                        if *left == 0 {
                            this.framing = Framing::Ended;
                        }
                        let data = conn.read.split_to(n as usize).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End) => {
                        this.framing = Framing::Ended;
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return this.fail(e.into()),
                },
                Framing::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Ended;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(UpstreamError::ClosedMidAnswer),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Ended => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}
