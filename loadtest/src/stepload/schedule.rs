//! The step load: a piecewise-constant offered rate, in fractions of one pod's capacity.
//!
//! Each step holds its rate for the same duration. The fractions are relative to ONE pod's
//! capacity (see [`super::capacity`]) so that "150%" means "more than one pod can serve": the
//! autoscaled pool must add a pod, and a fixed pool sized for the peak needs `ceil(1.5) = 2`.

use std::time::Duration;

/// The default: 10% -> 50% -> 100% -> 150% and back down.
pub const DEFAULT_PERCENTS: [f64; 7] = [10.0, 50.0, 100.0, 150.0, 100.0, 50.0, 10.0];

/// A step load: each fraction of one pod's capacity held for `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSchedule {
    /// Offered load per step, as a fraction of one pod's capacity (1.0 = 100%).
    pub fractions: Vec<f64>,
    /// How long each step lasts.
    pub step: Duration,
}

impl StepSchedule {
    /// The default shape with the given step length.
    pub fn default_with(step: Duration) -> Self {
        Self {
            fractions: DEFAULT_PERCENTS.iter().map(|p| p / 100.0).collect(),
            step,
        }
    }

    /// The whole schedule's length.
    pub fn total(&self) -> Duration {
        self.step * self.fractions.len() as u32
    }

    /// The largest fraction (the peak).
    pub fn peak(&self) -> f64 {
        self.fractions.iter().copied().fold(0.0, f64::max)
    }

    /// Pods a fixed pool needs to serve the peak: `ceil(peak)`, at least one.
    pub fn pods_for_peak(&self) -> u32 {
        // A peak of 1.0000001 (a float from "100") must not round up to 2.
        ((self.peak() - 1e-9).ceil().max(1.0)) as u32
    }

    /// The offered fraction at `t_s` seconds into the run (0 before the start and after the end).
    pub fn fraction_at(&self, t_s: f64) -> f64 {
        let step = self.step.as_secs_f64();
        if t_s < 0.0 || step <= 0.0 {
            return 0.0;
        }
        self.fractions
            .get((t_s / step) as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// Each step's start offset and fraction.
    pub fn steps(&self) -> impl Iterator<Item = (Duration, f64)> + '_ {
        self.fractions
            .iter()
            .enumerate()
            .map(|(k, f)| (self.step * k as u32, *f))
    }
}

/// Parses `--steps 10,50,100,150,100,50,10` (percent of one pod's capacity; a trailing `%` is
/// allowed) into fractions.
pub fn parse_percents(s: &str) -> Result<Vec<f64>, String> {
    let out = s
        .split(',')
        .map(|p| {
            let p = p.trim().trim_end_matches('%');
            match p.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v / 100.0),
                _ => Err(format!("bad step {p:?}: expected a percentage >= 0")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if out.iter().all(|f| *f == 0.0) {
        return Err("the steps offer no load".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shape_peaks_at_150_percent_and_needs_two_pods() {
        let s = StepSchedule::default_with(Duration::from_secs(10));
        assert_eq!(s.total(), Duration::from_secs(70));
        assert_eq!(s.peak(), 1.5);
        assert_eq!(s.pods_for_peak(), 2);
        assert_eq!(s.fraction_at(0.0), 0.1);
        assert_eq!(s.fraction_at(35.0), 1.5);
        assert_eq!(s.fraction_at(69.9), 0.1);
        assert_eq!(s.fraction_at(70.0), 0.0);
        assert_eq!(s.fraction_at(-1.0), 0.0);
        let starts: Vec<u64> = s.steps().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(starts, vec![0, 10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn pods_for_peak_rounds_up_but_not_on_exact_multiples() {
        let mut s = StepSchedule::default_with(Duration::from_secs(1));
        s.fractions = parse_percents("10,100").unwrap();
        assert_eq!(s.pods_for_peak(), 1);
        s.fractions = parse_percents("10,201%").unwrap();
        assert_eq!(s.pods_for_peak(), 3);
        s.fractions = vec![0.05];
        assert_eq!(s.pods_for_peak(), 1);
    }

    #[test]
    fn parses_percentages() {
        assert_eq!(parse_percents("10, 50%,150").unwrap(), vec![0.1, 0.5, 1.5]);
        assert!(parse_percents("10,x").is_err());
        assert!(parse_percents("-5").is_err());
        assert!(parse_percents("0,0").is_err());
    }
}
