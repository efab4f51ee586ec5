//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one autoscaler replica writes.
//!
//! The protocol is client-go's, written on kube's `Api<Lease>` (small enough not to need a crate):
//! - The Lease names its holder and a duration. A candidate takes it when it is missing (create),
//!   released (no holder), or expired; the holder renews it every `retry_period`.
//! - Every write is a compare-and-swap on `metadata.resourceVersion`: of two candidates racing for
//!   an expired lease, one PUT succeeds and the other gets 409 Conflict and stays a follower.
//! - Expiry is judged on the candidate's own monotonic clock, from when it first *observed* the
//!   current version of the lease, never from the `renewTime` written by another machine: clock skew
//!   between nodes cannot make a live leader look expired.
//! - The leader steps down (stops writing) once it has failed to renew for `renew_deadline`, which is
//!   shorter than `lease_duration`: it stops before anyone else may take over, so there is never a
//!   moment with two writers as long as clocks run at the same rate.
//!
//! The decisions are pure functions ([`decide`], [`observe`], [`should_step_down`]) over plain data
//! and are unit-tested; [`LeaderElector`] is the I/O shell that feeds them and publishes
//! "am I leader" on a `tokio::sync::watch` channel.

use infergate_gateway::discovery::kubernetes::ApiCall;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The API calls of leader election.
pub const API_CALLS: &[ApiCall] = &[ApiCall {
    api_group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "update"],
}];

/// Timing and identity of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (the pod name), written as `holderIdentity`.
    pub identity: String,
    /// How long a lease stays valid without renewal (client-go default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (default 10 s).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew (default 2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's default timings: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The timings must nest (retry < renew deadline < lease duration) for the safety argument
    /// above to hold, and the identity must not be empty (an empty holder means "released").
    pub fn validate(&self) -> Result<(), LeaseError> {
        if self.identity.is_empty() {
            return Err(LeaseError::Config("identity must not be empty".into()));
        }
        if self.lease_duration.as_secs() < 1 {
            return Err(LeaseError::Config(
                "lease_duration must be at least 1 s".into(),
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaseError::Config(
                "renew_deadline must be shorter than lease_duration".into(),
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(LeaseError::Config(
                "retry_period must be positive and shorter than renew_deadline".into(),
            ));
        }
        Ok(())
    }
}

/// Leader election errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// The configuration cannot work.
    #[error("invalid leader election config: {0}")]
    Config(String),
}

/// What a candidate knows about the lease: its content, and when this version was first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity` (`None` or empty: released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` as written by the holder.
    pub lease_duration: Duration,
    /// `metadata.resourceVersion`: a new version means the holder is alive.
    pub resource_version: String,
    /// On this candidate's monotonic clock, when this version was first seen.
    pub seen_at: Instant,
}

/// The next step for a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No lease exists: create it, holding it.
    Create,
    /// This candidate holds it: renew.
    Renew,
    /// Released or expired: take it over (compare-and-swap).
    TakeOver,
    /// Someone else holds a live lease: wait.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// Records a fresh read of the lease: a version already seen keeps its first-seen time (so expiry
/// runs from the last *change*); a new version is seen now.
pub fn observe(
    previous: Option<&Observed>,
    holder: Option<String>,
    lease_duration: Duration,
    resource_version: String,
    now: Instant,
) -> Observed {
    let seen_at = match previous {
        Some(p) if p.resource_version == resource_version => p.seen_at,
        _ => now,
    };
    Observed {
        holder,
        lease_duration,
        resource_version,
        seen_at,
    }
}

/// The pure election rule.
pub fn decide(lease: Option<&Observed>, identity: &str, now: Instant) -> Action {
    let Some(lease) = lease else {
        return Action::Create;
    };
    match lease.holder.as_deref() {
        Some(h) if h == identity => Action::Renew,
        None | Some("") => Action::TakeOver,
        Some(h) => {
            if now.saturating_duration_since(lease.seen_at) >= lease.lease_duration {
                Action::TakeOver
            } else {
                Action::Wait {
                    holder: h.to_owned(),
                }
            }
        }
    }
}

