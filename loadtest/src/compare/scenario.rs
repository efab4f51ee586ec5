//! A comparison scenario: the pods, the workload, the offered load and the contenders, from a YAML
//! file (`loadtest/scenarios/*.yaml`).
//!
//! Unknown keys are errors (a misspelt `max_num_seq` must not silently mean "default"), and every
//! error names the field it is about, e.g. `rates[1]: 1.7 is not in (0, 1.5]`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::generate::arrival::ArrivalProcess;
use crate::generate::workload::WorkloadSpec;
use crate::sim::Profile;

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read, or its YAML does not describe a scenario.
    #[error(transparent)]
    File(#[from] crate::scenario_file::ScenarioFileError),
    /// A value is out of range or names something unknown.
    #[error("scenario {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The field, as a path (`pods.count`, `rates[1]`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for tables, plots and file names.
    pub name: String,
    /// What the scenario shows, one line (printed above its table).
    #[serde(default)]
    pub description: String,
    /// Seed of arrivals, lengths and the pods' engines: every contender gets the same schedule.
    #[serde(default)]
    pub seed: u64,
    /// The `model` field of every request (and the pods' served name).
    #[serde(default = "default_model")]
    pub model: String,
    /// The simulated pods.
    pub pods: PodsConfig,
    /// A `loadtest run --workload` spec (`sharegpt`, `shared-prefix:...`, `fixed:IN:OUT`), or
    /// `mixed:SHORT_IN:SHORT_OUT:LONG_IN:LONG_OUT:LONG_SHARE` (see [`Mixed`]).
    pub workload: String,
    /// Arrival process: `poisson` (default), `gamma:CV` (CV > 1 is bursty) or `constant`.
    #[serde(default = "default_arrival")]
    pub arrival: String,
    /// Pause between an answer and the session's next turn (multi-turn workloads).
    #[serde(default = "default_think", with = "crate::generate::duration_serde")]
    pub think_time: Duration,
    /// The offered loads, one run per contender each: fractions of [`Scenario::capacity`] (with
    /// `rate_unit: capacity`, the default) or new sessions per second (`rate_unit: per_s`).
    pub rates: Vec<f64>,
    /// How `rates` are read.
    #[serde(default)]
    pub rate_unit: RateUnit,
    /// The pool's capacity, needed when `rate_unit` is `capacity`.
    #[serde(default)]
    pub capacity: Option<CapacityConfig>,
    /// How long arrivals are scheduled in each run; the run then drains what is in flight.
    #[serde(with = "crate::generate::duration_serde")]
    pub duration: Duration,
    /// Per-request deadline.
    #[serde(default = "default_timeout", with = "crate::generate::duration_serde")]
    pub request_timeout: Duration,
    /// Goodput objectives.
    #[serde(default)]
    pub slo: SloConfig,
    /// Faults injected into pods during each run (the same for every contender).
    #[serde(default)]
    pub faults: Vec<FaultConfig>,
    /// Also run the workload against one pod with the whole pool's capacity (`max_num_seqs` and
    /// `num_gpu_blocks` times `count`), directly: the prefix-cache hit rate a perfect router could
    /// approach, since nothing is split.
    #[serde(default)]
    pub reference: bool,
    /// Contenders in order; default all of them.
    #[serde(default = "Contender::all")]
    pub contenders: Vec<Contender>,
}

fn default_model() -> String {
    "sim-llama-3-8b".into()
}
fn default_arrival() -> String {
    "poisson".into()
}
fn default_think() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

/// The simulated pods (flags of `infergate sim`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PodsConfig {
    /// How many.
    pub count: u32,
    /// The step-time profile.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Engine clock multiplier (`--speed`): above 1 runs faster than a real GPU, below 1 slower.
    #[serde(default = "one")]
    pub speed: f64,
    /// `--max-num-seqs`.
    #[serde(default)]
    pub max_num_seqs: Option<u32>,
    /// `--num-gpu-blocks`.
    #[serde(default)]
    pub num_gpu_blocks: Option<u32>,
    /// `--max-num-batched-tokens`.
    #[serde(default)]
    pub max_num_batched_tokens: Option<u32>,
    /// `--max-model-len`.
    #[serde(default)]
    pub max_model_len: Option<u32>,
}

