//! Subresources: `scale` (an `autoscaling/v1` Scale view of a Deployment, StatefulSet or ReplicaSet,
//! whose writes land in the parent's `spec.replicas`) and `status` (writes that may change `status`
//! only).

use crate::resource::Gvr;
use crate::status::ApiError;
use crate::store::{Store, WriteMeta};
use serde_json::{Value, json};

pub(crate) fn unknown_subresource(sub: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({sub})"),
    )
}

pub(crate) fn key_for(gvr: &Gvr, ns: &str, name: &str) -> crate::ObjectKey {
    crate::ObjectKey {
        gvr: gvr.clone(),
        namespace: if gvr.namespaced() {
            ns.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    }
}

/// The `autoscaling/v1` Scale view of a Deployment or StatefulSet.
fn scale_of(gvr: &Gvr, object: &Value) -> Result<Value, ApiError> {
    if gvr.group != "apps"
        || !matches!(
            gvr.resource.as_str(),
            "deployments" | "statefulsets" | "replicasets"
        )
    {
        return Err(unknown_subresource("scale"));
    }
    let meta = &object["metadata"];
    let selector = object
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    }))
}

/// A `metav1.LabelSelector` printed as the selector string Scale's status carries.
fn selector_string(selector: &Value) -> String {
    let mut parts: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for expr in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expr["values"]
            .as_array()
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expr["operator"].as_str() {
            Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
            Some("Exists") => parts.push(key.to_owned()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

pub(crate) fn get_scale(store: &Store, gvr: &Gvr, ns: &str, name: &str) -> Result<Value, ApiError> {
    let object = store
        .get(&key_for(gvr, ns, name))
        .ok_or_else(|| ApiError::not_found(&gvr.group, &gvr.resource, name))?;
    scale_of(gvr, object)
}

/// Applies `change` to the Scale view and writes its `spec.replicas` back to the parent object.
pub(crate) fn update_scale(
    store: &mut Store,
    gvr: &Gvr,
    ns: &str,
    name: &str,
    write: &WriteMeta,
    change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let parent = store
        .get(&key_for(gvr, ns, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&gvr.group, &gvr.resource, name))?;
    let mut scale = scale_of(gvr, &parent)?;
    change(&mut scale)?;
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                "spec.replicas: Invalid value: must be a non-negative integer",
            )
        })?;
    let mut updated = parent;
    updated["spec"]["replicas"] = json!(replicas);
    let stored = store.replace(gvr, ns, name, updated, write)?;
    scale_of(gvr, &stored)
}

/// Writes through the status subresource: only `status` may change.
pub(crate) fn update_status(
    store: &mut Store,
    gvr: &Gvr,
    ns: &str,
    name: &str,
    write: &WriteMeta,
    change: impl FnOnce(&mut Value),
) -> Result<Value, ApiError> {
    let parent = store
        .get(&key_for(gvr, ns, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&gvr.group, &gvr.resource, name))?;
    let mut changed = parent.clone();
    change(&mut changed);
    let mut updated = parent;
    updated["status"] = changed.get("status").cloned().unwrap_or(Value::Null);
    store.replace(gvr, ns, name, updated, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_selector_string() {
        let s = selector_string(&json!({
            "matchLabels": {"app": "vllm"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
        }));
        assert_eq!(s, "app=vllm,tier in (a,b)");
    }
}
