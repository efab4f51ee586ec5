//! What a run measured: latency histograms, counts by status, throughput, goodput and late starts.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits, up to an hour), so
//! percentiles are exact to 0.1% whatever the run's length, in constant memory.
//!
//! Goodput is the share of *all* requests of the run (failed ones included, `client-overload` too)
//! that completed and met every SLO given:
//! - `--slo-ttft`: the request's time to first token;
//! - `--slo-itl`: the request's **mean** inter-token latency, i.e. its time per output token after
//!   the first (`(last token - first token) / (output tokens - 1)`, vLLM's TPOT). We judge the mean
//!   rather than the request's p99 gap because that is how DistServe and vLLM's `--goodput tpot:`
//!   define the decode SLO, so figures compare with theirs; a single stall is still visible in the
//!   run-wide ITL p99 below. A request with one output token has no gaps and meets it trivially.
//!
//! With no SLO given, goodput is simply the completed share.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::client::{Exchange, Outcome};

/// Service-level objectives a request must meet to count as good.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Slo {
    /// Bound on time to first token.
    pub ttft: Option<Duration>,
    /// Bound on the request's mean inter-token latency (TPOT).
    pub itl: Option<Duration>,
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// Goodput and the SLOs it was judged against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloReport {
    /// The TTFT SLO in ms, if any.
    pub ttft_ms: Option<f64>,
    /// The ITL SLO in ms, if any.
    pub itl_ms: Option<f64>,
    /// How the ITL SLO is judged: always `"mean"` (per-request mean inter-token latency, TPOT).
    pub itl_rule: String,
    /// Requests that completed within every SLO.
    pub good: u64,
    /// `good / requests`, in [0, 1].
    pub goodput: f64,
}

/// The result of one `loadtest run`: what the table shows and `--json` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Full URL the requests went to.
    pub target: String,
    /// The model asked for.
    pub model: String,
    /// The workload spec.
    pub workload: String,
    /// The arrival process (`trace` for a replay).
    pub arrival: String,
    /// New sessions per second asked for (None: a trace at its own pace).
    pub rate: Option<f64>,
    /// The seed.
    pub seed: u64,
    /// Sessions scheduled (one per arrival).
    pub sessions: u64,
    /// Requests attempted, `client-overload` included.
    pub requests: u64,
    /// Requests that completed (status 200 and, when streaming, a whole stream).
    pub completed: u64,
    /// Requests that did not.
    pub failed: u64,
    /// Every request by outcome: `200`, another status code, or `timeout`, `connect-error`,
    /// `transport-error`, `stream-error`, `stream-truncated`, `client-overload`, `cancelled`.
    pub statuses: BTreeMap<String, u64>,
    /// Later turns of sessions never sent because an earlier turn failed.
    pub skipped_turns: u64,
    /// Prompt tokens of completed requests (the server's count, else the planned one).
    pub input_tokens: u64,
    /// Output tokens of completed requests.
    pub output_tokens: u64,
    /// Wall time from the first scheduled instant to the last response, in seconds.
    pub wall_s: f64,
    /// Completed requests per second of wall time.
    pub request_throughput: f64,
    /// Output tokens per second of wall time.
    pub output_tokens_per_s: f64,
    /// Arrivals per second actually started, over the schedule's span.
    pub achieved_rate: f64,
    /// Time to first token of completed requests.
    pub ttft_ms: Option<Summary>,
    /// Gaps between successive token chunks, over all completed streams.
    pub itl_ms: Option<Summary>,
    /// Per-request mean inter-token latency (time per output token).
    pub tpot_ms: Option<Summary>,
    /// End-to-end latency of completed requests.
    pub e2e_ms: Option<Summary>,
    /// How late each arrival started against its scheduled instant (the generator's own lag).
    pub late_start_ms: Option<Summary>,
    /// Goodput.
    pub slo: SloReport,
    /// Every request on the run's clock, for plots ([`super::plot`]); not written to JSON. Long runs
    /// keep an evenly thinned sample of at most [`TIMELINE_CAP`] points.
    #[serde(skip)]
    pub timeline: Vec<TimelinePoint>,
}

