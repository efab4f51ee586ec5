//! `bench_client wire PROXY_PORT UPSTREAM_PORT FROM_NS TO_NS`: the delay a proxy adds to each SSE
//! event, read off a loopback capture rather than at the client.
//!
//! Why: the client's receive time minus the upstream's send time, through a proxy minus direct,
//! also carries how late the *client* got a CPU, and on a two-core machine shared by the client,
//! the upstream and the proxy that noise is milliseconds. On the wire, each event is seen twice:
//! in the upstream's segment to the proxy and in the proxy's segment to the client. The second
//! time minus the first is what the proxy added (its wait for a CPU included), and nothing else.
//!
//! Input on stdin: `tcpdump -r FILE -nn -tt -q -A` (one header line per packet, then its bytes as
//! text, non-printing ones as `.`). Events are `echo_upstream`'s `data: {"t":NANOS}`: the send
//! time doubles as the event's unique id. Only events sent in `[FROM_NS, TO_NS)` count (the
//! client's window in which every stream was open). Prints one `key=value` line: `wire_events`
//! (matched in the window), `wire_unmatched` (seen coming in but never going out, in the
//! window), `wire_p50_us`, `wire_p90_us`, `wire_p99_us`, `wire_p999_us`, `wire_max_us`.

use std::collections::HashMap;
use std::io::BufRead;

use super::capture::{for_each_packet, wire_percentiles};
use super::{SENT_AT, sent_time};

/// First time (us since the epoch) each event was seen on each leg.
#[derive(Default)]
pub struct Legs {
    inbound: HashMap<u64, u64>,
    outbound: HashMap<u64, u64>,
}

impl Legs {
    /// Reads tcpdump's text: each event in a packet is seen on the leg of its sender, at the
    /// packet's time.
    pub fn read(input: impl BufRead, proxy_port: u16, upstream_port: u16) -> Self {
        let mut legs = Legs::default();
        for_each_packet(input, |p, text| {
            let seen = match p.src_port {
                s if s == upstream_port => &mut legs.inbound,
                s if s == proxy_port => &mut legs.outbound,
                _ => return,
            };
            for id in event_ids(text) {
                seen.entry(id).or_insert(p.at_us);
            }
        });
        legs
    }

    /// Delays in us (sorted) of the events sent in `[from, to)` seen on both legs, and how many
    /// in that window came in but never went out.
    pub fn delays(&self, from: u64, to: u64) -> (Vec<u64>, usize) {
        let (mut delays, mut unmatched) = (Vec::new(), 0);
        for (id, t_in) in &self.inbound {
            if !(from..to).contains(id) {
                continue;
            }
            match self.outbound.get(id) {
                Some(t_out) => delays.push(t_out.saturating_sub(*t_in)),
                None => unmatched += 1,
            }
        }
        delays.sort_unstable();
        (delays, unmatched)
    }
}

/// The ids (send times) of the events in a packet's bytes.
fn event_ids(line: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            let at = rest.windows(SENT_AT.len()).position(|w| w == SENT_AT)?;
            rest = &rest[at + SENT_AT.len()..];
            if let Some((id, after)) = sent_time(rest) {
                rest = after;
                return Some(id);
            }
        }
    })
}

/// The `wire` subcommand: tcpdump's text on stdin, one summary line on stdout.
pub fn run(proxy_port: u16, upstream_port: u16, from: u64, to: u64) {
    let legs = Legs::read(std::io::stdin().lock(), proxy_port, upstream_port);
    let (d, unmatched) = legs.delays(from, to);
    println!(
        "wire_events={} wire_unmatched={unmatched} {}",
        d.len(),
        wire_percentiles(&d)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `tcpdump -nn -tt -q -A` prints for two events through a proxy on port 8080 from an
    /// upstream on port 9000, with the client's segment of the first event before the second
    /// comes in, a packet of some other connection, and header bytes printed as text.
    const CAPTURE: &str = "\
1796226922.499055 IP 127.0.0.1.9000 > 127.0.0.1.38854: tcp 39
E..[..@.@.<...........21\r
data: {\"t\":1000}

\r
1796226922.499155 IP 127.0.0.1.8080 > 127.0.0.1.41000: tcp 39
E..[..@.@.<...........21\r
data: {\"t\":1000}
1796226922.500000 IP 127.0.0.1.9000 > 127.0.0.1.38854: tcp 39
..data: {\"t\":2000}

data: {\"t\":3000}
1796226922.500001 IP 127.0.0.1.5555 > 127.0.0.1.41000: tcp 39
data: {\"t\":2000}
1796226922.5012 IP 127.0.0.1.8080 > 127.0.0.1.41000: tcp 78
data: {\"t\":2000}data: {\"t\":3000}data: {\"t\":1000}
";

    #[test]
    fn each_event_is_timed_from_its_first_inbound_to_its_first_outbound_segment() {
        let legs = Legs::read(CAPTURE.as_bytes(), 8080, 9000);
        let (d, unmatched) = legs.delays(0, u64::MAX);
        // 1000: 100 us; 2000 and 3000: 1,200 us (the repeat of 1000 and the other port ignored).
        assert_eq!(d, [100, 1200, 1200]);
        assert_eq!(unmatched, 0);
    }

    #[test]
    fn only_the_window_counts_and_an_event_that_never_left_is_unmatched() {
        let legs = Legs::read(CAPTURE.as_bytes(), 8080, 9000);
        assert_eq!(legs.delays(1500, 2500), (vec![1200], 0));
        let cut = CAPTURE.rsplit_once("1796226922.5012").unwrap().0;
        let legs = Legs::read(cut.as_bytes(), 8080, 9000);
        assert_eq!(legs.delays(0, u64::MAX), (vec![100], 2));
    }

    #[test]
    fn event_ids_are_whole_send_times() {
        let ids: Vec<u64> = event_ids(b"{\"t\":12{\"t\":x}{\"t\":34}{\"t\":5").collect();
        assert_eq!(ids, [34]);
    }
}
