//! The admin port: `/metrics`, `/healthz`, `/readyz`, `/debug/pools`.
//!
//! Readiness means "send me traffic": the configuration loaded, both listeners are up, and the
//! gateway is not draining. It does not depend on the pools having ready endpoints: a pool at
//! zero replicas is exactly when the gateway must keep taking requests (it holds them while the
//! autoscaler wakes the pool), and a gateway that went unready whenever its backends did would
//! take the whole Service down with them.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::pool::Pool;
use crate::telemetry::Metrics;

/// What the admin port reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub pools: Vec<(String, Arc<Pool>)>,
    /// Set when shutdown begins.
    pub draining: Arc<AtomicBool>,
}

/// Answers one admin request.
pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/debug/pools" => {
            let pools: serde_json::Map<String, serde_json::Value> = state
                .pools
                .iter()
                .map(|(name, pool)| (name.clone(), pool.debug_json()))
                .collect();
            let body =
                serde_json::to_vec_pretty(&serde_json::Value::Object(pools)).unwrap_or_default();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
