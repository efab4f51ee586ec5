//! What an HTTP/1 message's header fields say about the length of its body and the life of its
//! connection (RFC 9112 6.3 and 9.3), read the same way on both sides of the gateway: a client's
//! request head (`server::http1::head`) and a model server's answer head (`proxy::upstream`).
//! Each side then decides what an ambiguous message means for it.

use http::header::{self, HeaderName};

/// The framing fields of one head, as its lines are read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramingFields {
    /// Content-Length, if any (all its values agree).
    pub length: Option<u64>,
    /// Transfer-Encoding, if any: whether its last coding is `chunked`.
    pub chunked: Option<bool>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
}

/// A Content-Length that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    #[error("invalid Content-Length")]
    Invalid,
    #[error("conflicting Content-Length values")]
    Conflicting,
}

impl FramingFields {
    /// Takes in one header line; lines that do not frame the message are ignored. Inlined: it
    /// runs for every header line of every head, and mostly compares a name and returns.
    #[inline]
    pub fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), LengthError> {
        if name == header::CONTENT_LENGTH {
            for n in value.split(|b| *b == b',') {
                let n = parse_length(n.trim_ascii()).ok_or(LengthError::Invalid)?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(LengthError::Conflicting);
                }
                self.length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            // The last coding of the last line decides.
            if let Some(last) = value.rsplit(|b| *b == b',').next() {
                self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        } else if name == header::CONNECTION {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// Whether the connection stays open after this message, in HTTP/1.`minor`.
    pub fn persistent(&self, minor: u8) -> bool {
        if minor == 0 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }

    /// Both framings at once: the way request smuggling starts.
    pub fn ambiguous(&self) -> bool {
        self.chunked.is_some() && self.length.is_some()
    }
}

/// A Content-Length value: digits only (no sign, no space inside), at most 19 of them.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[(&str, &str)]) -> Result<FramingFields, LengthError> {
        let mut f = FramingFields::default();
        for (name, value) in lines {
            f.read(
                &HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.as_bytes(),
            )?;
        }
        Ok(f)
    }

    #[test]
    fn lengths_must_agree_and_be_plain_digits() {
        let f = read(&[("content-length", "3, 3"), ("Content-Length", "3")]).expect("equal");
        assert_eq!(f.length, Some(3));
        assert_eq!(
            read(&[("content-length", "3"), ("content-length", "4")]),
            Err(LengthError::Conflicting)
        );
        for bad in ["", "+3", "3 3", "0x10", "99999999999999999999"] {
            assert_eq!(
                read(&[("content-length", bad)]),
                Err(LengthError::Invalid),
                "{bad:?}"
            );
        }
        let f = read(&[("content-length", "9999999999999999999")]).expect("19 digits fit");
        assert_eq!(f.length, Some(9_999_999_999_999_999_999));
    }

    #[test]
    fn the_last_coding_decides_and_connection_tokens_are_read() {
        let f = read(&[("transfer-encoding", "chunked, gzip")]).expect("ok");
        assert_eq!(f.chunked, Some(false));
        let f = read(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", " Chunked "),
        ])
        .expect("ok");
        assert_eq!(f.chunked, Some(true));
        let f = read(&[("connection", "Upgrade, close")]).expect("ok");
        assert!(f.close && !f.persistent(1));
        let f = read(&[("connection", "keep-alive")]).expect("ok");
        assert!(f.persistent(0) && f.persistent(1));
        assert!(!FramingFields::default().persistent(0));
        let f = read(&[("content-length", "1"), ("transfer-encoding", "chunked")]).expect("ok");
        assert!(f.ambiguous());
    }
}
