//! The object store: objects keyed by (resource, namespace, name), one global resourceVersion that every
//! write advances, and a bounded history of changes that watches replay from.
//!
//! As in etcd behind a real apiserver, the resourceVersion is a single cluster-wide counter; a watch
//! asking for changes after version N is served from the history while N is still in it, and answered
//! `410 Gone` once it has been compacted away (the client must then re-list). Every change is also sent
//! on a broadcast channel, under the store lock, so that watchers see changes in resourceVersion order.

use crate::patch;
use crate::resource::Gvr;
use crate::status::ApiError;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Where an object lives. Cluster-scoped objects have an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The resource.
    pub gvr: Gvr,
    /// Namespace, or "" for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted (the object is its last state).
    Deleted,
}

/// One committed write.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// Which object.
    pub key: ObjectKey,
    /// Created, updated or deleted.
    pub kind: ChangeType,
    /// The object after the write (its last state for a deletion).
    pub object: Value,
    /// The object before the write, for an update: a selector-filtered watch turns an update that
    /// moves an object out of (into) its selector into DELETED (ADDED), as the apiserver does.
    pub old: Option<Value>,
}

/// How a write was made, for `metadata.managedFields`.
#[derive(Debug, Clone, Default)]
pub struct WriteMeta {
    /// `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// `Update` or `Apply`.
    pub operation: &'static str,
    /// Subresource written through, if any.
    pub subresource: Option<String>,
    /// `dryRun=All`: validate and answer, but store nothing.
    pub dry_run: bool,
}

