//! `infergate autoscaler`: scales each pool that has `autoscaling` in the configuration file.
//!
//! Every `autoscaler.interval` it reads the pools' signals (pods' and/or gateways' `/metrics`),
//! runs the policy, and applies the result through an actuator: `local` starts and stops
//! `infergate sim` processes on this machine (a laptop or a test); `kubernetes` patches each pool's
//! `autoscaling.target` Deployment or StatefulSet. Prints
//! `infergate autoscaler listening on http://<addr>` once its admin port (`/metrics`, `/healthz`,
//! `/debug/pools`) is bound. SIGTERM or SIGINT stops it; with `local`, its pods are stopped too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infergate_autoscaler::actuate::kube_pools;
use infergate_autoscaler::actuate::local::{LocalActuator, LocalPoolSpec};
use infergate_autoscaler::service::{self, AutoscalerOptions};
use infergate_config::Config;

/// Which actuator applies the decisions.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ActuatorKind {
    /// Patch Deployments/StatefulSets through the Kubernetes API (in-cluster or kubeconfig).
    Kubernetes,
    /// Start and stop `infergate sim` processes on 127.0.0.1.
    Local,
}

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (YAML; docs/CONFIG.md): `autoscaler` settings and `pools`.
    #[arg(long, short)]
    config: PathBuf,
    /// How decisions are applied.
    #[arg(long, value_enum, default_value = "kubernetes")]
    actuator: ActuatorKind,
    /// Log decisions, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The admin port's address (default: the file's `autoscaler.admin_listen`).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Local actuator: the simulated cold start of each pod.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    cold_start: Duration,
    /// Local actuator: extra arguments for each `infergate sim` (e.g. "--speed 10 --max-num-seqs 8").
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    sim_args: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let admin_listen = args.admin_listen.unwrap_or(config.autoscaler.admin_listen);
    match args.actuator {
        ActuatorKind::Local => {
            let sim_args: Vec<String> =
                args.sim_args.split_whitespace().map(String::from).collect();
            let specs = local_specs(&config, &sim_args, args.cold_start)?;
            let actuator = Arc::new(LocalActuator::new(specs));
            let opts = AutoscalerOptions {
                config,
                admin_listen,
                dry_run: args.dry_run,
                leader: None,
                discovery: HashMap::new(),
            };
            let handle = service::start(opts, actuator.clone())
                .await
                .context("the autoscaler could not start")?;
            println!(
                "infergate autoscaler listening on http://{}",
                handle.admin_addr()
            );
            wait_for_signal().await?;
            tracing::info!("shutting down: stopping local pods");
            handle.shutdown();
            handle.wait().await;
            actuator.shutdown(Duration::from_secs(20)).await;
            Ok(())
        }
        ActuatorKind::Kubernetes => {
            let setup = kube_pools::connect(&config, args.dry_run || config.autoscaler.dry_run)
                .await
                .context("the kubernetes actuator could not start")?;
            let opts = AutoscalerOptions {
                config,
                admin_listen,
                dry_run: args.dry_run,
                leader: setup.leader.as_ref().map(|l| l.subscribe()),
                discovery: HashMap::new(),
            };
            let handle = service::start(opts, Arc::new(setup.actuator))
                .await
                .context("the autoscaler could not start")?;
            println!(
                "infergate autoscaler listening on http://{}",
                handle.admin_addr()
            );
            wait_for_signal().await?;
            tracing::info!("shutting down");
            handle.shutdown();
            handle.wait().await;
            if let Some(leader) = setup.leader {
                // Release the lease so a standby takes over at once.
                leader.shutdown().await;
            }
            Ok(())
        }
    }
}

/// One local pool per autoscaled pool of the file: its first model name is the sim's `--model`.
pub fn local_specs(
    config: &Config,
    sim_args: &[String],
    cold_start: Duration,
) -> anyhow::Result<Vec<LocalPoolSpec>> {
    let exe = std::env::current_exe().context("cannot find the infergate executable")?;
    Ok(config
        .pools
        .iter()
        .filter(|p| p.autoscaling.is_some())
        .map(|p| {
            let mut args = Vec::new();
            if let Some(model) = p.models.first()
                && !sim_args.iter().any(|a| a == "--model")
            {
                args.extend(["--model".to_string(), model.clone()]);
            }
            args.extend(sim_args.iter().cloned());
            LocalPoolSpec::new(p.name.clone(), exe.clone(), args, cold_start)
        })
        .collect())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
