//! A planning scenario: the pool, its policies, the SLOs and the workload, from a YAML file
//! (`loadtest/scenarios/plan-*.yaml`), with CLI flags applied on top.
//!
//! The picker, flow-control and autoscaling sections are the very config types the gateway and the
//! autoscaler read (`infergate_config`), with the same defaults, so a block copied from a real
//! `infergate.yaml` means the same thing here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infergate_config::{AutoscalingConfig, FlowConfig, PickerConfig};
use serde::{Deserialize, Serialize};

use crate::generate::workload::WorkloadSpec;
use crate::sim::{EngineConfig, Profile};

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read, or its YAML does not describe a scenario.
    #[error(transparent)]
    File(#[from] crate::scenario_file::ScenarioFileError),
    /// A value is out of range or names something unknown.
    #[error("scenario: {0}")]
    Invalid(String),
}

/// The whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Seed of arrivals, lengths and engines.
    pub seed: u64,
    /// The `model` field of every request.
    pub model: String,
    /// The pods.
    pub pods: PodsConfig,
    /// The gateway's picker (policy, weights, prefix hashing), as `gateway.picker`.
    pub picker: PickerConfig,
    /// The gateway's flow control (saturation, bounded queue, timeout), as `gateway.flow`.
    pub flow: FlowConfig,
    /// The gateway's scrape interval.
    #[serde(with = "crate::generate::duration_serde")]
    pub scrape_interval: Duration,
    /// The autoscaler's decision interval.
    #[serde(with = "crate::generate::duration_serde")]
    pub autoscaler_interval: Duration,
    /// The pool's autoscaling, as `pools[].autoscaling`.
    pub autoscaling: AutoscalingConfig,
    /// The objectives judged.
    pub slo: SloConfig,
    /// What arrives.
    pub workload: WorkloadConfig,
    /// Other autoscaling settings to compare against (each a full `autoscaling` block; missing
    /// fields take the defaults). `--compare` runs them with the fixed pool.
    pub variants: Vec<Variant>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "plan".into(),
            seed: 1,
            model: "sim-llama-3-8b".into(),
            pods: PodsConfig::default(),
            picker: PickerConfig::default(),
            flow: FlowConfig::default(),
            scrape_interval: Duration::from_millis(100),
            autoscaler_interval: Duration::from_secs(1),
            autoscaling: AutoscalingConfig::default(),
            slo: SloConfig::default(),
            workload: WorkloadConfig::default(),
            variants: Vec::new(),
        }
    }
}

/// The simulated pods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PodsConfig {
    /// The step-time profile (`infergate sim --profile`).
    pub profile: String,
    /// Most requests in a pod's batch.
    pub max_num_seqs: usize,
    /// Token budget of one step.
    pub max_num_batched_tokens: usize,
    /// Context length.
    pub max_model_len: usize,
    /// KV blocks per pod (default: the profile's).
    pub num_gpu_blocks: Option<u32>,
    /// Pods ready at time zero (default: `autoscaling.min_replicas`, at least 1).
    pub initial: Option<u32>,
    /// Time from "replica requested" to "ready": scheduling, image pull, weights load, CUDA graph
    /// capture. 60 s is a warm node pulling an 8B model from a local cache; cold nodes take minutes.
    #[serde(with = "crate::generate::duration_serde")]
    pub cold_start: Duration,
}

impl Default for PodsConfig {
    fn default() -> Self {
        PodsConfig {
            profile: Profile::default().name.to_string(),
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: 32_768,
            num_gpu_blocks: None,
            initial: None,
            cold_start: Duration::from_secs(60),
        }
    }
}

impl PodsConfig {
    /// The profile and engine limits for one pod.
    pub fn engine(&self) -> Result<(Profile, EngineConfig), ScenarioError> {
        let profile = Profile::named(&self.profile).ok_or_else(|| {
            ScenarioError::Invalid(format!(
                "unknown profile {:?} (known: {})",
                self.profile,
                Profile::names().join(", ")
            ))
        })?;
        let mut cfg = EngineConfig::for_profile(&profile);
        cfg.max_num_seqs = self.max_num_seqs.max(1);
        cfg.max_num_batched_tokens = self.max_num_batched_tokens.max(1);
        cfg.max_model_len = self.max_model_len.max(1);
        if let Some(b) = self.num_gpu_blocks {
            cfg.num_gpu_blocks = b.max(1);
        }
        Ok((profile, cfg))
    }
}

/// Service-level objectives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SloConfig {
    /// Time to first token, measured at the client (gateway hold time included).
    #[serde(with = "crate::generate::duration_serde")]
    pub ttft: Duration,
    /// Mean inter-token latency per request (TPOT), as `loadtest run` judges it.
    #[serde(with = "crate::generate::duration_serde")]
    pub itl: Duration,
    /// Share of requests that must meet the TTFT SLO (sizes the fixed pool).
    pub attainment: f64,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            ttft: Duration::from_secs(2),
            itl: Duration::from_millis(100),
            attainment: 0.99,
        }
    }
}

/// What arrives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadConfig {
    /// Replay an Azure LLM trace CSV: its arrivals and lengths.
    Trace {
        /// The CSV file (relative paths from the working directory).
        path: PathBuf,
        /// Rescale arrivals to this mean rate (requests per second).
        #[serde(default)]
        rate: Option<f64>,
        /// Replay only this long.
        #[serde(default, with = "crate::generate::duration_serde::option")]
        duration: Option<Duration>,
    },
    /// A generated day (see [`super::day`]).
    Day(super::day::DayConfig),
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig::Day(super::day::DayConfig::default())
    }
}

/// A named autoscaling setting to compare.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its name in the comparison table.
    pub name: String,
    /// The setting.
    #[serde(default)]
    pub autoscaling: AutoscalingConfig,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let s: Scenario = crate::scenario_file::read(path)?;
        s.validate()?;
        Ok(s)
    }

    /// Parses scenario YAML.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = crate::scenario_file::parse(text, "(text)")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.pods.engine()?;
        if self.scrape_interval.is_zero() || self.autoscaler_interval.is_zero() {
            return Err(ScenarioError::Invalid(
                "scrape_interval and autoscaler_interval must be > 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.slo.attainment) {
            return Err(ScenarioError::Invalid(format!(
                "slo.attainment must be in [0, 1], got {}",
                self.slo.attainment
            )));
        }
        if let WorkloadConfig::Day(d) = &self.workload {
            d.validate()?;
        }
        Ok(())
    }

    /// Pods ready at time zero for an autoscaled run.
    pub fn initial_pods(&self, autoscaling: &AutoscalingConfig) -> u32 {
        self.pods
            .initial
            .unwrap_or(autoscaling.min_replicas.max(1))
            .clamp(autoscaling.min_replicas, autoscaling.max_replicas.max(1))
    }
}

/// Parses the `lengths` of a generated day: a `--workload` spec of the load generator.
pub fn parse_lengths(spec: &str) -> Result<WorkloadSpec, ScenarioError> {
    spec.parse()
        .map_err(|e: crate::generate::workload::WorkloadError| {
            ScenarioError::Invalid(e.to_string())
        })
}
