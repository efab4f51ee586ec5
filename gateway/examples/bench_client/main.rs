//! Load for scripts/bench-proxy.sh where `wrk` cannot help:
//!
//! - `bench_client rate URL RPS SECONDS [--conns N] [--warmup SECONDS] [--poisson]`: open-loop
//!   POSTs of a 1 KiB JSON body at a fixed arrival rate, measured the wrk2 way: slot `i` is due at
//!   `start + i/RPS` (or at Poisson arrival times), and a request's latency runs from its slot's
//!   *due* time to the last byte of the answer, so a stall is charged to every request it delays
//!   (no coordinated omission). See `open_loop` for the design and the client-health counts.
//!   Prints one `key=value` line: `rate achieved sent ok errors p50_us p90_us p99_us p999_us
//!   max_us late_client late_backlog client_cpu_pct first_measured_id valid`. Each request carries
//!   its slot number as `X-Bench-Id` (`first_measured_id`: the first slot after the warm-up).
//! - `bench_client jitter SECONDS [PERIOD_US]`: no network; one thread sleeps to a deadline every
//!   PERIOD_US (default 100) the way `rate` does, and reports how late it woke. The floor of the
//!   machine's scheduling noise, for reading the `rate` figures (a VM's vCPU can stall for ms).
//!   Prints `wakes p50_us p99_us p999_us max_us late late_pct` (late: more than 1 ms).
//! - `bench_client sse URL STREAMS CHUNKS INTERVAL_MS [--burst]`: that many concurrent SSE
//!   streams from `echo_upstream`, each on its own connection (hyper's bare `client::conn`);
//!   each event carries its send time, so receive minus send is the
//!   delivery delay of every chunk. The streams start spread evenly over one interval, or all at
//!   once with `--burst` (see `SseStart`). `chunks`, `p50_us`, `p99_us`, `max_us` count the
//!   events sent while every stream was open (from the last stream's answer head to the first
//!   stream's end): the concurrent streams the figure is about. Before that window, the ramp, the
//!   path is also opening up to STREAMS connections at once (each direct stream's first two
//!   events read p99 40 ms against 0.3-0.5 ms from the fifth on); `all_*` counts every event,
//!   ramp included, and `ramp_ms` is how long the ramp took. `window_from_ns`, `window_to_ns`:
//!   that window (the events' send times), for `wire`.
//! - `bench_client wire PROXY_PORT UPSTREAM_PORT FROM_NS TO_NS`: the delay a proxy added to each
//!   SSE event, from a loopback capture (`tcpdump -r FILE -nn -tt -q -A` on stdin); see `wire`.
//! - `bench_client wire-http PROXY_PORT UPSTREAM_PORT FROM_ID`: the time each of `rate`'s requests
//!   spent inside a proxy, from a loopback capture; see `wire_http`.

mod capture;
mod wire;
mod wire_http;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn body_1k() -> Bytes {
    let head = r#"{"model":"m","max_tokens":16,"messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    Bytes::from(format!(
        "{head}{}{tail}",
        "y".repeat(1024 - head.len() - tail.len())
    ))
}

/// Percentile of a sorted slice: the value at index `round((n - 1) * p)`.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// A send later than this after its due time counts as late (the health check's threshold).
const LATE: Duration = Duration::from_millis(1);

/// Options of the `rate` mode.
struct RateOpts {
    host: String,
    path: String,
    rps: f64,
    secs: f64,
    conns: usize,
    warmup: f64,
    poisson: bool,
}

/// When each slot is due, in nanoseconds after the start: evenly spaced, or Poisson arrivals
/// (exponential gaps from a fixed-seed xorshift, so runs are comparable).
fn schedule(rps: f64, secs: f64, poisson: bool) -> Vec<u64> {
    let n = (rps * secs).round() as usize;
    let period = 1e9 / rps;
    if !poisson {
        return (0..n).map(|i| (i as f64 * period) as u64).collect();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut t = 0.0f64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            t += -u.ln() * period;
            t as u64
        })
        .collect()
}

