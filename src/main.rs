//! The `infergate` command: one binary, one subcommand per part. Each subcommand lives in
//! `src/cmd/<name>.rs` as a clap `Args` struct and a `run` function; the libraries hold the logic.
// Denied, not forbidden: `allocator` (the allocator's FFI calls) allows it, and nothing else.
#![deny(unsafe_code)]

mod allocator;
mod cmd;

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: the proxy allocates and frees many small blocks per request
/// (header maps, body buffers, futures) on its worker threads, and glibc's `malloc` and
/// `_int_free` were about 2 us of each request's CPU. With mimalloc's per-thread free lists the
/// gateway's CPU per request fell by about 15% (paired A/B, docs/BENCHMARKS.md, 2026-12-03).
/// Called through [`allocator::MiMalloc`], which skips mimalloc's aligned path when the alignment
/// asked is one every block has.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

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
