//! A pool: the model-server endpoints that serve a set of model names, where to find them, and how to
//! scale them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::PickerPolicy;

/// `pools[]` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name; used in metrics labels and logs.
    pub name: String,
    /// The `model` names this pool serves (the request's `model` field routes to the pool).
    pub models: Vec<String>,
    /// Which metric names the endpoints export.
    #[serde(default)]
    pub flavor: Flavor,
    /// Where the endpoints are.
    pub discovery: Discovery,
    /// This pool's picker policy, if not the gateway's default.
    #[serde(default)]
    pub policy: Option<PickerPolicy>,
    /// How the autoscaler scales this pool; absent means it does not.
    #[serde(default)]
    pub autoscaling: Option<AutoscalingConfig>,
}

/// The model server's metric dialect.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Vllm,
    Sglang,
    Tgi,
    /// Detect from the first scrape.
    #[default]
    Auto,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Sglang => "sglang",
            Flavor::Tgi => "tgi",
            Flavor::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vllm" => Ok(Flavor::Vllm),
            "sglang" => Ok(Flavor::Sglang),
            "tgi" => Ok(Flavor::Tgi),
            "auto" => Ok(Flavor::Auto),
            _ => Err(format!(
                "unknown flavor `{s}`; expected vllm, sglang, tgi or auto"
            )),
        }
    }
}

/// Where a pool's endpoints come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Discovery {
    /// A fixed list of base URLs.
    Static { endpoints: Vec<String> },
    /// Kubernetes EndpointSlices of a Service, or selected by labels.
    Kubernetes(KubernetesDiscovery),
    /// A Gateway API Inference Extension `InferencePool` (inference.networking.k8s.io/v1).
    InferencePool(InferencePoolDiscovery),
}

/// EndpointSlices by Service name or label selector.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Namespace of the slices; default: the namespace the gateway runs in.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service whose slices to watch (`kubernetes.io/service-name=<service>`).
    #[serde(default)]
    pub service: Option<String>,
    /// Or a label selector on the slices, e.g. `app=vllm,tier in (a,b)`.
    #[serde(default)]
    pub selector: Option<String>,
    /// The model server's port: a number, or the port's name in the slice.
    pub port: PortRef,
}

/// A port by number or by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// An InferencePool by namespace and name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferencePoolDiscovery {
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

/// How the autoscaler scales one pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalingConfig {
    /// The workload whose replica count is set (Kubernetes actuator only).
    pub target: Option<ScaleTarget>,
    /// 0 enables scale to zero: the gateway holds requests while the first pod starts.
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Per-replica targets; the most loaded signal decides.
    pub targets: ScalingTargets,
    /// No change while every signal is within this ratio of its target (0.1 = 10%).
    pub tolerance: f64,
    pub scale_up: ScaleUpConfig,
    pub scale_down: ScaleDownConfig,
    pub panic: PanicConfig,
    /// With `min_replicas: 0`: how long the pool must be idle (nothing in flight or held) before it
    /// goes to zero.
    #[serde(with = "crate::duration")]
    pub idle_window: Duration,
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        AutoscalingConfig {
            target: None,
            min_replicas: 1,
            max_replicas: 4,
            targets: ScalingTargets::default(),
            tolerance: 0.1,
            scale_up: ScaleUpConfig::default(),
            scale_down: ScaleDownConfig::default(),
            panic: PanicConfig::default(),
            idle_window: Duration::from_secs(300),
        }
    }
}

/// A Deployment or StatefulSet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScaleTarget {
    pub kind: ScaleKind,
    pub name: String,
    /// Default: the namespace the autoscaler runs in.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ScaleKind {
    Deployment,
    StatefulSet,
}

/// What one replica should carry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingTargets {
    /// Engine waiting queue per replica (plus the gateway's held requests, spread over replicas).
    pub waiting_per_replica: f64,
    /// KV-cache use per replica (0..=1).
    pub kv_usage: f64,
    /// Running requests per replica, if set.
    pub running_per_replica: Option<f64>,
    /// Observed time-to-first-token p90 to stay under, if set.
    #[serde(with = "crate::duration::option")]
    pub ttft_p90: Option<Duration>,
}

impl Default for ScalingTargets {
    fn default() -> Self {
        ScalingTargets {
            waiting_per_replica: 3.0,
            kv_usage: 0.8,
            running_per_replica: None,
            ttft_p90: None,
        }
    }
}

/// Scale-up rate limit: at most the larger of `max_percent`% or `max_pods` added per `period`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleUpConfig {
    pub max_percent: f64,
    pub max_pods: u32,
    #[serde(with = "crate::duration")]
    pub period: Duration,
}

impl Default for ScaleUpConfig {
    fn default() -> Self {
        ScaleUpConfig {
            max_percent: 100.0,
            max_pods: 4,
            period: Duration::from_secs(15),
        }
    }
}

/// Scale-down: only after `stabilization_window` (the window's highest recommendation wins), and at
/// most the larger of `max_pods` or `max_percent`% removed per `period`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleDownConfig {
    #[serde(with = "crate::duration")]
    pub stabilization_window: Duration,
    pub max_pods: u32,
    pub max_percent: f64,
    #[serde(with = "crate::duration")]
    pub period: Duration,
}

impl Default for ScaleDownConfig {
    fn default() -> Self {
        ScaleDownConfig {
            stabilization_window: Duration::from_secs(300),
            max_pods: 1,
            max_percent: 10.0,
            period: Duration::from_secs(60),
        }
    }
}

/// Knative-style panic mode for bursts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PanicConfig {
    pub enabled: bool,
    /// The short window over which demand is measured.
    #[serde(with = "crate::duration")]
    pub window: Duration,
    /// Demand over capacity that starts panic mode (2.0 = twice what the pool can carry).
    pub threshold: f64,
}

impl Default for PanicConfig {
    fn default() -> Self {
        PanicConfig {
            enabled: true,
            window: Duration::from_secs(6),
            threshold: 2.0,
        }
    }
}