/// Where a complete HTTP/1.1 answer ends in `buf`, with its status and whether the server
/// closes the connection; `None` while more bytes are needed. Handles what echo_upstream, the
/// gateway and nginx send: `Content-Length` or `Transfer-Encoding: chunked`.
fn parse_answer(buf: &[u8]) -> Result<Option<(usize, u16, bool)>, &'static str> {
    let Some(head_end) = find(buf, b"\r\n\r\n", 0) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body = head_end + 4;
    if chunked {
        let mut pos = body;
        loop {
            let Some(line_end) = find(buf, b"\r\n", pos) else {
                return Ok(None);
            };
            let size_hex = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| "bad chunk")?;
            let size_hex = size_hex.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
            if size == 0 {
                // The last chunk, then trailers (none expected) up to a blank line.
                return Ok(find(buf, b"\r\n\r\n", line_end).map(|e| (e + 4, status, close)));
            }
            pos = line_end + 2 + size + 2;
            if pos > buf.len() {
                return Ok(None);
            }
        }
    }
    match length {
        Some(n) => Ok((buf.len() >= body + n).then_some((body + n, status, close))),
        None if status == 204 || status == 304 => Ok(Some((body, status, close))),
        None => Err("answer without length"),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// One keep-alive HTTP/1.1 connection, blocking, with TCP_NODELAY.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Read scratch, allocated once (not zeroed per request).
    scratch: Vec<u8>,
}

