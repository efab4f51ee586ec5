//! Which resource a URL names: `/api/v1/...` for the core group, `/apis/{group}/{version}/...` for the
//! rest, with an optional namespace, object name and subresource.

use std::fmt;

/// Group, version and plural resource name: the storage key's first part.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvr {
    /// API group; empty for the core group.
    pub group: String,
    /// API version (`v1`).
    pub version: String,
    /// Plural lowercase resource (`endpointslices`).
    pub resource: String,
}

/// Kinds the fake knows by name, so lists carry the right `kind` and `put_value` finds the resource.
const KINDS: &[(&str, &str, &str, bool)] = &[
    // (group, resource, kind, namespaced)
    ("", "pods", "Pod", true),
    ("", "services", "Service", true),
    ("", "endpoints", "Endpoints", true),
    ("", "configmaps", "ConfigMap", true),
    ("", "events", "Event", true),
    ("", "namespaces", "Namespace", false),
    ("", "nodes", "Node", false),
    ("discovery.k8s.io", "endpointslices", "EndpointSlice", true),
    ("apps", "deployments", "Deployment", true),
    ("apps", "statefulsets", "StatefulSet", true),
    ("apps", "replicasets", "ReplicaSet", true),
    ("coordination.k8s.io", "leases", "Lease", true),
    ("events.k8s.io", "events", "Event", true),
    (
        "inference.networking.k8s.io",
        "inferencepools",
        "InferencePool",
        true,
    ),
    (
        "inference.networking.x-k8s.io",
        "inferencepools",
        "InferencePool",
        true,
    ),
];

impl Gvr {
    /// A resource by its parts.
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
        }
    }

    /// The resource of a kube-rs type (`Gvr::of::<Deployment>()`).
    pub fn of<K: kube::Resource<DynamicType = ()>>() -> Self {
        Self::new(&K::group(&()), &K::version(&()), &K::plural(&()))
    }

    /// The resource for an `apiVersion` + `kind` pair (known kinds from a table, others by the
    /// apiserver's default pluralisation: lowercase, `y` -> `ies`, `s` -> `ses`, else `+s`).
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = KINDS
            .iter()
            .find(|(g, _, k, _)| *g == group && *k == kind)
            .map(|(_, r, _, _)| (*r).to_owned())
            .unwrap_or_else(|| pluralize(kind));
        Self::new(group, version, &resource)
    }

    /// `apiVersion` as written in objects (`apps/v1`, or `v1` for core).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind stored objects of this resource carry.
    pub fn kind(&self) -> String {
        KINDS
            .iter()
            .find(|(g, r, _, _)| *g == self.group && *r == self.resource)
            .map(|(_, _, k, _)| (*k).to_owned())
            .unwrap_or_else(|| singular_kind(&self.resource))
    }

    /// Whether objects of this resource live in a namespace (unknown resources are assumed to).
    pub fn namespaced(&self) -> bool {
        KINDS
            .iter()
            .find(|(g, r, _, _)| *g == self.group && *r == self.resource)
            .is_none_or(|(_, _, _, ns)| *ns)
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.resource)
    }
}

fn pluralize(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn singular_kind(resource: &str) -> String {
    let singular = resource
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| resource.strip_suffix('s').map(str::to_owned))
        .unwrap_or_else(|| resource.to_owned());
    let mut chars = singular.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// A parsed request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// The resource addressed.
    pub gvr: Gvr,
    /// Namespace from the path; `None` for cluster-scoped or all-namespaces requests.
    pub namespace: Option<String>,
    /// Object name; `None` for the collection.
    pub name: Option<String>,
    /// Subresource (`scale`, `status`).
    pub subresource: Option<String>,
}

impl ResourcePath {
    /// Parses `/api/v1/...` and `/apis/{group}/{version}/...`; `None` for anything else.
    pub fn parse(path: &str) -> Option<Self> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, resource, rest @ ..] if !ns.is_empty() => {
                (Some((*ns).to_owned()), [&[*resource][..], rest].concat())
            }
            _ => (None, rest.to_vec()),
        };
        let (resource, name, subresource) = match rest.as_slice() {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(*name), None),
            [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
            _ => return None,
        };
        if resource.is_empty() || name.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            gvr: Gvr::new(group, version, resource),
            namespace,
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
        })
    }

    /// `deployments/scale`, as RBAC rules name a subresource.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.gvr.resource),
            None => self.gvr.resource.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_and_group_paths() {
        let p = ResourcePath::parse("/api/v1/namespaces/ns/pods/p1").unwrap();
        assert_eq!(p.gvr, Gvr::new("", "v1", "pods"));
        assert_eq!(p.namespace.as_deref(), Some("ns"));
        assert_eq!(p.name.as_deref(), Some("p1"));
        let p = ResourcePath::parse("/apis/apps/v1/namespaces/ns/deployments/d/scale").unwrap();
        assert_eq!(p.rbac_resource(), "deployments/scale");
        let p = ResourcePath::parse("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(p.namespace, None);
        assert_eq!(p.name, None);
        let p = ResourcePath::parse("/api/v1/namespaces/ns").unwrap();
        assert_eq!(p.gvr.resource, "namespaces");
        assert_eq!(p.name.as_deref(), Some("ns"));
        assert!(ResourcePath::parse("/version").is_none());
    }

    #[test]
    fn kinds_and_plurals() {
        let g = Gvr::from_api_version_kind("inference.networking.k8s.io/v1", "InferencePool");
        assert_eq!(g.resource, "inferencepools");
        assert_eq!(g.kind(), "InferencePool");
        assert_eq!(Gvr::from_api_version_kind("v1", "Pod").api_version(), "v1");
        assert_eq!(Gvr::new("x.io", "v1", "policies").kind(), "Policy");
    }
}
