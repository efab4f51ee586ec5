//! The autoscaler's settings: where it reads signals, how often it decides, and how it writes.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// `autoscaler:` in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// `/metrics` and `/healthz`.
    pub admin_listen: SocketAddr,
    /// Time between decisions.
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// Where load signals come from.
    pub signals: SignalsConfig,
    /// Log decisions, write nothing.
    pub dry_run: bool,
    pub leader_election: LeaderElectionConfig,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            admin_listen: ([0, 0, 0, 0], 9091).into(),
            interval: Duration::from_secs(1),
            signals: SignalsConfig::default(),
            dry_run: false,
            leader_election: LeaderElectionConfig::default(),
        }
    }
}

/// Which `/metrics` the autoscaler reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// Read each pod's own `/metrics` (found with the pool's discovery).
    pub pods: bool,
    /// Gateways' admin `/metrics` URLs (held requests, arrival rate, TTFT); e.g.
    /// `http://infergate-gateway-admin:9090/metrics`. Each gateway replica must be listed or found.
    pub gateways: Vec<String>,
    /// How long a signal may go unread before it counts as unknown.
    #[serde(with = "crate::duration")]
    pub stale_after: Duration,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            pods: true,
            gateways: Vec::new(),
            stale_after: Duration::from_secs(10),
        }
    }
}

/// One writer among the autoscaler's replicas, by a coordination.k8s.io/v1 Lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    pub lease_name: String,
    /// Default: the namespace the autoscaler runs in.
    pub namespace: Option<String>,
    #[serde(with = "crate::duration")]
    pub lease_duration: Duration,
    #[serde(with = "crate::duration")]
    pub renew_deadline: Duration,
    #[serde(with = "crate::duration")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: true,
            lease_name: "infergate-autoscaler".into(),
            namespace: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}
