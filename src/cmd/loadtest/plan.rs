//! `infergate loadtest plan`: the discrete-event capacity planner (see docs/PLANNER.md).
//!
//! Wiring only: read the scenario, apply flags, run `infergate_loadtest::plan::plan`, write the
//! table, the CSV time series, the SVG and the JSON report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infergate_config::PickerPolicy;
use infergate_loadtest::generate::parse_duration;
use infergate_loadtest::plan::report::{comparison_table, series_csv};
use infergate_loadtest::plan::{FixedSizing, PlanOptions, Scenario, WorkloadConfig, plot};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Scenario YAML (loadtest/scenarios/plan-*.yaml); without it, the built-in default day.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Replay this Azure LLM trace CSV instead of the scenario's workload.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Rescale the trace's arrivals to this mean rate (requests/s).
    #[arg(long)]
    trace_rate: Option<f64>,
    /// Cut the workload to this span (trace replay or generated day).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed of arrivals, lengths and engines.
    #[arg(long)]
    seed: Option<u64>,
    /// Picker policy: round-robin, least-inflight, queue-kv or infergate.
    #[arg(long, value_parser = parse_policy)]
    policy: Option<PickerPolicy>,
    /// Pod cold start (requested to ready).
    #[arg(long, value_parser = parse_duration)]
    cold_start: Option<Duration>,
    /// Autoscaling bounds.
    #[arg(long)]
    min_replicas: Option<u32>,
    #[arg(long)]
    max_replicas: Option<u32>,
    /// TTFT SLO (e.g. `2s`).
    #[arg(long, value_parser = parse_duration)]
    slo_ttft: Option<Duration>,
    /// Mean inter-token latency SLO (e.g. `100ms`).
    #[arg(long, value_parser = parse_duration)]
    slo_itl: Option<Duration>,
    /// Also run the scenario's variants (autoscaling settings) for the comparison table.
    #[arg(long)]
    compare: bool,
    /// The fixed pool to compare with: `search` (smallest N meeting the SLO attainment on the same
    /// workload), a number of pods, or `off`.
    #[arg(long, default_value = "search", value_parser = parse_fixed)]
    fixed: FixedSizing,
    /// Pause between a session's answer and its next turn.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    think_time: Duration,
    /// Write series.csv, fixed-series.csv, events.csv and plan.svg into this directory.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<PickerPolicy, String> {
    PickerPolicy::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| {
            format!("unknown policy {s:?} (round-robin, least-inflight, queue-kv, infergate)")
        })
}

fn parse_fixed(s: &str) -> Result<FixedSizing, String> {
    match s {
        "search" => Ok(FixedSizing::Search),
        "off" => Ok(FixedSizing::Off),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(FixedSizing::Pods)
            .ok_or_else(|| format!("--fixed takes search, off or a pod count, got {s:?}")),
    }
}

pub async fn run(a: PlanArgs) -> anyhow::Result<()> {
    let mut sc = match &a.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    if let Some(path) = a.trace {
        sc.workload = WorkloadConfig::Trace {
            path,
            rate: a.trace_rate,
            duration: a.duration,
        };
    } else {
        match &mut sc.workload {
            WorkloadConfig::Trace { rate, duration, .. } => {
                if a.trace_rate.is_some() {
                    *rate = a.trace_rate;
                }
                if a.duration.is_some() {
                    *duration = a.duration;
                }
            }
            WorkloadConfig::Day(day) => {
                if let Some(d) = a.duration {
                    day.duration = d;
                }
            }
        }
    }
    if let Some(s) = a.seed {
        sc.seed = s;
    }
    if let Some(p) = a.policy {
        sc.picker.policy = p;
    }
    if let Some(c) = a.cold_start {
        sc.pods.cold_start = c;
    }
    if let Some(n) = a.min_replicas {
        sc.autoscaling.min_replicas = n;
    }
    if let Some(n) = a.max_replicas {
        sc.autoscaling.max_replicas = n;
    }
    if let Some(t) = a.slo_ttft {
        sc.slo.ttft = t;
    }
    if let Some(t) = a.slo_itl {
        sc.slo.itl = t;
    }
    sc.validate()?;
    let opts = PlanOptions {
        compare: a.compare,
        fixed: a.fixed,
        think_time: a.think_time,
        ..PlanOptions::default()
    };
    let started = std::time::Instant::now();
    let report = tokio::task::spawn_blocking(move || infergate_loadtest::plan::plan(&sc, &opts))
        .await
        .context("the planner thread failed")??;
    let elapsed = started.elapsed();

    println!(
        "scenario {} (seed {}): {} requests in {} sessions over {:.2} h; policy {}, cold start {:?}",
        report.scenario.name,
        report.scenario.seed,
        report.planned_requests,
        report.sessions,
        report.span_s / 3600.0,
        report.scenario.picker.policy.as_str(),
        report.scenario.pods.cold_start,
    );
    let fixed_hours = report.fixed.as_ref().map(|f| f.summary.pod_hours);
    print!("{}", comparison_table(&report.rows(), fixed_hours));
    if !report.fixed_search.is_empty() {
        let tried: Vec<String> = report
            .fixed_search
            .iter()
            .map(|(n, att)| format!("{n} pods: {:.2}%", att * 100.0))
            .collect();
        println!("fixed pool search (TTFT attainment): {}", tried.join(", "));
    }
    if let Some(h) = &report.headline {
        println!(
            "headline: autoscaled {:.2}% inside the TTFT SLO with {:.0}% of the fixed pool's pod-hours \
             ({} pods, {}); target >= {:.0}% with <= {:.0}%: {}",
            h.autoscaled_ttft_attainment * 100.0,
            h.pod_hours_ratio * 100.0,
            h.fixed_pods,
            h.fixed_sizing,
            h.target_attainment * 100.0,
            h.target_ratio * 100.0,
            if h.met { "MET" } else { "MISSED" }
        );
    }
    println!(
        "simulated in {:.1} s (autoscaled run {:.1} s)",
        elapsed.as_secs_f64(),
        report.autoscaled.summary.sim_wall_s
    );

    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write("series.csv", series_csv(&report.autoscaled.series))?;
        if let Some(f) = &report.fixed {
            write("fixed-series.csv", series_csv(&f.series))?;
        }
        let mut events = String::from("t_s,from,to,reason,mode\n");
        for e in &report.autoscaled.events {
            events.push_str(&format!(
                "{},{},{},{},{}\n",
                e.t_s, e.from, e.to, e.reason, e.mode
            ));
        }
        write("events.csv", events)?;
        plot::write_svg(
            &dir.join("plan.svg"),
            &report.autoscaled,
            report.fixed.as_ref(),
            report.scenario.slo.ttft.as_secs_f64() * 1e3,
        )?;
        println!("wrote series, events and plan.svg to {}", dir.display());
    }
    if let Some(path) = &a.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
