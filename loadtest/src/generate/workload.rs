//! Workloads: what each arrival asks for (prompt lengths, output lengths, sessions), planned up front.
//!
//! Every arrival starts a *session*: a list of turns. Single-request workloads (`fixed`, `sharegpt`,
//! `trace`) have one turn per session; `shared-prefix` has several. Prompts are filler text of an exact
//! token length in the simulator's tokenizer ([`crate::sim::tokens::filler_text`]), so the lengths
//! planned here are the lengths `infergate sim` counts. (A chat request adds the server's chat
//! template around the messages; against the simulator that is a handful of tokens per message.)
//!
//! Spec strings (`--workload`):
//! - `fixed:IN:OUT`: every request has IN prompt tokens and asks for OUT output tokens.
//! - `sharegpt`: lengths drawn from lognormal distributions with the ShareGPT means published in the
//!   vLLM paper (Kwon et al., "Efficient Memory Management for Large Language Model Serving with
//!   PagedAttention", SOSP 2023, Fig. 11: input mean 161 tokens, output mean 338). The paper gives
//!   means and right-skewed histograms, not a fitted spread, so the sigmas are ours: input
//!   sigma = 1.0 (median ~98, p99 ~1,000: short questions with a long tail of pasted documents),
//!   output sigma = 0.8 (median ~245, p99 ~1,600: answers vary less than questions). The mean of a
//!   lognormal is `exp(mu + sigma²/2)`, so `mu = ln(mean) - sigma²/2` keeps the published means.
//!   Lengths are clamped to `[1, 4096]` each, so prompt plus output fits an 8k context; the clamp
//!   moves the means by well under 1%.
//! - `shared-prefix[:SYSTEMS[:SYSTEM_LEN[:TURNS[:USER_LEN[:OUTPUT]]]]]` (defaults `8:2048:4:128:256`,
//!   after SGLang's generated-shared-prefix benchmark): SYSTEMS distinct system prompts of
//!   SYSTEM_LEN tokens; each session picks one uniformly at random (seeded) and runs TURNS turns.
//!   Turn k sends the system prompt, every earlier user message and assistant answer, then a new
//!   user message of USER_LEN tokens, asking for OUTPUT tokens. So sessions on the same system prompt
//!   share its prefix, and each session's own prefix grows turn by turn, as in a chat product.
//! - `trace:FILE`: the Azure LLM trace CSV (see [`super::trace`]): arrivals and lengths replayed.
//!   `--rate R` rescales time so the replayed records arrive at a mean of R a second: with
//!   `--requests N`, the mean of the first N records (the ones replayed), else of the whole trace;
//!   `--duration` then cuts the rescaled replay.
//!
//! Multi-turn sessions are closed-loop *inside* a session (a user reads the answer, thinks, then types
//! the next turn: the next turn is sent `think_time` after the previous one finished) and open-loop
//! *across* sessions (new sessions arrive on the schedule whatever the server does). This is how
//! real chat traffic behaves, and it keeps the arrival rate of new work independent of the server.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

use super::arrival::{self, ArrivalError, ArrivalProcess, Bound};
use super::trace::{self, TraceError};
use crate::sim::tokens::filler_text;

/// ShareGPT mean prompt length in tokens (vLLM paper, Fig. 11).
pub const SHAREGPT_INPUT_MEAN: f64 = 161.0;
/// ShareGPT mean output length in tokens (vLLM paper, Fig. 11).
pub const SHAREGPT_OUTPUT_MEAN: f64 = 338.0;
/// Lognormal sigma of ShareGPT-like prompt lengths (see the module docs for why).
pub const SHAREGPT_INPUT_SIGMA: f64 = 1.0;
/// Lognormal sigma of ShareGPT-like output lengths (see the module docs for why).
pub const SHAREGPT_OUTPUT_SIGMA: f64 = 0.8;
/// Upper clamp of each ShareGPT-like length.
pub const SHAREGPT_MAX_LEN: u32 = 4096;

/// Parameters of the `shared-prefix` workload (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPrefix {
    /// Number of distinct system prompts.
    pub systems: u32,
    /// Tokens in each system prompt.
    pub system_len: u32,
    /// Turns per session.
    pub turns: u32,
    /// Tokens in each user message.
    pub user_len: u32,
    /// Output tokens asked for per turn.
    pub output: u32,
}

