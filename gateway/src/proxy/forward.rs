//! The forward phase: send the original bytes to the chosen endpoint and wait for its answer's
//! head, retrying on another endpoint while nothing has reached the client yet.
//!
//! Retried: connect errors (the request never left) and 502/503 answers (the endpoint said it
//! could not serve), both before any answer byte was passed on, up to `retry.max_retries` extra
//! attempts and within a retry budget (each request earns `retry.budget_ratio` of a retry; a
//! retry spends one), so that during an outage retries add at most that share to the load.
//! Not retried: a timeout or a reset after the request was sent (the endpoint may be working on
//! it: a retry would double the GPU work), and anything after the first answer byte. (A reused
//! connection that its server closed with no byte of answer, the keep-alive race, is not a
//! failure here: [`Upstreams::send`] sends the request again on another connection.)

use http::Response;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::error::{ErrorKind, ProxyError};
use super::upstream::{AnswerBody, Lease, Outgoing, Upstreams};
use crate::pool::Endpoint;

/// What one attempt came to.
pub enum Attempt {
    /// The endpoint answered (any status); its head is here, its body not yet read, and the
    /// connection is lent until that body ends.
    Answered(Response<AnswerBody>, Lease),
    /// Failed before any answer byte.
    Failed(ProxyError, &'static str),
}

/// Sends one attempt over `upstreams` and waits at most `first_byte_timeout` for the answer's
/// head (connecting included; the worker's coarse timer, so up to
/// [`crate::coarse_timer::RESOLUTION`] more).
pub async fn attempt(
    upstreams: &Arc<Upstreams>,
    endpoint: &Arc<Endpoint>,
    req: &Outgoing<'_>,
    first_byte_timeout: Duration,
) -> Attempt {
    let answer = upstreams
        .timer()
        .timeout(first_byte_timeout, upstreams.send(endpoint, req));
    match answer.await {
        Ok(Ok((resp, lease))) => Attempt::Answered(resp, lease),
        Ok(Err(e)) if e.is_connect() => Attempt::Failed(
            ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("cannot reach the model server: {e}"),
            )
            .with_cause(e),
            "connect",
        ),
        Ok(Err(e)) => Attempt::Failed(
            ProxyError::new(
                ErrorKind::UpstreamProtocol,
                format!("the model server failed: {e}"),
            )
            .with_cause(e),
            "protocol",
        ),
        Err(_) => Attempt::Failed(
            ProxyError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "the model server sent nothing within {}",
                    humantime::format_duration(first_byte_timeout)
                ),
            ),
            "timeout",
        ),
    }
}

/// Whether an answer's status asks for another endpoint.
pub fn is_retryable_status(status: http::StatusCode) -> bool {
    status == http::StatusCode::BAD_GATEWAY || status == http::StatusCode::SERVICE_UNAVAILABLE
}

/// A token bucket of retries, in thousandths of a retry: each request deposits
/// `budget_ratio`, each retry withdraws one; it starts with (and never holds more than) a reserve,
/// so a quiet gateway can still retry and a long good spell cannot bank an unbounded storm.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
    deposit: i64,
}

const RESERVE_MILLI: i64 = 10_000;
const CAP_MILLI: i64 = 100_000;

impl RetryBudget {
    pub fn new(budget_ratio: f64) -> Self {
        RetryBudget {
            milli: AtomicI64::new(RESERVE_MILLI),
            deposit: (budget_ratio.clamp(0.0, 1.0) * 1000.0) as i64,
        }
    }

    /// One request arrived.
    pub fn deposit(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < CAP_MILLI).then(|| (m + self.deposit).min(CAP_MILLI))
            });
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_has_a_reserve_then_earns_a_share() {
        let b = RetryBudget::new(0.2);
        let mut took = 0;
        while b.withdraw() {
            took += 1;
        }
        assert_eq!(took, 10, "the reserve");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw(), "ten requests at 20% earn two retries");
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[test]
    fn retry_budget_is_capped() {
        let b = RetryBudget::new(1.0);
        for _ in 0..1000 {
            b.deposit();
        }
        let mut took = 0;
        while b.withdraw() {
            took += 1;
        }
        assert_eq!(took, 100);
    }
}
