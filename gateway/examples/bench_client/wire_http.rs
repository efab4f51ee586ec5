//! `bench_client wire-http PROXY_PORT UPSTREAM_PORT FROM_ID`: the time each of `rate`'s requests
//! spent inside a proxy, read off a loopback capture rather than at the client.
//!
//! Why: `rate` times a request from its due time to its answer's last byte, so when the client's
//! own thread runs late (two shared cores, a VM that stalls) the figure carries that too, and the
//! run is flagged not valid. On the wire each request is seen four times, and the proxy's part is
//! what lies between its own sockets:
//!
//! `(request out to the upstream - request in from the client) + (answer out to the client -
//! answer in from the upstream)`,
//!
//! its wait for a CPU included, the client's and the upstream's time left out. Each of the four
//! is the time of the message's *last* segment: the proxy can act on a request only once it is
//! whole, and the client is done only at the answer's last byte.
//!
//! Input on stdin: `tcpdump -r FILE -nn -tt -q -A` (see `capture`). Every request carries
//! `X-Bench-Id: N` (its slot in `rate`'s schedule) and `echo_upstream` sends it back on its
//! answer, so all four messages of one request carry the id, in a header near the top (a
//! capture's short snap length keeps it). A connection is HTTP/1.1 keep-alive without
//! pipelining, so the segments that follow one in the same direction belong to the same message
//! until the next message starts (its request or status line has `HTTP/1.1`). Only ids from `FROM_ID` on
//! count (`rate`'s `first_measured_id`: the warm-up's requests are left out). Prints one
//! `key=value` line: `wire_requests` (seen on all four legs), `wire_unmatched` (seen coming in,
//! missing on a later leg), `wire_rps` (requests in over the span they came in),
//! `wire_p50_us`, `wire_p90_us`, `wire_p99_us`, `wire_p999_us`, `wire_max_us`.

use std::collections::HashMap;
use std::io::BufRead;

use super::capture::{for_each_packet, wire_percentiles};

/// The header that numbers a request and its answer (compared without regard to case: nginx
/// keeps the client's spelling, hyper writes names in lower case).
pub const ID_HEADER: &str = "X-Bench-Id: ";

/// The four messages of one request through a proxy, by the ports of its packets.
#[derive(Debug, Clone, Copy)]
enum Leg {
    /// Client to proxy.
    RequestIn = 0,
    /// Proxy to upstream.
    RequestOut = 1,
    /// Upstream to proxy.
    AnswerIn = 2,
    /// Proxy to client.
    AnswerOut = 3,
}

impl Leg {
    fn of(src: u16, dst: u16, proxy: u16, upstream: u16) -> Option<Leg> {
        match (src, dst) {
            (_, d) if d == proxy => Some(Leg::RequestIn),
            (s, _) if s == proxy => Some(Leg::AnswerOut),
            (_, d) if d == upstream => Some(Leg::RequestOut),
            (s, _) if s == upstream => Some(Leg::AnswerIn),
            _ => None,
        }
    }
}

/// The last segment's time (us since the epoch) of each request's message on each leg.
#[derive(Default)]
pub struct Exchanges {
    last: [HashMap<u64, u64>; 4],
}

impl Exchanges {
    /// Reads tcpdump's text. Per direction of each connection (source and destination port), the
    /// id of the message its segments belong to; a segment counts for the message that is
    /// current once its bytes are read (a segment that starts a message counts for that one).
    pub fn read(input: impl BufRead, proxy_port: u16, upstream_port: u16) -> Self {
        let mut ex = Exchanges::default();
        let mut current: HashMap<(u16, u16), Option<u64>> = HashMap::new();
        for_each_packet(input, |p, text| {
            let Some(leg) = Leg::of(p.src_port, p.dst_port, proxy_port, upstream_port) else {
                return;
            };
            let id = current.entry((p.src_port, p.dst_port)).or_default();
            for line in text.split(|&b| b == b'\n') {
                // A request line or a status line starts a message (the bodies here never hold
                // `HTTP/1.1`); the id header follows it.
                if line.windows(8).any(|w| w == b"HTTP/1.1") {
                    *id = None;
                }
                if let Some(n) = id_in(line) {
                    *id = Some(n);
                }
            }
            if let Some(n) = *id {
                ex.last[leg as usize].insert(n, p.at_us);
            }
        });
        ex
    }

    /// Residence times in us (sorted) of the requests with ids from `from_id` on seen on every
    /// leg; how many came in but were missing on a later leg; and the rate they came in at.
    pub fn residences(&self, from_id: u64) -> (Vec<u64>, usize, f64) {
        let [req_in, req_out, ans_in, ans_out] = &self.last;
        let (mut times, mut unmatched) = (Vec::new(), 0);
        let (mut first, mut last) = (u64::MAX, 0);
        for (id, &t_in) in req_in {
            if *id < from_id {
                continue;
            }
            (first, last) = (first.min(t_in), last.max(t_in));
            match (req_out.get(id), ans_in.get(id), ans_out.get(id)) {
                (Some(&r_out), Some(&a_in), Some(&a_out)) => {
                    times.push(r_out.saturating_sub(t_in) + a_out.saturating_sub(a_in))
                }
                _ => unmatched += 1,
            }
        }
        times.sort_unstable();
        let span_s = last.saturating_sub(first) as f64 / 1e6;
        let rps = if span_s > 0.0 {
            (times.len() + unmatched) as f64 / span_s
        } else {
            0.0
        };
        (times, unmatched, rps)
    }
}

