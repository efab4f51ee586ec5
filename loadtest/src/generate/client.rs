//! A streaming OpenAI client that measures what a user sees.
//!
//! One pooled hyper-util client (HTTP/1.1, keep-alive, `TCP_NODELAY`) is shared by every request of a
//! run. Each request's clock starts just before it is handed to the pool, so connection setup counts
//! against time to first token, as it does for a real user. While the response streams, every read is
//! parsed at once ([`super::sse`]) and stamped with its arrival time:
//! - time to first token (TTFT): the first chunk that carries generated text (vLLM's first chunk is a
//!   role-only delta with empty content; it is not a token);
//! - inter-token latency: the gap between successive text-bearing chunks;
//! - usage: the `stream_options.include_usage` chunk (we always ask for it).
//!
//! Without streaming the whole answer arrives at once: TTFT equals the end-to-end latency and there
//! are no inter-token gaps.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::sse::{self, SseParser, Usage};

/// Which OpenAI API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpoint {
    /// `/v1/chat/completions` with `messages`.
    #[default]
    Chat,
    /// `/v1/completions` with a `prompt` (the messages' contents concatenated).
    Completions,
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" | "chat-completions" => Ok(Self::Chat),
            "completions" => Ok(Self::Completions),
            _ => Err(ClientError::Config(format!(
                "unknown endpoint {s:?} (expected chat or completions)"
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
        })
    }
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad target URL, header or endpoint.
    #[error("{0}")]
    Config(String),
}

/// What the client sends besides the prompt.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub target: String,
    /// The `model` field.
    pub model: String,
    /// Which API.
    pub endpoint: Endpoint,
    /// Ask for a streamed answer.
    pub stream: bool,
    /// Send vLLM's `ignore_eos: true`, so outputs are exactly `max_tokens` long.
    pub ignore_eos: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Whole-request deadline (headers and body).
    pub timeout: Duration,
}

/// A chat message (for the completions API, contents are concatenated into the prompt).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    #[serde(serialize_with = "serialize_arc_str")]
    pub content: Arc<str>,
}

fn serialize_arc_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx and, when streaming, a complete stream ending in `[DONE]`.
    Ok,
    /// A non-2xx status.
    Http(u16),
    /// The deadline passed first.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The request or the response body failed at the HTTP level.
    Transport,
    /// The stream carried an error event or a chunk that does not parse.
    StreamError,
    /// The stream ended without `[DONE]`.
    Truncated,
    /// Never sent: the in-flight cap was reached at its scheduled instant.
    ClientOverload,
    /// The run was cancelled while the request was in flight.
    Cancelled,
}

impl Outcome {
    /// The label used in reports: `200` for success, the status code, or a word.
    pub fn label(&self) -> String {
        match self {
            Self::Ok => "200".into(),
            Self::Http(code) => code.to_string(),
            Self::Timeout => "timeout".into(),
            Self::Connect => "connect-error".into(),
            Self::Transport => "transport-error".into(),
            Self::StreamError => "stream-error".into(),
            Self::Truncated => "stream-truncated".into(),
            Self::ClientOverload => "client-overload".into(),
            Self::Cancelled => "cancelled".into(),
        }
    }
}

/// What one request measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// How it ended.
    pub outcome: Outcome,
    /// Time from send to the first text-bearing chunk.
    pub ttft: Option<Duration>,
    /// Arrival time (from send) of every text-bearing chunk, in order.
    pub token_times: Vec<Duration>,
    /// Time from send to the end of the response (or to the failure).
    pub e2e: Duration,
    /// The server's usage figures, if it sent them.
    pub usage: Option<Usage>,
    /// The generated text, when asked for (multi-turn sessions feed it back).
    pub text: Option<String>,
    /// An error message from the server or the transport, for logs.
    pub error: Option<String>,
}

impl Exchange {
    fn new() -> Self {
        Self {
            outcome: Outcome::Transport,
            ttft: None,
            token_times: Vec::new(),
            e2e: Duration::ZERO,
            usage: None,
            text: None,
            error: None,
        }
    }

    /// A request that ended without a response (e.g. cancelled).
    pub fn failed(outcome: Outcome, e2e: Duration) -> Self {
        Self {
            outcome,
            e2e,
            ..Self::new()
        }
    }

    /// Output tokens: the server's count when it gave one, else the text-bearing chunks seen.
    pub fn output_tokens(&self) -> u64 {
        self.usage
            .map_or(self.token_times.len() as u64, |u| u.completion_tokens)
    }
}

