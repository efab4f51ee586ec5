//! Errors of the data path, in the spirit of pingora's: each one says what went wrong (its kind,
//! which fixes the HTTP status and the OpenAI error body), which side caused it, and whether trying
//! another endpoint could help. Every error becomes exactly one OpenAI-shaped answer:
//! `{"error":{"message","type","param","code"}}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::borrow::Cow;
use std::time::Duration;

/// What went wrong; fixes the status, the OpenAI `type` and `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON, or a field has the wrong type.
    InvalidJson,
    /// A required field (`model`) is absent.
    MissingField,
    /// A header the gateway reads has a value it does not understand.
    InvalidHeader,
    /// No such path on the data port.
    RouteNotFound,
    /// No pool serves the requested model.
    ModelNotFound,
    /// The path exists but not for this method.
    MethodNotAllowed,
    /// The body is larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The client's body could not be read (disconnect, bad framing).
    BodyRead,
    /// The request head is not HTTP/1.x, or its body's length is ambiguous.
    MalformedRequest,
    /// The request head is over its size or header-count bound.
    HeadTooLarge,
    /// The client stopped sending its request body for `limits.body_read_timeout`.
    RequestTimeout,
    /// Flow control refused a sheddable request (queue full or its wait ran out).
    Shed,
    /// Flow control refused or timed out a non-sheddable request; or the gateway is draining.
    Overloaded,
    /// No endpoint could be connected to.
    UpstreamConnect,
    /// The upstream failed before answering (reset, protocol error).
    UpstreamProtocol,
    /// The upstream did not send its first byte within `limits.first_byte_timeout`.
    UpstreamTimeout,
    /// A bug or an impossible state; never the client's fault.
    Internal,
}

/// Which side caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client (bad request, too large, went away).
    Downstream,
    /// The model server.
    Upstream,
    /// The gateway itself (overload, shutdown, bugs).
    Internal,
}

/// An error on the data path.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} ({source_side:?}): {message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub source_side: ErrorSource,
    /// Whether another endpoint might succeed where this one failed.
    pub retryable: bool,
    pub message: Cow<'static, str>,
    /// The parameter at fault, for the OpenAI `param` field.
    pub param: Option<&'static str>,
    /// Suggested wait for 429/503.
    pub retry_after: Option<Duration>,
    #[source]
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    /// An error of `kind` with the side and retryability that kind implies.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        use ErrorKind::*;
        let (source_side, retryable) = match kind {
            InvalidJson | MissingField | InvalidHeader | RouteNotFound | ModelNotFound
            | MethodNotAllowed | BodyTooLarge | BodyRead | MalformedRequest | HeadTooLarge
            | RequestTimeout => (ErrorSource::Downstream, false),
            Shed | Overloaded | Internal => (ErrorSource::Internal, false),
            UpstreamConnect => (ErrorSource::Upstream, true),
            UpstreamProtocol | UpstreamTimeout => (ErrorSource::Upstream, false),
        };
        ProxyError {
            kind,
            source_side,
            retryable,
            message: message.into(),
            param: None,
            retry_after: None,
            cause: None,
        }
    }

    /// The request body is over `max` bytes (`limits.max_body_bytes`).
    pub fn body_too_large(max: usize) -> Self {
        ProxyError::new(
            ErrorKind::BodyTooLarge,
            format!("the request body is larger than {max} bytes"),
        )
    }

    /// The client sent no byte of its request body for `within` (`limits.body_read_timeout`).
    pub fn body_stalled(within: Duration) -> Self {
        ProxyError::new(
            ErrorKind::RequestTimeout,
            format!(
                "no byte of the request body came for {}",
                humantime::format_duration(within)
            ),
        )
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        use ErrorKind::*;
        match self.kind {
            InvalidJson | MissingField | InvalidHeader | BodyRead | MalformedRequest => {
                StatusCode::BAD_REQUEST
            }
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RouteNotFound | ModelNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Shed => StatusCode::TOO_MANY_REQUESTS,
            Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamConnect | UpstreamProtocol => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    pub fn openai_type(&self) -> &'static str {
        use ErrorKind::*;
        match self.kind {
            InvalidJson | MissingField | InvalidHeader | BodyRead | RouteNotFound
            | ModelNotFound | MethodNotAllowed | BodyTooLarge | MalformedRequest | HeadTooLarge
            | RequestTimeout => "invalid_request_error",
            Shed => "rate_limit_error",
            Overloaded | UpstreamConnect | UpstreamProtocol | UpstreamTimeout | Internal => {
                "server_error"
            }
        }
    }

    /// OpenAI's `error.code`: a stable machine-readable name.
    pub fn code(&self) -> &'static str {
        use ErrorKind::*;
        match self.kind {
            InvalidJson => "invalid_json",
            MissingField => "missing_required_parameter",
            InvalidHeader => "invalid_header",
            RouteNotFound => "unknown_url",
            ModelNotFound => "model_not_found",
            MethodNotAllowed => "method_not_allowed",
            BodyTooLarge => "request_too_large",
            BodyRead => "body_read_error",
            MalformedRequest => "malformed_request",
            HeadTooLarge => "request_header_too_large",
            RequestTimeout => "request_timeout",
            Shed => "rate_limit_exceeded",
            Overloaded => "overloaded",
            UpstreamConnect => "upstream_unavailable",
            UpstreamProtocol => "upstream_error",
            UpstreamTimeout => "upstream_timeout",
            Internal => "internal_error",
        }
    }

    /// The OpenAI error object `{"error":{...}}` as JSON text.
    pub fn body_json(&self) -> String {
        error_json(
            &self.message,
            self.openai_type(),
            self.param,
            Some(self.code()),
        )
    }

    /// The whole HTTP answer.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::from(self.body_json()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == ErrorKind::MethodNotAllowed {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }
}