impl Default for SharedPrefix {
    fn default() -> Self {
        Self {
            systems: 8,
            system_len: 2048,
            turns: 4,
            user_len: 128,
            output: 256,
        }
    }
}

/// A `--workload` spec, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadSpec {
    /// Fixed prompt and output lengths.
    Fixed {
        /// Prompt tokens.
        input: u32,
        /// Output tokens.
        output: u32,
    },
    /// ShareGPT-like lognormal lengths.
    ShareGpt,
    /// Multi-turn sessions over a few shared system prompts.
    SharedPrefix(SharedPrefix),
    /// Replay of an Azure LLM trace CSV.
    Trace(PathBuf),
}

/// Why a workload cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The spec string is malformed.
    #[error("bad workload {spec:?}: {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// The arrival schedule cannot be built.
    #[error(transparent)]
    Arrival(#[from] ArrivalError),
    /// The trace cannot be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// Options that do not go together.
    #[error("{0}")]
    Conflict(String),
}

impl FromStr for WorkloadSpec {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| WorkloadError::Spec {
            spec: s.to_string(),
            message: message.to_string(),
        };
        let positive = |field: &str, name: &str| -> Result<u32, WorkloadError> {
            match field.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(&format!(
                    "{name} must be a positive integer, got {field:?}"
                ))),
            }
        };
        if let Some(path) = s.strip_prefix("trace:") {
            if path.is_empty() {
                return Err(bad("trace:FILE needs a file"));
            }
            return Ok(Self::Trace(PathBuf::from(path)));
        }
        let mut parts = s.split(':');
        match parts.next().unwrap_or_default() {
            "fixed" => {
                let (Some(i), Some(o), None) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(bad("expected fixed:IN:OUT"));
                };
                Ok(Self::Fixed {
                    input: positive(i, "IN")?,
                    output: positive(o, "OUT")?,
                })
            }
            "sharegpt" if parts.next().is_none() => Ok(Self::ShareGpt),
            "shared-prefix" => {
                let d = SharedPrefix::default();
                let mut v = [d.systems, d.system_len, d.turns, d.user_len, d.output];
                const NAMES: [&str; 5] = ["SYSTEMS", "SYSTEM_LEN", "TURNS", "USER_LEN", "OUTPUT"];
                for (i, part) in parts.enumerate() {
                    if i >= v.len() {
                        return Err(bad(
                            "expected shared-prefix:SYSTEMS:SYSTEM_LEN:TURNS:USER_LEN:OUTPUT",
                        ));
                    }
                    v[i] = positive(part, NAMES[i])?;
                }
                Ok(Self::SharedPrefix(SharedPrefix {
                    systems: v[0],
                    system_len: v[1],
                    turns: v[2],
                    user_len: v[3],
                    output: v[4],
                }))
            }
            _ => Err(bad(
                "expected fixed:IN:OUT, sharegpt, shared-prefix[:SYSTEMS:SYSTEM_LEN:TURNS:USER_LEN:OUTPUT] or trace:FILE",
            )),
        }
    }
}

impl fmt::Display for WorkloadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed { input, output } => write!(f, "fixed:{input}:{output}"),
            Self::ShareGpt => f.write_str("sharegpt"),
            Self::SharedPrefix(p) => write!(
                f,
                "shared-prefix:{}:{}:{}:{}:{}",
                p.systems, p.system_len, p.turns, p.user_len, p.output
            ),
            Self::Trace(path) => write!(f, "trace:{}", path.display()),
        }
    }
}

/// One turn of a session: a new user message and the output asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnPlan {
    /// Tokens in this turn's new user message.
    pub user_tokens: u32,
    /// Output tokens asked for (`max_tokens`).
    pub max_tokens: u32,
    /// Seed of the user message's filler text, distinct per session and turn, so unrelated requests
    /// do not share a prefix by accident.
    pub text_seed: u64,
}

/// What one arrival does.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPlan {
    /// Session number (the arrival's index); sent as the OpenAI `user` field, `session-<id>`.
    pub id: u64,
    /// The shared system prompt this session uses, if any: (index among the systems, text).
    pub system: Option<(u32, Arc<str>)>,
    /// The turns, in order.
    pub turns: Vec<TurnPlan>,
}

