//! `infergate loadtest step`: the autoscaling scenario report.
//!
//! A step load from a small fraction of ONE pod's capacity to more than one pod can serve and
//! back ([`schedule`]), offered to `infergate up` as a user runs it (gateway, autoscaler, local
//! actuator, simulated pods: [`pool`]), sampled every second ([`sample`]): replicas desired,
//! current and ready, the gateway's held queue and the pods' engine queues. Then the same load
//! against a fixed pool sized for the peak. The pure [`analysis`] turns samples and per-request
//! points into a time series (p90 TTFT over a trailing window) and a summary per pool (SLO
//! attainment, pod-seconds, scale events); [`output`] writes the CSV and the table, [`plot`] the
//! SVG. "One pod's capacity" is measured by [`capacity`], or given.

pub mod analysis;
pub mod capacity;
pub mod output;
pub mod plot;
pub mod pool;
pub mod run;
pub mod sample;
pub mod schedule;

use std::path::Path;

pub use run::{PoolResult, StepConfig, StepReport, run};
pub use schedule::StepSchedule;

use crate::compare::process::ProcessError;
use crate::generate::RunError;

/// Why the scenario could not be run or reported.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// `up` could not be started or reached.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A load-generator run could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The capacity probe or a readiness wait failed.
    #[error("{0}")]
    Probe(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error("plotting {path}: {message}")]
    Plot {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Interrupted.
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StepError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
