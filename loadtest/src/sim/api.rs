//! The OpenAI-compatible surface: request types (only what the simulator reads), the chat template,
//! and the JSON of responses, stream chunks and errors, shaped as vLLM shapes them.

use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::FinishReason;

/// `POST /v1/chat/completions` or `POST /v1/completions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// One chat message; `content` is a string, an array of parts, or null.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// The text, in any of OpenAI's shapes.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts; only `text` parts count.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// The part's text, when it is a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A completion prompt: text, a one-element list of texts, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// A batch of texts (only one is accepted, as `n` is).
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Add a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields of either request body that the simulator uses; the rest is ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// Served model name.
    pub model: String,
    /// Chat messages (chat endpoint).
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Prompt (completions endpoint).
    #[serde(default)]
    pub prompt: Option<Prompt>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Most output tokens (legacy name).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Most output tokens (current name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// vLLM extension: generate exactly the maximum.
    #[serde(default)]
    pub ignore_eos: bool,
    /// vLLM extension: fewest output tokens.
    #[serde(default)]
    pub min_tokens: Option<u32>,
    /// Choices wanted; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
}

/// A request the simulator rejects, with its OpenAI error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable message.
    pub message: String,
    /// The parameter at fault, if one is.
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            param,
        }
    }

    /// Any other status.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// The body: `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> Value {
        let kind = match self.status {
            400 => "BadRequestError",
            404 => "NotFoundError",
            413 => "RequestTooLargeError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            _ => "InternalServerError",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}})
    }
}

impl CompletionBody {
    /// Parses a body, mapping JSON errors to 400s.
    pub fn parse(bytes: &[u8]) -> Result<CompletionBody, ApiError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
    }

    /// Rejects what the simulator does not support.
    pub fn validate(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::bad_request(
                "only n=1 is supported by this server",
                Some("n"),
            ));
        }
        match endpoint {
            Endpoint::Chat if self.messages.as_ref().is_none_or(|m| m.is_empty()) => Err(
                ApiError::bad_request("messages must be a non-empty list", Some("messages")),
            ),
            Endpoint::Completions if self.prompt.is_none() => {
                Err(ApiError::bad_request("prompt is required", Some("prompt")))
            }
            Endpoint::Completions if matches!(&self.prompt, Some(Prompt::Texts(t)) if t.len() != 1) => {
                Err(ApiError::bad_request(
                    "only one prompt per request is supported",
                    Some("prompt"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The requested output cap (`max_completion_tokens` wins over `max_tokens`).
    pub fn requested_max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether to send the usage chunk at the end of a stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The prompt as tokens: chat messages rendered with the Llama 3 template, completion text as is.
    pub fn prompt_tokens(&self) -> Vec<u32> {
        use super::tokens::{tokenize, tokenize_with_special};
        if let Some(messages) = &self.messages {
            return tokenize_with_special(&render_llama3_chat(messages));
        }
        match &self.prompt {
            Some(Prompt::Text(t)) => tokenize(t),
            Some(Prompt::Texts(ts)) => ts.first().map(|t| tokenize(t)).unwrap_or_default(),
            Some(Prompt::Tokens(ids)) => ids.clone(),
            None => Vec::new(),
        }
    }
}

/// Renders messages with Llama 3's chat template, ending with the assistant header so the model
/// answers: `<|begin_of_text|>` then, per message,
/// `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`.
pub fn render_llama3_chat(messages: &[ChatMessage]) -> String {
    let mut s = String::from("<|begin_of_text|>");
    for m in messages {
        s.push_str("<|start_header_id|>");
        s.push_str(&m.role);
        s.push_str("<|end_header_id|>\n\n");
        match &m.content {
            Some(Content::Text(t)) => s.push_str(t.trim()),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        s.push_str(t);
                    }
                }
            }
            None => {}
        }
        s.push_str("<|eot_id|>");
    }
    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    s
}

/// Identity of one response: the pieces every chunk repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
}

/// Token counts for `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

impl ResponseMeta {
    /// The chunk that opens a chat stream: `delta.role = assistant`. Completions have none.
    pub fn role_chunk(&self) -> Option<Value> {
        (self.endpoint == Endpoint::Chat).then(|| {
            self.chunk(json!({
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            }))
        })
    }

    /// A chunk carrying `text`, and the finish reason on the last one.
    pub fn text_chunk(&self, text: &str, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        self.chunk(choice)
    }

    /// The usage chunk (`stream_options.include_usage`): no choices, only `usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_json(),
        })
    }

    /// The whole non-streaming response.
    pub fn full_response(&self, text: &str, finish: FinishReason, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.to_json(),
        })
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn chunk(&self, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

/// `GET /v1/models`.
pub fn models_json(model: &str, created: u64, max_model_len: usize) -> Value {
    json!({
        "object": "list",
        "data": [{
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "infergate-sim",
            "root": model,
            "parent": null,
            "max_model_len": max_model_len,
        }],
    })
}

/// Frames one server-sent event as OpenAI does: `data: <json>\n\n`.
pub fn sse_event(payload: &Value) -> String {
    format!("data: {payload}\n\n")
}

/// The stream's last event.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_validates() {
        let chat = CompletionBody::parse(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5,"max_tokens":9,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("parse");
        assert!(chat.validate(Endpoint::Chat).is_ok());
        assert_eq!(chat.requested_max_tokens(), Some(5));
        assert!(chat.include_usage());
        let rendered = render_llama3_chat(chat.messages.as_deref().unwrap_or_default());
        assert!(rendered.starts_with("<|begin_of_text|><|start_header_id|>system"));
        assert!(rendered.ends_with("assistant<|end_header_id|>\n\n"));

        let cmpl =
            CompletionBody::parse(br#"{"model":"m","prompt":[1,2,3],"n":2}"#).expect("parse");
        assert_eq!(cmpl.prompt_tokens(), vec![1, 2, 3]);
        assert_eq!(
            cmpl.validate(Endpoint::Completions).map_err(|e| e.status),
            Err(400)
        );
        assert!(CompletionBody::parse(b"{not json").is_err());
        let no_prompt = CompletionBody::parse(br#"{"model":"m"}"#).expect("parse");
        assert!(no_prompt.validate(Endpoint::Completions).is_err());
        assert!(no_prompt.validate(Endpoint::Chat).is_err());
    }

    #[test]
    fn error_shape_is_openai() {
        let e = ApiError::new(404, "The model `x` does not exist.").to_json();
        assert_eq!(e["error"]["type"], "NotFoundError");
        assert_eq!(e["error"]["code"], 404);
        assert!(e["error"]["param"].is_null());
    }

    #[test]
    fn chunks_are_shaped_per_endpoint() {
        let meta = ResponseMeta {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
        };
        assert_eq!(
            meta.role_chunk().expect("chat has a role chunk")["choices"][0]["delta"]["role"],
            "assistant"
        );
        let last = meta.text_chunk(" abc", Some(FinishReason::Length));
        assert_eq!(last["object"], "chat.completion.chunk");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let usage = meta.usage_chunk(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        });
        assert_eq!(usage["usage"]["total_tokens"], 7);
        assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
        let cmpl = ResponseMeta {
            endpoint: Endpoint::Completions,
            ..meta
        };
        assert!(cmpl.role_chunk().is_none());
        assert_eq!(cmpl.text_chunk("x", None)["choices"][0]["text"], "x");
        assert_eq!(sse_event(&json!({"a":1})), "data: {\"a\":1}\n\n");
    }
}