fn default_profile() -> String {
    Profile::default().name.to_string()
}
fn one() -> f64 {
    1.0
}

/// How `rates` are read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    /// Fractions of the pool's capacity.
    #[default]
    Capacity,
    /// New sessions per second.
    PerS,
}

/// The pool's capacity in new sessions per second: given, or measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CapacityConfig {
    /// Stated: the pool sustains this many new sessions per second.
    SessionsPerS(f64),
    /// Measured by a saturation probe (see `compare::capacity`).
    Probe(ProbeConfig),
}

/// A saturation probe: one pod, overloaded on purpose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// New sessions per second offered to the ONE probed pod; must keep its queue non-empty.
    pub rate: f64,
    /// How long the probe offers it (the first third is warm-up and not measured).
    #[serde(with = "crate::generate::duration_serde")]
    pub duration: Duration,
}

/// Goodput objectives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Time to first token.
    #[serde(default, with = "crate::generate::duration_serde::option")]
    pub ttft: Option<Duration>,
    /// Mean inter-token latency per request.
    #[serde(default, with = "crate::generate::duration_serde::option")]
    pub itl: Option<Duration>,
}

/// A fault set on one pod at an offset into the run, through its `/admin/faults`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Pod index (0-based).
    pub pod: u32,
    /// When, from the run's start.
    #[serde(with = "crate::generate::duration_serde")]
    pub after: Duration,
    /// Real-time delay added before each completion request (a degraded GPU or host).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Share of completion requests answered 500.
    #[serde(default)]
    pub error_rate: Option<f64>,
}

impl FaultConfig {
    /// The `/admin/faults` body.
    pub fn body(&self) -> String {
        let mut m = serde_json::Map::new();
        if let Some(l) = self.latency_ms {
            m.insert("latency_ms".into(), l.into());
        }
        if let Some(r) = self.error_rate {
            m.insert("error_rate".into(), r.into());
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// Who routes the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    /// `infergate gateway --policy P`.
    Infergate(Policy),
    /// nginx with `upstream` round robin (the classic Ingress).
    NginxRoundRobin,
    /// nginx with `least_conn`.
    NginxLeastConn,
    /// SGLang's router, `--policy cache_aware`.
    SglangCacheAware,
}

/// infergate's picker policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `round-robin`.
    RoundRobin,
    /// `least-inflight`.
    LeastInflight,
    /// `queue-kv`.
    QueueKv,
    /// `infergate`.
    Infergate,
}

impl Policy {
    /// The `--policy` value.
    pub fn flag(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastInflight => "least-inflight",
            Policy::QueueKv => "queue-kv",
            Policy::Infergate => "infergate",
        }
    }
}

impl Contender {
    /// Every contender, in table order.
    pub fn all() -> Vec<Contender> {
        vec![
            Contender::Infergate(Policy::RoundRobin),
            Contender::Infergate(Policy::LeastInflight),
            Contender::Infergate(Policy::QueueKv),
            Contender::Infergate(Policy::Infergate),
            Contender::NginxRoundRobin,
            Contender::NginxLeastConn,
            Contender::SglangCacheAware,
        ]
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contender::Infergate(p) => write!(f, "infergate:{}", p.flag()),
            Contender::NginxRoundRobin => f.write_str("nginx:round-robin"),
            Contender::NginxLeastConn => f.write_str("nginx:least-conn"),
            Contender::SglangCacheAware => f.write_str("sglang:cache-aware"),
        }
    }
}

impl FromStr for Contender {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Contender::all()
            .into_iter()
            .find(|c| c.to_string() == s)
            .ok_or_else(|| {
                let known: Vec<String> = Contender::all().iter().map(|c| c.to_string()).collect();
                format!("unknown contender {s:?} (known: {})", known.join(", "))
            })
    }
}

