//! infergate's configuration file: one typed source of truth for the gateway, the autoscaler and the
//! Helm chart.
//!
//! One YAML file describes the pools (which models, where their pods are, how they are scaled) and the
//! settings of each part. The gateway reads `gateway` and `pools`; the autoscaler reads `autoscaler`
//! and `pools`; the chart renders the whole file from `values.pools` into one ConfigMap, so the two
//! can never disagree about a pool.
//!
//! Every field has a default except what only the user can know (a pool's name, models and
//! discovery). Unknown keys are rejected: a misspelt `max_replica` must fail at start, not silently
//! mean "default". [`Config::load`] reports the file, the field path and why.
#![forbid(unsafe_code)]

mod autoscaler;
mod duration;
mod gateway;
mod load;
mod pool;

pub use autoscaler::*;
pub use gateway::*;
pub use load::ConfigError;
pub use pool::*;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the gateway (`infergate gateway`).
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Settings of the autoscaler (`infergate autoscaler`).
    #[serde(default)]
    pub autoscaler: AutoscalerConfig,
    /// The pools of model-server endpoints; each serves one or more model names.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// The pool that serves `model`, if any.
    pub fn pool_for_model(&self, model: &str) -> Option<&PoolConfig> {
        self.pools
            .iter()
            .find(|p| p.models.iter().any(|m| m == model))
    }
}