impl SessionPlan {
    /// The user message of turn `k`.
    pub fn user_text(&self, k: usize) -> String {
        let t = &self.turns[k];
        filler_text(t.user_tokens as usize, t.text_seed)
    }
}

/// A whole run's plan: when each session starts and what it does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Arrival offsets from the start, sorted; `arrivals[i]` starts `sessions[i]`.
    pub arrivals: Vec<Duration>,
    /// One per arrival.
    pub sessions: Vec<SessionPlan>,
}

impl Plan {
    /// Plans a run. `rate` is required for synthetic workloads (new sessions per second); for a trace
    /// it is optional and rescales the trace's arrival times to that mean rate. `arrival` must be
    /// `None` for a trace (the trace carries its own arrivals).
    pub fn build(
        spec: &WorkloadSpec,
        arrival: Option<ArrivalProcess>,
        rate: Option<f64>,
        bound: Bound,
        seed: u64,
    ) -> Result<Plan, WorkloadError> {
        if let WorkloadSpec::Trace(path) = spec {
            if arrival.is_some() {
                return Err(WorkloadError::Conflict(
                    "a trace carries its own arrival times: drop --arrival".into(),
                ));
            }
            let records = trace::read_azure_csv(path)?;
            return trace_plan(&records, rate, bound, seed);
        }
        let rate = rate.ok_or_else(|| {
            WorkloadError::Conflict("--rate is required for a synthetic workload".into())
        })?;
        let arrivals = arrival::schedule(
            arrival.unwrap_or(ArrivalProcess::Poisson),
            rate,
            bound,
            seed,
        )?;
        let sessions = plan_sessions(spec, arrivals.len(), seed);
        Ok(Plan { arrivals, sessions })
    }

    /// Total requests the plan holds (sessions times their turns).
    pub fn total_requests(&self) -> u64 {
        self.sessions.iter().map(|s| s.turns.len() as u64).sum()
    }
}

/// Plans `n` sessions of a synthetic workload (not `trace`, which gives one single-turn session per
/// record). Deterministic in `seed`.
pub fn plan_sessions(spec: &WorkloadSpec, n: usize, seed: u64) -> Vec<SessionPlan> {
    // A stream of its own, so the lengths do not depend on how many draws the arrivals took.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_1E46_7A5C);
    let single = |id: u64, input: u32, output: u32| SessionPlan {
        id,
        system: None,
        turns: vec![TurnPlan {
            user_tokens: input,
            max_tokens: output,
            text_seed: text_seed(seed, id, 0),
        }],
    };
    match spec {
        WorkloadSpec::Fixed { input, output } => (0..n as u64)
            .map(|id| single(id, *input, *output))
            .collect(),
        WorkloadSpec::ShareGpt => {
            let input = lognormal(SHAREGPT_INPUT_MEAN, SHAREGPT_INPUT_SIGMA);
            let output = lognormal(SHAREGPT_OUTPUT_MEAN, SHAREGPT_OUTPUT_SIGMA);
            (0..n as u64)
                .map(|id| {
                    let i = clamp_len(input.sample(&mut rng));
                    let o = clamp_len(output.sample(&mut rng));
                    single(id, i, o)
                })
                .collect()
        }
        WorkloadSpec::SharedPrefix(p) => {
            let systems: Vec<Arc<str>> = (0..p.systems)
                .map(|k| {
                    Arc::from(filler_text(
                        p.system_len as usize,
                        text_seed(seed, u64::MAX, k),
                    ))
                })
                .collect();
            (0..n as u64)
                .map(|id| {
                    let k = rng.random_range(0..p.systems);
                    SessionPlan {
                        id,
                        system: Some((k, systems[k as usize].clone())),
                        turns: (0..p.turns)
                            .map(|t| TurnPlan {
                                user_tokens: p.user_len,
                                max_tokens: p.output,
                                text_seed: text_seed(seed, id, t),
                            })
                            .collect(),
                    }
                })
                .collect()
        }
        WorkloadSpec::Trace(_) => Vec::new(),
    }
}

