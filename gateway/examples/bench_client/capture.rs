//! Reading `tcpdump -r FILE -nn -tt -q -A`: one header line per packet, then the packet's bytes
//! as text (non-printing bytes as `.`, `\r\n` as a line break). Shared by `wire` (SSE events)
//! and `wire_http` (requests and answers).

use std::io::BufRead;

use super::pct;

/// Calls `each` with every packet of tcpdump's text, once all its lines are read: its header
/// and its bytes as text (the lines after the header line, joined by `\n`). Whole packets,
/// because the IP and TCP headers printed as text can hold line breaks of their own: a line of
/// a packet is not a unit of its payload.
pub fn for_each_packet(input: impl BufRead, mut each: impl FnMut(Packet, &[u8])) {
    let mut current: Option<Packet> = None;
    let mut text = Vec::new();
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        if let Some(p) = header(&line) {
            if let Some(done) = current.replace(p) {
                each(done, &text);
            }
            text.clear();
            continue;
        }
        if current.is_some() {
            if !text.is_empty() {
                text.push(b'\n');
            }
            text.extend_from_slice(&line);
        }
    }
    if let Some(done) = current {
        each(done, &text);
    }
}

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
    fn a_packet_is_handed_over_whole_with_its_lines() {
        let text = "stray line\n\
1.5 IP 127.0.0.1.1 > 127.0.0.1.2: tcp 9\n\
E..4..\n\
..HTTP/1.1 200 OK\n\
2.0 IP 127.0.0.1.2 > 127.0.0.1.1: tcp 0\n";
        let mut seen = Vec::new();
        for_each_packet(text.as_bytes(), |p, bytes| {
            seen.push((p.at_us, p.src_port, bytes.to_vec()))
        });
        assert_eq!(
            seen,
            [
                (1_500_000, 1, b"E..4..\n..HTTP/1.1 200 OK".to_vec()),
                (2_000_000, 2, b"".to_vec()),
            ]
        );
    }

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
