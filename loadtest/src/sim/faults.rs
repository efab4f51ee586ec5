//! Fault injection: what a gateway and an autoscaler must survive, settable by flag at start and at
//! run time through `POST /admin/faults`.
//!
//! - `error_rate`: share of completion requests answered with an OpenAI-shaped 500.
//! - `latency_ms`: added before a completion request is handled (real time, not scaled by `--speed`).
//! - `hang_rate`: share of completion requests that are accepted and never answered.
//! - `crash_after`: the process exits (status 1) when request number `crash_after + 1` arrives.
//! - `crash_mid_stream_after`: the process exits in the middle of streaming request number
//!   `crash_mid_stream_after` (counting streams from 1), right after its first token was sent.
//! - `fail_health`: `/health` answers 503.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fault settings; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Share of requests answered with 500, 0..=1.
    pub error_rate: f64,
    /// Added latency before handling, milliseconds.
    pub latency_ms: u64,
    /// Share of requests that hang, 0..=1.
    pub hang_rate: f64,
    /// Exit when more than this many completion requests have arrived.
    pub crash_after: Option<u64>,
    /// Exit in the middle of this streaming request (1-based).
    pub crash_mid_stream_after: Option<u64>,
    /// `/health` fails.
    pub fail_health: bool,
}

/// What to do with one completion request, before the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Handle it normally.
    Proceed,
    /// Answer 500.
    Error,
    /// Never answer.
    Hang,
    /// Exit the process.
    Crash,
}

/// A malformed `/admin/faults` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

impl Faults {
    /// The fate of the `nth` completion request (1-based), given two uniform draws in `0..1`.
    pub fn decide(&self, nth: u64, error_roll: f64, hang_roll: f64) -> FaultAction {
        if self.crash_after.is_some_and(|n| nth > n) {
            FaultAction::Crash
        } else if error_roll < self.error_rate {
            FaultAction::Error
        } else if hang_roll < self.hang_rate {
            FaultAction::Hang
        } else {
            FaultAction::Proceed
        }
    }

    /// Applies a JSON object of the same fields; fields not present keep their value, `null`
    /// turns an optional one off. Unknown fields and wrong types are errors, and then nothing changes.
    pub fn apply_patch(&mut self, body: &[u8]) -> Result<(), PatchError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| PatchError(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(PatchError("expected a JSON object".into()));
        };
        let mut next = self.clone();
        for (key, v) in &map {
            let bad = || PatchError(format!("invalid value for {key}: {v}"));
            match key.as_str() {
                "error_rate" => next.error_rate = rate(v).ok_or_else(bad)?,
                "hang_rate" => next.hang_rate = rate(v).ok_or_else(bad)?,
                "latency_ms" => next.latency_ms = v.as_u64().ok_or_else(bad)?,
                "crash_after" => next.crash_after = optional_u64(v).ok_or_else(bad)?,
                "crash_mid_stream_after" => {
                    next.crash_mid_stream_after = optional_u64(v).ok_or_else(bad)?
                }
                "fail_health" => next.fail_health = v.as_bool().ok_or_else(bad)?,
                other => return Err(PatchError(format!("unknown field {other}"))),
            }
        }
        *self = next;
        Ok(())
    }
}

fn rate(v: &Value) -> Option<f64> {
    v.as_f64().filter(|r| (0.0..=1.0).contains(r))
}

fn optional_u64(v: &Value) -> Option<Option<u64>> {
    if v.is_null() {
        Some(None)
    } else {
        v.as_u64().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_orders_crash_error_hang() {
        let f = Faults {
            error_rate: 0.5,
            hang_rate: 0.5,
            crash_after: Some(3),
            ..Faults::default()
        };
        assert_eq!(f.decide(4, 0.9, 0.9), FaultAction::Crash);
        assert_eq!(f.decide(3, 0.1, 0.1), FaultAction::Error);
        assert_eq!(f.decide(3, 0.9, 0.1), FaultAction::Hang);
        assert_eq!(f.decide(3, 0.9, 0.9), FaultAction::Proceed);
        assert_eq!(
            Faults::default().decide(1_000, 0.0, 0.0),
            FaultAction::Proceed
        );
    }

    #[test]
    fn patches_merge_and_reject_whole() {
        let mut f = Faults::default();
        f.apply_patch(br#"{"error_rate":0.25,"crash_after":10,"fail_health":true}"#)
            .expect("valid");
        assert_eq!(f.error_rate, 0.25);
        assert_eq!(f.crash_after, Some(10));
        f.apply_patch(br#"{"crash_after":null}"#).expect("valid");
        assert_eq!(f.crash_after, None);
        assert!(f.fail_health);
        let before = f.clone();
        assert!(f.apply_patch(br#"{"error_rate":2}"#).is_err());
        assert!(f.apply_patch(br#"{"latency_ms":5,"bogus":1}"#).is_err());
        assert!(f.apply_patch(b"[1]").is_err());
        assert_eq!(f, before);
    }
}