/// Plans a trace replay: arrivals from the records (rescaled to `rate` if given), cut by `bound`.
pub fn trace_plan(
    records: &[trace::TraceRecord],
    rate: Option<f64>,
    bound: Bound,
    seed: u64,
) -> Result<Plan, WorkloadError> {
    let scale = match rate {
        None => 1.0,
        Some(r) if r.is_finite() && r > 0.0 => {
            // The mean rate of what will be replayed, so the run sees R a second on average.
            let n = bound
                .requests
                .map_or(records.len(), |n| records.len().min(n as usize));
            let native = trace::native_rate(&records[..n]).ok_or_else(|| {
                WorkloadError::Conflict(
                    "--rate cannot rescale a trace with a single instant".into(),
                )
            })?;
            native / r
        }
        Some(r) => {
            return Err(WorkloadError::Conflict(format!(
                "--rate must be > 0, got {r}"
            )));
        }
    };
    let limit = bound.duration.map(|d| d.as_secs_f64());
    let max_n = bound.requests.unwrap_or(u64::MAX) as usize;
    let mut arrivals = Vec::new();
    let mut sessions = Vec::new();
    for r in records {
        let t = r.offset.as_secs_f64() * scale;
        if sessions.len() >= max_n || limit.is_some_and(|l| t >= l) {
            break;
        }
        let id = sessions.len() as u64;
        arrivals.push(Duration::from_secs_f64(t));
        sessions.push(SessionPlan {
            id,
            system: None,
            turns: vec![TurnPlan {
                user_tokens: r.input_tokens.max(1),
                max_tokens: r.output_tokens.max(1),
                text_seed: text_seed(seed, id, 0),
            }],
        });
    }
    Ok(Plan { arrivals, sessions })
}

fn lognormal(mean: f64, sigma: f64) -> LogNormal<f64> {
    // Both parameters are constants above; the distribution cannot fail to build.
    LogNormal::new(mean.ln() - sigma * sigma / 2.0, sigma).expect("valid lognormal parameters")
}

fn clamp_len(x: f64) -> u32 {
    x.round().clamp(1.0, f64::from(SHAREGPT_MAX_LEN)) as u32
}