impl Conn {
    fn open(host: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            scratch: vec![0; 16 * 1024],
        })
    }

    /// Writes `req`, reads one whole answer; returns its status and whether to reconnect.
    fn round_trip(&mut self, req: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(req)?;
        loop {
            match parse_answer(&self.buf) {
                Ok(Some((end, status, close))) => {
                    self.buf.drain(..end);
                    return Ok((status, close));
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
            let n = self.stream.read(&mut self.scratch)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }
}

/// What one connection's thread measured.
#[derive(Default)]
struct Tally {
    lat_us: Vec<u64>,
    ok: u64,
    errors: u64,
    late_client: u64,
    late_backlog: u64,
    last_done: Option<Instant>,
}

/// The process's CPU time so far (user + system, all threads), from /proc/self/stat in USER_HZ
/// ticks (100 per second on Linux); `None` off Linux.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The open loop. Design, and why:
///
/// - `conns` keep-alive connections are opened up front, each driven by its own OS thread with
///   blocking I/O, and the request bytes are built once. Threads, not a tokio runtime, because
///   tokio's timer ticks in whole milliseconds: at ~10k req/s it would release ~10 requests per
///   tick in a burst and add up to 1 ms to every latency. `std::thread::sleep` (nanosleep) wakes
///   within the kernel's timer slack (~50 us). A request costs the client one wake-up, one
///   `write` and one or two `read`s, no task hops and no allocation.
/// - Slots come from one shared counter: a connection that is free takes the next slot, sleeps
///   until it is due, sends, reads the whole answer and records `done - due`. When every
///   connection is busy at a slot's due time, the next one to come free takes the overdue slot at
///   once, and the wait is in its latency (that is the point of the method).
/// - Health: a send more than 1 ms after its due time is `late_backlog` when no connection was
///   free at the due time (the system under test held them all: legitimately part of the
///   latency) and `late_client` when a connection had taken the slot in time but its thread ran
///   late (the client was starved of CPU, or the VM stalled it). The result is flagged
///   `valid=no` when such sends exceed 0.5% of the slots, or on any error: with at most 0.5% of
///   the samples inflated by the client, the measured p99 lies between the true p99 and the true
///   p99.5. (`jitter` shows that an idle thread on this VM already wakes >1 ms late ~0.1-0.2% of
///   the time, so a stricter bound could never pass here.)
/// - Slots due in the first `warmup` seconds are sent but not recorded.
fn open_loop(o: &RateOpts) {
    let total_secs = o.warmup + o.secs;
    let due_ns = Arc::new(schedule(o.rps, total_secs, o.poisson));
    let warm_ns = (o.warmup * 1e9) as u64;
    let body = body_1k();
    // Each request carries its slot as `X-Bench-Id` (for `wire-http`), written over a fixed-width
    // field of the request's bytes, so a send costs no formatting.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n{}",
        o.path,
        o.host,
        wire_http::ID_HEADER
    );
    let id_at = head.len()..head.len() + ID_DIGITS;
    let mut req = format!(
        "{head}{:0w$}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        0,
        body.len(),
        w = ID_DIGITS
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let first_measured_id = due_ns.partition_point(|&ns| ns < warm_ns);
    let mut conns = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        match Conn::open(&o.host) {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("bench_client: connect {}: {e}", o.host);
                std::process::exit(1);
            }
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let per_conn = 2 * due_ns.len() / o.conns + 16;
    let cpu0 = cpu_secs();
    // A little ahead, so that every thread is parked in its first sleep before slot 0 is due.
    let start = Instant::now() + Duration::from_millis(20);
    let measured_from = start + Duration::from_nanos(warm_ns);
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (due_ns, next, host, id_at) =
                (due_ns.clone(), next.clone(), o.host.clone(), id_at.clone());
            let mut req = req.clone();
            std::thread::spawn(move || {
                let mut t = Tally {
                    lat_us: Vec::with_capacity(per_conn),
                    ..Tally::default()
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&ns) = due_ns.get(i) else { break };
                    let due = start + Duration::from_nanos(ns);
                    write_id(&mut req[id_at.clone()], i);
                    let taken = Instant::now();
                    if taken < due {
                        std::thread::sleep(due - taken);
                    }
                    let sent = Instant::now();
                    let result = conn.round_trip(&req);
                    let done = Instant::now();
                    if ns < warm_ns {
                        if !matches!(result, Ok((_, false))) {
                            conn = reconnect(&host, conn);
                        }
                        continue;
                    }
                    if sent.saturating_duration_since(due) > LATE {
                        if taken > due {
                            t.late_backlog += 1;
                        } else {
                            t.late_client += 1;
                        }
                    }
                    match result {
                        Ok((status, close)) => {
                            if (200..300).contains(&status) {
                                t.ok += 1;
                                t.lat_us.push(done.duration_since(due).as_micros() as u64);
                            } else {
                                t.errors += 1;
                            }
                            if close {
                                conn = reconnect(&host, conn);
                            }
                        }
                        Err(_) => {
                            t.errors += 1;
                            conn = reconnect(&host, conn);
                        }
                    }
                    t.last_done = Some(done);
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for th in threads {
        let Ok(t) = th.join() else {
            eprintln!("bench_client: a connection thread panicked");
            std::process::exit(1);
        };
        all.lat_us.extend(t.lat_us);
        all.ok += t.ok;
        all.errors += t.errors;
        all.late_client += t.late_client;
        all.late_backlog += t.late_backlog;
        all.last_done = all.last_done.max(t.last_done);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu_pct = match (cpu0, cpu_secs()) {
        (Some(a), Some(b)) => format!("{:.0}", 100.0 * (b - a) / wall),
        _ => "na".into(),
    };
    let sent = all.ok + all.errors;
    let window = all.last_done.map_or(0.0, |d| {
        d.saturating_duration_since(measured_from).as_secs_f64()
    });
    let achieved = if window > 0.0 {
        sent as f64 / window
    } else {
        0.0
    };
    let valid = all.late_client * 200 <= sent && all.errors == 0;
    let v = sorted(all.lat_us);
    println!(
        "rate={:.0} achieved={achieved:.0} sent={sent} ok={} errors={} p50_us={} p90_us={} \
         p99_us={} p999_us={} max_us={} late_client={} late_backlog={} client_cpu_pct={cpu_pct} \
         first_measured_id={first_measured_id} valid={}",
        o.rps,
        all.ok,
        all.errors,
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        pct(&v, 0.999),
        pct(&v, 1.0),
        all.late_client,
        all.late_backlog,
        if valid { "yes" } else { "no" }
    );
}

/// Digits of the `X-Bench-Id` field: enough for any schedule (10^10 slots).
const ID_DIGITS: usize = 10;

/// Writes `id` into `field` as zero-padded decimal digits.
fn write_id(field: &mut [u8], mut id: usize) {
    for b in field.iter_mut().rev() {
        *b = b'0' + (id % 10) as u8;
        id /= 10;
    }
}

/// The `jitter` mode: wake-up lateness of a thread pacing itself like an idle `rate` thread.
fn jitter(secs: f64, period_us: u64) {
    let period = Duration::from_micros(period_us.max(1));
    let n = (secs * 1e6 / period_us.max(1) as f64) as u32;
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let due = start + period * i;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        lat.push(due.elapsed().as_micros() as u64);
    }
    let late = lat.iter().filter(|&&l| l > LATE.as_micros() as u64).count();
    let v = sorted(lat);
    println!(
        "wakes={} p50_us={} p99_us={} p999_us={} max_us={} late={late} late_pct={:.3}",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        pct(&v, 0.999),
        pct(&v, 1.0),
        100.0 * late as f64 / v.len().max(1) as f64
    );
}

/// A fresh connection after an error or a `Connection: close`; retries for a few seconds.
fn reconnect(host: &str, old: Conn) -> Conn {
    drop(old);
    for _ in 0..50 {
        if let Ok(c) = Conn::open(host) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench_client: cannot reconnect to {host}");
    std::process::exit(1);
}

/// `rate URL RPS SECONDS [--conns N] [--warmup S] [--poisson]`; `None` on bad arguments.
fn rate_opts(args: &[String]) -> Option<RateOpts> {
    let rest = args.get(2)?.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let mut o = RateOpts {
        host,
        path,
        rps: args.get(3)?.parse().ok()?,
        secs: args.get(4)?.parse().ok()?,
        conns: 64,
        warmup: 1.0,
        poisson: false,
    };
    let mut i = 5;
    while i < args.len() {
        match args[i].as_str() {
            "--conns" => o.conns = args.get(i + 1)?.parse().ok()?,
            "--warmup" => o.warmup = args.get(i + 1)?.parse().ok()?,
            "--poisson" => {
                o.poisson = true;
                i -= 1;
            }
            _ => return None,
        }
        i += 2;
    }
    (o.rps > 0.0 && o.secs > 0.0 && o.conns > 0 && o.warmup >= 0.0).then_some(o)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// How the `sse` mode starts its streams.
#[derive(Clone, Copy, PartialEq)]
enum SseStart {
    /// Stream `i` starts `i * interval / streams` after the first: the streams' events are spread
    /// evenly over each interval, as for streams that began at different moments (the steady
    /// state of a pool serving that many). The delay then is what the path adds to one event.
    Staggered,
    /// Every stream starts at once, so the streams' events come in bursts of `streams` events
    /// every interval: the delay of a burst's last event is the time to drain the burst.
    Burst,
}

/// One event of a stream, as `echo_upstream` sends it.
#[derive(Debug, PartialEq)]
enum SseEvent {
    /// `data: {"t":NS}`: sent at NS nanoseconds since the Unix epoch.
    Sent(u64),
    /// `data: [DONE]`.
    Done,
}

/// What starts the JSON of an `echo_upstream` event, `{"t":NS}` (`wire` finds it in packets).
const SENT_AT: &[u8] = b"{\"t\":";

/// The send time in `rest` (the bytes after [`SENT_AT`]) up to its closing `}`, and the bytes
/// after that.
fn sent_time(rest: &[u8]) -> Option<(u64, &[u8])> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let after = rest[digits..].strip_prefix(b"}")?;
    let t = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((t, after))
}

/// Takes the complete events (`...\n\n`) off the front of `carry`, leaving a partial one. Works
/// on bytes, with no allocation per event: the client's own CPU per event is part of what the
/// machine spends, so it is kept small.
fn take_events(carry: &mut Vec<u8>, mut each: impl FnMut(SseEvent)) {
    let mut at = 0;
    while let Some(end) = carry[at..].windows(2).position(|w| w == b"\n\n") {
        let event = carry[at..at + end].trim_ascii();
        at += end + 2;
        if let Some((t, b"")) = event
            .strip_prefix(b"data: ")
            .and_then(|r| r.strip_prefix(SENT_AT))
            .and_then(sent_time)
        {
            each(SseEvent::Sent(t));
        } else if event == b"data: [DONE]" {
            each(SseEvent::Done);
        }
    }
    carry.drain(..at);
}

/// What one stream saw; times in ns since the Unix epoch.
struct StreamSeen {
    /// (send time, delay in us) of each event.
    events: Vec<(u64, u64)>,
    /// When the answer's head arrived.
    head: u64,
    /// When `[DONE]` arrived (0: never).
    done: u64,
}

/// One stream on its own HTTP/1.1 connection (hyper's bare `client::conn`, no pool: each stream
/// opens one connection, as a chat client does). `None` if it could not open or was refused.
async fn sse_stream(addr: &str, path: &str, chunks: u64, interval_ms: u64) -> Option<StreamSeen> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .header("x-chunks", chunks.to_string())
        .header("x-interval-ms", interval_ms.to_string())
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let head = now_nanos() as u64;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.into_body();
    let mut events = Vec::with_capacity(chunks as usize);
    let mut carry = Vec::with_capacity(256);
    let mut done = 0;
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = now_nanos() as u64;
        carry.extend_from_slice(data);
        take_events(&mut carry, |e| match e {
            SseEvent::Sent(t) => events.push((t, now.saturating_sub(t) / 1000)),
            SseEvent::Done => done = now,
        });
    }
    Some(StreamSeen { events, head, done })
}

async fn sse(url: String, streams: usize, chunks: u64, interval_ms: u64, start: SseStart) {
    let uri: hyper::Uri = url.parse().expect("URL");
    let addr = uri.authority().expect("URL with host:port").to_string();
    let path = uri.path().to_string();
    let started = now_nanos();
    let t0 = tokio::time::Instant::now();
    let gap = Duration::from_millis(interval_ms) / streams.max(1) as u32;
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let (addr, path) = (addr.clone(), path.clone());
            let due = match start {
                SseStart::Staggered => t0 + gap * i as u32,
                SseStart::Burst => t0,
            };
            tokio::spawn(async move {
                tokio::time::sleep_until(due).await;
                sse_stream(&addr, &path, chunks, interval_ms).await
            })
        })
        .collect();
    let mut events = Vec::with_capacity(streams * chunks as usize);
    // From the last stream's answer head to the first stream's end (ns since the epoch).
    let (mut opened, mut complete, mut from, mut to) = (0, 0, 0, u64::MAX);
    for t in tasks {
        let Ok(Some(seen)) = t.await else {
            continue;
        };
        opened += 1;
        from = from.max(seen.head);
        if seen.done > 0 {
            complete += 1;
            to = to.min(seen.done);
        }
        events.extend(seen.events);
    }
    // The ramp ends when the last stream has opened; the window in which all streams are open at
    // once follows it (empty unless every stream opened and one ended after that).
    let ramp_ms = if opened == streams {
        (from as u128).saturating_sub(started) / 1_000_000
    } else {
        0
    };
    let (from, to) = if opened == streams && from < to {
        (from, to)
    } else {
        (0, 0)
    };
    let window = sorted(
        events
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, d)| *d)
            .collect(),
    );
    let all = sorted(events.iter().map(|(_, d)| *d).collect());
    println!(
        "streams={streams} complete={} chunks={} p50_us={} p99_us={} max_us={} all_chunks={} \
         all_p50_us={} all_p99_us={} all_max_us={} ramp_ms={ramp_ms} window_from_ns={} \
         window_to_ns={}",
        complete,
        window.len(),
        pct(&window, 0.5),
        pct(&window, 0.99),
        pct(&window, 1.0),
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        from,
        to,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_client rate URL RPS SECONDS [--conns N] [--warmup SECONDS] \
                 [--poisson] | jitter SECONDS [PERIOD_US] | sse URL STREAMS CHUNKS INTERVAL_MS [--burst] \
                 | wire PROXY_PORT UPSTREAM_PORT FROM_NS TO_NS | wire-http PROXY_PORT UPSTREAM_PORT FROM_ID";
    let arg = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
    let port = |i: usize| args.get(i).and_then(|a| a.parse::<u16>().ok());
    let int = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match args.get(1).map(String::as_str) {
        Some("jitter") => match (arg(2), args.get(3).map_or(Some(100.0), |_| arg(3))) {
            (Some(secs), Some(period)) if secs > 0.0 && period >= 1.0 => {
                jitter(secs, period as u64)
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        Some("rate") => match rate_opts(&args) {
            Some(o) => open_loop(&o),
            None => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        Some("sse") => {
            let num = |i: usize| -> u64 {
                args.get(i)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("{usage}"))
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let start = if args.iter().any(|a| a == "--burst") {
                SseStart::Burst
            } else {
                SseStart::Staggered
            };
            rt.block_on(sse(args[2].clone(), num(3) as usize, num(4), num(5), start));
        }
        Some("wire") => match (port(2), port(3), int(4), int(5)) {
            (Some(proxy), Some(up), Some(from), Some(to)) => wire::run(proxy, up, from, to),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        Some("wire-http") => match (port(2), port(3), int(4)) {
            (Some(proxy), Some(up), Some(from_id)) => wire_http::run(proxy, up, from_id),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test -p infergate-gateway --example bench_client`
    use super::*;

    #[test]
    fn events_are_taken_whole_and_a_partial_one_waits() {
        let mut carry = b"data: {\"t\":12}\n\ndata: {\"t\":3".to_vec();
        let mut got = Vec::new();
        take_events(&mut carry, |e| got.push(e));
        assert_eq!(got, [SseEvent::Sent(12)]);
        assert_eq!(carry, b"data: {\"t\":3");
        carry.extend_from_slice(b"4}\n\ndata: [DONE]\n\n: comment\n\n");
        take_events(&mut carry, |e| got.push(e));
        assert_eq!(
            got,
            [SseEvent::Sent(12), SseEvent::Sent(34), SseEvent::Done]
        );
        assert!(carry.is_empty());
    }

    #[test]
    fn content_length_answer_ends_after_its_body() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        assert_eq!(parse_answer(a), Ok(Some((43, 200, false))));
        assert_eq!(parse_answer(&a[..41]), Ok(None));
    }

    #[test]
    fn chunked_answer_ends_after_the_last_chunk_even_when_split() {
        let a = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        assert_eq!(parse_answer(a), Ok(Some((a.len(), 503, true))));
        for cut in 0..a.len() {
            assert_eq!(parse_answer(&a[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn chunked_answer_with_trailers_ends_at_the_blank_line() {
        let a =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(parse_answer(a), Ok(Some((a.len(), 200, false))));
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(parse_answer(b"nonsense\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn ids_are_written_zero_padded_over_their_field() {
        let mut req = b"X-Bench-Id: 0000000000\r\n".to_vec();
        write_id(&mut req[12..22], 4711);
        assert_eq!(req, b"X-Bench-Id: 0000004711\r\n");
        write_id(&mut req[12..22], 0);
        assert_eq!(req, b"X-Bench-Id: 0000000000\r\n");
    }

    #[test]
    fn schedules_have_the_asked_count_and_rate() {
        let even = schedule(1000.0, 2.0, false);
        assert_eq!(even.len(), 2000);
        assert_eq!(even[1] - even[0], 1_000_000);
        let poisson = schedule(1000.0, 2.0, true);
        assert_eq!(poisson.len(), 2000);
        assert!(poisson.windows(2).all(|w| w[0] <= w[1]));
        let span = *poisson.last().unwrap_or(&0) as f64 / 1e9;
        assert!((1.8..2.2).contains(&span), "span {span}");
    }
}
