//! The chunked transfer coding (RFC 9112 7.1), decoded from the bytes read so far: pure and
//! synchronous, so that any split of the stream into reads can be tested. Both sides use it: an
//! upstream's answer (`proxy::upstream`) and a client's request body (`server::http1`).
//!
//! Each chunk's data is handed on as it is, one frame per chunk (or per part of a chunk that has
//! arrived): a model server writes one SSE event per chunk, and the client must get each event
//! as soon as it is read, not a batch of them. Chunk extensions are ignored and trailers are
//! read and dropped, as a proxy that does not forward trailers must (RFC 9110 6.5.1).

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes of trailer lines accepted after the last chunk (a bound, as for the head).
const MAX_TRAILERS: usize = 16 * 1024;

/// What the bytes read so far decode to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Chunk data, taken from the front of the buffer.
    Data(Bytes),
    /// Nothing yet: read more and call again.
    NeedMore,
    /// The last chunk and the trailers have been read: the message ends here, and whatever is
    /// left in the buffer is not part of it.
    End,
}

/// The stream is not valid chunked coding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("trailers longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one, this many bytes read of them.
    Trailers(usize),
    /// The message has ended.
    Done,
}

/// The decoder of one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    /// Decodes from the front of `buf`, consuming what it decodes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.state {
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(httparse::InvalidChunkSize) => return Err(ChunkError::Size),
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        // A lone LF is tolerated, as the size line's parser tolerates it.
                        if buf.first() == Some(&b'\n') {
                            buf.advance(1);
                            self.state = State::Size;
                            continue;
                        }
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ChunkError::MissingCrlf);
                        }
                        return Ok(Step::NeedMore);
                    }
                    match &buf[..2] {
                        b"\r\n" => buf.advance(2),
                        [b'\n', _] => buf.advance(1),
                        _ => return Err(ChunkError::MissingCrlf),
                    }
                    self.state = State::Size;
                }
                State::Trailers(read) => {
                    let Some(eol) = memchr::memchr(b'\n', buf) else {
                        if read + buf.len() > MAX_TRAILERS {
                            return Err(ChunkError::TrailersTooLong);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let empty = eol == 0 || (eol == 1 && buf[0] == b'\r');
                    buf.advance(eol + 1);
                    if empty {
                        self.state = State::Done;
                        return Ok(Step::End);
                    }
                    let read = read + eol + 1;
                    if read > MAX_TRAILERS {
                        return Err(ChunkError::TrailersTooLong);
                    }
                    self.state = State::Trailers(read);
                }
                State::Done => return Ok(Step::End),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `wire` to a decoder in the pieces `cuts` make, collecting the data and whether the
    /// end was seen, and what was left after it.
    fn decode_in_pieces(
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(wire.len());
        for bound in bounds {
            buf.extend_from_slice(&wire[at..bound.max(at)]);
            at = bound.max(at);
            loop {
                match dec.decode(&mut buf)? {
                    Step::Data(d) => {
                        assert!(!d.is_empty(), "no empty data frames");
                        data.extend_from_slice(&d);
                    }
                    Step::NeedMore => break,
                    Step::End => {
                        buf.extend_from_slice(&wire[at..]);
                        return Ok((data, true, buf.to_vec()));
                    }
                }
            }
        }
        Ok((data, false, buf.to_vec()))
    }

    fn encode(chunks: &[Vec<u8>], trailers: &[&str]) -> Vec<u8> {
        let mut wire = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        for t in trailers {
            wire.extend_from_slice(t.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    #[test]
    fn one_frame_per_chunk_when_each_arrives_whole() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"6\r\ndata: \r\n3\r\nab\n\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"data: ")))
        );
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"ab\n")))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Step::End));
        assert_eq!(dec.decode(&mut buf), Ok(Step::End), "and stays ended");
        assert_eq!(&buf[..], b"NEXT", "the next message's bytes are left alone");
    }

    #[test]
    fn extensions_and_trailers_are_dropped() {
        let wire = b"4;name=value\r\nwxyz\r\n0\r\nx-trailer: 1\r\nx-other: 2\r\n\r\n";
        let (data, end, rest) = decode_in_pieces(wire, &[]).expect("valid");
        assert_eq!((data.as_slice(), end, rest.len()), (&b"wxyz"[..], true, 0));
    }

    #[test]
    fn invalid_codings_are_errors() {
        for (wire, err) in [
            (&b"zz\r\n"[..], ChunkError::Size),
            (b"3\r\nabcX\r\n", ChunkError::MissingCrlf),
            (b"3\r\nabcXY", ChunkError::MissingCrlf),
            (b"fffffffffffffffffff\r\n", ChunkError::Size),
        ] {
            assert_eq!(decode_in_pieces(wire, &[]), Err(err), "{wire:?}");
        }
        let mut long = b"0\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert_eq!(
            decode_in_pieces(&long, &[]),
            Err(ChunkError::TrailersTooLong)
        );
    }

    #[test]
    fn an_unfinished_coding_asks_for_more() {
        let (data, end, _) = decode_in_pieces(b"5\r\nhel", &[]).expect("valid so far");
        assert_eq!((data.as_slice(), end), (&b"hel"[..], false));
    }

    proptest! {
        /// However the stream is split into reads, the data comes out whole and in order, the
        /// end is found, and the bytes after it are left.
        #[test]
        fn any_split_decodes_to_the_same_data(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            trailer in any::<bool>(),
        ) {
            let trailers: &[&str] = if trailer { &["x-t: v"] } else { &[] };
            let mut wire = encode(&chunks, trailers);
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (data, end, rest) = decode_in_pieces(&wire, &cuts).expect("valid coding");
            prop_assert_eq!(data, chunks.concat());
            prop_assert!(end);
            prop_assert_eq!(rest, b"HTTP/1.1 200 OK\r\n".to_vec());
        }
    }
}