/// `{"error":{"message":..,"type":..,"param":..,"code":..}}`.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    serde_json::json!({
        "error": {"message": message, "type": kind, "param": param, "code": code}
    })
    .to_string()
}

/// The two SSE events a client gets when its stream's upstream fails mid-way: an error event in
/// the OpenAI shape, then the usual terminator, so SDKs surface the error instead of hanging.
/// `trailing_newlines` is how many newlines ended what was already sent; the event is preceded by
/// what it takes to start on a fresh event boundary.
pub fn sse_error_events(message: &str, trailing_newlines: usize) -> Bytes {
    let mut out = String::with_capacity(message.len() + 160);
    for _ in trailing_newlines.min(2)..2 {
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&error_json(
        message,
        "server_error",
        None,
        Some("upstream_error"),
    ));
    out.push_str("\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ProxyError) -> serde_json::Value {
        serde_json::from_slice(e.to_response().body()).expect("json")
    }

    #[test]
    fn errors_have_the_openai_shape_and_status() {
        let cases = [
            (ErrorKind::InvalidJson, 400, "invalid_request_error"),
            (ErrorKind::MissingField, 400, "invalid_request_error"),
            (ErrorKind::ModelNotFound, 404, "invalid_request_error"),
            (ErrorKind::RouteNotFound, 404, "invalid_request_error"),
            (ErrorKind::MethodNotAllowed, 405, "invalid_request_error"),
            (ErrorKind::BodyTooLarge, 413, "invalid_request_error"),
            (ErrorKind::RequestTimeout, 408, "invalid_request_error"),
            (ErrorKind::HeadTooLarge, 431, "invalid_request_error"),
            (ErrorKind::Shed, 429, "rate_limit_error"),
            (ErrorKind::UpstreamConnect, 502, "server_error"),
            (ErrorKind::Overloaded, 503, "server_error"),
            (ErrorKind::UpstreamTimeout, 504, "server_error"),
        ];
        for (kind, status, ty) in cases {
            let e = ProxyError::new(kind, "boom");
            assert_eq!(e.status().as_u16(), status, "{kind:?}");
            let v = body(&e);
            let err = &v["error"];
            assert_eq!(err["message"], "boom");
            assert_eq!(err["type"], ty);
            assert!(err["param"].is_null());
            assert!(err["code"].is_string());
            assert_eq!(
                v.as_object().map(|o| o.len()),
                Some(1),
                "only `error` at the top"
            );
        }
    }

    #[test]
    fn model_not_found_code_and_param() {
        let e = ProxyError::new(ErrorKind::ModelNotFound, "no such model").with_param("model");
        let v = body(&e);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let e = ProxyError::new(ErrorKind::Overloaded, "full")
            .with_retry_after(Duration::from_millis(200));
        let r = e.to_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn side_and_retryability() {
        let e = ProxyError::new(ErrorKind::UpstreamConnect, "refused");
        assert!(e.retryable);
        assert_eq!(e.source_side, ErrorSource::Upstream);
        let e = ProxyError::new(ErrorKind::BodyTooLarge, "big");
        assert!(!e.retryable);
        assert_eq!(e.source_side, ErrorSource::Downstream);
    }

    #[test]
    fn sse_error_starts_a_fresh_event_and_ends_with_done() {
        let b = sse_error_events("pod died", 0);
        let text = std::str::from_utf8(&b).expect("utf8");
        assert!(text.starts_with("\n\ndata: {"));
        assert!(text.ends_with("\n\ndata: [DONE]\n\n"));
        let json = text
            .trim_start()
            .strip_prefix("data: ")
            .and_then(|t| t.split("\n\n").next())
            .expect("event");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["error"]["message"], "pod died");
        let b = sse_error_events("x", 2);
        assert!(b.starts_with(b"data: "));
    }
}
