//! `infergate up` end to end, over real processes: the embedded gateway and autoscaler, and the
//! `infergate sim` pods the local actuator starts. The simulator is small (2 requests per batch)
//! and the windows short, so each scenario takes seconds; every wait is bounded.

mod autoscale_support;
mod common;

use std::time::Duration;

use autoscale_support::tokio_util_like::Stop;
use autoscale_support::*;
use common::Proc;

const MODEL: &str = "sim-llama-3-8b";
const POOL: &str = "sim";

/// `infergate up` on free ports with 2-slot pods, deciding every 200 ms unless `extra` sets
/// `--interval`.
fn up(extra: &[&str]) -> Proc {
    let mut args = vec![
        "up",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--autoscaler-listen",
        "127.0.0.1:0",
        "--max-num-seqs",
        "2",
    ];
    if !extra.contains(&"--interval") {
        args.extend_from_slice(&["--interval", "200ms"]);
    }
    args.extend_from_slice(extra);
    Proc::spawn(&args, &["gateway", "admin", "autoscaler"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_scales_up_in_one_decision_and_the_pool_drains_back_to_min_without_failures() {
    // Decisions 500 ms apart: the burst (16 requests sent at once) lands well within one interval,
    // so the assertion below is about the policy, not about where a tick fell.
    let proc = up(&[
        "--interval",
        "500ms",
        "--min",
        "1",
        "--max",
        "4",
        "--cold-start",
        "300ms",
        "--stabilization-window",
        "3s",
        "--scale-down-period",
        "500ms",
    ]);
    let (api, autoscaler) = (proc.url("gateway"), proc.url("autoscaler"));
    let http = client();
    wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(30),
        "one ready pod",
        |m| m.ready == 1.0,
    )
    .await;

    // 16 long requests at once on one pod that runs 2 at a time.
    let burst = burst(&http, &api, MODEL, 16, 300);
    let m = wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(20),
        "4 pods",
        |m| m.current == 4.0,
    )
    .await;
    assert_eq!(m.ups(), 1.0, "1 -> 4 in a single decision: {m:?}");

    // A light steady client runs through the whole scale-down: every pod removed is drained first,
    // so none of its requests may fail.
    let stop = Stop::default();
    let steady = steady_client(http.clone(), api.clone(), MODEL.into(), 20, stop.clone());
    for request in burst {
        assert_eq!(request.await.unwrap(), Ok(200));
    }
    let m = wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(60),
        "back to 1 pod",
        |m| m.current == 1.0 && m.ready == 1.0,
    )
    .await;
    stop.set();
    let statuses = steady.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "requests failed while pods drained: {statuses:?}"
    );
    assert!(m.decisions("scale_down") >= 1.0, "{m:?}");
    assert_eq!(m.ups(), 1.0, "no scale-up on the way down: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_zero_the_first_request_is_held_wakes_the_pool_and_succeeds() {
    let proc = up(&[
        "--min",
        "0",
        "--max",
        "2",
        "--cold-start",
        "1s",
        "--idle-window",
        "2s",
        "--stabilization-window",
        "2s",
    ]);
    let (api, autoscaler) = (proc.url("gateway"), proc.url("autoscaler"));
    let http = client();
    // Give the autoscaler a few decisions: at min 0 with nothing held it stays at zero.
    wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(10),
        "decisions at zero",
        |m| m.decisions("hold_stable") >= 3.0,
    )
    .await;
    let m = pool_metrics(&http, &autoscaler, POOL).await;
    assert_eq!((m.current, m.ready), (0.0, 0.0), "{m:?}");

    let started = std::time::Instant::now();
    assert_eq!(chat(&http, &api, MODEL, 10).await, Ok(200));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the request waited for the cold start"
    );
    let m = pool_metrics(&http, &autoscaler, POOL).await;
    assert_eq!(m.decisions("wake_from_zero"), 1.0, "{m:?}");

    // Idle again: back to zero after the idle window.
    let m = wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(30),
        "back to zero",
        |m| m.current == 0.0,
    )
    .await;
    assert_eq!(m.decisions("scale_to_zero"), 1.0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_load_does_not_flap() {
    let proc = up(&[
        "--min",
        "1",
        "--max",
        "4",
        "--cold-start",
        "300ms",
        "--stabilization-window",
        "2s",
        "--scale-down-period",
        "500ms",
    ]);
    let (api, autoscaler) = (proc.url("gateway"), proc.url("autoscaler"));
    let http = client();
    wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(30),
        "one ready pod",
        |m| m.ready == 1.0,
    )
    .await;
    // Three clients back to back: 3 requests in flight, against pods of 2 slots.
    let stop = Stop::default();
    let clients: Vec<_> = (0..3)
        .map(|_| steady_client(http.clone(), api.clone(), MODEL.into(), 100, stop.clone()))
        .collect();
    // The ramp: let it settle for two stabilization windows.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let settled = pool_metrics(&http, &autoscaler, POOL).await;
    // Then ten seconds (five windows) of the same load.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = pool_metrics(&http, &autoscaler, POOL).await;
    stop.set();
    for c in clients {
        assert!(c.await.unwrap().iter().all(|s| *s == 200));
    }
    assert!(
        settled.current >= 2.0,
        "3 in flight need 2 pods: {settled:?}"
    );
    assert_eq!(
        after.changes(),
        settled.changes(),
        "replicas changed under a steady load: {settled:?} -> {after:?}"
    );
}

/// `up` with a fixed pool of two pods, once both are ready, and the pids of its two sims.
async fn up_with_two_ready_sims() -> (Proc, Vec<u32>) {
    let proc = up(&["--min", "2", "--max", "2", "--cold-start", "200ms"]);
    let autoscaler = proc.url("autoscaler");
    let http = client();
    wait_for(
        &http,
        &autoscaler,
        POOL,
        Duration::from_secs(30),
        "two ready pods",
        |m| m.ready == 2.0,
    )
    .await;
    let pods: Vec<u32> = children_of(proc.child.id())
        .into_iter()
        .filter(|pid| cmdline(*pid).contains(" sim "))
        .collect();
    assert_eq!(pods.len(), 2, "two `infergate sim` children");
    (proc, pods)
}

/// The processes among `pids` still alive once all have exited or `within` has passed.
async fn alive_after(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = std::time::Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_everything_and_leaves_no_process() {
    let (mut proc, pods) = up_with_two_ready_sims().await;

    let status = proc
        .terminate(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let left = alive_after(&pods, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "sim processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_up_still_leaves_no_sim_behind() {
    let (mut proc, pods) = up_with_two_ready_sims().await;

    // SIGKILL cannot be caught: the sims must notice on their own (their stdin pipe closes).
    proc.child.kill().expect("SIGKILL up");
    let _ = proc.child.wait();
    let left = alive_after(&pods, Duration::from_secs(15)).await;
    assert!(
        left.is_empty(),
        "sim processes outlived a SIGKILLed up: {left:?}"
    );
}
