//! Retrying Kubernetes calls: which failures are about the moment (retry) and which are about the
//! request (give up), and the capped exponential back-off between attempts.

use super::KubeActuatorError;
use std::future::Future;
use std::time::Duration;

/// Capped exponential back-off for retryable failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Cap on any one delay.
    pub max_backoff: Duration,
    /// Cap on one attempt, so a hung apiserver cannot stall the control loop (a timed-out attempt
    /// is retried like a transport error).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): initial x 2^(attempt-1), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Whether an error is worth retrying: conflicts, throttling, server errors and transport failures
/// are (they are about the moment, not the request); everything else is not.
pub fn is_retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or the retry budget is spent.
pub(super) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    call: F,
) -> Result<T, KubeActuatorError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let max = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(policy.attempt_timeout, call()).await {
            Ok(result) => result,
            Err(_) if attempt >= max => {
                return Err(KubeActuatorError::TimedOut {
                    what: what.into(),
                    attempts: attempt,
                });
            }
            Err(_) => {
                tracing::warn!(action = %what, attempt, "attempt timed out; retrying");
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        match result {
            Ok(value) => return Ok(value),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(KubeActuatorError::NotFound { what: what.into() });
            }
            Err(err) if !is_retryable(&err) => {
                return Err(KubeActuatorError::Rejected {
                    what: what.into(),
                    source: err,
                });
            }
            Err(err) if attempt >= max => {
                return Err(KubeActuatorError::Exhausted {
                    what: what.into(),
                    attempts: attempt,
                    source: err,
                });
            }
            Err(err) => {
                let delay = policy.backoff(attempt);
                tracing::warn!(action = %what, attempt, error = %err, ?delay, "retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(4), Duration::from_millis(500));
        assert_eq!(p.backoff(60), Duration::from_millis(500));
    }

    #[test]
    fn which_errors_are_retried() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        for code in [409, 429, 500, 503, 504] {
            assert!(is_retryable(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 415, 422] {
            assert!(!is_retryable(&api(code)), "{code}");
        }
    }
}
