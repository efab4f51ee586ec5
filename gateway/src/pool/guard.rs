//! The in-flight guard: a request counts against its endpoint exactly as long as it lives.
//!
//! RAII rather than explicit decrements because a request can end in many ways (finished stream,
//! client disconnect, upstream error, a panic in a body adapter): whichever way it ends, the
//! guard drops, the count goes down, and held requests are told capacity freed up.

use std::sync::{Arc, Weak};

use super::{Endpoint, Pool};

/// Counts one request in flight to one endpoint until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    pool: Weak<Pool>,
    endpoint: Arc<Endpoint>,
}

impl InflightGuard {
    pub(super) fn new(pool: &Arc<Pool>, endpoint: Arc<Endpoint>) -> InflightGuard {
        InflightGuard {
            pool: Arc::downgrade(pool),
            endpoint,
        }
    }

    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The upstream answered well: resets its failure streak. Ends the request.
    pub fn success(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.report_success(&self.endpoint);
        }
    }

    /// The upstream failed (connect error, 5xx, died mid-stream): counts towards ejection. Ends
    /// the request.
    pub fn failure(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.report_failure(&self.endpoint);
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        match self.pool.upgrade() {
            Some(pool) => pool.request_ended(&self.endpoint),
            None => {
                self.endpoint.end_request();
            }
        }
    }
}
