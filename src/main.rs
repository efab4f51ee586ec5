//! The `infergate` command: one binary, one subcommand per part. Each subcommand lives in
//! `src/cmd/<name>.rs` as a clap `Args` struct and a `run` function; the libraries hold the logic.
#![forbid(unsafe_code)]

mod cmd;

/// mimalloc, not glibc's malloc: the proxy allocates and frees a few dozen small blocks per
/// request (header maps, body buffers, futures) on two runtimes' threads, and glibc's
/// allocator spent about 2 us of every request's CPU in `_int_free` and `malloc` (perf, see
/// docs/BENCHMARKS.md). mimalloc's thread-local free lists make those near free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// An autoscaling inference gateway for LLM model servers.
#[derive(Parser)]
#[command(name = "infergate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: an OpenAI-compatible proxy in front of model-server pools.
    Gateway(cmd::gateway::Args),
    /// Run a simulated vLLM-like (or SGLang-like) model server.
    Sim(cmd::sim::Args),
    /// Run the autoscaler: load signals to replica counts, applied by an actuator.
    Autoscaler(cmd::autoscaler::Args),
    /// Run everything on this machine: gateway, autoscaler and simulated pods.
    Up(cmd::up::Args),
    /// Generate load against an OpenAI-compatible endpoint and report latency and SLO figures.
    Loadtest(cmd::loadtest::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Gateway(args) => cmd::gateway::run(args).await,
            Command::Sim(args) => cmd::sim::run(args).await,
            Command::Autoscaler(args) => cmd::autoscaler::run(args).await,
            Command::Up(args) => cmd::up::run(args).await,
            Command::Loadtest(args) => cmd::loadtest::run(args).await,
        }
    })
}
