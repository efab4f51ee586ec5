//! The admin port: `/metrics`, `/healthz`, `/debug/pools`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::actuate::PoolStatus;
use crate::policy::Recommendation;

/// What `/debug/pools` shows for one pool.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct PoolView {
    wanted: u32,
    ready: u32,
    starting: u32,
    desired: u32,
    reason: String,
    mode: String,
    ratio: Option<f64>,
    pods: Vec<PodView>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct PodView {
    name: String,
    url: Option<String>,
    phase: &'static str,
}

/// What the loop and the admin port share.
pub(super) struct Shared {
    pub(super) metrics: Metrics,
    pub(super) pools: Mutex<HashMap<String, PoolView>>,
}

pub(super) fn view(status: &PoolStatus, rec: &Recommendation) -> PoolView {
    PoolView {
        wanted: status.replicas.wanted,
        ready: status.replicas.ready,
        starting: status.replicas.starting,
        desired: rec.replicas,
        reason: rec.reason.as_str().to_string(),
        mode: rec.mode.as_str().to_string(),
        ratio: rec.evidence.ratio.filter(|r| r.is_finite()),
        pods: status
            .pods
            .iter()
            .map(|p| PodView {
                name: p.name.clone(),
                url: p.url.clone(),
                phase: p.phase.as_str(),
            })
            .collect(),
    }
}

pub(super) async fn serve_admin(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(admin_route(&shared, req.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin_route(shared: &Shared, path: &str) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/debug/pools" => {
            let pools = shared.pools.lock().clone();
            let body = serde_json::to_string_pretty(&pools).unwrap_or_else(|_| "{}".into());
            (200, "application/json", body)
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}
