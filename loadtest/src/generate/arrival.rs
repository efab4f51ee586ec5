//! Arrival processes: when each new request (or session) starts, computed up front.
//!
//! An open-loop load generator decides *when* to send before it sends anything, so that a slow
//! server cannot slow the arrivals down (the "coordinated omission" trap of closed-loop tools).
//! These are pure functions from `(process, rate, bound, seed)` to a sorted list of offsets from
//! the start of the run; the driver in [`super::run`] only follows the list.
//!
//! - `poisson`: exponential inter-arrival gaps (CV 1), the usual model of many independent users.
//! - `gamma:CV`: gamma-distributed gaps with the given coefficient of variation; CV > 1 gives bursts
//!   (real LLM traces show CV 1 to 3), CV < 1 gives a smoother stream than Poisson. The shape is
//!   `1/CV²` and the scale `CV²/rate`, so the mean gap stays `1/rate`.
//! - `constant`: evenly spaced, for isolating the server's behaviour from arrival noise.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma};

/// Largest schedule we agree to build (about 128 MB of offsets): a typo in `--rate` or
/// `--duration` should fail fast rather than exhaust memory.
pub const MAX_ARRIVALS: usize = 16_000_000;

/// How inter-arrival gaps are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalProcess {
    /// Exponential gaps (coefficient of variation 1).
    Poisson,
    /// Gamma gaps with the given coefficient of variation (> 0).
    Gamma {
        /// Coefficient of variation of the gaps (standard deviation / mean).
        cv: f64,
    },
    /// Evenly spaced arrivals.
    Constant,
}

/// When a schedule ends: after a span of time, after a number of arrivals, or whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bound {
    /// Arrivals are scheduled in `[0, duration)`.
    pub duration: Option<Duration>,
    /// At most this many arrivals.
    pub requests: Option<u64>,
}

/// Why a schedule cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArrivalError {
    /// The spec string is not one of the known forms.
    #[error("unknown arrival process {0:?} (expected poisson, gamma:CV or constant)")]
    Unknown(String),
    /// A parameter is out of range.
    #[error("invalid arrival parameter: {0}")]
    Invalid(String),
    /// Neither a duration nor a request count bounds the schedule.
    #[error("the run needs a bound: --duration or --requests")]
    Unbounded,
    /// The schedule would be too large to hold.
    #[error(
        "the schedule would hold more than {MAX_ARRIVALS} arrivals; lower --rate or --duration"
    )]
    TooLarge,
}

impl FromStr for ArrivalProcess {
    type Err = ArrivalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "poisson" => Ok(Self::Poisson),
            "constant" => Ok(Self::Constant),
            _ => {
                let Some(cv) = s.strip_prefix("gamma:") else {
                    return Err(ArrivalError::Unknown(s.to_string()));
                };
                let cv: f64 = cv.parse().map_err(|_| {
                    ArrivalError::Invalid(format!("gamma CV {cv:?} is not a number"))
                })?;
                if !(cv.is_finite() && cv > 0.0) {
                    return Err(ArrivalError::Invalid(format!(
                        "gamma CV must be > 0, got {cv}"
                    )));
                }
                Ok(Self::Gamma { cv })
            }
        }
    }
}

impl fmt::Display for ArrivalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Poisson => f.write_str("poisson"),
            Self::Gamma { cv } => write!(f, "gamma:{cv}"),
            Self::Constant => f.write_str("constant"),
        }
    }
}

/// Sorted arrival offsets from the start of the run. The same inputs always give the same schedule.
pub fn schedule(
    process: ArrivalProcess,
    rate: f64,
    bound: Bound,
    seed: u64,
) -> Result<Vec<Duration>, ArrivalError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(ArrivalError::Invalid(format!(
            "rate must be > 0, got {rate}"
        )));
    }
    let expected = match (bound.duration, bound.requests) {
        (None, None) => return Err(ArrivalError::Unbounded),
        (Some(d), None) => d.as_secs_f64() * rate * 1.2 + 16.0,
        (None, Some(n)) => n as f64,
        (Some(d), Some(n)) => (n as f64).min(d.as_secs_f64() * rate * 1.2 + 16.0),
    };
    if expected > MAX_ARRIVALS as f64 {
        return Err(ArrivalError::TooLarge);
    }
    let limit_s = bound.duration.map(|d| d.as_secs_f64());
    let max_n = bound.requests.unwrap_or(u64::MAX) as usize;
    let mut gaps = GapSampler::new(process, rate, seed)?;
    let mut out = Vec::with_capacity(expected as usize);
    let mut t = gaps.first();
    while out.len() < max_n && limit_s.is_none_or(|limit| t < limit) {
        if out.len() >= MAX_ARRIVALS {
            return Err(ArrivalError::TooLarge);
        }
        out.push(Duration::from_secs_f64(t));
        t += gaps.next_gap();
    }
    Ok(out)
}

/// Draws inter-arrival gaps in seconds.
enum GapSampler {
    Exp(Exp<f64>, ChaCha8Rng),
    Gamma(Gamma<f64>, ChaCha8Rng),
    Constant(f64),
}

