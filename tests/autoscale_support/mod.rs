//! Helpers for the autoscaling end-to-end tests (`tests/up.rs`, `tests/autoscaler.rs`): plain HTTP
//! over loopback, reading the autoscaler's `/metrics`, load from concurrent clients, and the
//! process table (which children a process has, and whether they are gone).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `method url` with `body`; the status and the body text, or the transport error as text.
pub async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let work = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

pub async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    call(client, "GET", url, "", Duration::from_secs(5)).await
}

/// One non-streaming chat completion of exactly `tokens` output tokens; the status.
pub async fn chat(
    client: &HttpClient,
    base: &str,
    model: &str,
    tokens: u32,
) -> Result<u16, String> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Tell me a story"}}],"max_tokens":{tokens},"ignore_eos":true}}"#
    );
    let url = format!("{base}/v1/chat/completions");
    call(client, "POST", &url, &body, Duration::from_secs(120))
        .await
        .map(|(status, _)| status)
}

/// `n` chat completions of `tokens` output tokens each, sent at once to `base`; await the handles
/// for their statuses.
pub fn burst(
    client: &HttpClient,
    base: &str,
    model: &str,
    n: usize,
    tokens: u32,
) -> Vec<tokio::task::JoinHandle<Result<u16, String>>> {
    (0..n)
        .map(|_| {
            let (client, base, model) = (client.clone(), base.to_string(), model.to_string());
            tokio::spawn(async move { chat(&client, &base, &model, tokens).await })
        })
        .collect()
}

/// The value of the sample `name{labels}` on a Prometheus text page (labels matched as a subset).
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if all { value.trim().parse().ok() } else { None }
    })
}

/// The autoscaler's view of one pool, read from its `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolMetrics {
    pub desired: f64,
    pub current: f64,
    pub ready: f64,
    /// `decisions_total` by reason.
    pub decisions: std::collections::HashMap<String, f64>,
}

impl PoolMetrics {
    pub fn decisions(&self, reason: &str) -> f64 {
        self.decisions.get(reason).copied().unwrap_or(0.0)
    }

    /// Scale-up decisions of either mode.
    pub fn ups(&self) -> f64 {
        self.decisions("scale_up") + self.decisions("scale_up_panic")
    }

    /// Every decision that changed the replica count, wake and zero included.
    pub fn changes(&self) -> f64 {
        self.ups()
            + self.decisions("scale_down")
            + self.decisions("wake_from_zero")
            + self.decisions("scale_to_zero")
    }
}

pub async fn pool_metrics(client: &HttpClient, autoscaler: &str, pool: &str) -> PoolMetrics {
    let (_, page) = get(client, &format!("{autoscaler}/metrics"))
        .await
        .expect("autoscaler /metrics");
    let p = [("pool", pool)];
    let mut decisions = std::collections::HashMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("infergate_autoscaler_decisions_total{")
            && rest.contains(&format!("pool=\"{pool}\""))
            && let Some(reason) = rest
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
        {
            decisions.insert(reason.to_string(), v);
        }
    }
    PoolMetrics {
        desired: metric(&page, "infergate_autoscaler_desired_replicas", &p).unwrap_or(-1.0),
        current: metric(&page, "infergate_autoscaler_current_replicas", &p).unwrap_or(-1.0),
        ready: metric(&page, "infergate_autoscaler_ready_replicas", &p).unwrap_or(-1.0),
        decisions,
    }
}

/// Polls the autoscaler until `done` holds for the pool (every 100 ms, at most `within`).
pub async fn wait_for(
    client: &HttpClient,
    autoscaler: &str,
    pool: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&PoolMetrics) -> bool,
) -> PoolMetrics {
    let deadline = Instant::now() + within;
    loop {
        let m = pool_metrics(client, autoscaler, pool).await;
        if done(&m) {
            return m;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {within:?}; last {m:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that sends one request after another until stopped; returns every status (a transport
/// error counts as 0).
pub fn steady_client(
    client: HttpClient,
    base: String,
    model: String,
    tokens: u32,
    stop: tokio_util_like::Stop,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.is_set() {
            statuses.push(chat(&client, &base, &model, tokens).await.unwrap_or(0));
        }
        statuses
    })
}

/// A stop flag shared between a test and its load tasks.
pub mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

/// Pids whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let child: u32 = name.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
        let after = stat.rsplit_once(')')?.1;
        let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, after)| after.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
