//! Label and field selectors, parsed from the query string the way the apiserver reads them.
//!
//! Only the forms infergate and kube-rs send are supported, but each is parsed strictly: a selector the
//! real apiserver would reject (an unknown operator, an unclosed set) is a 400 here too, so a test cannot
//! pass against the fake with a selector that would fail against a cluster.

use serde_json::Value;
use std::collections::BTreeMap;

/// One requirement of a label selector (`key=value`, `key in (a,b)`, `!key`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equal(String, String),
    /// `key!=value`: also true when the label is absent, as in Kubernetes.
    NotEqual(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

/// Why a selector string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equal(k, v) => labels.get(k) == Some(v),
            Requirement::NotEqual(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Whether a stored object (JSON) satisfies the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(&labels_of(object))
    }
}

/// Reads `metadata.labels` of a JSON object (absent or malformed labels read as none).
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on commas that are not inside a `(...)` set.
fn split_top_level(input: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| SelectorError(input.to_owned()))?
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(input.to_owned()));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let err = || SelectorError(part.to_owned());
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(valid_key(key.trim(), part)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEqual(
            valid_key(k.trim(), part)?,
            v.trim().to_owned(),
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equal(
            valid_key(k.trim(), part)?,
            v.trim().to_owned(),
        ));
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim();
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(Requirement::Exists(valid_key(key, part)?));
    };
    let (op, set) = rest.split_once(char::is_whitespace).map_or_else(
        || {
            let idx = rest.find('(').unwrap_or(rest.len());
            (&rest[..idx], &rest[idx..])
        },
        |(op, set)| (op, set),
    );
    let set = set.trim();
    let inner = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(err)?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let key = valid_key(key, part)?;
    match op.trim() {
        "in" => Ok(Requirement::In(key, values)),
        "notin" => Ok(Requirement::NotIn(key, values)),
        _ => Err(err()),
    }
}

fn valid_key(key: &str, part: &str) -> Result<String, SelectorError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(SelectorError(part.to_owned()))
    }
}

/// A parsed field selector (`metadata.name=x,metadata.namespace!=y`): equality on string fields,
/// looked up by their dotted path in the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(SelectorError(part.to_owned()));
            };
            reqs.push((path.trim().to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    /// Whether the object's fields satisfy every requirement (a missing field reads as "").
    pub fn matches_object(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, eq, value)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let actual = object
                .pointer(&pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_form_kube_rs_prints() {
        let s = LabelSelector::parse(
            "kubernetes.io/service-name=vllm,env in (a, b),tier notin (x),has,!gone,x!=y,z==w",
        )
        .unwrap();
        assert_eq!(s.0.len(), 7);
        let l = labels(&[
            ("kubernetes.io/service-name", "vllm"),
            ("env", "b"),
            ("has", ""),
            ("z", "w"),
        ]);
        assert!(s.matches(&l));
        let mut l2 = l.clone();
        l2.insert("gone".into(), "1".into());
        assert!(!s.matches(&l2));
        let mut l3 = l.clone();
        l3.insert("env".into(), "c".into());
        assert!(!s.matches(&l3));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::parse("").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn rejects_malformed_selectors() {
        assert!(LabelSelector::parse("env in (a,b").is_err());
        assert!(LabelSelector::parse("env within (a)").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn field_selector_on_name() {
        let f = FieldSelector::parse("metadata.name=pool-a").unwrap();
        let obj = serde_json::json!({"metadata": {"name": "pool-a"}});
        assert!(f.matches_object(&obj));
        let f = FieldSelector::parse("metadata.name!=pool-a").unwrap();
        assert!(!f.matches_object(&obj));
    }
}