/// Most points a report's timeline keeps.
pub const TIMELINE_CAP: usize = 100_000;

/// One request on the run's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelinePoint {
    /// When it was sent (or refused), in seconds from the start of the run.
    pub sent_s: f64,
    /// Its time to first token, if it got one.
    pub ttft_ms: Option<f64>,
    /// Whether it completed.
    pub ok: bool,
}

/// A bounded, evenly thinned record of points: when full, every other point is dropped and only
/// every `stride`-th later point is kept, so memory stays flat however long the run.
struct Timeline {
    points: Vec<TimelinePoint>,
    stride: u64,
    seen: u64,
}

impl Timeline {
    fn push(&mut self, p: TimelinePoint) {
        self.seen += 1;
        if !(self.seen - 1).is_multiple_of(self.stride) {
            return;
        }
        if self.points.len() >= TIMELINE_CAP {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
            if !(self.seen - 1).is_multiple_of(self.stride) {
                return;
            }
        }
        self.points.push(p);
    }
}

impl RunReport {
    /// The report as pretty-printed JSON (what `--json FILE` writes).
    pub fn to_json(&self) -> String {
        // Plain data of strings, numbers and maps: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Run facts the recorder does not see.
#[derive(Debug, Clone)]
pub struct RunMeta {
    /// See [`RunReport::target`].
    pub target: String,
    /// See [`RunReport::model`].
    pub model: String,
    /// See [`RunReport::workload`].
    pub workload: String,
    /// See [`RunReport::arrival`].
    pub arrival: String,
    /// See [`RunReport::rate`].
    pub rate: Option<f64>,
    /// See [`RunReport::seed`].
    pub seed: u64,
    /// See [`RunReport::sessions`].
    pub sessions: u64,
    /// Wall time of the run.
    pub wall: Duration,
    /// Span of the actual starts (first to last arrival).
    pub start_span: Duration,
}

/// Folds request results into histograms as they come.
pub struct Recorder {
    slo: Slo,
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    tpot: Histogram<u64>,
    e2e: Histogram<u64>,
    lag: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    requests: u64,
    completed: u64,
    good: u64,
    skipped_turns: u64,
    input_tokens: u64,
    output_tokens: u64,
    timeline: Timeline,
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 us to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    /// An empty recorder judging goodput against `slo`.
    pub fn new(slo: Slo) -> Self {
        Self {
            slo,
            ttft: histogram(),
            itl: histogram(),
            tpot: histogram(),
            e2e: histogram(),
            lag: histogram(),
            statuses: BTreeMap::new(),
            requests: 0,
            completed: 0,
            good: 0,
            skipped_turns: 0,
            input_tokens: 0,
            output_tokens: 0,
            timeline: Timeline {
                points: Vec::new(),
                stride: 1,
                seen: 0,
            },
        }
    }

    /// Records how late an arrival started.
    pub fn record_lag(&mut self, lag: Duration) {
        self.lag.saturating_record(micros(lag));
    }

    /// Records turns of a session abandoned after a failure.
    pub fn record_skipped(&mut self, turns: u64) {
        self.skipped_turns += turns;
    }

    /// Records a request that was never sent (in-flight cap reached) at `at` into the run.
    pub fn record_overload(&mut self, at: Duration) {
        self.timeline.push(TimelinePoint {
            sent_s: at.as_secs_f64(),
            ttft_ms: None,
            ok: false,
        });
        self.requests += 1;
        *self
            .statuses
            .entry(Outcome::ClientOverload.label())
            .or_default() += 1;
    }

    /// Records a finished request sent at `sent` into the run; `planned_input` is the prompt length
    /// the plan asked for.
    pub fn record(&mut self, ex: &Exchange, planned_input: u64, sent: Duration) {
        self.timeline.push(TimelinePoint {
            sent_s: sent.as_secs_f64(),
            ttft_ms: ex.ttft.map(|t| t.as_secs_f64() * 1e3),
            ok: ex.outcome == Outcome::Ok,
        });
        self.requests += 1;
        *self.statuses.entry(ex.outcome.label()).or_default() += 1;
        if ex.outcome != Outcome::Ok {
            return;
        }
        self.completed += 1;
        self.e2e.saturating_record(micros(ex.e2e));
        if let Some(t) = ex.ttft {
            self.ttft.saturating_record(micros(t));
        }
        for w in ex.token_times.windows(2) {
            self.itl
                .saturating_record(micros(w[1].saturating_sub(w[0])));
        }
        let out = ex.output_tokens();
        let tpot = mean_itl(ex);
        if let Some(t) = tpot {
            self.tpot.saturating_record(micros(t));
        }
        self.output_tokens += out;
        self.input_tokens += ex.usage.map_or(planned_input, |u| u.prompt_tokens);
        let ttft_ok = match (self.slo.ttft, ex.ttft) {
            (None, _) => true,
            (Some(slo), Some(t)) => t <= slo,
            (Some(_), None) => false,
        };
        let itl_ok = match (self.slo.itl, tpot) {
            (Some(slo), Some(t)) => t <= slo,
            _ => true,
        };
        if ttft_ok && itl_ok {
            self.good += 1;
        }
    }

    /// Requests recorded so far (completed, failed and overloaded).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Completed requests so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The report.
    pub fn finish(self, meta: RunMeta) -> RunReport {
        let wall = meta.wall.as_secs_f64();
        let per_s = |n: u64| if wall > 0.0 { n as f64 / wall } else { 0.0 };
        let span = meta.start_span.as_secs_f64();
        let starts = self.lag.len();
        RunReport {
            target: meta.target,
            model: meta.model,
            workload: meta.workload,
            arrival: meta.arrival,
            rate: meta.rate,
            seed: meta.seed,
            sessions: meta.sessions,
            requests: self.requests,
            completed: self.completed,
            failed: self.requests - self.completed,
            statuses: self.statuses,
            skipped_turns: self.skipped_turns,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            wall_s: wall,
            request_throughput: per_s(self.completed),
            output_tokens_per_s: per_s(self.output_tokens),
            achieved_rate: if span > 0.0 && starts > 1 {
                (starts - 1) as f64 / span
            } else {
                0.0
            },
            ttft_ms: summarize(&self.ttft),
            itl_ms: summarize(&self.itl),
            tpot_ms: summarize(&self.tpot),
            e2e_ms: summarize(&self.e2e),
            late_start_ms: summarize(&self.lag),
            slo: SloReport {
                ttft_ms: self.slo.ttft.map(|d| d.as_secs_f64() * 1e3),
                itl_ms: self.slo.itl.map(|d| d.as_secs_f64() * 1e3),
                itl_rule: "mean".into(),
                good: self.good,
                goodput: if self.requests > 0 {
                    self.good as f64 / self.requests as f64
                } else {
                    0.0
                },
            },
            timeline: self.timeline.points,
        }
    }
}

/// A request's mean inter-token latency: time per output token after the first.
fn mean_itl(ex: &Exchange) -> Option<Duration> {
    let (first, last) = (ex.token_times.first()?, ex.token_times.last()?);
    let tokens = ex.output_tokens().max(ex.token_times.len() as u64);
    if tokens < 2 || ex.token_times.len() < 2 {
        return None;
    }
    let n = u32::try_from(tokens - 1).unwrap_or(u32::MAX);
    Some((*last - *first) / n)
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn summarize(h: &Histogram<u64>) -> Option<Summary> {
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1e3;
    Some(Summary {
        count: h.len(),
        mean: h.mean() / 1e3,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    })
}

impl fmt::Display for RunReport {
    /// The aligned table `loadtest run` prints on stdout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self
            .rate
            .map_or_else(|| "trace pace".into(), |r| format!("{r} sessions/s"));
        writeln!(f, "target      {} (model {})", self.target, self.model)?;
        writeln!(
            f,
            "workload    {}, {} at {}, seed {}",
            self.workload, self.arrival, rate, self.seed
        )?;
        writeln!(
            f,
            "requests    {} in {} sessions: {} completed, {} failed{}",
            self.requests,
            self.sessions,
            self.completed,
            self.failed,
            if self.skipped_turns > 0 {
                format!(", {} later turns skipped", self.skipped_turns)
            } else {
                String::new()
            }
        )?;
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(f, "statuses    {}", statuses.join(", "))?;
        writeln!(
            f,
            "throughput  {:.2} req/s, {:.1} output tokens/s over {:.2} s (arrivals started at {:.2}/s)",
            self.request_throughput, self.output_tokens_per_s, self.wall_s, self.achieved_rate
        )?;
        writeln!(
            f,
            "tokens      {} in, {} out",
            self.input_tokens, self.output_tokens
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<12}{:>9}{:>11}{:>11}{:>11}{:>11}{:>11}",
            "latency ms", "count", "mean", "p50", "p90", "p99", "max"
        )?;
        for (name, s) in [
            ("ttft", &self.ttft_ms),
            ("itl", &self.itl_ms),
            ("tpot", &self.tpot_ms),
            ("e2e", &self.e2e_ms),
            ("late start", &self.late_start_ms),
        ] {
            match s {
                Some(s) => writeln!(
                    f,
                    "{name:<12}{:>9}{:>11.2}{:>11.2}{:>11.2}{:>11.2}{:>11.2}",
                    s.count, s.mean, s.p50, s.p90, s.p99, s.max
                )?,
                None => writeln!(f, "{name:<12}{:>9}{:>11}", 0, "-")?,
            }
        }
        writeln!(f)?;
        let mut rules = Vec::new();
        if let Some(t) = self.slo.ttft_ms {
            rules.push(format!("ttft <= {t} ms"));
        }
        if let Some(t) = self.slo.itl_ms {
            rules.push(format!("mean itl <= {t} ms"));
        }
        let rules = if rules.is_empty() {
            "no SLO given: completed share".to_string()
        } else {
            rules.join(", ")
        };
        writeln!(
            f,
            "goodput     {:.4} ({} of {} requests; {})",
            self.slo.goodput, self.slo.good, self.requests, rules
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sse::Usage;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(ttft: u64, gaps: &[u64]) -> Exchange {
        let mut times = vec![ms(ttft)];
        for g in gaps {
            let last = *times.last().unwrap_or(&Duration::ZERO);
            times.push(last + ms(*g));
        }
        Exchange {
            outcome: Outcome::Ok,
            ttft: Some(ms(ttft)),
            e2e: *times.last().unwrap_or(&Duration::ZERO) + ms(1),
            usage: Some(Usage {
                prompt_tokens: 10,
                completion_tokens: times.len() as u64,
            }),
            token_times: times,
            text: None,
            error: None,
        }
    }

    fn meta() -> RunMeta {
        RunMeta {
            target: "t".into(),
            model: "m".into(),
            workload: "fixed:1:1".into(),
            arrival: "poisson".into(),
            rate: Some(1.0),
            seed: 0,
            sessions: 0,
            wall: Duration::from_secs(10),
            start_span: Duration::from_secs(9),
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::new(Slo::default());
        for t in 1..=100 {
            r.record(&ok(t, &[]), 5, ms(t));
        }
        let rep = r.finish(meta());
        let s = rep.ttft_ms.unwrap();
        assert_eq!(s.count, 100);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(s.p50, 50.0), "{s:?}");
        assert!(close(s.p90, 90.0), "{s:?}");
        assert!(close(s.p99, 99.0), "{s:?}");
        assert!(close(s.max, 100.0), "{s:?}");
        assert!(close(s.mean, 50.5), "{s:?}");
        assert_eq!(rep.itl_ms, None, "single-token answers have no gaps");
        assert_eq!(rep.completed, 100);
        assert_eq!(rep.input_tokens, 1000, "the server's prompt count wins");
        assert_eq!(rep.output_tokens, 100);
        assert!((rep.output_tokens_per_s - 10.0).abs() < 1e-9);
        assert_eq!(rep.slo.goodput, 1.0);
    }

    #[test]
    fn counts_by_status_and_goodput_against_slos() {
        let slo = Slo {
            ttft: Some(ms(100)),
            itl: Some(ms(20)),
        };
        let mut r = Recorder::new(slo);
        r.record(&ok(50, &[10, 10, 10]), 5, ms(0)); // good
        r.record(&ok(150, &[10]), 5, ms(0)); // TTFT too slow
        r.record(&ok(50, &[5, 60]), 5, ms(0)); // mean ITL 32.5 ms: too slow
        r.record(&ok(50, &[1, 1, 100]), 5, ms(0)); // mean 34 ms: too slow despite small gaps
        r.record(&ok(99, &[]), 5, ms(0)); // one token: ITL trivially met
        let mut failed = ok(10, &[]);
        failed.outcome = Outcome::Http(503);
        r.record(&failed, 5, ms(0));
        failed.outcome = Outcome::Timeout;
        r.record(&failed, 5, ms(0));
        r.record_overload(ms(0));
        r.record_lag(ms(2));
        r.record_lag(ms(4));
        let rep = r.finish(meta());
        assert_eq!(rep.requests, 8);
        assert_eq!(rep.completed, 5);
        assert_eq!(rep.failed, 3);
        let want: BTreeMap<String, u64> = [
            ("200", 5),
            ("503", 1),
            ("timeout", 1),
            ("client-overload", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(rep.statuses, want);
        assert_eq!(rep.slo.good, 2);
        assert!((rep.slo.goodput - 2.0 / 8.0).abs() < 1e-12);
        let itl = rep.itl_ms.unwrap();
        assert_eq!(itl.count, 3 + 1 + 2 + 3);
        assert!((itl.max - 100.0).abs() < 0.1);
        let lag = rep.late_start_ms.unwrap();
        assert_eq!(lag.count, 2);
        assert!((rep.achieved_rate - 1.0 / 9.0).abs() < 1e-9);
        let table = rep.to_string();
        assert!(
            table.contains(
                "goodput     0.2500 (2 of 8 requests; ttft <= 100 ms, mean itl <= 20 ms)"
            ),
            "{table}"
        );
        assert!(table.contains("client-overload: 1"), "{table}");
        let json = serde_json::to_string(&rep).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.timeline, vec![], "the timeline stays out of the JSON");
        assert_eq!(rep.timeline.len(), 8);
        assert_eq!(
            RunReport {
                timeline: Vec::new(),
                ..rep
            },
            back
        );
    }

    #[test]
    fn the_timeline_stays_bounded_and_evenly_thinned() {
        let mut r = Recorder::new(Slo::default());
        let n = TIMELINE_CAP * 3 + 7;
        for i in 0..n {
            r.record(&ok(1, &[]), 1, Duration::from_millis(i as u64));
        }
        let rep = r.finish(meta());
        let t = &rep.timeline;
        assert!(
            t.len() <= TIMELINE_CAP && t.len() >= TIMELINE_CAP / 2,
            "{}",
            t.len()
        );
        assert_eq!(t[0].sent_s, 0.0);
        let step = t[1].sent_s - t[0].sent_s;
        assert!(
            t.windows(2)
                .all(|w| ((w[1].sent_s - w[0].sent_s) - step).abs() < 1e-9)
        );
        assert!(
            t.last().unwrap().sent_s > (n as f64 / 1000.0) * 0.99,
            "spans the whole run"
        );
    }
}