/// The pooled client of one run.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    config: Arc<ClientConfig>,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
    user: &'a str,
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    model: &'a str,
    prompt: String,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
    user: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl Client {
    /// Builds the client; fails on a bad URL or header.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let base = config.target.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let path = match config.endpoint {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        };
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| ClientError::Config(format!("bad --target {:?}: {e}", config.target)))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::Config(format!(
                "--target {:?}: only http:// targets are supported",
                config.target
            )));
        }
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.trim().as_bytes())
                    .map_err(|e| ClientError::Config(format!("bad header name {k:?}: {e}")))?;
                let value = HeaderValue::from_str(v.trim())
                    .map_err(|e| ClientError::Config(format!("bad header value for {k}: {e}")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Ok(Self {
            http,
            uri,
            headers: Arc::new(headers),
            config: Arc::new(config),
        })
    }

    /// The full URL requests go to.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The JSON body for a request; `user` is the session id (`session-<n>`), which gateways may use
    /// for affinity.
    pub fn body(&self, messages: &[Message], max_tokens: u32, user: &str) -> Bytes {
        let c = &self.config;
        let stream_options = c.stream.then_some(StreamOptions {
            include_usage: true,
        });
        let json = match c.endpoint {
            Endpoint::Chat => serde_json::to_vec(&ChatBody {
                model: &c.model,
                messages,
                max_tokens,
                stream: c.stream,
                stream_options,
                ignore_eos: c.ignore_eos,
                user,
            }),
            Endpoint::Completions => serde_json::to_vec(&CompletionBody {
                model: &c.model,
                prompt: messages.iter().map(|m| &*m.content).collect(),
                max_tokens,
                stream: c.stream,
                stream_options,
                ignore_eos: c.ignore_eos,
                user,
            }),
        };
        // Serializing strings and numbers into a Vec cannot fail.
        Bytes::from(json.unwrap_or_default())
    }

    /// Sends one request and measures it. Never fails: every failure is an [`Outcome`].
    pub async fn send(&self, body: Bytes, keep_text: bool) -> Exchange {
        let start = Instant::now();
        let mut ex = Exchange::new();
        if keep_text {
            ex.text = Some(String::new());
        }
        let timed_out =
            tokio::time::timeout(self.config.timeout, self.exchange(body, start, &mut ex))
                .await
                .is_err();
        if timed_out {
            ex.outcome = Outcome::Timeout;
        }
        if timed_out || ex.e2e.is_zero() {
            ex.e2e = start.elapsed();
        }
        ex
    }

    async fn exchange(&self, body: Bytes, start: Instant, ex: &mut Exchange) {
        let mut req = Request::post(self.uri.clone()).header(CONTENT_TYPE, "application/json");
        if self.config.stream {
            req = req.header(ACCEPT, "text/event-stream");
        }
        for (k, v) in self.headers.iter() {
            req = req.header(k, v);
        }
        let req = match req.body(Full::new(body)) {
            Ok(req) => req,
            Err(e) => {
                ex.error = Some(e.to_string());
                return;
            }
        };
        let resp = match self.http.request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                ex.outcome = if e.is_connect() {
                    Outcome::Connect
                } else {
                    Outcome::Transport
                };
                ex.error = Some(format!("{e:?}"));
                return;
            }
        };
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            // Drain the (small) error body so the connection can be reused.
            if let Ok(b) = body.collect().await {
                ex.error = Some(String::from_utf8_lossy(&b.to_bytes()).into_owned());
            }
            ex.outcome = Outcome::Http(status.as_u16());
            return;
        }
        if !self.config.stream {
            match body.collect().await {
                Ok(b) => read_whole(&b.to_bytes(), start, ex),
                Err(e) => ex.error = Some(e.to_string()),
            }
            return;
        }
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        // When `[DONE]` arrived: the end of the answer as the user sees it, even if the server is
        // slow to close the body (which we still read to its end, so the connection is reused).
        let mut done: Option<Duration> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    ex.error = Some(e.to_string());
                    ex.outcome = Outcome::Transport;
                    return;
                }
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let at = start.elapsed();
            parser.push(data, &mut events);
            if apply_events(&mut events, at, ex, &mut done) {
                return;
            }
        }
        parser.finish(&mut events);
        if apply_events(&mut events, start.elapsed(), ex, &mut done) {
            return;
        }
        match done {
            Some(at) => {
                ex.outcome = Outcome::Ok;
                ex.e2e = at;
            }
            None => ex.outcome = Outcome::Truncated,
        }
    }
}

