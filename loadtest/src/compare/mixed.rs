//! The head-of-line workload: mostly short requests, a few long ones, on one arrival schedule.
//!
//! The load generator replays traces, so the mix is written as a small trace file (the Azure
//! format, plain seconds) and replayed: every contender then gets the very same requests at the
//! very same instants, and the file stays next to the results for anyone to inspect.

use std::fmt::Write as _;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::Mixed;
use crate::generate::arrival::{self, ArrivalError, ArrivalProcess, Bound};

/// Writes the mix's trace to `path`: arrivals from `process` at `rate` per second for `duration`,
/// each long with probability `long_share`. Deterministic in `seed`.
pub fn write_trace(
    path: &Path,
    mix: &Mixed,
    process: ArrivalProcess,
    rate: f64,
    duration: std::time::Duration,
    seed: u64,
) -> Result<usize, MixedError> {
    let offsets = arrival::schedule(
        process,
        rate,
        Bound {
            duration: Some(duration),
            requests: None,
        },
        seed,
    )?;
    if offsets.len() < 2 {
        return Err(MixedError::TooFew(offsets.len()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4D49_5845_4421);
    let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for t in &offsets {
        let (i, o) = if rng.random::<f64>() < mix.long_share {
            (mix.long_in, mix.long_out)
        } else {
            (mix.short_in, mix.short_out)
        };
        let _ = writeln!(text, "{:.6},{i},{o}", t.as_secs_f64());
    }
    std::fs::write(path, text).map_err(|source| MixedError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(offsets.len())
}

/// Why the mix's trace could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MixedError {
    /// The schedule cannot be built.
    #[error(transparent)]
    Arrival(#[from] ArrivalError),
    /// Too few arrivals for a trace (the replay needs two instants).
    #[error("the mixed workload scheduled {0} arrivals; raise the rate or the duration")]
    TooFew(usize),
    /// The file cannot be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::trace::read_azure_csv;
    use std::time::Duration;

    #[test]
    fn writes_a_replayable_deterministic_mix() {
        let dir = std::env::temp_dir().join(format!("ig-mixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mix: Mixed = "mixed:64:32:4000:256:0.2".parse().unwrap();
        let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
        let n = write_trace(
            &a,
            &mix,
            ArrivalProcess::Poisson,
            50.0,
            Duration::from_secs(10),
            3,
        )
        .unwrap();
        write_trace(
            &b,
            &mix,
            ArrivalProcess::Poisson,
            50.0,
            Duration::from_secs(10),
            3,
        )
        .unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let recs = read_azure_csv(&a).unwrap();
        assert_eq!(recs.len(), n);
        let long = recs.iter().filter(|r| r.input_tokens == 4000).count() as f64 / n as f64;
        assert!((0.1..0.3).contains(&long), "{long}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
