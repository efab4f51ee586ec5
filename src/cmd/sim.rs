//! `infergate sim`: a simulated vLLM-like (or SGLang-like) model server on one port.
//!
//! Prints `infergate sim listening on http://<addr>` on stdout once bound; logs go to stderr. On
//! SIGTERM or ctrl-c it stops accepting, lets open streams finish (bounded by `--shutdown-grace`)
//! and exits 0. See docs/SIMULATOR.md.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use infergate_loadtest::sim::faults::Faults;
use infergate_loadtest::sim::{Flavor, Profile, SimConfig, SimServer, raise_nofile_limit};

/// Metric names and extra routes to serve.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FlavorArg {
    /// vLLM V1 metric names (`vllm:...`).
    Vllm,
    /// SGLang metric names (`sglang:...`) and `/server_info`, `/model_info`, `/get_load`.
    Sglang,
}

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Served model name (the `model` requests must name).
    #[arg(long, default_value = "sim-llama-3-8b")]
    model: String,
    /// Which server's metric names to serve.
    #[arg(long, value_enum, default_value = "vllm")]
    flavor: FlavorArg,
    /// Hardware/model profile for the step-time model: llama-3-8b-h100 (default),
    /// llama-3-8b-a100, llama-3-70b-h100-tp4.
    #[arg(long, default_value = "llama-3-8b-h100")]
    profile: String,
    /// Most requests in the running batch.
    #[arg(long, default_value_t = 1024)]
    max_num_seqs: usize,
    /// Token budget of one engine step (prefill chunks plus decode tokens).
    #[arg(long, default_value_t = 8192)]
    max_num_batched_tokens: usize,
    /// KV-cache blocks [default: the profile's capacity (412,000 tokens for llama-3-8b-h100) in
    /// blocks of --block-size, so 25750 with 16-token blocks].
    #[arg(long)]
    num_gpu_blocks: Option<u32>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Context length: prompt + max_tokens above it is a 400.
    #[arg(long, default_value_t = 8192)]
    max_model_len: usize,
    /// Turn prefix caching off.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Mean output length when ignore_eos is off (geometric distribution, capped by max_tokens).
    #[arg(long, default_value_t = 200.0)]
    mean_output_tokens: f64,
    /// Seed for output lengths and fault draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Engine clock multiplier: 10 runs ten times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Waiting requests above which new requests get 503.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
    /// Health and requests answer 503 for this long after start (a cold start), in ms.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// How long shutdown waits for open streams, in seconds.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// Shut down (as on SIGTERM) when standard input reaches end of file. A parent that starts the
    /// simulator with a pipe on its stdin (`infergate up`'s local actuator does) takes it down with
    /// it even when the parent is SIGKILLed: the kernel closes the pipe, and no signal can be missed.
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Fault: share of completion requests answered with 500 (0..1).
    #[arg(long, default_value_t = 0.0)]
    fault_error_rate: f64,
    /// Fault: latency added before each completion request, in ms (real time).
    #[arg(long, default_value_t = 0)]
    fault_latency_ms: u64,
    /// Fault: share of completion requests that never get an answer (0..1).
    #[arg(long, default_value_t = 0.0)]
    fault_hang_rate: f64,
    /// Fault: exit (status 1) when completion request N+1 arrives.
    #[arg(long)]
    crash_after: Option<u64>,
    /// Fault: exit (status 1) in the middle of the N-th streaming response, after its first token.
    #[arg(long)]
    crash_mid_stream_after: Option<u64>,
    /// Fault: /health answers 503.
    #[arg(long)]
    fail_health: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile).with_context(|| {
        format!(
            "unknown profile {:?}; known: {}",
            args.profile,
            Profile::names().join(", ")
        )
    })?;
    anyhow::ensure!(
        args.speed > 0.0 && args.speed.is_finite(),
        "--speed must be > 0"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fault_error_rate) && (0.0..=1.0).contains(&args.fault_hang_rate),
        "fault rates must be within 0..1"
    );
    anyhow::ensure!(args.block_size > 0, "--block-size must be > 0");
    anyhow::ensure!(args.max_num_seqs > 0, "--max-num-seqs must be > 0");
    anyhow::ensure!(
        args.max_num_batched_tokens > 0,
        "--max-num-batched-tokens must be > 0"
    );
    let args_exit_on_eof = args.exit_on_stdin_eof;
    let mut config = SimConfig::new(args.model, profile);
    config.flavor = match args.flavor {
        FlavorArg::Vllm => Flavor::Vllm,
        FlavorArg::Sglang => Flavor::Sglang,
    };
    config.engine.max_num_seqs = args.max_num_seqs;
    config.engine.max_num_batched_tokens = args.max_num_batched_tokens;
    // The profile's capacity is in tokens: a different block size keeps it, in fewer, larger blocks.
    config.engine.num_gpu_blocks = args.num_gpu_blocks.unwrap_or_else(|| {
        let tokens =
            u64::from(config.profile.num_gpu_blocks) * u64::from(config.profile.block_size);
        (tokens / u64::from(args.block_size)).min(u64::from(u32::MAX)) as u32
    });
    config.engine.block_size = args.block_size;
    config.engine.max_model_len = args.max_model_len;
    config.engine.enable_prefix_caching = !args.no_prefix_caching;
    config.engine.mean_output_tokens = args.mean_output_tokens;
    config.seed = args.seed;
    config.speed = args.speed;
    config.max_waiting = args.max_waiting;
    config.startup_delay = Duration::from_millis(args.startup_delay_ms);
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
    config.faults = Faults {
        error_rate: args.fault_error_rate,
        latency_ms: args.fault_latency_ms,
        hang_rate: args.fault_hang_rate,
        crash_after: args.crash_after,
        crash_mid_stream_after: args.crash_mid_stream_after,
        fail_health: args.fail_health,
    };

    match raise_nofile_limit() {
        Ok(n) => tracing::debug!(nofile = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let server = SimServer::bind(SocketAddr::new(args.host, args.port), config.clone())
        .await
        .context("binding the simulator")?;
    let addr = server.local_addr()?;
    tracing::info!(
        model = %config.model,
        profile = config.profile.name,
        flavor = ?config.flavor,
        speed = config.speed,
        num_gpu_blocks = config.engine.num_gpu_blocks,
        max_num_seqs = config.engine.max_num_seqs,
        "simulator ready"
    );
    println!("infergate sim listening on http://{addr}");
    server.serve(shutdown_signal(args_exit_on_eof)).await?;
    tracing::info!("simulator stopped");
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c, or, with `stdin_eof`, when standard input closes.
async fn shutdown_signal(stdin_eof: bool) {
    let eof = async {
        if !stdin_eof {
            return std::future::pending::<()>().await;
        }
        // A plain thread, not tokio's blocking pool: the runtime waits for its blocking tasks when it
        // shuts down, and a read that never ends (the parent keeps the pipe open) would hang exit.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.await;
        tracing::info!("standard input closed: shutting down");
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
        () = eof => {}
    }
}
