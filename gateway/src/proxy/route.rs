//! Where a request goes: its path to an API, its `model` to a pool.
//!
//! A pool's `models` lists the names it serves. vLLM serves each LoRA adapter under its own model
//! name; an entry written `lora:NAME` declares such an adapter: requests for `NAME` go to that pool
//! with `lora = Some(NAME)`, so the picker can prefer endpoints that have it loaded. `/v1/models`
//! lists every name (adapters without the prefix).

use bytes::Bytes;
use http::Method;

use super::error::{ErrorKind, ProxyError};

/// The prefix that marks a LoRA adapter in a pool's `models`.
pub const LORA_PREFIX: &str = "lora:";

/// The APIs of the data port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Answered by the gateway from the configuration.
    Models,
}

impl Api {
    /// The API at `path` for `method`; 404 for unknown paths, 405 for a known path and the
    /// wrong method.
    pub fn route(method: &Method, path: &str) -> Result<Api, ProxyError> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let (api, allowed) = match path {
            "/v1/chat/completions" => (Api::ChatCompletions, Method::POST),
            "/v1/completions" => (Api::Completions, Method::POST),
            "/v1/embeddings" => (Api::Embeddings, Method::POST),
            "/v1/models" => (Api::Models, Method::GET),
            _ => {
                return Err(ProxyError::new(
                    ErrorKind::RouteNotFound,
                    format!("no such path on this gateway: {path}"),
                ));
            }
        };
        if *method != allowed && !(api == Api::Models && *method == Method::HEAD) {
            return Err(ProxyError::new(
                ErrorKind::MethodNotAllowed,
                format!("{path} accepts {allowed} only"),
            ));
        }
        Ok(api)
    }
}

/// Where a model name goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Index of the pool in the configuration's order.
    pub pool: usize,
    /// The adapter, when the name is a LoRA adapter.
    pub lora: Option<String>,
    /// The name's place among the routed names (configuration order, `0..Routes::len()`), for
    /// per-model state kept in a `Vec` (the request's one hash lookup is this table's).
    pub model: usize,
}

/// The model name -> pool table, and the `/v1/models` answer made once.
#[derive(Debug)]
pub struct Routes {
    /// Looked up on every request, never grown by one: foldhash, not SipHash (the keys come from
    /// the configuration, so a client cannot pick colliding ones).
    by_model: foldhash::HashMap<String, Target>,
    /// Names routed, duplicates included (a later entry of a name replaces the earlier).
    len: usize,
    models_json: Bytes,
}

impl Routes {
    /// From each pool's name and `models`, in configuration order.
    pub fn new<'a>(pools: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Routes {
        let mut by_model = foldhash::HashMap::default();
        let mut data = Vec::new();
        for (i, (pool, models)) in pools.into_iter().enumerate() {
            for entry in models {
                let (name, lora) = match entry.strip_prefix(LORA_PREFIX) {
                    Some(adapter) => (adapter.to_string(), Some(adapter.to_string())),
                    None => (entry.clone(), None),
                };
                let model = data.len();
                data.push(serde_json::json!({
                    "id": name, "object": "model", "created": 0, "owned_by": pool,
                }));
                by_model.insert(
                    name,
                    Target {
                        pool: i,
                        lora,
                        model,
                    },
                );
            }
        }
        let len = data.len();
        let models_json = serde_json::json!({"object": "list", "data": data}).to_string();
        Routes {
            by_model,
            len,
            models_json: Bytes::from(models_json),
        }
    }

    /// How many names were routed (the bound of [`Target::model`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn target(&self, model: &str) -> Option<&Target> {
        self.by_model.get(model)
    }

    /// Every routed model name with its target.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Target)> {
        self.by_model.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The body of `GET /v1/models`.
    pub fn models_json(&self) -> Bytes {
        self.models_json.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        assert_eq!(
            Api::route(&Method::POST, "/v1/chat/completions").ok(),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            Api::route(&Method::POST, "/v1/completions/").ok(),
            Some(Api::Completions)
        );
        assert_eq!(
            Api::route(&Method::GET, "/v1/models").ok(),
            Some(Api::Models)
        );
        let e = Api::route(&Method::GET, "/v1/chat/completions").expect_err("405");
        assert_eq!(e.status().as_u16(), 405);
        let e = Api::route(&Method::POST, "/v2/anything").expect_err("404");
        assert_eq!(e.status().as_u16(), 404);
    }

    #[test]
    fn models_and_adapters_route_to_their_pool() {
        let a = vec!["llama".to_string(), "lora:sql-helper".to_string()];
        let b = vec!["qwen".to_string()];
        let r = Routes::new([("a", a.as_slice()), ("b", b.as_slice())]);
        assert_eq!(
            r.target("llama"),
            Some(&Target {
                pool: 0,
                lora: None,
                model: 0,
            })
        );
        assert_eq!(
            r.target("sql-helper"),
            Some(&Target {
                pool: 0,
                lora: Some("sql-helper".into()),
                model: 1,
            })
        );
        assert_eq!(r.target("qwen").map(|t| (t.pool, t.model)), Some((1, 2)));
        assert_eq!(r.len(), 3);
        assert_eq!(r.target("lora:sql-helper"), None);
        let v: serde_json::Value = serde_json::from_slice(&r.models_json()).expect("json");
        assert_eq!(v["object"], "list");
        let ids: Vec<_> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(ids, ["llama", "sql-helper", "qwen"]);
        assert_eq!(v["data"][2]["owned_by"], "b");
    }
}