impl Serialize for Contender {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Contender {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Head-of-line mix: mostly short requests with a share of long ones, one turn each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixed {
    /// Prompt tokens of a short request.
    pub short_in: u32,
    /// Output tokens of a short request.
    pub short_out: u32,
    /// Prompt tokens of a long request.
    pub long_in: u32,
    /// Output tokens of a long request.
    pub long_out: u32,
    /// Share of long requests, in (0, 1).
    pub long_share: f64,
}

impl FromStr for Mixed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("mixed:").ok_or("not a mixed spec")?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [a, b, c, d, e] = parts[..] else {
            return Err(format!(
                "{s:?}: expected mixed:SHORT_IN:SHORT_OUT:LONG_IN:LONG_OUT:LONG_SHARE"
            ));
        };
        let n = |x: &str| {
            x.parse::<u32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{s:?}: {x:?} is not a positive token count"))
        };
        let long_share: f64 = e
            .parse()
            .ok()
            .filter(|v: &f64| *v > 0.0 && *v < 1.0)
            .ok_or_else(|| format!("{s:?}: LONG_SHARE {e:?} is not in (0, 1)"))?;
        Ok(Mixed {
            short_in: n(a)?,
            short_out: n(b)?,
            long_in: n(c)?,
            long_out: n(d)?,
            long_share,
        })
    }
}

