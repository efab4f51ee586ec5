//! End-to-end tests of `infergate loadtest step`: the real binary starting `infergate up` (gateway,
//! autoscaler, sim pods) twice, autoscaled then fixed, checked through the files it writes.
//!
//! Settings are shrunk so a whole scenario takes well under a minute: slow sims (`--speed 0.5`,
//! two sequences per pod, 32-token answers) keep one pod's capacity near 5 requests/s, so the
//! machine is never the bottleneck; 3-second steps, a 1-second cold start, decisions every 250 ms.
//! The assertions are about behaviour with wide margins (the pool grew and shrank, the fixed pool
//! used more pod-seconds), never about latency figures.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{TempDir, run_to_end};

/// Runs `infergate loadtest step ARGS` to its end, bounded by `within`.
fn step(args: &[&str], within: Duration) -> Output {
    let mut all = vec!["loadtest", "step"];
    all.extend_from_slice(args);
    run_to_end(&all, within)
}

const FAST: &[&str] = &[
    "--speed",
    "0.5",
    "--max-num-seqs",
    "2",
    "--workload",
    "fixed:64:32",
    "--cold-start",
    "1s",
    "--interval",
    "250ms",
    "--stabilization-window",
    "2s",
    "--scale-down-period",
    "1s",
    "--timeout",
    "30s",
];

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read stepload.json");
    serde_json::from_str(&text).expect("stepload.json is JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn step_load_scales_up_for_the_peak_and_back_down_and_saves_pod_seconds() {
    let dir = TempDir::new("scenario");
    let out = dir.0.to_str().expect("utf-8 temp dir");
    let mut args = FAST.to_vec();
    args.extend([
        "--step",
        "3s",
        "--tail",
        "6s",
        "--max",
        "3",
        "--probe-rate",
        "20",
        "--probe-duration",
        "6s",
        "--out",
        out,
    ]);
    let o = step(&args, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "loadtest step failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("| autoscaled |") && stdout.contains("| fixed |"),
        "{stdout}"
    );

    let report = json(&dir.0.join("stepload.json"));
    let capacity = num(&report["capacity"], "requests_per_s");
    assert!(capacity > 0.5, "one pod's capacity {capacity}");
    let (auto, fixed) = (&report["autoscaled"], &report["fixed"]);

    // The autoscaled pool grew above its minimum for the peak, and came back down.
    let peak = num(auto, "peak_replicas");
    assert!(peak >= 2.0, "never scaled up: {auto}");
    assert!(
        num(auto, "final_replicas") < peak,
        "never scaled down: {auto}"
    );
    assert!(
        num(auto, "scale_ups") >= 1.0 && num(auto, "scale_downs") >= 1.0,
        "{auto}"
    );
    // The fixed pool is sized for the 150% peak, and stays so.
    assert_eq!(num(fixed, "peak_replicas"), 2.0, "{fixed}");
    assert_eq!(num(fixed, "final_replicas"), 2.0, "{fixed}");
    assert_eq!(
        num(fixed, "scale_ups") + num(fixed, "scale_downs"),
        0.0,
        "{fixed}"
    );
    // Over the same window the fixed pool paid for more pods.
    assert!(
        num(fixed, "pod_seconds") > num(auto, "pod_seconds"),
        "fixed {fixed}\nautoscaled {auto}"
    );
    // Both served the load (a generous bound: the machine is shared and noisy).
    for pool in [auto, fixed] {
        let requests = num(pool, "requests");
        assert!(requests >= 20.0, "{pool}");
        assert!(num(pool, "failed") * 10.0 <= requests, "{pool}");
    }

    // The time series: a row about every second for each pool, over the whole window.
    let csv = std::fs::read_to_string(dir.0.join("stepload.csv")).expect("read stepload.csv");
    let mut lines = csv.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("pool,t_s,")));
    let window = 7.0 * 3.0 + 6.0;
    for label in ["autoscaled", "fixed"] {
        let times: Vec<f64> = csv
            .lines()
            .filter(|l| l.starts_with(&format!("{label},")))
            .map(|l| {
                l.split(',')
                    .nth(1)
                    .and_then(|t| t.parse().ok())
                    .expect("t_s column")
            })
            .collect();
        assert!(
            times.len() as f64 >= window * 0.7 && times.len() as f64 <= window + 2.0,
            "{label}: {} rows over {window} s",
            times.len()
        );
        assert!(
            times.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 3.5),
            "{label}: sample times {times:?}"
        );
    }

    let svg = std::fs::read_to_string(dir.0.join("stepload.svg")).expect("read stepload.svg");
    assert!(
        svg.starts_with("<svg") || svg.contains("<svg"),
        "not an SVG"
    );
    assert!(svg.len() > 5_000, "a near-empty plot ({} bytes)", svg.len());
    assert!(svg.contains("p90 TTFT") && svg.contains("pods (current)"));
}

#[test]
fn a_probe_that_cannot_saturate_one_pod_is_refused() {
    let dir = TempDir::new("probe");
    let out = dir.0.to_str().expect("utf-8 temp dir");
    let mut args = FAST.to_vec();
    args.extend([
        "--probe-rate",
        "0.5",
        "--probe-duration",
        "3s",
        "--out",
        out,
    ]);
    let o = step(&args, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an idle probe was accepted");
    assert!(stderr.contains("did not saturate one pod"), "{stderr}");
    assert!(!dir.0.join("stepload.csv").exists());
}