/// Whether a leader whose last successful renewal was at `last_renewed` must stop writing now.
pub fn should_step_down(last_renewed: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(last_renewed) >= renew_deadline
}

/// A running candidate. Read [`LeaderElector::is_leader`] (or a [`LeaderElector::subscribe`]d
/// receiver) before every write.
#[derive(Debug)]
pub struct LeaderElector {
    is_leader: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Publishes `false` when the election task ends for any reason (including abort), so a receiver
/// never keeps reading a stale `true`.
struct NotLeaderOnExit(watch::Sender<bool>);

impl Drop for NotLeaderOnExit {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl LeaderElector {
    /// Validates the config and starts campaigning.
    pub fn spawn(client: kube::Client, config: LeaseConfig) -> Result<Self, LeaseError> {
        config.validate()?;
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let task = tokio::spawn(campaign(api, config, NotLeaderOnExit(tx), cancel.clone()));
        Ok(Self {
            is_leader: rx,
            cancel,
            task,
        })
    }

    /// Whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow()
    }

    /// A receiver of "am I leader" (for `KubeScaler::with_leader_gate` and the control loop).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    /// Stops campaigning; a leader steps down and releases the lease (empty holder) so another
    /// replica can take over at once instead of after the lease expires.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = (&mut self.task).await;
    }

