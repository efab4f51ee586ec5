//! `infergate loadtest step`: the autoscaling scenario report (see docs/BENCHMARKS.md,
//! "Autoscaling: step load").
//!
//! Wiring only: build an `infergate_loadtest::stepload::StepConfig` from the flags, run it, write
//! the CSV and the SVG, print the table.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infergate_loadtest::generate::arrival::ArrivalProcess;
use infergate_loadtest::generate::report::Slo;
use infergate_loadtest::generate::workload::WorkloadSpec;
use infergate_loadtest::generate::{RunConfig, parse_duration};
use infergate_loadtest::stepload::pool::UpOptions;
use infergate_loadtest::stepload::schedule::{StepSchedule, parse_percents};
use infergate_loadtest::stepload::{self, StepConfig, output, plot};

#[derive(clap::Args)]
pub struct StepArgs {
    /// Offered load per step, in percent of ONE pod's capacity.
    // Spelled out in full so clap takes the parsed list as ONE value, not a repeated flag.
    #[arg(long, default_value = "10,50,100,150,100,50,10", value_parser = parse_percents)]
    steps: std::vec::Vec<f64>,
    /// How long each step lasts.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    step: Duration,
    /// One pod's capacity in requests/s; without it, a probe measures it first (one pod,
    /// overloaded at --probe-rate: its completion rate).
    #[arg(long)]
    capacity: Option<f64>,
    /// The probe's offered rate: must be more than one pod can serve.
    #[arg(long, default_value_t = 20.0)]
    probe_rate: f64,
    /// The probe's length (the first third is warm-up).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    probe_duration: Duration,
    /// The autoscaled pool's fewest pods.
    #[arg(long, default_value_t = 1)]
    min: u32,
    /// The autoscaled pool's most pods.
    #[arg(long, default_value_t = 4)]
    max: u32,
    /// The fixed pool's size [default: ceil(peak), the pods the peak needs].
    #[arg(long)]
    fixed_replicas: Option<u32>,
    /// Skip the fixed-pool comparison.
    #[arg(long)]
    no_fixed: bool,
    /// How long a new pod takes to become ready.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    cold_start: Duration,
    /// Simulator clock multiplier.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Requests one pod runs at once (the sim's --max-num-seqs).
    #[arg(long, default_value_t = 4)]
    max_num_seqs: u32,
    /// Time between autoscaling decisions.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// How long load must stay low before pods are removed.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    stabilization_window: Duration,
    /// At most one pod is removed per this period.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    scale_down_period: Duration,
    /// Extra arguments for each `infergate sim`.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    sim_args: String,
    /// The `model` field of every request.
    #[arg(long, default_value = "sim-llama-3-8b")]
    model: String,
    /// fixed:IN:OUT, sharegpt, shared-prefix[...] (see `loadtest run --help`).
    #[arg(long, default_value = "fixed:256:128")]
    workload: WorkloadSpec,
    /// Arrival process within each step: poisson, gamma:CV or constant.
    #[arg(long, default_value = "poisson")]
    arrival: ArrivalProcess,
    /// Seed of arrivals and lengths (step k uses seed + k).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time-to-first-token SLO.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    slo_ttft: Duration,
    /// Mean inter-token latency (TPOT) SLO.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    slo_itl: Duration,
    /// Per-request deadline.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Sampling period of replicas and queues.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Trailing window of the p90 TTFT series.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    p90_window: Duration,
    /// Keep observing both pools this long after the last step.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    tail: Duration,
    /// Directory for stepload.csv, stepload.svg, stepload.json and the children's logs.
    #[arg(long, default_value = "stepload-out")]
    out: PathBuf,
}

pub async fn run(a: StepArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the infergate executable")?;
    let mut run = RunConfig::new(String::new(), a.model.clone(), a.workload);
    run.arrival = Some(a.arrival);
    run.seed = a.seed;
    run.timeout = a.timeout;
    run.slo = Slo {
        ttft: Some(a.slo_ttft),
        itl: Some(a.slo_itl),
    };
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping the load and the pools");
            cancel.cancel();
        }
    });
    let config = StepConfig {
        exe,
        out_dir: a.out.clone(),
        up: UpOptions {
            model: a.model,
            cold_start: a.cold_start,
            speed: a.speed,
            max_num_seqs: a.max_num_seqs,
            interval: a.interval,
            stabilization_window: a.stabilization_window,
            scale_down_period: a.scale_down_period,
            sim_args: a.sim_args,
        },
        bounds: (a.min, a.max),
        schedule: StepSchedule {
            fractions: a.steps,
            step: a.step,
        },
        capacity: a.capacity,
        probe_rate: a.probe_rate,
        probe_duration: a.probe_duration,
        run,
        sample_every: a.sample_every,
        p90_window: a.p90_window,
        tail: a.tail,
        fixed: (!a.no_fixed).then_some(a.fixed_replicas),
    };
    anyhow::ensure!(a.min <= a.max, "--min must not exceed --max");
    let report = stepload::run(&config).await?;
    let csv = a.out.join("stepload.csv");
    let svg = a.out.join("stepload.svg");
    let json = a.out.join("stepload.json");
    output::write_csv(&csv, &report)?;
    std::fs::write(&json, output::to_json(&report))
        .with_context(|| format!("writing {}", json.display()))?;
    plot::write_svg(&svg, &report)?;
    print!("{report}");
    println!();
    println!("time series: {}", csv.display());
    println!("plot:        {}", svg.display());
    println!("summary:     {}", json.display());
    Ok(())
}
