//! The RBAC contract: what the code's API_CALLS tables need for a configuration, and what the
//! chart's rendered Roles grant through their RoleBindings.

use std::collections::{BTreeMap, BTreeSet};

use infergate_config::{Config, Discovery};
use serde_json::Value;

use super::{NAMESPACE, component_name, name, of_kind};

/// (apiGroup, resource, verb) rows.
pub type Grants = BTreeSet<(String, String, String)>;

/// Rows of a code table (any struct with `api_group`, `resource`, `verbs`).
macro_rules! rows {
    ($table:expr) => {
        $table
            .iter()
            .flat_map(|c| {
                c.verbs.iter().map(move |v| {
                    (
                        c.api_group.to_string(),
                        c.resource.to_string(),
                        v.to_string(),
                    )
                })
            })
            .collect::<Grants>()
    };
}

/// What the code needs, per (ServiceAccount, namespace), for the features `config` uses.
pub fn expected_grants(config: &Config, autoscaler: bool) -> BTreeMap<(String, String), Grants> {
    use infergate_gateway::discovery::{inference_pool, kubernetes};
    let mut want: BTreeMap<(String, String), Grants> = BTreeMap::new();
    let mut add = |component: &str, ns: Option<&str>, rows: Grants| {
        want.entry((
            component_name(component),
            ns.unwrap_or(NAMESPACE).to_string(),
        ))
        .or_default()
        .extend(rows);
    };
    // The gateway watches every pool's discovery source (gateway/src/server.rs).
    for pool in &config.pools {
        match &pool.discovery {
            Discovery::Kubernetes(k) => add(
                "gateway",
                k.namespace.as_deref(),
                rows!(kubernetes::API_CALLS),
            ),
            Discovery::InferencePool(p) => add(
                "gateway",
                p.namespace.as_deref(),
                rows!(inference_pool::API_CALLS),
            ),
            Discovery::Static { .. } => {}
        }
    }
    // The autoscaler watches the EndpointSlices of each pool it scales
    // (autoscaler/src/actuate/kube_pools.rs: `connect`); it has no InferencePool source.
    if autoscaler {
        for pool in config.pools.iter().filter(|p| p.autoscaling.is_some()) {
            if let Discovery::Kubernetes(k) = &pool.discovery {
                add(
                    "autoscaler",
                    k.namespace.as_deref(),
                    rows!(kubernetes::API_CALLS),
                );
            }
        }
    }
    if autoscaler {
        for pool in &config.pools {
            let Some(target) = pool.autoscaling.as_ref().and_then(|a| a.target.as_ref()) else {
                continue;
            };
            add(
                "autoscaler",
                target.namespace.as_deref(),
                autoscaler_calls::scaling(target.kind),
            );
        }
        add(
            "autoscaler",
            config.autoscaler.leader_election.namespace.as_deref(),
            autoscaler_calls::lease(),
        );
    }
    want
}

/// The autoscaler's API calls, from the code's tables.
mod autoscaler_calls {
    use super::Grants;
    use infergate_autoscaler::{actuate::kubernetes, lease};
    use infergate_config::ScaleKind;

    /// The Kubernetes actuator's rows for one target: its own kind's rows (and the kind-neutral
    /// ones: pods, events), not the other kind's. A pool that scales a Deployment gets no
    /// StatefulSet rights.
    pub(super) fn scaling(kind: ScaleKind) -> Grants {
        let other = match kind {
            ScaleKind::Deployment => "statefulsets",
            ScaleKind::StatefulSet => "deployments",
        };
        rows!(kubernetes::API_CALLS)
            .into_iter()
            .filter(|(_, resource, _)| resource.split('/').next() != Some(other))
            .collect()
    }

    /// Leader election.
    pub(super) fn lease() -> Grants {
        rows!(lease::API_CALLS)
    }
}

/// What the rendered Roles grant, per (ServiceAccount, namespace), through their RoleBindings.
pub fn rendered_grants(objs: &[Value]) -> BTreeMap<(String, String), Grants> {
    let ns_of = |o: &Value| {
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or(NAMESPACE)
            .to_string()
    };
    let roles: BTreeMap<(String, String), &Value> = of_kind(objs, "Role")
        .map(|r| ((ns_of(r), name(r).to_string()), r))
        .collect();
    let mut got: BTreeMap<(String, String), Grants> = BTreeMap::new();
    for binding in of_kind(objs, "RoleBinding") {
        let ns = ns_of(binding);
        assert_eq!(binding["roleRef"]["kind"], "Role", "{}", name(binding));
        let role_name = binding["roleRef"]["name"].as_str().expect("roleRef.name");
        let role = roles
            .get(&(ns.clone(), role_name.to_string()))
            .unwrap_or_else(|| panic!("RoleBinding {} names a missing Role", name(binding)));
        for subject in binding["subjects"].as_array().expect("subjects") {
            assert_eq!(subject["kind"], "ServiceAccount");
            assert_eq!(
                subject["namespace"], NAMESPACE,
                "subjects live in the release namespace"
            );
            let sa = subject["name"].as_str().expect("subject name").to_string();
            let grants = got.entry((sa, ns.clone())).or_default();
            for rule in role["rules"].as_array().expect("rules") {
                assert!(rule.get("nonResourceURLs").is_none());
                for g in rule["apiGroups"].as_array().expect("apiGroups") {
                    for r in rule["resources"].as_array().expect("resources") {
                        for v in rule["verbs"].as_array().expect("verbs") {
                            let (g, r, v) = (g.as_str(), r.as_str(), v.as_str());
                            let (Some(g), Some(r), Some(v)) = (g, r, v) else {
                                panic!("non-string RBAC entry in {}", name(role))
                            };
                            assert!(
                                g != "*" && r != "*" && v != "*",
                                "wildcard in {}",
                                name(role)
                            );
                            grants.insert((g.into(), r.into(), v.into()));
                        }
                    }
                }
            }
        }
    }
    got
}
