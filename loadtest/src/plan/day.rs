//! A generated day: a diurnal arrival rate with bursts, turned into the load generator's
//! [`Plan`] so that the planner and `loadtest run` share one notion of a workload.
//!
//! The rate over the day is
//!
//! ```text
//! rate(t) = trough + (peak - trough) * ((1 + cos(2π (t - peak_at) / 24h)) / 2) ^ sharpness
//! ```
//!
//! times a burst factor inside each burst. `sharpness` 1 is a plain sinusoid (mean halfway between
//! trough and peak); 2 (the default) narrows the busy hours the way interactive traffic does (a
//! working-day plateau, a long quiet night): the mean is then `trough + 3/8 (peak - trough)`.
//! Bursts (`bursts.count` of them, `bursts.length` long, at seeded random times) multiply the rate
//! by `bursts.factor`: a launch, a batch job, a retry storm.
//!
//! Arrivals come from the load generator's own arrival processes ([`arrival::schedule`], Poisson or
//! gamma with a CV) run at unit rate in *operational time* `Λ(t) = ∫ rate`, then mapped back through
//! `Λ⁻¹` (the time-rescaling theorem), so the gaps keep the process's character at every rate.
//! Lengths come from the load generator's workloads ([`plan_sessions`]), or are resampled from a
//! trace's records (`trace:FILE`), which gives real prompt/answer lengths on a day-long shape.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::scenario::{ScenarioError, parse_lengths};
use crate::generate::arrival::{self, ArrivalProcess, Bound};
use crate::generate::trace::read_azure_csv;
use crate::generate::workload::{Plan, SessionPlan, TurnPlan, WorkloadSpec, plan_sessions};

/// The shape of a generated day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DayConfig {
    /// How long the generated span is (a day by default; shorter for tests).
    #[serde(with = "crate::generate::duration_serde")]
    pub duration: Duration,
    /// The length of one diurnal cycle.
    #[serde(with = "crate::generate::duration_serde")]
    pub period: Duration,
    /// Sessions per second at the busiest time.
    pub peak_rate: f64,
    /// Sessions per second at the quietest time.
    pub trough_rate: f64,
    /// When the peak is, from the start.
    #[serde(with = "crate::generate::duration_serde")]
    pub peak_at: Duration,
    /// Exponent of the raised cosine (see the module docs).
    pub sharpness: f64,
    /// Bursts on top of the diurnal rate.
    pub bursts: Bursts,
    /// `poisson` or `gamma:CV`, as `loadtest run --arrival`.
    pub arrival: String,
    /// Lengths: a `loadtest run --workload` spec; `trace:FILE` resamples the trace's records.
    pub lengths: String,
}

impl Default for DayConfig {
    fn default() -> Self {
        DayConfig {
            duration: Duration::from_secs(24 * 3600),
            period: Duration::from_secs(24 * 3600),
            peak_rate: 10.0,
            trough_rate: 0.5,
            peak_at: Duration::from_secs(14 * 3600),
            sharpness: 2.0,
            bursts: Bursts::default(),
            arrival: "poisson".into(),
            lengths: "sharegpt".into(),
        }
    }
}

/// Bursts on top of the diurnal rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bursts {
    /// How many.
    pub count: u32,
    /// How long each lasts.
    #[serde(with = "crate::generate::duration_serde")]
    pub length: Duration,
    /// Rate multiplier inside a burst.
    pub factor: f64,
}

impl Default for Bursts {
    fn default() -> Self {
        Bursts {
            count: 6,
            length: Duration::from_secs(300),
            factor: 2.0,
        }
    }
}