/// Folds parsed events into the exchange; true when the stream reported an error.
fn apply_events(
    events: &mut Vec<sse::SseEvent>,
    at: Duration,
    ex: &mut Exchange,
    done: &mut Option<Duration>,
) -> bool {
    for ev in events.drain(..) {
        let info = sse::interpret(&ev);
        if let Some(err) = info.error {
            ex.error = Some(err);
            ex.outcome = Outcome::StreamError;
            return true;
        }
        if !info.content.is_empty() {
            ex.ttft.get_or_insert(at);
            ex.token_times.push(at);
            if let Some(text) = &mut ex.text {
                text.push_str(&info.content);
            }
        }
        if info.usage.is_some() {
            ex.usage = info.usage;
        }
        if info.done && done.is_none() {
            *done = Some(at);
        }
    }
    false
}

/// A non-streamed answer: text and usage from the whole body.
fn read_whole(bytes: &[u8], start: Instant, ex: &mut Exchange) {
    let at = start.elapsed();
    let v: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            ex.outcome = Outcome::StreamError;
            ex.error = Some(format!("unparsable response: {e}"));
            return;
        }
    };
    if let Some(err) = v.get("error") {
        ex.outcome = Outcome::StreamError;
        ex.error = Some(err.to_string());
        return;
    }
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or_default();
    ex.usage = serde_json::from_value(v["usage"].clone()).ok();
    if !text.is_empty() {
        ex.ttft = Some(at);
        ex.token_times.push(at);
    }
    if let Some(t) = &mut ex.text {
        t.push_str(text);
    }
    ex.outcome = Outcome::Ok;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Endpoint, target: &str) -> ClientConfig {
        ClientConfig {
            target: target.into(),
            model: "m".into(),
            endpoint,
            stream: true,
            ignore_eos: true,
            headers: vec![("x-tenant".into(), " a ".into())],
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn builds_urls_and_bodies() {
        let c = Client::new(config(Endpoint::Chat, "http://127.0.0.1:9/v1/")).unwrap();
        assert_eq!(
            c.uri().to_string(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let msgs = [
            Message {
                role: "system",
                content: Arc::from("sys"),
            },
            Message {
                role: "user",
                content: Arc::from(" hi"),
            },
        ];
        let body: serde_json::Value =
            serde_json::from_slice(&c.body(&msgs, 7, "session-1")).unwrap();
        assert_eq!(body["messages"][1]["content"], " hi");
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["user"], "session-1");

        let c = Client::new(config(Endpoint::Completions, "http://h:1")).unwrap();
        assert_eq!(c.uri().to_string(), "http://h:1/v1/completions");
        let body: serde_json::Value = serde_json::from_slice(&c.body(&msgs, 3, "s")).unwrap();
        assert_eq!(body["prompt"], "sys hi");

        assert!(Client::new(config(Endpoint::Chat, "https://h")).is_err());
        assert!(Client::new(config(Endpoint::Chat, "not a url")).is_err());
        let mut bad = config(Endpoint::Chat, "http://h");
        bad.headers = vec![("bad header".into(), "v".into())];
        assert!(Client::new(bad).is_err());
    }

    #[test]
    fn reads_a_whole_answer() {
        let mut ex = Exchange::new();
        ex.text = Some(String::new());
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"ab cd"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        read_whole(body, Instant::now(), &mut ex);
        assert_eq!(ex.outcome, Outcome::Ok);
        assert_eq!(ex.output_tokens(), 2);
        assert_eq!(ex.text.as_deref(), Some("ab cd"));
        assert!(ex.ttft.is_some());
        let mut bad = Exchange::new();
        read_whole(b"{\"error\":{\"message\":\"x\"}}", Instant::now(), &mut bad);
        assert_eq!(bad.outcome, Outcome::StreamError);
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(Outcome::Ok.label(), "200");
        assert_eq!(Outcome::Http(503).label(), "503");
        assert_eq!(Outcome::ClientOverload.label(), "client-overload");
        assert_eq!(
            "completions".parse::<Endpoint>().ok(),
            Some(Endpoint::Completions)
        );
        assert!("embeddings".parse::<Endpoint>().is_err());
    }
}
