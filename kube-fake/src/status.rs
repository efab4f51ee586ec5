//! Failures as the apiserver reports them: a `Status` object with the HTTP code repeated inside.
//!
//! kube-rs turns a non-2xx answer into `kube::Error::Api(Status)` by decoding this body, and callers
//! branch on `code` and `reason` (409 Conflict vs 409 AlreadyExists, 410 Gone, ...), so the fake must
//! answer with the same shape and the same reasons a real apiserver uses.

use serde_json::{Value, json};

/// An API failure: HTTP code, machine-readable reason, human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code, repeated in the Status body.
    pub code: u16,
    /// Kubernetes `StatusReason` (`NotFound`, `Conflict`, `AlreadyExists`, `Gone`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like the apiserver's.
    pub message: String,
    /// `details.name` / `details.group` / `details.kind` when the error is about one object.
    pub details: Option<(String, String, String)>,
}

impl ApiError {
    /// A Status error with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// `404 NotFound`: `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(group, resource)),
            details: Some((name.to_owned(), group.to_owned(), resource.to_owned())),
        }
    }

    /// `409 AlreadyExists` on create.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(group, resource)),
            details: Some((name.to_owned(), group.to_owned(), resource.to_owned())),
        }
    }

    /// `409 Conflict` on a stale resourceVersion (optimistic concurrency).
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, resource)
            ),
            details: Some((name.to_owned(), group.to_owned(), resource.to_owned())),
        }
    }

    /// `410 Gone`: the requested resourceVersion has been compacted away.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The JSON `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            status["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        status
    }
}

/// `leases.coordination.k8s.io`, or `pods` for the core group, as the apiserver names resources.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

/// Reason name for a code used by fault injection.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