impl DayConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(self.peak_rate) && ok(self.trough_rate) && self.peak_rate > 0.0) {
            return Err(ScenarioError::Invalid(
                "day: peak_rate must be > 0 and trough_rate >= 0".into(),
            ));
        }
        if !(ok(self.sharpness) && ok(self.bursts.factor) && self.bursts.factor > 0.0) {
            return Err(ScenarioError::Invalid(
                "day: sharpness must be >= 0 and bursts.factor > 0".into(),
            ));
        }
        if self.duration < Duration::from_secs(1) || self.period.is_zero() {
            return Err(ScenarioError::Invalid(
                "day: duration must be at least 1s and period > 0".into(),
            ));
        }
        self.arrival_process()?;
        parse_lengths(&self.lengths)?;
        Ok(())
    }

    fn arrival_process(&self) -> Result<ArrivalProcess, ScenarioError> {
        self.arrival
            .parse()
            .map_err(|e: arrival::ArrivalError| ScenarioError::Invalid(e.to_string()))
    }

    /// The diurnal rate (bursts excluded) at `t` seconds.
    pub fn base_rate(&self, t: f64) -> f64 {
        let phase = 2.0 * std::f64::consts::PI * (t - self.peak_at.as_secs_f64())
            / self.period.as_secs_f64();
        let lift = ((1.0 + phase.cos()) / 2.0).powf(self.sharpness);
        self.trough_rate + (self.peak_rate - self.trough_rate) * lift
    }

    /// The rate in each whole second of the span, bursts included. Deterministic in `seed`.
    pub fn rate_per_second(&self, seed: u64) -> Vec<f64> {
        let secs = self.duration.as_secs().max(1) as usize;
        let mut rates: Vec<f64> = (0..secs).map(|i| self.base_rate(i as f64 + 0.5)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xB0B5_7000);
        let len = (self.bursts.length.as_secs() as usize).min(secs);
        for _ in 0..self.bursts.count {
            if len == 0 {
                break;
            }
            let start = rng.random_range(0..=secs - len);
            for r in &mut rates[start..start + len] {
                *r *= self.bursts.factor;
            }
        }
        rates
    }

    /// Plans the day: arrival times and what each session asks for.
    pub fn plan(&self, seed: u64) -> Result<Plan, ScenarioError> {
        self.validate()?;
        let rates = self.rate_per_second(seed);
        let total: f64 = rates.iter().sum();
        let arrivals = if total > 0.0 {
            let unit = arrival::schedule(
                self.arrival_process()?,
                1.0,
                Bound {
                    duration: Some(Duration::from_secs_f64(total)),
                    requests: None,
                },
                seed,
            )
            .map_err(|e| ScenarioError::Invalid(e.to_string()))?;
            map_to_wall_time(&unit, &rates)
        } else {
            Vec::new()
        };
        let sessions = match parse_lengths(&self.lengths)? {
            WorkloadSpec::Trace(path) => {
                let records =
                    read_azure_csv(&path).map_err(|e| ScenarioError::Invalid(e.to_string()))?;
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ACE);
                (0..arrivals.len() as u64)
                    .map(|id| {
                        let r = records[rng.random_range(0..records.len())];
                        SessionPlan {
                            id,
                            system: None,
                            turns: vec![TurnPlan {
                                user_tokens: r.input_tokens.max(1),
                                max_tokens: r.output_tokens.max(1),
                                text_seed: rng.random(),
                            }],
                        }
                    })
                    .collect()
            }
            spec => plan_sessions(&spec, arrivals.len(), seed),
        };
        Ok(Plan { arrivals, sessions })
    }
}

/// Maps unit-rate arrivals in operational time back to wall time through `Λ⁻¹`, with `rates[i]`
/// the rate during second `i` (piecewise constant, so `Λ` is piecewise linear).
fn map_to_wall_time(unit: &[Duration], rates: &[f64]) -> Vec<Duration> {
    let mut out = Vec::with_capacity(unit.len());
    let mut sec = 0usize;
    let mut lambda_at_sec = 0.0; // Λ at the start of `sec`
    for s in unit {
        let s = s.as_secs_f64();
        while sec < rates.len() && lambda_at_sec + rates[sec] <= s {
            lambda_at_sec += rates[sec];
            sec += 1;
        }
        if sec >= rates.len() {
            break;
        }
        let t = sec as f64 + (s - lambda_at_sec) / rates[sec];
        out.push(Duration::from_secs_f64(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_day() -> DayConfig {
        DayConfig {
            duration: Duration::from_secs(3600),
            period: Duration::from_secs(3600),
            peak_at: Duration::from_secs(1800),
            peak_rate: 20.0,
            trough_rate: 2.0,
            bursts: Bursts {
                count: 0,
                ..Bursts::default()
            },
            lengths: "fixed:100:10".into(),
            ..DayConfig::default()
        }
    }

    #[test]
    fn arrivals_follow_the_rate() {
        let day = short_day();
        let plan = day.plan(7).expect("plan");
        let count_in = |a: f64, b: f64| {
            plan.arrivals
                .iter()
                .filter(|t| (a..b).contains(&t.as_secs_f64()))
                .count() as f64
        };
        let expect = |a: f64, b: f64| -> f64 {
            (a as usize..b as usize)
                .map(|i| day.base_rate(i as f64 + 0.5))
                .sum()
        };
        // Around the peak and around the trough, within 10%.
        for (a, b) in [(1500.0, 2100.0), (0.0, 300.0)] {
            let (got, want) = (count_in(a, b), expect(a, b));
            assert!((got - want).abs() / want < 0.1, "{a}-{b}: {got} vs {want}");
        }
        assert!(plan.arrivals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(plan.arrivals.len(), plan.sessions.len());
        assert_eq!(day.plan(7).expect("again").arrivals, plan.arrivals);
    }

    #[test]
    fn bursts_raise_the_rate() {
        let mut day = short_day();
        let calm: f64 = day.rate_per_second(1).iter().sum();
        day.bursts = Bursts {
            count: 2,
            length: Duration::from_secs(60),
            factor: 3.0,
        };
        let bursty: f64 = day.rate_per_second(1).iter().sum();
        assert!(bursty > calm * 1.02, "{bursty} vs {calm}");
    }
}
