//! The run loop against a fake actuator: leader gating, failed writes, refusal to start idle.

use super::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infergate_config::{Config, Flavor};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::actuate::ActuateError;
use crate::actuate::{Actuator, PoolStatus};
use crate::signals::Replicas;
use crate::signals::fetch::HttpClient;
use infergate_config::{AutoscalingConfig, Discovery, PoolConfig};

/// An actuator whose pool is whatever it was last set to (all ready at once), and which can be
/// told to fail.
#[derive(Default)]
struct FakeActuator {
    replicas: Mutex<u32>,
    calls: Mutex<Vec<u32>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Actuator for FakeActuator {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn status(&self, _pool: &str) -> Result<PoolStatus, ActuateError> {
        let n = *self.replicas.lock();
        Ok(PoolStatus {
            replicas: Replicas {
                wanted: n,
                ready: n,
                starting: 0,
            },
            pods: Vec::new(),
        })
    }

    async fn set_replicas(
        &self,
        pool: &str,
        replicas: u32,
        _victims: &[String],
    ) -> Result<(), ActuateError> {
        self.calls.lock().push(replicas);
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ActuateError::Api {
                pool: pool.into(),
                action: "scale",
                reason: "injected".into(),
            });
        }
        *self.replicas.lock() = replicas;
        Ok(())
    }
}

fn options(leader: Option<watch::Receiver<bool>>) -> AutoscalerOptions {
    let mut config = Config::default();
    config.autoscaler.interval = Duration::from_millis(20);
    config.pools.push(PoolConfig {
        name: "p".into(),
        models: vec!["m".into()],
        flavor: Flavor::Vllm,
        discovery: Discovery::Static { endpoints: vec![] },
        policy: None,
        autoscaling: Some(AutoscalingConfig {
            min_replicas: 2,
            ..AutoscalingConfig::default()
        }),
    });
    AutoscalerOptions {
        config,
        admin_listen: ([127, 0, 0, 1], 0).into(),
        dry_run: false,
        leader,
        discovery: HashMap::new(),
    }
}

async fn metrics(handle: &AutoscalerHandle) -> String {
    HttpClient::default()
        .get_text(
            &format!("http://{}/metrics", handle.admin_addr()),
            Duration::from_secs(2),
        )
        .await
        .unwrap()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn only_the_leader_writes() {
    let (tx, rx) = watch::channel(false);
    let actuator = Arc::new(FakeActuator::default());
    let handle = start(options(Some(rx)), actuator.clone()).await.unwrap();
    // Decisions are made (and exported) while not leader, but nothing is written.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = metrics(&handle).await;
        if page.contains(r#"infergate_autoscaler_desired_replicas{pool="p"} 2"#) {
            assert!(page.contains("infergate_autoscaler_is_leader 0"), "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "no decision exported: {page}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(actuator.calls.lock().is_empty());
    tx.send(true).unwrap();
    eventually("the leader scales to min", || {
        *actuator.replicas.lock() == 2
    })
    .await;
    assert_eq!(
        *actuator.calls.lock(),
        vec![2],
        "one write, then nothing to change"
    );
    handle.shutdown();
    handle.wait().await;
}

#[tokio::test]
async fn a_failed_write_is_counted_and_retried() {
    let actuator = Arc::new(FakeActuator::default());
    actuator
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let handle = start(options(None), actuator.clone()).await.unwrap();
    eventually("two attempts", || actuator.calls.lock().len() >= 2).await;
    let page = metrics(&handle).await;
    assert!(
        !page.contains(r#"infergate_autoscaler_actuation_errors_total{pool="p"} 0"#),
        "{page}"
    );
    assert!(
        page.contains(r#"infergate_autoscaler_decisions_total{pool="p",reason="scale_down"} 0"#),
        "every reason is pre-registered: {page}"
    );
    actuator
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("recovers", || *actuator.replicas.lock() == 2).await;
    handle.shutdown();
    handle.wait().await;
}

#[tokio::test]
async fn no_autoscaled_pool_is_an_error() {
    let mut opts = options(None);
    opts.config.pools[0].autoscaling = None;
    let err = start(opts, Arc::new(FakeActuator::default())).await.err();
    assert!(matches!(err, Some(ServiceError::NothingToScale)));
}
