//! What a comparison measured: one row per contender and offered load, as a table and as JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::pods::PoolStats;
use crate::generate::RunReport;
use crate::generate::report::Summary;

/// How a contender's run went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Status {
    /// It ran; the measurements are in the row.
    Ran,
    /// Not installed here: skipped, nothing measured.
    Skipped(String),
    /// It was installed but could not be started or measured.
    Failed(String),
}

/// One contender at one offered load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `infergate:infergate`, `nginx:least-conn`, ..., or `reference:one-big-pod`.
    pub contender: String,
    /// New sessions offered per second.
    pub rate_per_s: f64,
    /// The same, as a fraction of capacity (when capacity is known).
    pub fraction_of_capacity: Option<f64>,
    /// Ran, skipped or failed.
    pub status: Status,
    /// The load generator's report (client-side latencies, throughput, goodput).
    pub run: Option<RunReport>,
    /// The pods' own view: prefix-cache hit rate, load imbalance.
    pub pool: Option<PoolStats>,
    /// The machine's 1-minute load average when the run ended (CPU contention check).
    pub loadavg_1m: Option<f64>,
    /// Client mean e2e x speed / the engines' mean e2e: about 1 when the hosts kept the engine
    /// clock and the router added little; well above 1 when the CPU fell behind (or a fault added
    /// latency outside the engine).
    pub clock_ratio: Option<f64>,
}

/// How capacity was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// The pool's capacity in new sessions per second.
    pub sessions_per_s: f64,
    /// `stated` or `probe`.
    pub source: String,
    /// For a probe: one pod's completed requests per second while saturated.
    pub probe_requests_per_s: Option<f64>,
    /// For a probe: one pod's output tokens per second while saturated.
    pub probe_output_tokens_per_s: Option<f64>,
    /// For a probe: requests waiting in the pod's queue at the end of the window (> 0: saturated).
    pub probe_waiting: Option<f64>,
    /// Mean requests (turns) per session of the workload.
    pub turns_per_session: f64,
}

/// One scenario's comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The workload spec.
    pub workload: String,
    /// The arrival process.
    pub arrival: String,
    /// Pods per contender.
    pub pods: u32,
    /// Their profile.
    pub profile: String,
    /// Their engine clock multiplier (latencies below are wall-clock, i.e. engine time / speed).
    pub speed: f64,
    /// Schedule length per run, seconds.
    pub duration_s: f64,
    /// The seed.
    pub seed: u64,
    /// Capacity, when rates are fractions of it.
    pub capacity: Option<CapacityReport>,
    /// Every row, in run order.
    pub rows: Vec<Row>,
    /// Files written (plots, JSON).
    pub files: Vec<String>,
}

impl ScenarioReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn pct(s: &Option<Summary>) -> [String; 3] {
    match s {
        Some(s) => [fmt_ms(s.p50), fmt_ms(s.p90), fmt_ms(s.p99)],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl fmt::Display for ScenarioReport {
    /// The table `loadtest compare` prints: one line per contender and rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}: {}", self.scenario, self.description)?;
        writeln!(
            f,
            "  {} pods x {} at speed {}, workload {}, arrivals {}, {} s per run, seed {}",
            self.pods,
            self.profile,
            self.speed,
            self.workload,
            self.arrival,
            self.duration_s,
            self.seed
        )?;
        if let Some(c) = &self.capacity {
            write!(
                f,
                "  capacity {:.3} sessions/s ({}; {:.2} requests per session",
                c.sessions_per_s, c.source, c.turns_per_session
            )?;
            if let (Some(r), Some(t)) = (c.probe_requests_per_s, c.probe_output_tokens_per_s) {
                write!(f, "; one saturated pod: {r:.2} req/s, {t:.0} output tok/s")?;
            }
            writeln!(f, ")")?;
        }
        writeln!(
            f,
            "  latencies in ms of wall-clock time (engine time / speed)"
        )?;
        writeln!(
            f,
            "{:<26}{:>7}{:>6}{:>6}{:>5} | {:>7}{:>7}{:>7} | {:>6}{:>6}{:>6} | {:>7}{:>7}{:>7} | {:>8}{:>7}{:>7}{:>6}{:>6}{:>6}{:>6}",
            "contender",
            "rate/s",
            "load",
            "reqs",
            "err",
            "ttft50",
            "ttft90",
            "ttft99",
            "itl50",
            "itl90",
            "itl99",
            "e2e50",
            "e2e90",
            "e2e99",
            "out tok/s",
            "req/s",
            "good",
            "hit",
            "imb",
            "lag99",
            "clk"
        )?;
        for r in &self.rows {
            let load = opt(r.fraction_of_capacity.map(|x| x * 100.0), 0);
            let name = &r.contender;
            match (&r.status, &r.run) {
                (Status::Ran, Some(run)) => {
                    let [t50, t90, t99] = pct(&run.ttft_ms);
                    let [i50, i90, i99] = pct(&run.itl_ms);
                    let [e50, e90, e99] = pct(&run.e2e_ms);
                    let pool = r.pool.as_ref();
                    writeln!(
                        f,
                        "{name:<26}{:>7.2}{load:>6}{:>6}{:>5} | {t50:>7}{t90:>7}{t99:>7} | {i50:>6}{i90:>6}{i99:>6} | {e50:>7}{e90:>7}{e99:>7} | {:>8.0}{:>7.2}{:>7.3}{:>6}{:>6}{:>6}{:>6}",
                        r.rate_per_s,
                        run.requests,
                        run.failed,
                        run.output_tokens_per_s,
                        run.request_throughput,
                        run.slo.goodput,
                        opt(pool.and_then(|p| p.prefix_hit_rate), 3),
                        opt(pool.and_then(|p| p.imbalance_requests), 2),
                        opt(run.late_start_ms.map(|l| l.p99), 1),
                        opt(r.clock_ratio, 2),
                    )?;
                }
                (Status::Skipped(why), _) => writeln!(
                    f,
                    "{name:<26}{:>7.2}{load:>6}  skipped: {why}",
                    r.rate_per_s
                )?,
                (Status::Failed(why), _) => {
                    writeln!(f, "{name:<26}{:>7.2}{load:>6}  FAILED: {why}", r.rate_per_s)?
                }
                (Status::Ran, None) => writeln!(
                    f,
                    "{name:<26}{:>7.2}{load:>6}  FAILED: no report",
                    r.rate_per_s
                )?,
            }
        }
        writeln!(
            f,
            "  hit = prefix-cache hits / lookups in tokens, from the pods' metrics, summed over pods; imb = max/mean requests per pod;"
        )?;
        writeln!(
            f,
            "  good = goodput (share of requests completed within the SLO); lag99 = p99 of the generator's late start (ms);"
        )?;
        writeln!(
            f,
            "  clk = client mean e2e x speed / engines' mean e2e (about 1: the CPU kept up with the simulated GPUs)"
        )?;
        for file in &self.files {
            writeln!(f, "  wrote {file}")?;
        }
        Ok(())
    }
}
