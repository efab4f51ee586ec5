//! Leader election on a Lease in the fake apiserver: one leader at a time, takeover after the leader
//! stops renewing, immediate takeover after a release, stepping down when renewal fails.

use infergate_autoscaler::lease::{API_CALLS, LeaderElector, LeaseConfig};
use infergate_kube_fake::FakeApi;
use k8s_openapi::api::coordination::v1::Lease;
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
        ..LeaseConfig::new("ns", "infergate-autoscaler", identity)
    }
}

fn lease(fake: &FakeApi) -> Lease {
    fake.get::<Lease>("ns", "infergate-autoscaler")
        .expect("lease exists")
}

fn holder(fake: &FakeApi) -> Option<String> {
    lease(fake).spec.and_then(|s| s.holder_identity)
}

fn transitions(fake: &FakeApi) -> i32 {
    lease(fake)
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// Polls until `cond`, checking on every poll that the two electors are never both leader.
async fn until_never_both(
    what: &str,
    a: &LeaderElector,
    b: Option<&LeaderElector>,
    cond: impl Fn() -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(b) = b {
            assert!(!(a.is_leader() && b.is_leader()), "two leaders at once");
        }
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_calls_declared(fake: &FakeApi) {
    for r in fake.requests() {
        assert!(
            API_CALLS
                .iter()
                .any(|c| c.grants(&r.api_group, &r.resource, &r.verb)),
            "call not in API_CALLS: {} {} {:?}",
            r.verb,
            r.resource,
            r.api_group
        );
    }
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_the_leader_stops_renewing() {
    let fake = FakeApi::start().await;
    let a = LeaderElector::spawn(fake.client(), config("a")).unwrap();
    let b = LeaderElector::spawn(fake.client(), config("b")).unwrap();

    until_never_both("a leader", &a, Some(&b), || a.is_leader() || b.is_leader()).await;
    // Racing for a missing lease: exactly one create succeeded.
    let created = fake
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.status == 201)
        .count();
    assert_eq!(created, 1);

    // Several renewals go by with one leader, the holder of the lease.
    let renewals_from = fake.resource_version();
    until_never_both("five renewals", &a, Some(&b), || {
        fake.resource_version() >= renewals_from + 5
    })
    .await;
    // On a loaded machine a renewal can miss its deadline; wait for a settled leader before picking.
    until_never_both("exactly one leader", &a, Some(&b), || {
        a.is_leader() != b.is_leader()
    })
    .await;
    let (leader, follower, follower_id) = if a.is_leader() {
        (a, b, "b")
    } else {
        (b, a, "a")
    };
    assert!(leader.is_leader() && !follower.is_leader());
    assert_ne!(holder(&fake).as_deref(), Some(follower_id));
    assert_eq!(transitions(&fake), 0);

    // The leader dies without releasing: the follower takes over once the lease expires.
    leader.abort();
    let deadline = Instant::now() + DEADLINE;
    while !follower.is_leader() {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(holder(&fake).as_deref(), Some(follower_id));
    assert_eq!(transitions(&fake), 1);
    assert_calls_declared(&fake);
    follower.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_the_lease_for_the_next_candidate() {
    let fake = FakeApi::start().await;
    let a = LeaderElector::spawn(fake.client(), config("a")).unwrap();
    until_never_both("a leads", &a, None, || a.is_leader()).await;
    let b = LeaderElector::spawn(fake.client(), config("b")).unwrap();
    // b has seen the lease held by a.
    until_never_both("b to read the lease", &a, Some(&b), || {
        fake.requests().iter().filter(|r| r.verb == "get").count() >= 3
    })
    .await;
    assert!(!b.is_leader());
    let mut a_rx = a.subscribe();
    a.shutdown().await;
    assert!(
        !*a_rx.borrow_and_update(),
        "a steps down before it releases"
    );
    assert_eq!(holder(&fake), None, "released: no holder");
    until_never_both("b takes over", &b, None, || b.is_leader()).await;
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    assert_eq!(transitions(&fake), 1);
    assert_calls_declared(&fake);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_and_recovers() {
    let fake = FakeApi::start().await;
    let a = LeaderElector::spawn(fake.client(), config("a")).unwrap();
    until_never_both("a leads", &a, None, || a.is_leader()).await;

    // A lost compare-and-swap while renewing is not fatal: a stays (or is again) the leader.
    fake.fail_next(
        Some("PUT"),
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/",
        1,
        409,
    );
    until_never_both("the injected 409", &a, None, || {
        fake.requests()
            .iter()
            .any(|r| r.verb == "update" && r.status == 409)
    })
    .await;
    until_never_both("a leads after the conflict", &a, None, || a.is_leader()).await;

    // The apiserver hangs (requests accepted, never answered): a still steps down at its deadline.
    fake.set_hang(true);
    until_never_both("a steps down while the apiserver hangs", &a, None, || {
        !a.is_leader()
    })
    .await;
    fake.set_hang(false);
    until_never_both("a leads after the hang", &a, None, || a.is_leader()).await;

    // The apiserver goes away: a stops writing once its renew deadline passes.
    fake.set_outage(true);
    until_never_both("a steps down", &a, None, || !a.is_leader()).await;
    fake.set_outage(false);
    // It still holds the lease, so it renews and leads again.
    until_never_both("a leads again", &a, None, || a.is_leader()).await;
    assert_eq!(holder(&fake).as_deref(), Some("a"));
    assert_eq!(transitions(&fake), 0);
    a.shutdown().await;
}

#[test]
fn bad_timings_are_refused() {
    let cfg = LeaseConfig {
        renew_deadline: Duration::from_secs(2),
        ..config("a")
    };
    assert!(cfg.validate().is_err());
}
