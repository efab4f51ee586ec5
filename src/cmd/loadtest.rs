//! `infergate loadtest`: measure an OpenAI-compatible endpoint as its users would.
//!
//! `run` drives one open-loop load test (see `infergate_loadtest::generate`); more subcommands
//! (`compare`, `plan`) join it here as they land.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infergate_loadtest::generate::arrival::ArrivalProcess;
use infergate_loadtest::generate::client::Endpoint;
use infergate_loadtest::generate::parse_duration;
use infergate_loadtest::generate::progress::ProgressMode;
use infergate_loadtest::generate::report::Slo;
use infergate_loadtest::generate::workload::WorkloadSpec;
use infergate_loadtest::generate::{self, RunConfig};

mod compare;
mod plan;
mod step;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Send an open-loop workload to a target and report TTFT, ITL, e2e latency, throughput and goodput.
    Run(RunArgs),
    /// Plan capacity in virtual time: replay a trace or a generated day through the real picker and
    /// autoscaler policies over simulated pods; report SLO attainment, pod-hours and scale events.
    Plan(plan::PlanArgs),
    /// Compare routers side by side: the same schedule through infergate's policies, nginx and
    /// SGLang's router over fresh simulated pods; tables, JSON and plots.
    Compare(compare::CompareArgs),
    /// The autoscaling scenario: a step load from 10% to 150% of one pod's capacity and back,
    /// autoscaled against a fixed pool sized for the peak; CSV, SVG and an SLO/pod-seconds table.
    Step(step::StepArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL of the server or gateway (requests go to <target>/v1/chat/completions or /v1/completions).
    #[arg(long)]
    target: String,
    /// The `model` field of every request.
    #[arg(long, default_value = "sim-llama-3-8b")]
    model: String,
    /// New sessions (single requests, for single-turn workloads) per second. Required unless the
    /// workload is a trace; for a trace, rescales its arrival times to this mean rate.
    #[arg(long)]
    rate: Option<f64>,
    /// Schedule arrivals for this long (e.g. `30s`, `5m`); with --requests, whichever ends first.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Schedule this many arrivals.
    #[arg(long)]
    requests: Option<u64>,
    /// Arrival process: poisson, gamma:CV (CV > 1 is bursty) or constant. Default poisson; not
    /// allowed with a trace workload, which carries its own arrival times.
    #[arg(long)]
    arrival: Option<ArrivalProcess>,
    /// fixed:IN:OUT, sharegpt, shared-prefix[:SYSTEMS:SYSTEM_LEN:TURNS:USER_LEN:OUTPUT] or trace:FILE
    /// (Azure LLM trace CSV).
    #[arg(long, default_value = "sharegpt")]
    workload: WorkloadSpec,
    /// Seed of arrivals and lengths: the same seed gives the same schedule and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time-to-first-token SLO for goodput (e.g. `500ms`).
    #[arg(long, value_parser = parse_duration)]
    slo_ttft: Option<Duration>,
    /// Inter-token latency SLO for goodput, judged on each request's mean gap (TPOT), e.g. `50ms`.
    #[arg(long, value_parser = parse_duration)]
    slo_itl: Option<Duration>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the run as an SVG: each request's TTFT by send time, completed and failed per
    /// time bucket.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// chat (/v1/chat/completions) or completions (/v1/completions).
    #[arg(long, default_value = "chat")]
    endpoint: Endpoint,
    /// Stream answers (SSE); without streaming TTFT is the whole answer's latency.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    stream: bool,
    /// Replace every planned output length with this many tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Send `ignore_eos: true`, so outputs are exactly as long as planned.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ignore_eos: bool,
    /// Extra header `NAME:VALUE` on every request (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Per-request deadline.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    timeout: Duration,
    /// Hard cap on requests in flight: arrivals past it fail at once as `client-overload`.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Pause between an answer and the session's next turn (multi-turn workloads).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    think_time: Duration,
    /// Progress display: auto (a bar on a terminal, plain lines otherwise), bar, lines or off.
    #[arg(long, default_value = "auto", value_parser = parse_progress)]
    progress: ProgressMode,
}

fn parse_progress(s: &str) -> Result<ProgressMode, String> {
    match s {
        "auto" => Ok(ProgressMode::Auto),
        "bar" => Ok(ProgressMode::Bar),
        "lines" => Ok(ProgressMode::Lines),
        "off" => Ok(ProgressMode::Off),
        _ => Err(format!(
            "unknown progress mode {s:?} (auto, bar, lines, off)"
        )),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Run(args) => run_load(args).await,
        Command::Plan(args) => plan::run(args).await,
        Command::Compare(args) => compare::run(args).await,
        Command::Step(args) => step::run(args).await,
    }
}

async fn run_load(a: RunArgs) -> anyhow::Result<()> {
    let headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--header {h:?}: expected NAME:VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = RunConfig::new(a.target, a.model, a.workload);
    config.endpoint = a.endpoint;
    config.stream = a.stream;
    config.max_tokens = a.max_tokens;
    config.ignore_eos = a.ignore_eos;
    config.headers = headers;
    config.timeout = a.timeout;
    config.arrival = a.arrival;
    config.rate = a.rate;
    config.duration = a.duration;
    config.requests = a.requests;
    config.seed = a.seed;
    config.slo = Slo {
        ttft: a.slo_ttft,
        itl: a.slo_itl,
    };
    config.max_in_flight = a.max_in_flight;
    config.think_time = a.think_time;
    config.progress = a.progress;
    let cancel = config.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping the run and reporting what completed");
            cancel.cancel();
        }
    });
    let report = generate::run(config).await?;
    if let Some(path) = &a.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        generate::plot::write_svg(path, &report)?;
    }
    print!("{report}");
    Ok(())
}
