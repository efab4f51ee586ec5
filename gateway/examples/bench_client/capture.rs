//! Reading `tcpdump -r FILE -nn -tt -q -A`: one header line per packet, then the packet's bytes
//! as text (non-printing bytes as `.`, `\r\n` as a line break). Shared by `wire` (SSE events)
//! and `wire_http` (requests and answers).

use super::pct;

/// The percentiles of delays measured on the wire (us, sorted), as the `key=value` words the
/// wire readers print: `wire_p50_us` to `wire_max_us`.
pub fn wire_percentiles(sorted: &[u64]) -> String {
    format!(
        "wire_p50_us={} wire_p90_us={} wire_p99_us={} wire_p999_us={} wire_max_us={}",
        pct(sorted, 0.5),
        pct(sorted, 0.9),
        pct(sorted, 0.99),
        pct(sorted, 0.999),
        pct(sorted, 1.0),
    )
}

/// What a packet's header line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packet {
    /// Capture time, us since the Unix epoch.
    pub at_us: u64,
    pub src_port: u16,
    pub dst_port: u16,
}

/// `1796226922.499055 IP 127.0.0.1.45105 > 127.0.0.1.38854: tcp 39` -> its [`Packet`]; `None` for
/// a line of bytes.
pub fn header(line: &[u8]) -> Option<Packet> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let (secs, micros) = words.next()?.split_once('.')?;
    if words.next()? != "IP" {
        return None;
    }
    let port = |addr: &str| addr.rsplit('.').next()?.parse().ok();
    let src_port = port(words.next()?)?;
    if words.next()? != ">" {
        return None;
    }
    let dst_port = port(words.next()?.strip_suffix(':')?)?;
    // The fraction in us, whatever digits tcpdump printed (6, or 9 with nanosecond stamps).
    let fraction = &micros[..micros.len().min(6)];
    let scale = 10u64.pow(6 - fraction.len() as u32);
    let micros = fraction.parse::<u64>().ok()? * scale;
    Some(Packet {
        at_us: secs.parse::<u64>().ok()? * 1_000_000 + micros,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_not_headers_are_not_taken_for_one() {
        assert_eq!(header(b"21\r"), None);
        assert_eq!(
            header(b"1796226922.499055 IP6 ::1.9000 > ::1.1: tcp 3"),
            None
        );
        assert_eq!(header(b"1796226922.499055 IP 127.0.0.1.9000 tcp 3"), None);
        assert_eq!(
            header(b"1796226922.4990 IP 127.0.0.1.9000 > 127.0.0.1.1: tcp 3"),
            Some(Packet {
                at_us: 1_796_226_922_499_000,
                src_port: 9000,
                dst_port: 1
            })
        );
        assert_eq!(
            header(b"1796226922.123456789 IP 127.0.0.1.9 > 127.0.0.1.10: tcp 3").map(|p| p.at_us),
            Some(1_796_226_922_123_456)
        );
    }
}
