//! The [`Actuator`] over [`KubeScaler`]: each autoscaled pool maps to its `autoscaling.target`
//! Deployment or StatefulSet, and its pods come from the pool's discovery (EndpointSlices).
//!
//! A scale-down first marks the victims with `controller.kubernetes.io/pod-deletion-cost` (the
//! idlest lowest), so the ReplicaSet controller removes them rather than a busy pod; the cost is a
//! hint, and failing to set it does not stop the scale. Every rescale is a Kubernetes Event
//! (Normal), every failed one a Warning Event.

use std::collections::HashMap;

use infergate_config::{Config, Discovery, ScaleKind};
use infergate_gateway::discovery::EndpointSet;
use infergate_gateway::discovery::kubernetes::SliceDiscovery;
use tokio::sync::watch;

use super::kubernetes::{EventType, KubeActuatorError, KubeScaler};
use super::{ActuateError, Actuator, PodPhase, PodStatus, PoolStatus};
use crate::lease::{LeaderElector, LeaseConfig};
use crate::signals::Replicas;

/// A pool's scale target, with its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: ScaleKind,
    pub namespace: String,
    pub name: String,
}

/// Scales pools through the Kubernetes API.
pub struct KubernetesActuator {
    scaler: KubeScaler,
    targets: HashMap<String, Target>,
    discovery: HashMap<String, watch::Receiver<EndpointSet>>,
}

impl KubernetesActuator {
    /// One target per autoscaled pool of `config`; `namespace` is the default for targets without
    /// one. `discovery` lists each pool's pods (for pod reads and deletion costs).
    pub fn new(
        scaler: KubeScaler,
        config: &Config,
        namespace: &str,
        discovery: HashMap<String, watch::Receiver<EndpointSet>>,
    ) -> Result<Self, ActuateError> {
        let mut targets = HashMap::new();
        for pool in &config.pools {
            let Some(a) = &pool.autoscaling else { continue };
            let t = a.target.as_ref().ok_or_else(|| ActuateError::Api {
                pool: pool.name.clone(),
                action: "configure",
                reason: "`autoscaling.target` (kind and name of the Deployment or StatefulSet) is required with the kubernetes actuator".into(),
            })?;
            targets.insert(
                pool.name.clone(),
                Target {
                    kind: t.kind,
                    namespace: t.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                    name: t.name.clone(),
                },
            );
        }
        Ok(KubernetesActuator {
            scaler,
            targets,
            discovery,
        })
    }

    fn target(&self, pool: &str) -> Result<&Target, ActuateError> {
        self.targets
            .get(pool)
            .ok_or_else(|| ActuateError::UnknownPool(pool.to_string()))
    }
}

/// The Kubernetes actuator wired from the environment: the client (in-cluster service account or
/// kubeconfig), EndpointSlice discovery of each pool's pods, and the leader election the
/// configuration asks for.
pub struct KubernetesSetup {
    pub actuator: KubernetesActuator,
    /// Running while leader election is on; dropping it stops campaigning.
    pub leader: Option<LeaderElector>,
}

