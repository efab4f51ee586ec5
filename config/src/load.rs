//! Reading the file: YAML syntax, then types (with the field path), then meaning (cross-field rules).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::{Config, Discovery};

/// Why a configuration file was refused: which file, which field, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    pub file: PathBuf,
    /// Path of the offending field, e.g. `pools[0].autoscaling.max_replicas`; `(file)` for the whole.
    pub field: String,
    pub reason: String,
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::from_yaml(&text, path)
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let err = |field: String, reason: String| ConfigError {
            file: origin.to_path_buf(),
            field,
            reason,
        };
        // Two passes: YAML to a generic tree (syntax errors carry line and column), then the tree to
        // our types through serde_path_to_error, which names the field that did not fit.
        let tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| err("(syntax)".into(), e.to_string()))?
        };
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(top)".into() } else { path };
            err(field, e.into_inner().to_string())
        })?;
        config
            .validate()
            .map_err(|(field, reason)| err(field, reason))?;
        Ok(config)
    }

    /// Rules no type can say: unique names, bounds in order, ratios in range.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let g = &self.gateway;
        check_ratio("gateway.flow.saturation_kv", g.flow.saturation_kv)?;
        check_ratio("gateway.retry.budget_ratio", g.retry.budget_ratio)?;
        check_ratio(
            "gateway.outlier.max_ejected_ratio",
            g.outlier.max_ejected_ratio,
        )?;
        for (field, d) in [
            (
                "gateway.upstream.connect_timeout",
                g.upstream.connect_timeout,
            ),
            ("gateway.upstream.idle_timeout", g.upstream.idle_timeout),
            ("gateway.scrape.interval", g.scrape.interval),
            (
                "gateway.limits.header_read_timeout",
                g.limits.header_read_timeout,
            ),
            (
                "gateway.limits.body_read_timeout",
                g.limits.body_read_timeout,
            ),
            ("gateway.limits.send_timeout", g.limits.send_timeout),
            (
                "gateway.limits.first_byte_timeout",
                g.limits.first_byte_timeout,
            ),
        ] {
            if d.is_zero() {
                return Err((field.into(), "must be above zero".into()));
            }
        }
        if g.scrape.unready_after < g.scrape.stale_after {
            return Err((
                "gateway.scrape.unready_after".into(),
                "must be at least gateway.scrape.stale_after".into(),
            ));
        }
        if g.picker.prefix.block_chars == 0 {
            return Err((
                "gateway.picker.prefix.block_chars".into(),
                "must be above zero".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut models = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |f: &str| format!("pools[{i}].{f}");
            if pool.name.is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(pool.name.as_str()) {
                return Err((at("name"), format!("pool `{}` is defined twice", pool.name)));
            }
            if pool.models.is_empty() {
                return Err((at("models"), "a pool must serve at least one model".into()));
            }
            for m in &pool.models {
                if !models.insert(m.as_str()) {
                    return Err((at("models"), format!("model `{m}` is served by two pools")));
                }
            }
            match &pool.discovery {
                Discovery::Static { endpoints } => {
                    for (j, url) in endpoints.iter().enumerate() {
                        check_base_url(url)
                            .map_err(|r| (at(&format!("discovery.static.endpoints[{j}]")), r))?;
                    }
                }
                Discovery::Kubernetes(k) => {
                    if k.service.is_none() == k.selector.is_none() {
                        return Err((
                            at("discovery.kubernetes"),
                            "set exactly one of `service` or `selector`".into(),
                        ));
                    }
                }
                Discovery::InferencePool(_) => {}
            }
            if let Some(a) = &pool.autoscaling {
                if a.max_replicas == 0 {
                    return Err((at("autoscaling.max_replicas"), "must be at least 1".into()));
                }
                if a.min_replicas > a.max_replicas {
                    return Err((
                        at("autoscaling.min_replicas"),
                        format!(
                            "{} is above max_replicas {}",
                            a.min_replicas, a.max_replicas
                        ),
                    ));
                }
                check_ratio(&at("autoscaling.tolerance"), a.tolerance)?;
                check_ratio(&at("autoscaling.targets.kv_usage"), a.targets.kv_usage)?;
                if a.targets.waiting_per_replica <= 0.0 {
                    return Err((
                        at("autoscaling.targets.waiting_per_replica"),
                        "must be above zero".into(),
                    ));
                }
                if a.panic.threshold <= 1.0 {
                    return Err((
                        at("autoscaling.panic.threshold"),
                        "must be above 1 (demand over capacity)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_ratio(field: &str, v: f64) -> Result<(), (String, String)> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err((field.into(), format!("{v} is not between 0 and 1")))
    }
}

/// A model server's base URL: `http://host:port`, no path beyond `/`.
pub(crate) fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` must start with http:// (TLS to pods is not supported)"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "`{url}` must be a base URL like http://10.0.0.7:8000"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.gateway.scrape.interval, Duration::from_millis(100));
        assert_eq!(c.gateway.listen.port(), 8080);
    }

    #[test]
    fn full_pool_parses() {
        let c = parse(
            r#"
gateway:
  listen: 127.0.0.1:8000
  scrape: { interval: 50ms }
  upstream: { idle_timeout: 2s }
  picker: { policy: queue-kv }
pools:
  - name: llama
    models: [meta-llama/Llama-3.1-8B-Instruct]
    flavor: vllm
    discovery:
      kubernetes: { service: vllm-llama, port: http }
    autoscaling:
      target: { kind: Deployment, name: vllm-llama }
      min_replicas: 0
      max_replicas: 8
      scale_down: { stabilization_window: 5m }
  - name: qwen
    models: [qwen]
    discovery:
      static: { endpoints: ["http://127.0.0.1:9000"] }
"#,
        )
        .unwrap();
        assert_eq!(c.gateway.picker.policy, PickerPolicy::QueueKv);
        assert_eq!(c.gateway.scrape.interval, Duration::from_millis(50));
        assert_eq!(c.gateway.upstream.idle_timeout, Duration::from_secs(2));
        assert_eq!(
            c.gateway.upstream.max_idle_per_endpoint, 1024,
            "unset fields keep defaults"
        );
        let a = c.pools[0].autoscaling.as_ref().unwrap();
        assert_eq!(a.min_replicas, 0);
        assert_eq!(a.scale_down.stabilization_window, Duration::from_secs(300));
        assert_eq!(a.scale_down.max_pods, 1, "unset fields keep defaults");
        assert!(matches!(
            &c.pools[0].discovery,
            Discovery::Kubernetes(KubernetesDiscovery { port: PortRef::Name(n), .. }) if n == "http"
        ));
        assert_eq!(c.pool_for_model("qwen").unwrap().name, "qwen");
    }

    #[test]
    fn errors_name_file_field_and_reason() {
        let e = parse(
            "pools:\n  - name: a\n    models: [m]\n    discovery: { static: { endpoint: [] } }\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("test.yaml: pools[0].discovery.static"),
            "{msg}"
        );
        assert!(msg.contains("unknown field `endpoint`"), "{msg}");

        let e = parse("gateway: { scrape: { interval: fast } }").unwrap_err();
        assert_eq!(e.field, "gateway.scrape.interval");
        assert!(e.reason.contains("not a duration"), "{}", e.reason);

        let e = parse("gateway: { upstream: { idle_timeout: 0s } }").unwrap_err();
        assert_eq!(e.field, "gateway.upstream.idle_timeout");
        let e = parse("gateway: { limits: { body_read_timeout: 0s } }").unwrap_err();
        assert_eq!(e.field, "gateway.limits.body_read_timeout");
        assert_eq!(e.reason, "must be above zero");
        assert_eq!(e.reason, "must be above zero");

        let e = parse("gateway: [1").unwrap_err();
        assert_eq!(e.field, "(syntax)");

        let e = parse(
            "pools:\n  - {name: a, models: [m], discovery: {static: {endpoints: []}}, autoscaling: {min_replicas: 5, max_replicas: 2}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pools[0].autoscaling.min_replicas");

        let e = parse(
            "pools:\n  - {name: a, models: [m], discovery: {static: {endpoints: []}}}\n  - {name: b, models: [m], discovery: {static: {endpoints: []}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pools[1].models");

        let e = parse(
            "pools:\n  - {name: a, models: [m], discovery: {static: {endpoints: [\"10.0.0.1:80\"]}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pools[0].discovery.static.endpoints[0]");
    }

    #[test]
    fn round_trips_through_yaml_text() {
        let mut c = Config::default();
        c.pools.push(PoolConfig {
            name: "p".into(),
            models: vec!["m".into()],
            flavor: Flavor::Sglang,
            discovery: Discovery::Static {
                endpoints: vec!["http://127.0.0.1:1".into()],
            },
            policy: Some(PickerPolicy::RoundRobin),
            autoscaling: Some(AutoscalingConfig::default()),
        });
        let text = serde_saphyr::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
    }
}
