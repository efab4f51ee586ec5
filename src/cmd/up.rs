//! `infergate up`: the whole product on one machine. A gateway, an autoscaler with the local
//! actuator, and a pool of simulated model servers that grows and shrinks with the load, all in
//! this one process (one runtime) plus one `infergate sim` child per pod.
//!
//! The gateway is embedded ([`Gateway::start`]) and sees the pods through the local actuator's
//! watch channel, the same discovery interface it uses for Kubernetes EndpointSlices. The
//! autoscaler reads the pods' `/metrics` and the gateway's admin `/metrics` (held requests, so a
//! pool at zero wakes on the first request). SIGTERM or Ctrl-C: the autoscaler stops, the gateway
//! drains, then every pod is stopped and reaped; nothing is left running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infergate_autoscaler::actuate::local::{LocalActuator, LocalPoolSpec};
use infergate_autoscaler::service::{self, AutoscalerOptions};
use infergate_config::{
    AutoscalingConfig, Config, Discovery, Flavor, PoolConfig, ScaleDownConfig, ScalingTargets,
};
use infergate_gateway::{Gateway, GatewayOptions};

const POOL: &str = "sim";

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's OpenAI-compatible API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The gateway's admin port (/metrics, /healthz, /readyz, /debug/pools).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// The autoscaler's admin port (/metrics, /healthz, /debug/pools).
    #[arg(long, default_value = "127.0.0.1:9091")]
    autoscaler_listen: SocketAddr,
    /// The model name the simulated pool serves.
    #[arg(long, default_value = "sim-llama-3-8b")]
    model: String,
    /// Fewest pods; 0 enables scale to zero (the gateway holds the first request while a pod
    /// starts).
    #[arg(long, default_value_t = 1)]
    min: u32,
    /// Most pods.
    #[arg(long, default_value_t = 4)]
    max: u32,
    /// How long a new pod takes to become ready (a GPU pod takes minutes; 5 s keeps a demo short).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    cold_start: Duration,
    /// Simulator clock multiplier (10 = ten times faster than the modelled GPU).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Requests one pod runs at once (the sim's --max-num-seqs); more wait in its queue.
    #[arg(long, default_value_t = 16)]
    max_num_seqs: u32,
    /// Time between autoscaling decisions.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long load must stay low before pods are removed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stabilization_window: Duration,
    /// At most one pod is removed per this period.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    scale_down_period: Duration,
    /// With --min 0: how long the pool must be idle before it goes to zero.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Extra arguments for each `infergate sim` (e.g. "--profile llama-3-8b-a100").
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    sim_args: String,
}

/// The configuration `up` runs: one pool of simulated pods, autoscaled.
fn config(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.gateway.listen = args.listen;
    config.gateway.admin_listen = args.admin_listen;
    // A local demo: a Ctrl-C should not wait half a minute for a stream.
    config.gateway.shutdown.drain_timeout = Duration::from_secs(10);
    // The scale-up must be able to see a pod's queue within a couple of decisions.
    config.gateway.scrape.interval = Duration::from_millis(100);
    let seqs = f64::from(args.max_num_seqs.max(1));
    config.pools.push(PoolConfig {
        name: POOL.into(),
        models: vec![args.model.clone()],
        flavor: Flavor::Vllm,
        // Replaced by the local actuator's pods (see `run`).
        discovery: Discovery::Static {
            endpoints: Vec::new(),
        },
        policy: None,
        autoscaling: Some(AutoscalingConfig {
            min_replicas: args.min,
            max_replicas: args.max,
            // `up` knows a pod's batch size, so it can target running requests directly: three
            // quarters of the batch, before any queue forms.
            targets: ScalingTargets {
                running_per_replica: Some(0.75 * seqs),
                ..ScalingTargets::default()
            },
            scale_down: ScaleDownConfig {
                stabilization_window: args.stabilization_window,
                period: args.scale_down_period,
                ..ScaleDownConfig::default()
            },
            idle_window: args.idle_window,
            ..AutoscalingConfig::default()
        }),
    });
    config.autoscaler.interval = args.interval;
    config.autoscaler.admin_listen = args.autoscaler_listen;
    config.autoscaler.leader_election.enabled = false;
    config.autoscaler.signals.stale_after = (args.interval * 5).max(Duration::from_secs(3));
    config
        .validate()
        .map_err(|(field, reason)| anyhow::anyhow!("{field}: {reason}"))?;
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = config(&args)?;
    let exe = std::env::current_exe().context("cannot find the infergate executable")?;
    let mut sim_args = vec![
        "--model".to_string(),
        args.model.clone(),
        "--speed".to_string(),
        args.speed.to_string(),
        "--max-num-seqs".to_string(),
        args.max_num_seqs.to_string(),
        "--shutdown-grace-s".to_string(),
        "5".to_string(),
    ];
    sim_args.extend(args.sim_args.split_whitespace().map(String::from));
    let actuator = Arc::new(LocalActuator::new(vec![LocalPoolSpec::new(
        POOL,
        exe,
        sim_args,
        args.cold_start,
    )]));
    let discovery = HashMap::from([(
        POOL.to_string(),
        actuator
            .endpoints(POOL)
            .context("the local actuator has no pool")?,
    )]);
    let gateway = Gateway::start(GatewayOptions {
        config: config.clone(),
        discovery,
    })
    .await
    .context("the gateway could not start")?;
    println!(
        "infergate gateway listening on http://{}",
        gateway.data_addr()
    );
    println!(
        "infergate admin listening on http://{}",
        gateway.admin_addr()
    );

    config.autoscaler.signals.gateways = vec![format!("http://{}/metrics", gateway.admin_addr())];
    let autoscaler = match service::start(
        AutoscalerOptions {
            admin_listen: config.autoscaler.admin_listen,
            config,
            dry_run: false,
            leader: None,
            discovery: HashMap::new(),
        },
        actuator.clone(),
    )
    .await
    {
        Ok(handle) => handle,
        Err(e) => {
            gateway.shutdown();
            gateway.wait().await;
            return Err(e).context("the autoscaler could not start");
        }
    };
    println!(
        "infergate autoscaler listening on http://{}",
        autoscaler.admin_addr()
    );
    print_banner(
        &args,
        gateway.data_addr(),
        gateway.admin_addr(),
        autoscaler.admin_addr(),
    );

    super::autoscaler::wait_for_signal().await?;
    tracing::info!(
        "shutting down: autoscaler, then the gateway's in-flight requests, then the pods"
    );
    autoscaler.shutdown();
    autoscaler.wait().await;
    gateway.shutdown();
    gateway.wait().await;
    actuator.shutdown(Duration::from_secs(20)).await;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(args: &Args, data: SocketAddr, admin: SocketAddr, autoscaler: SocketAddr) {
    let min = if args.min == 0 {
        "0 (scale to zero: the first request waits for a pod to start)".to_string()
    } else {
        args.min.to_string()
    };
    println!();
    println!("  model       {}", args.model);
    println!(
        "  pods        {min} to {} simulated pods, each ready {:?} after it starts",
        args.max, args.cold_start
    );
    println!("  API         http://{data}/v1");
    println!("  gateway     http://{admin}/metrics  /debug/pools");
    println!("  autoscaler  http://{autoscaler}/metrics  /debug/pools");
    println!();
    println!("  Try:");
    println!(
        "  curl http://{data}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 64}}'",
        args.model
    );
    println!();
    println!("  Ctrl-C stops everything.");
}
