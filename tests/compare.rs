//! End-to-end tests of `infergate loadtest compare`: the real binary starting real sims and
//! gateways on 127.0.0.1, checked through the JSON report it writes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{TempDir, run_to_end};

/// Runs `infergate loadtest compare ARGS` to its end, bounded by `within`.
fn compare(args: &[&str], within: Duration) -> Output {
    let mut all = vec!["loadtest", "compare"];
    all.extend_from_slice(args);
    run_to_end(&all, within)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write scenario");
    p.display().to_string()
}

const TINY: &str = "
name: tiny
description: two pods, fast engines, a few seconds per contender
seed: 3
pods: { count: 2, speed: 10, max_num_seqs: 8, num_gpu_blocks: 400 }
workload: shared-prefix:4:256:2:32:16
rates: [4]
rate_unit: per_s
duration: 3s
think_time: 100ms
slo: { ttft: 2s }
contenders: [infergate:round-robin, infergate:infergate, nginx:round-robin]
";

#[test]
fn two_contenders_get_the_same_schedule_and_a_missing_one_is_skipped() {
    let dir = TempDir::new("tiny");
    let scenario = write(&dir.0, "tiny.yaml", TINY);
    let out_dir = dir.0.join("out");
    let json = dir.0.join("all.json");
    let out = compare(
        &[
            "--scenario",
            &scenario,
            "--out",
            &out_dir.display().to_string(),
            "--json",
            &json.display().to_string(),
            "--nginx",
            "/nonexistent/bin/nginx",
        ],
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("scenario tiny"), "{stdout}");
    assert!(stdout.contains("nginx:round-robin"), "{stdout}");
    assert!(stdout.contains("skipped"), "{stdout}");

    let all: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("valid JSON");
    let report = &all[0];
    assert_eq!(report["scenario"], "tiny");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{rows:#?}");

    let ran: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"]["status"] == "ran")
        .collect();
    let names: Vec<&str> = ran
        .iter()
        .map(|r| r["contender"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["infergate:round-robin", "infergate:infergate"]);
    let requests: Vec<u64> = ran
        .iter()
        .map(|r| r["run"]["requests"].as_u64().expect("requests"))
        .collect();
    assert!(requests[0] > 0, "{requests:?}");
    assert_eq!(requests[0], requests[1], "the same schedule for both");
    for r in &ran {
        let run = &r["run"];
        assert_eq!(run["failed"], 0, "{run:#}");
        assert_eq!(run["completed"], run["requests"]);
        let hit = r["pool"]["prefix_hit_rate"].as_f64().expect("a hit rate");
        assert!((0.0..=1.0).contains(&hit), "{hit}");
        let per_pod = r["pool"]["per_pod"].as_array().expect("per pod");
        assert_eq!(per_pod.len(), 2);
        let served: f64 = per_pod
            .iter()
            .map(|p| p["requests"].as_f64().unwrap_or(0.0))
            .sum();
        assert_eq!(
            served as u64, requests[0],
            "the pods finished every request"
        );
        assert!(r["pool"]["imbalance_requests"].as_f64().expect("imbalance") >= 1.0);
        assert!(run["ttft_ms"]["p90"].as_f64().expect("p90") > 0.0);
    }

    let skipped = &rows[2];
    assert_eq!(skipped["contender"], "nginx:round-robin");
    assert_eq!(skipped["status"]["status"], "skipped");
    let why = skipped["status"]["reason"].as_str().expect("a reason");
    assert!(why.contains("/nonexistent/bin/nginx"), "{why}");
    assert!(
        skipped["run"].is_null(),
        "nothing measured for a skipped contender"
    );

    let cdf = out_dir.join("tiny-cdf-0.svg");
    let svg = std::fs::read_to_string(&cdf).expect("CDF plot written");
    assert!(
        svg.contains("infergate:infergate"),
        "legend names the contenders"
    );
    assert!(out_dir.join("tiny.json").is_file());
}

#[test]
fn scenario_errors_name_the_field() {
    let dir = TempDir::new("bad");
    for (text, field) in [
        (TINY.replace("max_num_seqs", "max_num_seq"), "max_num_seq"),
        (TINY.replace("count: 2", "count: 0"), "pods.count"),
        (TINY.replace("rates: [4]", "rates: [4, -1]"), "rates[1]"),
        (TINY.replace("nginx:round-robin]", "haproxy]"), "haproxy"),
    ] {
        let scenario = write(&dir.0, "bad.yaml", &text);
        let out = compare(
            &[
                "--scenario",
                &scenario,
                "--out",
                &dir.0.display().to_string(),
            ],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: accepted");
        assert!(
            stderr.contains(field),
            "error for {field} does not name it: {stderr}"
        );
    }
}