impl GapSampler {
    fn new(process: ArrivalProcess, rate: f64, seed: u64) -> Result<Self, ArrivalError> {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(match process {
            ArrivalProcess::Poisson => Self::Exp(
                Exp::new(rate).map_err(|e| ArrivalError::Invalid(e.to_string()))?,
                rng,
            ),
            ArrivalProcess::Gamma { cv } => {
                let shape = 1.0 / (cv * cv);
                let scale = 1.0 / (rate * shape);
                Self::Gamma(
                    Gamma::new(shape, scale).map_err(|e| ArrivalError::Invalid(e.to_string()))?,
                    rng,
                )
            }
            ArrivalProcess::Constant => Self::Constant(1.0 / rate),
        })
    }

    /// The first arrival: a random process's first gap (the run starts at an arbitrary instant,
    /// not at an arrival), or zero for a constant stream.
    fn first(&mut self) -> f64 {
        match self {
            Self::Constant(_) => 0.0,
            _ => self.next_gap(),
        }
    }

    fn next_gap(&mut self) -> f64 {
        match self {
            Self::Exp(d, rng) => d.sample(rng),
            Self::Gamma(d, rng) => d.sample(rng),
            Self::Constant(gap) => *gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap_stats(s: &[Duration]) -> (f64, f64) {
        let gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt() / mean)
    }

    fn by_count(n: u64) -> Bound {
        Bound {
            duration: None,
            requests: Some(n),
        }
    }

    #[test]
    fn parses_specs() {
        assert_eq!("poisson".parse(), Ok(ArrivalProcess::Poisson));
        assert_eq!("constant".parse(), Ok(ArrivalProcess::Constant));
        assert_eq!("gamma:2.5".parse(), Ok(ArrivalProcess::Gamma { cv: 2.5 }));
        assert!("gamma:0".parse::<ArrivalProcess>().is_err());
        assert!("gamma:x".parse::<ArrivalProcess>().is_err());
        assert!("uniform".parse::<ArrivalProcess>().is_err());
        assert_eq!(ArrivalProcess::Gamma { cv: 2.5 }.to_string(), "gamma:2.5");
    }

    #[test]
    fn poisson_has_the_mean_rate_and_cv_one() {
        let s = schedule(ArrivalProcess::Poisson, 50.0, by_count(20_000), 1).unwrap();
        assert_eq!(s.len(), 20_000);
        let (mean, cv) = gap_stats(&s);
        assert!((mean - 0.02).abs() < 0.02 * 0.03, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn gamma_has_the_mean_rate_and_the_requested_cv() {
        for want_cv in [0.5, 2.0, 3.0] {
            let p = ArrivalProcess::Gamma { cv: want_cv };
            let s = schedule(p, 100.0, by_count(50_000), 7).unwrap();
            let (mean, cv) = gap_stats(&s);
            assert!(
                (mean - 0.01).abs() < 0.01 * 0.05,
                "cv {want_cv}: mean gap {mean}"
            );
            assert!(
                (cv - want_cv).abs() < want_cv * 0.08,
                "want {want_cv} got {cv}"
            );
        }
    }

    #[test]
    fn constant_is_evenly_spaced_from_zero() {
        let s = schedule(ArrivalProcess::Constant, 4.0, by_count(5), 0).unwrap();
        let secs: Vec<f64> = s.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn same_seed_same_schedule_and_different_seed_differs() {
        let b = by_count(1000);
        let a1 = schedule(ArrivalProcess::Poisson, 10.0, b, 42).unwrap();
        let a2 = schedule(ArrivalProcess::Poisson, 10.0, b, 42).unwrap();
        let b1 = schedule(ArrivalProcess::Poisson, 10.0, b, 43).unwrap();
        assert_eq!(a1, a2);
        assert_ne!(a1, b1);
    }

    #[test]
    fn duration_bounds_the_schedule() {
        let bound = Bound {
            duration: Some(Duration::from_secs(100)),
            requests: None,
        };
        let s = schedule(ArrivalProcess::Poisson, 20.0, bound, 3).unwrap();
        assert!(s.iter().all(|t| *t < Duration::from_secs(100)));
        let n = s.len() as f64;
        assert!((n - 2000.0).abs() < 2000.0 * 0.08, "{n}");
        let both = Bound {
            duration: Some(Duration::from_secs(100)),
            requests: Some(10),
        };
        assert_eq!(
            schedule(ArrivalProcess::Poisson, 20.0, both, 3)
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn rejects_bad_inputs() {
        assert_eq!(
            schedule(ArrivalProcess::Poisson, 1.0, Bound::default(), 0),
            Err(ArrivalError::Unbounded)
        );
        assert!(schedule(ArrivalProcess::Poisson, 0.0, by_count(1), 0).is_err());
        assert!(schedule(ArrivalProcess::Poisson, f64::NAN, by_count(1), 0).is_err());
        let huge = Bound {
            duration: Some(Duration::from_secs(1_000_000)),
            requests: None,
        };
        assert_eq!(
            schedule(ArrivalProcess::Poisson, 1e6, huge, 0),
            Err(ArrivalError::TooLarge)
        );
    }
}
