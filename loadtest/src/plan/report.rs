//! What one planner run measured: per-request latencies folded into histograms and SLO counts,
//! a per-minute time series, scale events and pod-time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::generate::report::{Summary, summarize};

/// One replica change the actuator applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// Virtual time, seconds from the start.
    pub t_s: f64,
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// The policy's reason label.
    pub reason: String,
    /// `stable` or `panic`.
    pub mode: String,
}

/// One minute of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Minute start, seconds from the start.
    pub t_s: f64,
    /// Replicas asked for at the minute's end.
    pub wanted: u32,
    /// Ready pods at the minute's end.
    pub ready: u32,
    /// Starting pods at the minute's end.
    pub starting: u32,
    /// Draining pods at the minute's end.
    pub draining: u32,
    /// Requests held by the gateway at the minute's end.
    pub held: u32,
    /// Requests waiting in the engines at the minute's end.
    pub engine_waiting: u32,
    /// Requests that arrived during the minute.
    pub arrivals: u32,
    /// p90 TTFT of the first tokens seen during the minute, ms (None: no first token).
    pub ttft_p90_ms: Option<f64>,
    /// Share of the minute's first tokens inside the TTFT SLO.
    pub ttft_ok_share: Option<f64>,
}

/// The summary of one run: what the comparison table and `--json` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The setting's name.
    pub name: String,
    /// `autoscaled` or `fixed`.
    pub pool: String,
    /// Requests sent to the gateway (completed plus failed; skipped later turns excluded).
    pub requests: u64,
    /// Requests that completed.
    pub completed: u64,
    /// Requests that failed, by reason (`queue_full` 429, `queue_timeout` 503, `rejected` 400).
    pub failed: BTreeMap<String, u64>,
    /// Later turns never sent because an earlier turn of the session failed.
    pub skipped_turns: u64,
    /// TTFT SLO, ms.
    pub slo_ttft_ms: f64,
    /// Mean inter-token latency (TPOT) SLO, ms.
    pub slo_itl_ms: f64,
    /// Share of requests that completed with TTFT inside the SLO (failures count as misses).
    pub ttft_attainment: f64,
    /// Share of requests that completed with TPOT inside the SLO.
    pub itl_attainment: f64,
    /// Share of requests inside both SLOs (goodput).
    pub slo_attainment: f64,
    /// Time to first token at the client (gateway hold included).
    pub ttft_ms: Option<Summary>,
    /// Per-request mean inter-token latency.
    pub tpot_ms: Option<Summary>,
    /// End-to-end latency.
    pub e2e_ms: Option<Summary>,
    /// Time requests waited in the gateway's flow-control queue (held requests only).
    pub held_ms: Option<Summary>,
    /// Requests that waited in the gateway's queue.
    pub held_requests: u64,
    /// Pod-hours: each pod from its request (cold start included) to its removal or the end.
    pub pod_hours: f64,
    /// Span the pod-hours cover, hours.
    pub span_h: f64,
    /// Mean pods alive over the span.
    pub mean_pods: f64,
    /// Most pods alive at once (starting and draining included).
    pub peak_pods: u32,
    /// Replica changes applied.
    pub scale_events: u64,
    /// Prompt tokens found in the engines' prefix caches over prompt tokens looked up.
    pub prefix_hit_rate: f64,
    /// Output tokens generated.
    pub output_tokens: u64,
    /// Completed requests per second over the span.
    pub throughput_rps: f64,
    /// First arrival, seconds from the start.
    pub first_arrival_s: f64,
    /// Last completed answer, seconds from the start.
    pub last_done_s: f64,
    /// Wall-clock seconds the simulation took.
    pub sim_wall_s: f64,
}

/// A run's full result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The summary.
    pub summary: RunSummary,
    /// One point per virtual minute.
    pub series: Vec<SeriesPoint>,
    /// Every replica change.
    pub events: Vec<ScaleEvent>,
}

/// Folds request outcomes into a [`RunSummary`].
#[derive(Debug)]
pub(crate) struct Recorder {
    slo_ttft: Duration,
    slo_itl: Duration,
    ttft: Histogram<u64>,
    tpot: Histogram<u64>,
    e2e: Histogram<u64>,
    held: Histogram<u64>,
    pub completed: u64,
    pub failed: BTreeMap<String, u64>,
    pub skipped_turns: u64,
    ttft_ok: u64,
    itl_ok: u64,
    both_ok: u64,
    pub output_tokens: u64,
    /// First-token latencies (ms) of the current minute.
    minute_ttfts: Vec<f64>,
    /// Arrivals in the current minute.
    pub minute_arrivals: u32,
}

