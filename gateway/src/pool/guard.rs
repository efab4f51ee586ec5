//! The in-flight guard: a request counts against its endpoint exactly as long as it lives.
//!
//! RAII rather than explicit decrements because a request can end in many ways (finished stream,
//! client disconnect, upstream error, a panic in a body adapter): whichever way it ends, the
//! guard drops, the count goes down, and held requests are told capacity freed up.

use std::sync::Arc;

use super::{Endpoint, Pool};

/// Counts one request in flight to one endpoint until dropped.
///
/// It holds its pool strongly: a `Weak` cost a downgrade and an upgrade at each end of every
/// request, atomic writes to a count that every worker writes (and the pool outlives its
/// requests anyway: the data path holds it).
#[derive(Debug)]
pub struct InflightGuard {
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
}

impl InflightGuard {
    pub(super) fn new(pool: Arc<Pool>, endpoint: Arc<Endpoint>) -> InflightGuard {
        InflightGuard { pool, endpoint }
    }

    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The upstream answered well: resets its failure streak. Ends the request.
    pub fn success(self) {
        self.pool.report_success(&self.endpoint);
    }

    /// The upstream failed (connect error, 5xx, died mid-stream): counts towards ejection. Ends
    /// the request.
    pub fn failure(self) {
        self.pool.report_failure(&self.endpoint);
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.pool.request_ended(&self.endpoint);
    }
}