/// The in-memory store.
pub struct Store {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Versions at or below this have been compacted: a watch from an older version gets 410.
    floor: u64,
    uid_counter: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

/// Resource versions start here, so that a test never mistakes "0" (any version) for a real one.
const FIRST_RV: u64 = 1000;

impl Store {
    /// An empty store keeping at most `history_limit` changes for watch replay.
    pub fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            rv: FIRST_RV,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: FIRST_RV,
            uid_counter: 0,
            changes,
        }
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Subscribes to changes committed from now on, with the version the subscription starts after.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Change>>, u64) {
        (self.changes.subscribe(), self.rv)
    }

    /// Changes after `rv` still in the history, or 410 when some have been compacted away.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::gone(rv, self.floor));
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Drops the whole history: any watch from before the current version now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of a resource, in one namespace or all, in key order.
    pub fn list<'a>(
        &'a self,
        gvr: &'a Gvr,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Value)> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| &k.gvr == gvr && namespace.is_none_or(|ns| k.namespace == ns))
    }

    /// POST: a new object; 409 AlreadyExists if the name is taken. `generateName` is honoured.
    pub fn create(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        mut object: Value,
        write: &WriteMeta,
    ) -> Result<Value, ApiError> {
        let meta = metadata_mut(&mut object)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", short_suffix(self.uid_counter + self.rv));
                    meta.insert("name".into(), json!(name));
                    name
                }
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        let key = self.key(gvr, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&gvr.group, &gvr.resource, &name));
        }
        self.stamp_new(&key, &mut object, write);
        if write.dry_run {
            return Ok(object);
        }
        Ok(self.commit(key, object, ChangeType::Added, None))
    }

    /// PUT: replace an existing object. A `metadata.resourceVersion` in the body must equal the stored
    /// one (compare-and-swap, else 409 Conflict); without one the update is unconditional.
    pub fn replace(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        mut object: Value,
        write: &WriteMeta,
    ) -> Result<Value, ApiError> {
        let key = self.key(gvr, namespace, name);
        let body_name = object.pointer("/metadata/name").and_then(Value::as_str);
        if body_name.is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body_name.unwrap_or_default()
            )));
        }
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&gvr.group, &gvr.resource, name));
        };
        let wanted_rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(wanted) = wanted_rv
            && Some(wanted.as_str())
                != old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(&gvr.group, &gvr.resource, name));
        }
        metadata_mut(&mut object)?.insert("name".into(), json!(name));
        self.stamp_update(&key, &old, &mut object, write);
        if write.dry_run {
            return Ok(object);
        }
        Ok(self.commit(key, object, ChangeType::Modified, Some(old)))
    }

    /// PATCH (merge semantics) on an existing object.
    pub fn patch(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        patch_body: &Value,
        write: &WriteMeta,
    ) -> Result<Value, ApiError> {
        let key = self.key(gvr, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&gvr.group, &gvr.resource, name));
        };
        let mut object = old.clone();
        patch::merge(&mut object, patch_body);
        // A patch may carry a resourceVersion as a precondition, as with PUT.
        if let Some(wanted) = patch_body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && Some(wanted)
                != old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(&gvr.group, &gvr.resource, name));
        }
        self.stamp_update(&key, &old, &mut object, write);
        if write.dry_run {
            return Ok(object);
        }
        Ok(self.commit(key, object, ChangeType::Modified, Some(old)))
    }

    /// DELETE: removes the object and returns its last state.
    pub fn delete(&mut self, gvr: &Gvr, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let key = self.key(gvr, namespace, name);
        let Some(mut object) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(&gvr.group, &gvr.resource, name));
        };
        // The DELETED event carries the object at the deletion's own resourceVersion.
        self.rv += 1;
        set_rv(&mut object, self.rv);
        self.record(Change {
            rv: self.rv,
            key,
            kind: ChangeType::Deleted,
            object: object.clone(),
            old: None,
        });
        Ok(object)
    }

    /// Test-side write: create or replace without preconditions, keeping uid and creation time.
    pub fn put(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("put: metadata.name is required"))?
            .to_owned();
        let key = self.key(gvr, namespace, &name);
        let write = WriteMeta::default();
        match self.objects.get(&key).cloned() {
            Some(old) => {
                self.stamp_update(&key, &old, &mut object, &write);
                Ok(self.commit(key, object, ChangeType::Modified, Some(old)))
            }
            None => {
                self.stamp_new(&key, &mut object, &write);
                Ok(self.commit(key, object, ChangeType::Added, None))
            }
        }
    }

    fn key(&self, gvr: &Gvr, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            gvr: gvr.clone(),
            namespace: if gvr.namespaced() {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn stamp_new(&mut self, key: &ObjectKey, object: &mut Value, write: &WriteMeta) {
        self.uid_counter += 1;
        let uid = fake_uid(self.uid_counter);
        set_type_meta(object, &key.gvr);
        if let Ok(meta) = metadata_mut(object) {
            if !key.namespace.is_empty() {
                meta.insert("namespace".into(), json!(key.namespace));
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
        }
        record_manager(object, &key.gvr, write);
    }

    fn stamp_update(&self, key: &ObjectKey, old: &Value, object: &mut Value, write: &WriteMeta) {
        set_type_meta(object, &key.gvr);
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_of(old) != spec_of(object) {
            generation + 1
        } else {
            generation
        };
        if let Ok(meta) = metadata_mut(object) {
            for field in ["uid", "creationTimestamp", "managedFields"] {
                match old.pointer(&format!("/metadata/{field}")) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            if !key.namespace.is_empty() {
                meta.insert("namespace".into(), json!(key.namespace));
            }
            meta.insert("generation".into(), json!(generation));
        }
        record_manager(object, &key.gvr, write);
    }

    fn commit(
        &mut self,
        key: ObjectKey,
        mut object: Value,
        kind: ChangeType,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        self.objects.insert(key.clone(), object.clone());
        self.record(Change {
            rv: self.rv,
            key,
            kind,
            object: object.clone(),
            old,
        });
        object
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_of(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

fn set_type_meta(object: &mut Value, gvr: &Gvr) {
    if let Some(obj) = object.as_object_mut() {
        obj.insert("apiVersion".into(), json!(gvr.api_version()));
        obj.insert("kind".into(), json!(gvr.kind()));
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Ok(meta) = metadata_mut(object) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

/// Upserts the `managedFields` entry for the writing manager (fieldsV1 left empty: infergate only
/// asserts who wrote, not which fields server-side apply would attribute).
fn record_manager(object: &mut Value, gvr: &Gvr, write: &WriteMeta) {
    let Some(manager) = write.field_manager.clone() else {
        return;
    };
    let operation = if write.operation.is_empty() {
        "Update"
    } else {
        write.operation
    };
    let Ok(meta) = metadata_mut(object) else {
        return;
    };
    let fields = meta.entry("managedFields").or_insert_with(|| json!([]));
    if !fields.is_array() {
        *fields = json!([]);
    }
    let Some(entries) = fields.as_array_mut() else {
        return;
    };
    let sub = write.subresource.clone();
    entries.retain(|e| {
        !(e["manager"] == json!(manager)
            && e["operation"] == json!(operation)
            && e.get("subresource").and_then(Value::as_str) == sub.as_deref())
    });
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": gvr.api_version(),
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if let Some(sub) = sub {
        entry["subresource"] = json!(sub);
    }
    entries.push(entry);
}

/// RFC 3339 in whole seconds, as the apiserver writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn fake_uid(n: u64) -> String {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = seed.rotate_left(17) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (mixed >> 32) as u32,
        (mixed >> 16) as u16,
        (mixed & 0xfff) as u16,
        (n & 0xfff) as u16,
        n & 0xffff_ffff_ffff
    )
}

/// Five lowercase alphanumerics, as `generateName` appends.
fn short_suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a"}})
    }

    #[test]
    fn create_conflict_and_cas() {
        let mut s = Store::new(10);
        let gvr = Gvr::new("coordination.k8s.io", "v1", "leases");
        let w = WriteMeta::default();
        let created = s.create(&gvr, "ns", lease("l"), &w).unwrap();
        assert_eq!(created["kind"], "Lease");
        assert_eq!(created["metadata"]["generation"], 1);
        let err = s.create(&gvr, "ns", lease("l"), &w).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let mut stale = created.clone();
        stale["spec"]["holderIdentity"] = json!("b");
        let updated = s.replace(&gvr, "ns", "l", stale.clone(), &w).unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        let err = s.replace(&gvr, "ns", "l", stale, &w).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn history_is_bounded_and_compaction_answers_gone() {
        let mut s = Store::new(2);
        let gvr = Gvr::new("", "v1", "pods");
        let start = s.resource_version();
        for i in 0..4 {
            s.put(&gvr, "ns", lease(&format!("p{i}"))).unwrap();
        }
        assert_eq!(s.changes_since(start).unwrap_err().code, 410);
        let recent = s.resource_version() - 2;
        assert_eq!(s.changes_since(recent).unwrap().len(), 2);
        s.compact();
        assert_eq!(s.changes_since(recent).unwrap_err().code, 410);
        assert!(s.changes_since(s.resource_version()).unwrap().is_empty());
    }

    #[test]
    fn generate_name_and_managed_fields() {
        let mut s = Store::new(10);
        let gvr = Gvr::new("events.k8s.io", "v1", "events");
        let w = WriteMeta {
            field_manager: Some("infergate".into()),
            operation: "Update",
            ..Default::default()
        };
        let ev = s
            .create(
                &gvr,
                "ns",
                json!({"metadata": {"generateName": "pod."}}),
                &w,
            )
            .unwrap();
        let name = ev["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("pod.") && name.len() == 9);
        assert_eq!(ev["metadata"]["managedFields"][0]["manager"], "infergate");
    }
}
