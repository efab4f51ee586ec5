//! `infergate gateway`: the OpenAI-compatible proxy in front of model-server pools.
//!
//! With `--config FILE` every setting comes from the file; without one, `--model` and
//! `--endpoints` describe a single static pool (the quick start). `--listen`, `--admin-listen`
//! and `--workers` override either. SIGTERM or SIGINT drains gracefully and exits 0.

use anyhow::Context;
use infergate_config::{Config, Discovery, Flavor, PickerPolicy, PoolConfig};
use infergate_gateway::{Gateway, GatewayOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (YAML; docs/CONFIG.md).
    #[arg(long, short, conflicts_with_all = ["model", "endpoints", "flavor", "policy"])]
    config: Option<PathBuf>,
    /// Without a file: the model name(s) the pool serves, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "endpoints")]
    model: Vec<String>,
    /// Without a file: the model servers' base URLs, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "model")]
    endpoints: Vec<String>,
    /// Without a file: the model servers' metric dialect (vllm, sglang, tgi, auto).
    #[arg(long)]
    flavor: Option<Flavor>,
    /// The picker policy (round-robin, least-inflight, queue-kv, infergate).
    #[arg(long)]
    policy: Option<PickerPolicy>,
    /// The data port's address (default 0.0.0.0:8080, or the file's).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The admin port's address (default 0.0.0.0:9090, or the file's).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data-plane threads, each with its own listener and upstream connections (0 = one per
    /// core; default the file's `gateway.workers`, else 0).
    #[arg(long)]
    workers: Option<usize>,
}

/// The configuration the arguments describe.
fn config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            if args.model.is_empty() || args.endpoints.is_empty() {
                anyhow::bail!(
                    "give --config FILE, or --model NAME --endpoints URL[,URL...] for one static pool"
                );
            }
            let config = Config {
                pools: vec![PoolConfig {
                    name: "default".into(),
                    models: args.model.clone(),
                    flavor: args.flavor.unwrap_or_default(),
                    discovery: Discovery::Static {
                        endpoints: args.endpoints.clone(),
                    },
                    policy: args.policy,
                    autoscaling: None,
                }],
                ..Config::default()
            };
            config
                .validate()
                .map_err(|(field, reason)| anyhow::anyhow!("{field}: {reason}"))?;
            config
        }
    };
    if let Some(addr) = args.listen {
        config.gateway.listen = addr;
    }
    if let Some(addr) = args.admin_listen {
        config.gateway.admin_listen = addr;
    }
    if let Some(n) = args.workers {
        config.gateway.workers = n;
    }
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = config(&args)?;
    let handle = Gateway::start(GatewayOptions {
        config,
        discovery: HashMap::new(),
    })
    .await
    .context("the gateway could not start")?;
    println!(
        "infergate gateway listening on http://{}",
        handle.data_addr()
    );
    println!(
        "infergate admin listening on http://{}",
        handle.admin_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
    handle.shutdown();
    handle.wait().await;
    tracing::info!("stopped");
    Ok(())
}