/// A well-mixed seed per (run seed, session, turn).
fn text_seed(seed: u64, session: u64, turn: u32) -> u64 {
    let mut z = seed
        ^ session.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(turn).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokens::count_tokens;

    #[test]
    fn parses_and_prints_specs() {
        for s in [
            "fixed:128:64",
            "sharegpt",
            "shared-prefix:8:2048:4:128:256",
            "trace:a/b.csv",
        ] {
            let spec: WorkloadSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let p: WorkloadSpec = "shared-prefix:3:100".parse().unwrap();
        assert_eq!(
            p,
            WorkloadSpec::SharedPrefix(SharedPrefix {
                systems: 3,
                system_len: 100,
                ..SharedPrefix::default()
            })
        );
        for bad in [
            "fixed:1",
            "fixed:0:5",
            "fixed:a:5",
            "fixed:1:2:3",
            "sharegpt:1",
            "shared-prefix:1:2:3:4:5:6",
            "shared-prefix:0",
            "trace:",
            "zipf",
        ] {
            assert!(bad.parse::<WorkloadSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_lengths_are_exact_in_the_simulator_tokenizer() {
        let spec = WorkloadSpec::Fixed {
            input: 37,
            output: 9,
        };
        let plan = plan_sessions(&spec, 5, 1);
        assert_eq!(plan.len(), 5);
        for s in &plan {
            assert_eq!(s.turns.len(), 1);
            assert_eq!(s.turns[0].max_tokens, 9);
            assert_eq!(count_tokens(&s.user_text(0)), 37);
        }
        assert_ne!(plan[0].user_text(0), plan[1].user_text(0));
    }

    #[test]
    fn sharegpt_means_match_the_published_ones() {
        let plan = plan_sessions(&WorkloadSpec::ShareGpt, 40_000, 9);
        let n = plan.len() as f64;
        let mean_in = plan
            .iter()
            .map(|s| f64::from(s.turns[0].user_tokens))
            .sum::<f64>()
            / n;
        let mean_out = plan
            .iter()
            .map(|s| f64::from(s.turns[0].max_tokens))
            .sum::<f64>()
            / n;
        assert!(
            (mean_in - SHAREGPT_INPUT_MEAN).abs() < SHAREGPT_INPUT_MEAN * 0.04,
            "{mean_in}"
        );
        assert!(
            (mean_out - SHAREGPT_OUTPUT_MEAN).abs() < SHAREGPT_OUTPUT_MEAN * 0.04,
            "{mean_out}"
        );
        let all_in_range = plan.iter().all(|s| {
            (1..=SHAREGPT_MAX_LEN).contains(&s.turns[0].user_tokens)
                && (1..=SHAREGPT_MAX_LEN).contains(&s.turns[0].max_tokens)
        });
        assert!(all_in_range);
        // Right-skewed: the median is well under the mean.
        let mut ins: Vec<u32> = plan.iter().map(|s| s.turns[0].user_tokens).collect();
        ins.sort_unstable();
        let median = f64::from(ins[ins.len() / 2]);
        assert!((80.0..120.0).contains(&median), "{median}");
        assert_eq!(plan, plan_sessions(&WorkloadSpec::ShareGpt, 40_000, 9));
    }

    #[test]
    fn shared_prefix_sessions_share_system_prompts_and_have_distinct_turns() {
        let p = SharedPrefix {
            systems: 3,
            system_len: 50,
            turns: 3,
            user_len: 7,
            output: 5,
        };
        let plan = plan_sessions(&WorkloadSpec::SharedPrefix(p), 60, 4);
        let mut used = std::collections::BTreeMap::new();
        for s in &plan {
            let (k, text) = s.system.clone().unwrap();
            assert_eq!(count_tokens(&text), 50);
            // Every session on system k carries the very same text.
            let first = used.entry(k).or_insert_with(|| text.clone());
            assert_eq!(**first, *text);
            assert_eq!(s.turns.len(), 3);
            assert_eq!(count_tokens(&s.user_text(2)), 7);
            assert_ne!(s.user_text(0), s.user_text(1));
        }
        assert_eq!(used.len(), 3, "all three systems are used by 60 sessions");
        let distinct: std::collections::BTreeSet<_> = used.values().collect();
        assert_eq!(
            distinct.len(),
            3,
            "the system prompts differ from each other"
        );
    }

    #[test]
    fn trace_plan_replays_and_rescales() {
        let records = trace::parse_azure_csv("0,10,2\n1,20,0\n2,30,4\n4,40,5\n").unwrap();
        let all = trace_plan(&records, None, Bound::default(), 0).unwrap();
        assert_eq!(all.arrivals, [0, 1, 2, 4].map(Duration::from_secs));
        assert_eq!(
            all.sessions[1].turns[0].max_tokens, 1,
            "zero outputs become one"
        );
        assert_eq!(all.sessions[3].turns[0].user_tokens, 40);
        // Native rate 3 / 4 s = 0.75/s; at 1.5/s times halve.
        let fast = trace_plan(&records, Some(1.5), Bound::default(), 0).unwrap();
        assert_eq!(fast.arrivals[3], Duration::from_secs(2));
        let cut = Bound {
            duration: Some(Duration::from_millis(2500)),
            requests: None,
        };
        assert_eq!(
            trace_plan(&records, None, cut, 0).unwrap().sessions.len(),
            3
        );
        let two = Bound {
            duration: None,
            requests: Some(2),
        };
        assert_eq!(
            trace_plan(&records, None, two, 0).unwrap().arrivals.len(),
            2
        );
        // The first three records arrive at 1/s; rescaled to 2/s they come every half second.
        let three = Bound {
            duration: None,
            requests: Some(3),
        };
        let plan = trace_plan(&records, Some(2.0), three, 0).unwrap();
        assert_eq!(plan.arrivals, [0, 500, 1000].map(Duration::from_millis));
    }

    #[test]
    fn plan_needs_a_rate_and_no_arrival_for_traces() {
        let b = Bound {
            duration: None,
            requests: Some(3),
        };
        let spec = WorkloadSpec::Fixed {
            input: 1,
            output: 1,
        };
        assert!(Plan::build(&spec, None, None, b, 0).is_err());
        let plan = Plan::build(&spec, Some(ArrivalProcess::Constant), Some(10.0), b, 0).unwrap();
        assert_eq!(plan.arrivals.len(), 3);
        assert_eq!(plan.total_requests(), 3);
        let trace = WorkloadSpec::Trace(PathBuf::from("/nonexistent.csv"));
        assert!(matches!(
            Plan::build(&trace, Some(ArrivalProcess::Poisson), None, b, 0),
            Err(WorkloadError::Conflict(_))
        ));
        assert!(matches!(
            Plan::build(&trace, None, None, b, 0),
            Err(WorkloadError::Trace(_))
        ));
    }
}
