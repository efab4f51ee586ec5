//! The open-loop load generator behind `infergate loadtest run`.
//!
//! A run is planned before it starts ([`workload::Plan`]: when each session arrives, per the
//! [`arrival`] process, and what it asks for), then [`run::run`] follows the plan on the wall clock
//! whatever the server does, measuring how late each start was. Streaming responses are parsed as
//! they arrive ([`sse`], [`client`]) and folded into histograms ([`report`]).

pub mod arrival;
#[cfg(test)]
mod canned;
pub mod client;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod sse;
pub mod trace;
pub mod workload;

pub use report::RunReport;
pub use run::{RunConfig, RunError, run};

/// Parses a duration for the CLI: `humantime` syntax (`500ms`, `2m`, `1h 30m`) or a plain number
/// of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("bad duration {s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Human durations (`500ms`, `60s`, or plain seconds like `2.5`) in scenario files, read with
/// [`parse_duration`] as on the command line; used by `compare` and `plan` scenarios alike.
pub(crate) mod duration_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Duration>`.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(deserialize_with = "super::deserialize")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn parses_durations() {
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            super::parse_duration("2.5"),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(super::parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(super::parse_duration("-1").is_err());
        assert!(super::parse_duration("soon").is_err());
    }
}