/// Connects to the API and builds [`KubernetesSetup`]; `dry_run` makes every write a log line.
pub async fn connect(config: &Config, dry_run: bool) -> Result<KubernetesSetup, ActuateError> {
    let setup_error = |reason: String| ActuateError::Api {
        pool: "*".into(),
        action: "connect to the Kubernetes API",
        reason,
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| setup_error(e.to_string()))?;
    // The chart sets POD_NAMESPACE (downward API); in a cluster it equals the service account's.
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut discovery = HashMap::new();
    for pool in config.pools.iter().filter(|p| p.autoscaling.is_some()) {
        if let Discovery::Kubernetes(k) = &pool.discovery {
            let slices = SliceDiscovery::from_config(k).map_err(|e| setup_error(e.to_string()))?;
            let (rx, _task) = slices.spawn(client.clone());
            discovery.insert(pool.name.clone(), rx);
        }
    }
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("infergate-autoscaler-{}", std::process::id()));
    let mut scaler = KubeScaler::new(client.clone(), identity.clone()).with_dry_run(dry_run);
    let le = &config.autoscaler.leader_election;
    let leader = if le.enabled {
        let lease = LeaseConfig {
            lease_duration: le.lease_duration,
            renew_deadline: le.renew_deadline,
            retry_period: le.retry_period,
            ..LeaseConfig::new(
                le.namespace.clone().unwrap_or_else(|| namespace.clone()),
                le.lease_name.clone(),
                identity,
            )
        };
        let elector =
            LeaderElector::spawn(client, lease).map_err(|e| setup_error(e.to_string()))?;
        scaler = scaler.with_leader_gate(elector.subscribe());
        Some(elector)
    } else {
        None
    };
    let actuator = KubernetesActuator::new(scaler, config, &namespace, discovery)?;
    Ok(KubernetesSetup { actuator, leader })
}

fn api_error(pool: &str, action: &'static str, e: KubeActuatorError) -> ActuateError {
    ActuateError::Api {
        pool: pool.to_string(),
        action,
        reason: e.to_string(),
    }
}