fn histogram() -> Histogram<u64> {
    // Microseconds up to ~3 hours at 3 significant digits; the bounds are constants.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    pub fn new(slo_ttft: Duration, slo_itl: Duration) -> Recorder {
        Recorder {
            slo_ttft,
            slo_itl,
            ttft: histogram(),
            tpot: histogram(),
            e2e: histogram(),
            held: histogram(),
            completed: 0,
            failed: BTreeMap::new(),
            skipped_turns: 0,
            ttft_ok: 0,
            itl_ok: 0,
            both_ok: 0,
            output_tokens: 0,
            minute_ttfts: Vec::new(),
            minute_arrivals: 0,
        }
    }

    /// A first token reached the client.
    pub fn first_token(&mut self, ttft: Duration) {
        self.minute_ttfts.push(ttft.as_secs_f64() * 1e3);
    }

    /// A request left the gateway's queue for a pod after waiting `held`.
    pub fn held(&mut self, held: Duration) {
        let _ = self.held.record(micros(held));
    }

    /// A request completed.
    pub fn completed(&mut self, ttft: Duration, e2e: Duration, output_tokens: u32) {
        self.completed += 1;
        self.output_tokens += u64::from(output_tokens);
        let _ = self.ttft.record(micros(ttft));
        let _ = self.e2e.record(micros(e2e));
        let tpot = (output_tokens > 1).then(|| (e2e.saturating_sub(ttft)) / (output_tokens - 1));
        if let Some(t) = tpot {
            let _ = self.tpot.record(micros(t));
        }
        let t_ok = ttft <= self.slo_ttft;
        let i_ok = tpot.is_none_or(|t| t <= self.slo_itl);
        self.ttft_ok += u64::from(t_ok);
        self.itl_ok += u64::from(i_ok);
        self.both_ok += u64::from(t_ok && i_ok);
    }

    /// A request failed.
    pub fn failed(&mut self, reason: &'static str) {
        *self.failed.entry(reason.to_string()).or_default() += 1;
    }

    /// Closes the current minute: its p90 TTFT and the share inside the SLO.
    pub fn take_minute(&mut self) -> (Option<f64>, Option<f64>, u32) {
        let arrivals = std::mem::take(&mut self.minute_arrivals);
        if self.minute_ttfts.is_empty() {
            return (None, None, arrivals);
        }
        let v = &mut self.minute_ttfts;
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1;
        let p90 = v[idx];
        let slo = self.slo_ttft.as_secs_f64() * 1e3;
        let ok = v.iter().filter(|&&t| t <= slo).count() as f64 / v.len() as f64;
        v.clear();
        (Some(p90), Some(ok), arrivals)
    }

    /// The summary; pod figures and the rest are filled in by the caller.
    pub fn finish(&self, name: &str, pool: &str) -> RunSummary {
        let failed: u64 = self.failed.values().sum();
        let requests = self.completed + failed;
        let share = |n: u64| {
            if requests == 0 {
                1.0
            } else {
                n as f64 / requests as f64
            }
        };
        RunSummary {
            name: name.to_string(),
            pool: pool.to_string(),
            requests,
            completed: self.completed,
            failed: self.failed.clone(),
            skipped_turns: self.skipped_turns,
            slo_ttft_ms: self.slo_ttft.as_secs_f64() * 1e3,
            slo_itl_ms: self.slo_itl.as_secs_f64() * 1e3,
            ttft_attainment: share(self.ttft_ok),
            itl_attainment: share(self.itl_ok),
            slo_attainment: share(self.both_ok),
            ttft_ms: summarize(&self.ttft),
            tpot_ms: summarize(&self.tpot),
            e2e_ms: summarize(&self.e2e),
            held_ms: summarize(&self.held),
            held_requests: self.held.len(),
            pod_hours: 0.0,
            span_h: 0.0,
            mean_pods: 0.0,
            peak_pods: 0,
            scale_events: 0,
            prefix_hit_rate: 0.0,
            output_tokens: self.output_tokens,
            throughput_rps: 0.0,
            first_arrival_s: 0.0,
            last_done_s: 0.0,
            sim_wall_s: 0.0,
        }
    }
}

/// The time series as CSV (one row a minute).
pub fn series_csv(series: &[SeriesPoint]) -> String {
    let mut s = String::from(
        "t_s,wanted,ready,starting,draining,held,engine_waiting,arrivals,ttft_p90_ms,ttft_ok_share\n",
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for p in series {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            p.t_s,
            p.wanted,
            p.ready,
            p.starting,
            p.draining,
            p.held,
            p.engine_waiting,
            p.arrivals,
            opt(p.ttft_p90_ms),
            opt(p.ttft_ok_share)
        );
    }
    s
}

/// The comparison table: one row per setting.
pub fn comparison_table(rows: &[RunSummary], fixed_pod_hours: Option<f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8}",
        "setting",
        "TTFT-SLO",
        "both-SLO",
        "p50 TTFT",
        "p90 TTFT",
        "p99 TTFT",
        "pod-h",
        "vs fixed",
        "peak",
        "scale",
        "failed"
    );
    for r in rows {
        let p = |f: fn(&Summary) -> f64| {
            r.ttft_ms
                .as_ref()
                .map(|x| format!("{:.0}ms", f(x)))
                .unwrap_or_else(|| "-".into())
        };
        let vs = fixed_pod_hours
            .filter(|f| *f > 0.0)
            .map(|f| format!("{:.0}%", r.pod_hours / f * 100.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<24} {:>8.2}% {:>8.2}% {:>9} {:>9} {:>9} {:>9.1} {:>9} {:>6} {:>6} {:>8}",
            r.name,
            r.ttft_attainment * 100.0,
            r.slo_attainment * 100.0,
            p(|x| x.p50),
            p(|x| x.p90),
            p(|x| x.p99),
            r.pod_hours,
            vs,
            r.peak_pods,
            r.scale_events,
            r.failed.values().sum::<u64>()
        );
    }
    s
}
