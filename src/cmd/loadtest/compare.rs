//! `infergate loadtest compare`: the same workload through several routers over the same pods
//! (see docs/COMPARE.md).
//!
//! Wiring only: read the scenarios, find the contenders' programs, run
//! `infergate_loadtest::compare::compare` for each, print the tables, write JSON.

use std::path::PathBuf;

use anyhow::Context;
use infergate_loadtest::compare::{CompareOptions, Contender, Programs, Scenario, compare};
use infergate_loadtest::generate::parse_duration;
use infergate_loadtest::generate::progress::ProgressMode;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Scenario YAML files (loadtest/scenarios/*.yaml), run one after the other.
    #[arg(long = "scenario", required = true)]
    scenarios: Vec<PathBuf>,
    /// Directory for the plots (SVG), each scenario's JSON, generated traces and the children's logs.
    #[arg(long, default_value = "compare-out")]
    out: PathBuf,
    /// Also write every scenario's report, as one JSON array, to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these contenders (comma-separated, e.g. `infergate:infergate,nginx:round-robin`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Contender>,
    /// Override every scenario's run duration (e.g. `20s`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Override every scenario's rates (comma-separated, in the scenario's `rate_unit`).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Override the pods' engine clock multiplier.
    #[arg(long)]
    speed: Option<f64>,
    /// nginx: a name looked up on PATH (and /usr/sbin), or a path.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Python of a venv with sglang-router (scripts/install-peers.sh).
    #[arg(long, default_value = ".tools/peers-venv/bin/python")]
    sglang_python: PathBuf,
    /// The infergate binary for pods and gateways [default: this one].
    #[arg(long)]
    infergate: Option<PathBuf>,
    /// Show each run's progress bar.
    #[arg(long)]
    progress: bool,
}

pub async fn run(a: CompareArgs) -> anyhow::Result<()> {
    let infergate = match a.infergate {
        Some(p) => p,
        None => std::env::current_exe().context("finding this binary")?,
    };
    let opts = CompareOptions {
        programs: Programs {
            infergate,
            nginx: a.nginx,
            sglang_python: a.sglang_python,
        },
        out: a.out,
        progress: if a.progress {
            ProgressMode::Auto
        } else {
            ProgressMode::Off
        },
        cancel: Default::default(),
    };
    let cancel = opts.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping the current run and every child process");
            cancel.cancel();
        }
    });
    let mut reports = Vec::new();
    for path in &a.scenarios {
        let mut s = Scenario::load(path)?;
        if !a.only.is_empty() {
            s.contenders.retain(|c| a.only.contains(c));
            anyhow::ensure!(
                !s.contenders.is_empty(),
                "{}: --only leaves no contender",
                path.display()
            );
        }
        if let Some(d) = a.duration {
            s.duration = d;
        }
        if !a.rates.is_empty() {
            s.rates = a.rates.clone();
        }
        if let Some(speed) = a.speed {
            s.pods.speed = speed;
        }
        s.validate(&path.display().to_string())?;
        let report = compare(&s, &opts)
            .await
            .with_context(|| format!("scenario {}", path.display()))?;
        println!("{report}");
        reports.push(report);
    }
    if let Some(path) = &a.json {
        let parts: Vec<String> = reports.iter().map(|r| r.to_json()).collect();
        let text = format!("[\n{}\n]\n", parts.join(",\n"));
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