impl Actuator for KubernetesActuator {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn status(&self, pool: &str) -> Result<PoolStatus, ActuateError> {
        let t = self.target(pool)?;
        let s = self
            .scaler
            .get_scale(t.kind, &t.namespace, &t.name)
            .await
            .map_err(|e| api_error(pool, "read scale", e))?;
        let wanted = u32::try_from(s.spec_replicas).unwrap_or(0);
        let ready = u32::try_from(s.ready_replicas).unwrap_or(0);
        let pods = self
            .discovery
            .get(pool)
            .map(|rx| {
                rx.borrow()
                    .iter()
                    .map(|e| PodStatus {
                        name: e.name.clone().unwrap_or_else(|| e.url.clone()),
                        url: Some(e.url.clone()),
                        phase: if e.terminating {
                            PodPhase::Draining
                        } else if e.ready {
                            PodPhase::Ready
                        } else {
                            PodPhase::Starting
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(PoolStatus {
            replicas: Replicas {
                wanted,
                ready,
                // Asked for and not ready yet: pending, pulling, loading weights.
                starting: wanted.saturating_sub(ready),
            },
            pods,
        })
    }

    async fn set_replicas(
        &self,
        pool: &str,
        replicas: u32,
        victims: &[String],
    ) -> Result<(), ActuateError> {
        let t = self.target(pool)?;
        let from = self
            .scaler
            .get_scale(t.kind, &t.namespace, &t.name)
            .await
            .map_err(|e| api_error(pool, "read scale", e))?
            .spec_replicas;
        let to = i32::try_from(replicas).unwrap_or(i32::MAX);
        if to < from {
            // Idlest first, lowest cost: -100 * (n - i).
            let n = i32::try_from(victims.len()).unwrap_or(i32::MAX);
            for (i, pod) in victims.iter().enumerate() {
                let cost = -100 * (n - i32::try_from(i).unwrap_or(0));
                if let Err(e) = self.scaler.set_deletion_cost(&t.namespace, pod, cost).await {
                    tracing::warn!(%pool, %pod, "cannot set the pod-deletion-cost hint: {e}");
                }
            }
        }
        let workload = KubeScaler::workload_ref(t.kind, &t.namespace, &t.name);
        match self
            .scaler
            .patch_scale(t.kind, &t.namespace, &t.name, to)
            .await
        {
            Ok(_) => {
                let note = format!("pool {pool}: replicas {from} -> {to}");
                if let Err(e) = self
                    .scaler
                    .record_event(&workload, "Rescaled", &note, EventType::Normal)
                    .await
                {
                    tracing::debug!(%pool, "cannot record the rescale event: {e}");
                }
                Ok(())
            }
            Err(e) => {
                let note = format!("pool {pool}: replicas {from} -> {to} failed: {e}");
                if !matches!(e, KubeActuatorError::NotLeader { .. }) {
                    let _ = self
                        .scaler
                        .record_event(&workload, "RescaleFailed", &note, EventType::Warning)
                        .await;
                }
                Err(api_error(pool, "scale", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_config::{AutoscalingConfig, PoolConfig, ScaleTarget};
    use infergate_gateway::discovery::DiscoveredEndpoint;
    use infergate_kube_fake::{FakeApi, Gvr};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;
    use std::sync::Arc;

    fn config() -> Config {
        Config {
            pools: vec![PoolConfig {
                name: "llama".into(),
                models: vec!["m".into()],
                flavor: Default::default(),
                discovery: Discovery::Static { endpoints: vec![] },
                policy: None,
                autoscaling: Some(AutoscalingConfig {
                    target: Some(ScaleTarget {
                        kind: ScaleKind::Deployment,
                        name: "vllm".into(),
                        namespace: None,
                    }),
                    ..AutoscalingConfig::default()
                }),
            }],
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn reads_and_scales_the_target_with_victims_marked() {
        let fake = FakeApi::start().await;
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "vllm", "namespace": "ns"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "vllm"}},
                     "template": {"metadata": {"labels": {"app": "vllm"}}}}
        }))
        .unwrap();
        fake.put(&deployment);
        fake.set_scale_status(&Gvr::of::<Deployment>(), "ns", "vllm", 3, 2);
        for name in ["vllm-a", "vllm-b"] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {"app": "vllm"}}
            }))
            .unwrap();
            fake.put(&pod);
        }
        let endpoints = vec![
            DiscoveredEndpoint {
                url: "http://10.0.0.1:8000".into(),
                name: Some("vllm-a".into()),
                ready: true,
                terminating: false,
            },
            DiscoveredEndpoint {
                url: "http://10.0.0.2:8000".into(),
                name: Some("vllm-b".into()),
                ready: false,
                terminating: false,
            },
        ];
        let (_tx, rx) = watch::channel(Arc::new(endpoints));
        let scaler = KubeScaler::new(fake.client(), "autoscaler-0");
        let actuator = KubernetesActuator::new(
            scaler,
            &config(),
            "ns",
            HashMap::from([("llama".to_string(), rx)]),
        )
        .unwrap();

        let status = actuator.status("llama").await.unwrap();
        assert_eq!(
            status.replicas,
            Replicas {
                wanted: 3,
                ready: 2,
                starting: 1
            }
        );
        assert_eq!(status.pods.len(), 2);
        assert_eq!(status.pods[0].phase, PodPhase::Ready);
        assert_eq!(status.pods[1].phase, PodPhase::Starting);

        actuator
            .set_replicas("llama", 1, &["vllm-b".into(), "vllm-a".into()])
            .await
            .unwrap();
        let d: Deployment = fake.get("ns", "vllm").unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(1));
        let cost = |pod: &str| {
            fake.get::<Pod>("ns", pod)
                .and_then(|p| p.metadata.annotations)
                .and_then(|a| {
                    a.get(super::super::kubernetes::DELETION_COST_ANNOTATION)
                        .cloned()
                })
        };
        assert_eq!(cost("vllm-b").as_deref(), Some("-200"), "idlest lowest");
        assert_eq!(cost("vllm-a").as_deref(), Some("-100"));
        assert!(
            fake.events().iter().any(|e| e["reason"] == "Rescaled"),
            "{:?}",
            fake.events()
        );
        assert!(matches!(
            actuator.status("other").await,
            Err(ActuateError::UnknownPool(_))
        ));
    }

    #[tokio::test]
    async fn a_pool_without_a_target_is_refused() {
        let mut c = config();
        c.pools[0].autoscaling.as_mut().unwrap().target = None;
        let fake = FakeApi::start().await;
        let scaler = KubeScaler::new(fake.client(), "a");
        assert!(KubernetesActuator::new(scaler, &c, "ns", HashMap::new()).is_err());
    }
}