/// The workload, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// One of the load generator's own workloads.
    Spec(WorkloadSpec),
    /// The head-of-line mix (replayed through a generated trace).
    Mixed(Mixed),
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let s: Scenario = crate::scenario_file::read(path)?;
        s.validate(&path.display().to_string())?;
        Ok(s)
    }

    /// Parses and checks scenario YAML; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = crate::scenario_file::parse(text, path)?;
        s.validate(path)?;
        Ok(s)
    }

    /// The workload, parsed.
    pub fn workload(&self) -> Result<Workload, String> {
        if self.workload.starts_with("mixed:") {
            return self.workload.parse().map(Workload::Mixed);
        }
        self.workload
            .parse::<WorkloadSpec>()
            .map(Workload::Spec)
            .map_err(|e| e.to_string())
    }

    /// The arrival process, parsed.
    pub fn arrival(&self) -> Result<ArrivalProcess, String> {
        self.arrival
            .parse()
            .map_err(|e: crate::generate::arrival::ArrivalError| e.to_string())
    }

    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self, path: &str) -> Result<(), ScenarioError> {
        let bad = |field: &str, message: String| ScenarioError::Invalid {
            path: path.into(),
            field: field.into(),
            message,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "name",
                format!("{:?} must be non-empty letters, digits, - _ .", self.name),
            ));
        }
        if !(1..=64).contains(&self.pods.count) {
            return Err(bad(
                "pods.count",
                format!("{} is not in 1..=64", self.pods.count),
            ));
        }
        if Profile::named(&self.pods.profile).is_none() {
            return Err(bad(
                "pods.profile",
                format!(
                    "unknown profile {:?} (known: {})",
                    self.pods.profile,
                    Profile::names().join(", ")
                ),
            ));
        }
        if !(self.pods.speed.is_finite() && self.pods.speed > 0.0) {
            return Err(bad(
                "pods.speed",
                format!("{} must be > 0", self.pods.speed),
            ));
        }
        for (field, v) in [
            ("pods.max_num_seqs", self.pods.max_num_seqs),
            ("pods.num_gpu_blocks", self.pods.num_gpu_blocks),
            (
                "pods.max_num_batched_tokens",
                self.pods.max_num_batched_tokens,
            ),
            ("pods.max_model_len", self.pods.max_model_len),
        ] {
            if v == Some(0) {
                return Err(bad(field, "must be > 0".into()));
            }
        }
        match self.workload() {
            Ok(Workload::Spec(WorkloadSpec::Trace(_))) => {
                return Err(bad("workload", "trace replays are not supported by compare (use mixed:... or a synthetic workload)".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(bad("workload", e)),
        }
        self.arrival().map_err(|e| bad("arrival", e))?;
        if self.rates.is_empty() {
            return Err(bad("rates", "at least one rate is needed".into()));
        }
        for (i, r) in self.rates.iter().enumerate() {
            let ok = match self.rate_unit {
                RateUnit::Capacity => *r > 0.0 && *r <= 1.5,
                RateUnit::PerS => r.is_finite() && *r > 0.0,
            };
            if !ok {
                let range = match self.rate_unit {
                    RateUnit::Capacity => "(0, 1.5] (a fraction of capacity)",
                    RateUnit::PerS => "(0, inf) sessions/s",
                };
                return Err(bad(
                    &format!("rates[{i}]"),
                    format!("{r} is not in {range}"),
                ));
            }
        }
        match (&self.capacity, self.rate_unit) {
            (None, RateUnit::Capacity) => {
                return Err(bad(
                    "capacity",
                    "needed when rates are fractions of capacity (rate_unit: capacity)".into(),
                ));
            }
            (Some(CapacityConfig::SessionsPerS(c)), _) if !(c.is_finite() && *c > 0.0) => {
                return Err(bad("capacity.sessions_per_s", format!("{c} must be > 0")));
            }
            (Some(CapacityConfig::Probe(p)), _) => {
                if !(p.rate.is_finite() && p.rate > 0.0) {
                    return Err(bad(
                        "capacity.probe.rate",
                        format!("{} must be > 0", p.rate),
                    ));
                }
                if p.duration < Duration::from_secs(3) {
                    return Err(bad("capacity.probe.duration", "must be at least 3s".into()));
                }
            }
            _ => {}
        }
        if self.duration.is_zero() {
            return Err(bad("duration", "must be > 0".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be > 0".into()));
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.pod >= self.pods.count {
                return Err(bad(
                    &format!("faults[{i}].pod"),
                    format!("{} is not a pod (0..{})", f.pod, self.pods.count),
                ));
            }
            if f.latency_ms.is_none() && f.error_rate.is_none() {
                return Err(bad(
                    &format!("faults[{i}]"),
                    "sets nothing (latency_ms or error_rate)".into(),
                ));
            }
            if let Some(r) = f.error_rate
                && !(0.0..=1.0).contains(&r)
            {
                return Err(bad(
                    &format!("faults[{i}].error_rate"),
                    format!("{r} is not in [0, 1]"),
                ));
            }
        }
        if self.contenders.is_empty() {
            return Err(bad("contenders", "at least one contender is needed".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "
name: tiny
pods: { count: 2, speed: 10, max_num_seqs: 8 }
workload: shared-prefix:2:256:2:32:16
rates: [1.0]
rate_unit: per_s
duration: 2s
contenders: [infergate:round-robin, infergate:infergate]
";

    #[test]
    fn parses_a_scenario() {
        let s = Scenario::parse(OK, "t.yaml").unwrap();
        assert_eq!(s.pods.count, 2);
        assert_eq!(s.contenders.len(), 2);
        assert_eq!(s.think_time, Duration::from_secs(1));
        assert!(matches!(
            s.workload(),
            Ok(Workload::Spec(WorkloadSpec::SharedPrefix(_)))
        ));
    }

    fn err(text: &str) -> String {
        Scenario::parse(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&OK.replace("max_num_seqs", "max_num_seq"));
        assert!(e.contains("max_num_seq"), "{e}");
        let e = err(&OK.replace("count: 2", "count: 0"));
        assert!(e.contains("pods.count"), "{e}");
        let e = err(&OK.replace("rates: [1.0]", "rates: [1.0, -2]"));
        assert!(e.contains("rates[1]"), "{e}");
        let e = err(&OK.replace("infergate:infergate", "haproxy"));
        assert!(e.contains("haproxy") && e.contains("contender"), "{e}");
        let e = err(&OK.replace("rate_unit: per_s\n", ""));
        assert!(e.contains("capacity"), "{e}");
        let e = err(&OK.replace("duration: 2s", "duration: soon"));
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn parses_the_mixed_workload() {
        let m: Mixed = "mixed:64:32:4000:256:0.1".parse().unwrap();
        assert_eq!((m.short_in, m.long_in, m.long_share), (64, 4000, 0.1));
        assert!("mixed:64:32:4000:256:1.5".parse::<Mixed>().is_err());
        assert!("mixed:64:32".parse::<Mixed>().is_err());
    }

    #[test]
    fn ships_valid_scenarios() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !name.starts_with("plan-") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "expected the shipped compare scenarios, found {n}");
    }
}