/// The id in a header line `X-Bench-Id: N` (any case), if the line is one.
fn id_in(line: &[u8]) -> Option<u64> {
    let rest = line
        .get(..ID_HEADER.len())
        .filter(|name| name.eq_ignore_ascii_case(ID_HEADER.as_bytes()))
        .map(|_| &line[ID_HEADER.len()..])?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The `wire-http` subcommand: tcpdump's text on stdin, one summary line on stdout.
pub fn run(proxy_port: u16, upstream_port: u16, from_id: u64) {
    let ex = Exchanges::read(std::io::stdin().lock(), proxy_port, upstream_port);
    let (t, unmatched, rps) = ex.residences(from_id);
    println!(
        "wire_requests={} wire_unmatched={unmatched} wire_rps={rps:.0} {}",
        t.len(),
        wire_percentiles(&t)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two requests through a proxy on port 8080 to an upstream on port 9000, as
    /// `tcpdump -nn -tt -q -A` prints them: request 7 and its answer, each message in one
    /// segment, nginx-style capitalised; request 8 with its forwarded request and its answer to
    /// the client split in two segments, lower case, a line break in the TCP header of its
    /// answer's, and a scrape of the upstream's /metrics (no id) in between. Request 9 comes in
    /// and never leaves.
    const CAPTURE: &str = "\
1.000000 IP 127.0.0.1.50000 > 127.0.0.1.8080: tcp 1100
E..4..@.@.........POST /v1/chat/completions HTTP/1.1
Host: 127.0.0.1:8080
X-Bench-Id: 0000000007
Content-Length: 1024

1.000040 IP 127.0.0.1.40000 > 127.0.0.1.9000: tcp 1100
E..4..@.@.........POST /v1/chat/completions HTTP/1.1
Host: up
X-Bench-Id: 0000000007

1.000100 IP 127.0.0.1.9000 > 127.0.0.1.40000: tcp 1100
E..4..@.@.........HTTP/1.1 200 OK
x-bench-id: 0000000007
content-length: 1024

1.000130 IP 127.0.0.1.8080 > 127.0.0.1.50000: tcp 1100
E..4..@.@.........HTTP/1.1 200 OK
Server: nginx
x-bench-id: 0000000007

1.001000 IP 127.0.0.1.50000 > 127.0.0.1.8080: tcp 1100
E..4..@.@.........POST /v1/chat/completions HTTP/1.1
host: 127.0.0.1:8080
x-bench-id: 0000000008

1.001010 IP 127.0.0.1.40000 > 127.0.0.1.9000: tcp 100
E..4..@.@.........POST /v1/chat/completions HTTP/1.1
x-bench-id: 0000000008
1.001050 IP 127.0.0.1.40000 > 127.0.0.1.9000: tcp 1024
E..4..@.@.........{\"model\":\"m\"}
1.001060 IP 127.0.0.1.40001 > 127.0.0.1.9000: tcp 60
E..4..@.@.........GET /metrics HTTP/1.1
1.001100 IP 127.0.0.1.9000 > 127.0.0.1.40001: tcp 60
E..4..@.@.........HTTP/1.1 200 OK
1.001200 IP 127.0.0.1.9000 > 127.0.0.1.40000: tcp 1100
E..4..@.@.......
.....
%S?aZ.I.HTTP/1.1 200 OK
x-bench-id: 0000000008
1.001230 IP 127.0.0.1.8080 > 127.0.0.1.50000: tcp 100
E..4..@.@.........HTTP/1.1 200 OK
x-bench-id: 0000000008
1.001300 IP 127.0.0.1.8080 > 127.0.0.1.50000: tcp 1024
E..4..@.@.........xxxxxxxxxxxx
1.002000 IP 127.0.0.1.50000 > 127.0.0.1.8080: tcp 1100
E..4..@.@.........POST /v1/chat/completions HTTP/1.1
X-Bench-Id: 0000000009
";

    #[test]
    fn a_request_is_timed_between_the_last_segments_of_its_messages() {
        let ex = Exchanges::read(CAPTURE.as_bytes(), 8080, 9000);
        let (t, unmatched, _) = ex.residences(0);
        // 7: (40 - 0) + (130 - 100) = 70 us. 8: (50 - 0) + (300 - 200) = 150 us, the second
        // segments counted and the scrape's segments not taken for 8's.
        assert_eq!(t, [70, 150]);
        assert_eq!(unmatched, 1);
    }

    #[test]
    fn only_ids_from_the_first_measured_count() {
        let ex = Exchanges::read(CAPTURE.as_bytes(), 8080, 9000);
        let (t, unmatched, rps) = ex.residences(8);
        assert_eq!((t, unmatched), (vec![150], 1));
        // Two requests came in over 1 ms.
        assert_eq!(rps.round(), 2000.0);
    }

    #[test]
    fn a_new_message_without_an_id_ends_the_last_one() {
        // The second answer on the connection lost its id to the snap length: its segment must
        // not be taken for the first answer's last one.
        let capture = "\
1.0 IP 127.0.0.1.9000 > 127.0.0.1.40000: tcp 1100
..HTTP/1.1 200 OK
x-bench-id: 3
1.5 IP 127.0.0.1.9000 > 127.0.0.1.40000: tcp 1100
..HTTP/1.1 200 OK
";
        let ex = Exchanges::read(capture.as_bytes(), 8080, 9000);
        assert_eq!(ex.last[Leg::AnswerIn as usize].get(&3), Some(&1_000_000));
    }

    #[test]
    fn ids_are_read_from_header_lines_only() {
        assert_eq!(id_in(b"X-BENCH-ID: 0000000042"), Some(42));
        assert_eq!(id_in(b"x-bench-id: 17"), Some(17));
        assert_eq!(id_in(b"xx-bench-id: 17"), None);
        assert_eq!(id_in(b"x-bench-id: "), None);
    }
}
