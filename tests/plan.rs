//! The planner agrees with a live run of the same scenario.
//!
//! The same workload (seeded Poisson arrivals, fixed lengths) goes once through the planner in
//! virtual time and once through real processes: two `infergate sim` pods at `--speed 2` behind a
//! real `infergate gateway` (infergate policy), driven by the load generator's `run`. Live wall
//! times are scaled back to engine time (multiplied by the speed), and the gateway's 100 ms scrape
//! interval becomes 200 ms of engine time in the planner's scenario.
//!
//! Tolerance: 30% on request throughput and on median TTFT. The live side runs on a shared 2-core
//! machine where timer slack and scheduling delays of a millisecond or two land on every engine
//! step (7-10 ms of wall time each at speed 2) and on every HTTP hop; the planner has none of that.
//! A wrong model (no batching, a missing prefill cost, a broken picker) misses by far more than
//! 30%: e.g. serializing the requests would more than double the median TTFT.

mod common;

use std::time::Duration;

use infergate_config::AutoscalingConfig;
use infergate_loadtest::generate::arrival::{ArrivalProcess, Bound};
use infergate_loadtest::generate::client::Endpoint;
use infergate_loadtest::generate::progress::ProgressMode;
use infergate_loadtest::generate::workload::{Plan, WorkloadSpec};
use infergate_loadtest::generate::{RunConfig, run};
use infergate_loadtest::plan::{PoolMode, RunSpec, Scenario, scenario::PodsConfig, simulate};

const SPEED: f64 = 2.0;
const RATE: f64 = 6.0; // requests per second of engine time
const SPAN: Duration = Duration::from_secs(40); // engine time (20 s of wall time)
const SEED: u64 = 11;
const TOLERANCE: f64 = 0.30;

fn workload() -> WorkloadSpec {
    WorkloadSpec::Fixed {
        input: 512,
        output: 64,
    }
}

fn scenario() -> Scenario {
    Scenario {
        seed: SEED,
        model: "sim-m".into(),
        pods: PodsConfig {
            profile: "llama-3-70b-h100-tp4".into(),
            max_num_seqs: 256,
            max_model_len: 8192,
            ..PodsConfig::default()
        },
        scrape_interval: Duration::from_secs_f64(0.1 * SPEED),
        autoscaling: AutoscalingConfig::default(),
        ..Scenario::default()
    }
}

#[test]
fn virtual_time_agrees_with_a_live_run() {
    // Virtual time.
    let sc = scenario();
    let plan = Plan::build(
        &workload(),
        Some(ArrivalProcess::Poisson),
        Some(RATE),
        Bound {
            duration: Some(SPAN),
            requests: None,
        },
        SEED,
    )
    .expect("plan");
    let virt = simulate(
        &sc,
        &plan,
        &RunSpec {
            name: "virtual".into(),
            pool: PoolMode::Fixed(2),
            span: SPAN,
            think_time: Duration::from_secs(1),
        },
    )
    .expect("simulate")
    .summary;
    assert_eq!(virt.completed, plan.total_requests(), "{virt:#?}");

    // Live: two sims at --speed 2 behind the gateway.
    let speed = SPEED.to_string();
    let sim_args = [
        "sim",
        "--port",
        "0",
        "--model",
        "sim-m",
        "--speed",
        &speed,
        "--profile",
        "llama-3-70b-h100-tp4",
        "--max-num-seqs",
        "256",
    ];
    let sims = [
        common::Proc::spawn(&sim_args, &["sim"]),
        common::Proc::spawn(&sim_args, &["sim"]),
    ];
    let endpoints = format!("{},{}", sims[0].url("sim"), sims[1].url("sim"));
    let gw = common::Proc::spawn(
        &[
            "gateway",
            "--model",
            "sim-m",
            "--endpoints",
            &endpoints,
            "--flavor",
            "vllm",
            "--policy",
            "infergate",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &["gateway", "admin"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let live = rt
        .block_on(run({
            let mut c = RunConfig::new(gw.url("gateway"), "sim-m", workload());
            c.endpoint = Endpoint::Chat;
            c.ignore_eos = true;
            c.timeout = Duration::from_secs(30);
            c.arrival = Some(ArrivalProcess::Poisson);
            // The same seeded schedule, compressed by the speed: rate x speed for span / speed.
            c.rate = Some(RATE * SPEED);
            c.duration = Some(SPAN.div_f64(SPEED));
            c.seed = SEED;
            c.progress = ProgressMode::Off;
            c
        }))
        .expect("live run");
    assert_eq!(live.completed, plan.total_requests(), "{live:#?}");
    assert_eq!(live.failed, 0, "{live:#?}");

    // Compare in engine time.
    let live_ttft_p50 = live.ttft_ms.expect("live ttft").p50 * SPEED;
    let virt_ttft_p50 = virt.ttft_ms.expect("virtual ttft").p50;
    let live_rps = live.request_throughput / SPEED;
    // Completed requests from the first arrival to the last answer, as the live report counts.
    let virt_rps = virt.completed as f64 / (virt.last_done_s - virt.first_arrival_s).max(1e-9);
    eprintln!(
        "median TTFT: virtual {virt_ttft_p50:.1} ms, live {live_ttft_p50:.1} ms (engine time); \
         throughput: virtual {virt_rps:.2} req/s, live {live_rps:.2} req/s"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= TOLERANCE * a.max(b);
    assert!(
        close(virt_ttft_p50, live_ttft_p50),
        "median TTFT: virtual {virt_ttft_p50:.1} ms vs live {live_ttft_p50:.1} ms"
    );
    assert!(
        close(virt_rps, live_rps),
        "throughput: virtual {virt_rps:.2} vs live {live_rps:.2} req/s"
    );
}