    /// Stops at once without releasing (as a crash would): others take over after expiry.
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one acquire-or-renew attempt ended.
#[derive(Debug)]
enum Attempt {
    /// This candidate holds a freshly written lease.
    Holding,
    /// Someone else holds a live lease.
    HeldByOther,
    /// A concurrent write won the compare-and-swap (409).
    LostRace,
    /// The API could not be reached, refused, or did not answer in time.
    Failed(String),
}

/// The election loop: one acquire-or-renew attempt per retry period.
async fn campaign(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: NotLeaderOnExit,
    cancel: CancellationToken,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    loop {
        let attempt_deadline = match last_renewed {
            Some(at) => (at + config.renew_deadline).saturating_duration_since(Instant::now()),
            None => config.retry_period,
        };
        // A hung apiserver must not keep a leader leading past its deadline: bound every attempt.
        let attempt = tokio::time::timeout(
            attempt_deadline.max(Duration::from_millis(1)),
            try_acquire_or_renew(&api, &config, &mut observed),
        );
        let outcome = tokio::select! {
            _ = cancel.cancelled() => break,
            outcome = attempt => outcome.unwrap_or_else(|_| Attempt::Failed("timed out".into())),
        };
        let now = Instant::now();
        let step_down = match &outcome {
            Attempt::Holding => {
                if !*leader.0.borrow() {
                    tracing::info!(identity = %config.identity, lease = %config.name, "became leader");
                }
                last_renewed = Some(now);
                leader.0.send_replace(true);
                false
            }
            // Someone else holds it: whatever we thought, we are not the leader.
            Attempt::HeldByOther => true,
            // A failed renewal is retried until the renew deadline; then we stop writing.
            Attempt::LostRace | Attempt::Failed(_) => {
                if let Attempt::Failed(err) = &outcome {
                    tracing::warn!(identity = %config.identity, error = %err, "lease attempt failed");
                }
                last_renewed.is_none_or(|at| should_step_down(at, now, config.renew_deadline))
            }
        };
        if step_down {
            if *leader.0.borrow() {
                tracing::warn!(identity = %config.identity, lease = %config.name, "stepping down");
            }
            last_renewed = None;
            leader.0.send_replace(false);
        }
        // A leader never sleeps past its renew deadline: it wakes to try once more or step down.
        let pause = match last_renewed {
            Some(at) => config
                .retry_period
                .min((at + config.renew_deadline).saturating_duration_since(Instant::now())),
            None => config.retry_period,
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    // Cancelled: step down first, then release if we held it.
    let was_leader = *leader.0.borrow();
    leader.0.send_replace(false);
    if was_leader {
        let release = release(&api, &config);
        if tokio::time::timeout(config.retry_period, release)
            .await
            .is_err()
        {
            tracing::warn!(identity = %config.identity, "lease release timed out");
        }
    }
}

/// One attempt: read the lease, decide, and write if the decision says so.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Attempt {
    let now = Instant::now();
    let read = match api.get_opt(&config.name).await {
        Ok(read) => read,
        Err(err) => return Attempt::Failed(err.to_string()),
    };
    let current = match read {
        Some(lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(config.lease_duration, Duration::from_secs);
            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
            *observed = Some(observe(
                observed.as_ref(),
                spec.holder_identity.clone(),
                duration,
                rv,
                now,
            ));
            Some(lease)
        }
        None => {
            *observed = None;
            None
        }
    };
    let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let result = match (decide(observed.as_ref(), &config.identity, now), current) {
        (Action::Wait { .. }, _) => return Attempt::HeldByOther,
        (Action::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs(config.lease_duration)),
                    acquire_time: Some(stamp.clone()),
                    renew_time: Some(stamp),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (action, Some(mut lease)) => {
            // Replace carries the resourceVersion we read: a concurrent write makes this a 409.
            let mut spec = lease.spec.take().unwrap_or_default();
            if action == Action::TakeOver {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(stamp.clone());
            }
            spec.holder_identity = Some(config.identity.clone());
            spec.lease_duration_seconds = Some(duration_secs(config.lease_duration));
            spec.renew_time = Some(stamp);
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Attempt::Holding,
        Err(kube::Error::Api(status)) if status.code == 409 => Attempt::LostRace,
        Err(err) => Attempt::Failed(err.to_string()),
    }
}

/// Gives the lease up: empty holder, so the next candidate need not wait for expiry.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            tracing::info!(identity = %config.identity, lease = %config.name, "released lease")
        }
        Err(err) => {
            tracing::warn!(identity = %config.identity, error = %err, "lease release failed")
        }
    }
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, rv: &str, seen_at: Instant) -> Observed {
        Observed {
            holder: holder.map(str::to_owned),
            lease_duration: Duration::from_secs(15),
            resource_version: rv.into(),
            seen_at,
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        assert_eq!(decide(None, "a", t0), Action::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), "1", t0)), "a", t0),
            Action::Renew
        );
        assert_eq!(
            decide(Some(&lease(None, "1", t0)), "a", t0),
            Action::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(Some(""), "1", t0)), "a", t0),
            Action::TakeOver
        );
        let held = lease(Some("b"), "1", t0);
        assert_eq!(
            decide(Some(&held), "a", t0 + Duration::from_secs(14)),
            Action::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held), "a", t0 + Duration::from_secs(15)),
            Action::TakeOver
        );
    }

    #[test]
    fn expiry_runs_from_the_last_observed_change() {
        let t0 = Instant::now();
        let first = observe(
            None,
            Some("b".into()),
            Duration::from_secs(15),
            "1".into(),
            t0,
        );
        // Same version read again later: still counted from t0.
        let again = observe(
            Some(&first),
            Some("b".into()),
            Duration::from_secs(15),
            "1".into(),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(again.seen_at, t0);
        // The holder renewed (new version): the clock restarts.
        let renewed = observe(
            Some(&again),
            Some("b".into()),
            Duration::from_secs(15),
            "2".into(),
            t0 + Duration::from_secs(14),
        );
        assert_eq!(renewed.seen_at, t0 + Duration::from_secs(14));
        assert!(matches!(
            decide(Some(&renewed), "a", t0 + Duration::from_secs(20)),
            Action::Wait { .. }
        ));
        assert_eq!(
            decide(Some(&renewed), "a", t0 + Duration::from_secs(29)),
            Action::TakeOver
        );
    }

    #[test]
    fn step_down_at_the_renew_deadline() {
        let t0 = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!should_step_down(t0, t0 + Duration::from_secs(9), deadline));
        assert!(should_step_down(t0, t0 + Duration::from_secs(10), deadline));
    }

    #[test]
    fn config_validation() {
        let ok = LeaseConfig::new("ns", "l", "a");
        assert_eq!(ok.validate(), Ok(()));
        let bad = LeaseConfig {
            renew_deadline: Duration::from_secs(20),
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
        let bad = LeaseConfig {
            identity: String::new(),
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
        let bad = LeaseConfig {
            retry_period: Duration::from_secs(10),
            ..ok
        };
        assert!(bad.validate().is_err());
    }
}
