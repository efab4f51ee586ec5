//! Server-sent events as OpenAI-compatible servers stream them, parsed chunk by chunk.
//!
//! Bytes arrive in whatever pieces TCP and the server's writes make: an event can be split across
//! reads, and one read can carry several events. [`SseParser`] buffers only the unfinished line and
//! hands back each event as soon as its blank line arrives, so the time we record for a token is the
//! time its bytes arrived. [`interpret`] then reads the OpenAI chunk inside: content (chat `delta`
//! or completions `text`), the `usage` chunk that `stream_options.include_usage` adds, the final
//! `[DONE]`, and errors (an `event: error` or a `{"error": ...}` payload, as vLLM sends mid-stream).

use serde::Deserialize;

/// One event: its `event:` name, if any, and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (None for the default "message" events OpenAI sends).
    pub event: Option<String>,
    /// The data.
    pub data: String,
}

/// Incremental SSE parser (the WHATWG event-stream rules that matter to OpenAI streams).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
    event: Option<String>,
}

impl SseParser {
    /// A parser with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line_end = if end > start && self.buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            let line = String::from_utf8_lossy(&self.buf[start..line_end]).into_owned();
            self.line(&line, out);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    /// The stream ended: an unterminated last event is still delivered (servers that forget the
    /// final blank line are common enough to be lenient about).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&self.buf)
                .trim_end_matches('\r')
                .to_string();
            self.buf.clear();
            self.line(&line, out);
        }
        self.line("", out);
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return; // comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry: not used by OpenAI streams
        }
    }
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// What one event means to a client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkInfo {
    /// Generated text in this chunk (empty for role-only or usage-only chunks).
    pub content: String,
    /// The usage, if this chunk carries it.
    pub usage: Option<Usage>,
    /// `data: [DONE]`: the stream is complete.
    pub done: bool,
    /// An error reported inside the stream.
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    choices: Vec<RawChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice {
    #[serde(default)]
    delta: Option<RawDelta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawDelta {
    #[serde(default)]
    content: Option<String>,
}

/// Reads an event's OpenAI chunk. Data that is neither `[DONE]` nor a JSON object is an error: a
/// client cannot trust the rest of such a stream.
pub fn interpret(ev: &SseEvent) -> ChunkInfo {
    let data = ev.data.trim();
    if data == "[DONE]" {
        return ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        };
    }
    let raw: RawChunk = match serde_json::from_str(data) {
        Ok(raw) => raw,
        Err(e) => {
            return ChunkInfo {
                error: Some(if ev.event.as_deref() == Some("error") {
                    data.to_string()
                } else {
                    format!("unparsable chunk ({e}): {}", truncate(data, 200))
                }),
                ..ChunkInfo::default()
            };
        }
    };
    let mut info = ChunkInfo {
        usage: raw.usage,
        ..ChunkInfo::default()
    };
    for c in raw.choices {
        if let Some(t) = c.delta.and_then(|d| d.content) {
            info.content.push_str(&t);
        }
        if let Some(t) = c.text {
            info.content.push_str(&t);
        }
    }
    if let Some(err) = raw.error {
        let message = err
            .get("message")
            .and_then(|m| m.as_str())
            .map_or_else(|| err.to_string(), str::to_string);
        info.error = Some(message);
    } else if ev.event.as_deref() == Some("error") {
        info.error = Some(truncate(data, 200).to_string());
    }
    info
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece, &mut out);
        }
        p.finish(&mut out);
        out
    }

    fn data(s: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: s.to_string(),
        }
    }

    #[test]
    fn events_split_anywhere_across_reads_come_out_whole() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        let whole = parse_all(&[stream]);
        assert_eq!(
            whole,
            vec![data("{\"a\":1}"), data("{\"b\":2}"), data("[DONE]")]
        );
        for cut in 1..stream.len() {
            assert_eq!(
                parse_all(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut {cut}"
            );
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytewise), whole);
    }

    #[test]
    fn events_are_delivered_as_soon_as_their_blank_line_arrives() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.push(b"data: {\"x\":1}\n", &mut out);
        assert!(out.is_empty());
        p.push(b"\ndata: {\"y\"", &mut out);
        assert_eq!(out, vec![data("{\"x\":1}")]);
    }

    #[test]
    fn multi_line_data_named_events_and_unterminated_tail() {
        let ev = parse_all(&[b"event: error\ndata: line1\ndata:line2\n\ndata: tail"]);
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: Some("error".into()),
                    data: "line1\nline2".into()
                },
                data("tail")
            ]
        );
    }

    #[test]
    fn interprets_chat_and_completion_chunks() {
        let role = interpret(&data(
            r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        ));
        assert_eq!(role.content, "");
        let chat = interpret(&data(
            r#"{"choices":[{"index":0,"delta":{"content":" hi\"there"},"finish_reason":null}],"usage":null}"#,
        ));
        assert_eq!(chat.content, " hi\"there");
        assert_eq!(chat.usage, None);
        let completion = interpret(&data(r#"{"choices":[{"index":0,"text":" abc"}]}"#));
        assert_eq!(completion.content, " abc");
        assert!(interpret(&data("[DONE]")).done);
    }

    #[test]
    fn interprets_the_usage_chunk() {
        let u = interpret(&data(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#,
        ));
        assert_eq!(
            u.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 34
            })
        );
        assert!(u.content.is_empty() && u.error.is_none() && !u.done);
    }

    #[test]
    fn interprets_error_events() {
        let vllm = interpret(&data(
            r#"{"error":{"message":"engine died","type":"InternalServerError","param":null,"code":500}}"#,
        ));
        assert_eq!(vllm.error.as_deref(), Some("engine died"));
        let named = interpret(&SseEvent {
            event: Some("error".into()),
            data: "upstream reset".into(),
        });
        assert_eq!(named.error.as_deref(), Some("upstream reset"));
        let garbage = interpret(&data("not json"));
        assert!(garbage.error.unwrap().starts_with("unparsable chunk"));
    }
}
