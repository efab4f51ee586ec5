//! Reading what the gateway needs from an OpenAI request body, without copying it.
//!
//! The body is forwarded byte for byte; this parse only looks. Strings borrow from the body
//! (`Cow::Borrowed`) unless JSON escapes force a copy, and everything the gateway does not need
//! (tools, sampling parameters, images) is skipped without being built. A chat message's content
//! may be a string or an array of parts (only `text` parts count); a completion's prompt may be a
//! string or a list of strings (token-id prompts are skipped: they carry no text to hash).
//!
//! Prompt text (a message's content, a content part's text, a completion's prompt string) is most
//! of a request's bytes, and it is read through serde_json's raw-string path
//! ([`Deserializer::deserialize_bytes`]): that path finds the closing quote with `memchr`, where
//! the checked path walks every byte looking for control characters as well, about 3
//! instructions per byte, 3,078 of the facts phase's 10,400 on a 1 KiB chat request
//! (docs/BENCHMARKS.md). What the raw path does not do is done here: the text is checked for
//! UTF-8 (with SIMD). What it lets through is a raw control character inside such a string,
//! which strict JSON forbids: that is the model server's to refuse, as it would without the
//! gateway.

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// What the gateway reads from a request body.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedBody<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    /// `max_completion_tokens` if given, else `max_tokens`.
    pub max_tokens: Option<u64>,
    pub user: Option<Cow<'a, str>>,
    /// The prompt's text in order: each message's role then its content's text parts, or the
    /// completion prompt's strings. Fed to the prefix hasher.
    pub segments: Vec<Cow<'a, str>>,
}

/// Why a body is not a request the gateway can read; the text says what is wrong, for a 400.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// JSON text is UTF-8 (RFC 8259 section 8.1).
    #[error("it is not UTF-8 (invalid bytes at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl<'a> ParsedBody<'a> {
    /// Parses `body`.
    ///
    /// The whole body is checked for UTF-8 first, with SIMD (`simdutf8`), and then parsed as a
    /// `&str`: serde_json's byte-slice reader checks each string it borrows on its own with the
    /// standard library's `from_utf8`, which was about 1.6 instructions per byte of prompt, a
    /// sixth of the whole facts phase on a 1 KiB chat request (docs/BENCHMARKS.md). The check
    /// is also stricter: a stray invalid byte inside a field the gateway skips is now a 400 here,
    /// as it would be at the model server, instead of being forwarded.
    pub fn parse(body: &'a [u8]) -> Result<Self, BodyError> {
        let text = match simdutf8::basic::from_utf8(body) {
            Ok(text) => text,
            // Cold: the standard library's check says where.
            Err(_) => {
                let valid_up_to = std::str::from_utf8(body)
                    .err()
                    .map_or(0, |e| e.valid_up_to());
                return Err(BodyError::NotUtf8 { valid_up_to });
            }
        };
        let raw: RawBody<'a> = serde_json::from_str(text)?;
        let mut segments = Vec::new();
        if let Some(messages) = raw.messages {
            segments.reserve(messages.0.len() * 2);
            for m in messages.0 {
                if let Some(Str(role)) = m.role {
                    segments.push(role);
                }
                match m.content {
                    Some(Content::Text(Text(t))) => segments.push(t),
                    Some(Content::Parts(parts)) => segments.extend(parts),
                    None => {}
                }
            }
        } else if let Some(Prompt(strings)) = raw.prompt {
            segments = strings;
        }
        Ok(ParsedBody {
            model: raw.model.map(|s| s.0),
            stream: raw.stream.unwrap_or(false),
            max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
            user: raw.user.map(|s| s.0),
            segments,
        })
    }
}

#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(borrow, default)]
    messages: Option<Messages<'a>>,
    #[serde(borrow, default)]
    prompt: Option<Prompt<'a>>,
}

struct Messages<'a>(Vec<Message<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Messages(Vec::<Message<'a>>::deserialize(d)?))
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Str<'a>>,
    /// `null` or absent: `None` (an assistant message with tool calls).
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A message's content: a string or an array of parts (`null` is the `Option` around it).
enum Content<'a> {
    Text(Text<'a>),
    Parts(Vec<Cow<'a, str>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Text::borrowed(v).map(Content::Text)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Text::copied(v).map(Content::Text)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    if let Some(Text(text)) = part.text {
                        parts.push(text);
                    }
                }
                Ok(Content::Parts(parts))
            }
        }
        // A string arrives raw (see the module's doc); an array as a sequence.
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// One content part; only text parts carry prompt text (images and audio are skipped).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

/// Prompt text, read through serde_json's raw-string path and checked for UTF-8 here. Borrowed
/// from the body unless escapes force a copy.
///
/// The check repeats, for these bytes, the whole body's check in [`ParsedBody::parse`]: the raw
/// path hands over bytes, not the `&str` they were cut from, and checking again (SIMD, about
/// 0.2 instructions a byte) is the safe way back to a `str`.
struct Text<'a>(Cow<'a, str>);

impl<'a> Text<'a> {
    fn borrowed<E: de::Error>(v: &'a [u8]) -> Result<Self, E> {
        simdutf8::basic::from_utf8(v)
            .map(|s| Text(Cow::Borrowed(s)))
            .map_err(|_| E::custom("a string is not valid UTF-8"))
    }

    /// Escapes were decoded: the raw path lets a lone surrogate (`\ud800`) through as bytes
    /// that are not UTF-8, which fails here as it would on serde_json's checked path.
    fn copied<E: de::Error>(v: &[u8]) -> Result<Self, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Text(Cow::Owned(s.to_owned()))),
            Err(_) => Err(E::custom("a string escapes a lone surrogate")),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Text::borrowed(v)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Text::copied(v)
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// A string that borrows from the body unless escapes force a copy. (Serde's own `Cow<str>`
/// always copies when wrapped in an `Option`.)
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A completion prompt: a string or a list (of strings; token-id lists are skipped).
struct Prompt<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Prompt<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Prompt<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Text::borrowed(v).map(|Text(t)| Prompt(vec![t]))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Text::copied(v).map(|Text(t)| Prompt(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<PromptItem<'a>>()? {
                    if let PromptItem::Text(t) = item {
                        out.push(t);
                    }
                }
                Ok(Prompt(out))
            }
        }
        // A string arrives raw (see the module's doc); a list as a sequence (`null` is the
        // `Option` around it).
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// An element of a prompt list: a string, or something without text (a token id, a token list).
enum PromptItem<'a> {
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for PromptItem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = PromptItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a prompt string or token ids")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PromptItem::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PromptItem::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PromptItem::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PromptItem::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PromptItem::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_with_string_and_part_contents() {
        let body = br#"{
            "model": "llama", "stream": true, "max_tokens": 10, "max_completion_tokens": 20,
            "user": "u1", "temperature": 0.2, "tools": [{"type":"function","function":{"name":"f"}}],
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                    {"type": "text", "text": "this"}
                ]},
                {"role": "assistant", "content": null, "tool_calls": []}
            ]
        }"#;
        let p = ParsedBody::parse(body).expect("parse");
        assert_eq!(p.model.as_deref(), Some("llama"));
        assert!(p.stream);
        assert_eq!(p.max_tokens, Some(20), "max_completion_tokens wins");
        assert_eq!(p.user.as_deref(), Some("u1"));
        let segs: Vec<&str> = p.segments.iter().map(|s| s.as_ref()).collect();
        assert_eq!(
            segs,
            [
                "system",
                "You are helpful.",
                "user",
                "Describe",
                "this",
                "assistant"
            ]
        );
        assert!(matches!(p.model, Some(Cow::Borrowed(_))), "no copy");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let p = ParsedBody::parse(br#"{"model":"m","prompt":"line\none \"q\""}"#).expect("parse");
        assert_eq!(p.segments, [Cow::<str>::Owned("line\none \"q\"".into())]);
        assert!(!p.stream);
        assert_eq!(p.max_tokens, None);
    }

    #[test]
    fn completion_prompt_forms() {
        let p =
            ParsedBody::parse(br#"{"model":"m","prompt":["a","b"],"max_tokens":5}"#).expect("list");
        assert_eq!(p.segments, ["a", "b"]);
        assert_eq!(p.max_tokens, Some(5));
        let p = ParsedBody::parse(br#"{"model":"m","prompt":[1,2,3]}"#).expect("token ids");
        assert!(p.segments.is_empty());
        let p = ParsedBody::parse(br#"{"model":"m","prompt":[[1,2],[3]]}"#).expect("nested ids");
        assert!(p.segments.is_empty());
    }

    #[test]
    fn embeddings_and_missing_model() {
        let p = ParsedBody::parse(br#"{"input":["x"],"model":"e5"}"#).expect("parse");
        assert_eq!(p.model.as_deref(), Some("e5"));
        let p = ParsedBody::parse(br#"{"messages":[]}"#).expect("parse");
        assert_eq!(p.model, None);
    }

    #[test]
    fn bad_json_and_bad_types_are_errors() {
        assert!(ParsedBody::parse(b"{not json").is_err());
        assert!(ParsedBody::parse(b"[1,2]").is_err());
        assert!(ParsedBody::parse(br#"{"model": 3}"#).is_err());
        assert!(ParsedBody::parse(br#"{"model":"m","stream":"yes"}"#).is_err());
        assert!(ParsedBody::parse(br#"{"model":"m","messages":[{"content":5}]}"#).is_err());
        assert!(ParsedBody::parse(b"").is_err());
    }

    #[test]
    fn a_body_that_is_not_utf8_is_an_error_that_says_where() {
        // An invalid byte in a field the gateway skips counts too: JSON text is UTF-8.
        let body = b"{\"model\":\"m\",\"tools\":\"\xff\"}";
        let err = ParsedBody::parse(body).expect_err("not UTF-8");
        assert!(
            matches!(err, BodyError::NotUtf8 { valid_up_to: 22 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "it is not UTF-8 (invalid bytes at offset 22)"
        );
    }

    #[test]
    fn prompt_text_with_escapes_and_nulls() {
        let body = br#"{"model":"m","messages":[
            {"role":"user","content":"tab\there \u00e9\ud83d\ude00"},
            {"role":"assistant","content":null},
            {"role":"user","content":[{"type":"text","text":"a\"b"},{"type":"image_url"}]}
        ]}"#;
        let p = ParsedBody::parse(body).expect("parse");
        let segs: Vec<&str> = p.segments.iter().map(|s| s.as_ref()).collect();
        assert_eq!(
            segs,
            [
                "user",
                "tab\there \u{e9}\u{1f600}",
                "assistant",
                "user",
                "a\"b"
            ]
        );
        let p = ParsedBody::parse(br#"{"model":"m","prompt":null}"#).expect("null prompt");
        assert!(p.segments.is_empty());
    }

    #[test]
    fn prompt_text_that_is_not_unicode_or_not_a_string_is_an_error() {
        for body in [
            &br#"{"model":"m","prompt":"half \ud800 a pair"}"#[..],
            br#"{"model":"m","messages":[{"role":"user","content":"\udc00"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":{"text":"x"}}]}"#,
            br#"{"model":"m","messages":[{"content":[{"text":["x"]}]}]}"#,
            br#"{"model":"m","prompt":7}"#,
            br#"{"model":"m","prompt":"unterminated}"#,
        ] {
            assert!(
                ParsedBody::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest::proptest! {
        /// Whatever the text, as any JSON writer escapes it, the prompt read is the text.
        #[test]
        fn any_text_reads_back_as_written(text in "\\PC*|[\\x00-\\x20\"\\\\\u{7f}-\u{10ffff}]{0,40}") {
            let chat = serde_json::json!({"model": "m", "messages": [
                {"role": "user", "content": text},
                {"role": "user", "content": [{"type": "text", "text": text}]},
            ]});
            let body = serde_json::to_vec(&chat).expect("json");
            let p = ParsedBody::parse(&body).expect("parse");
            let segs: Vec<&str> = p.segments.iter().map(|s| s.as_ref()).collect();
            proptest::prop_assert_eq!(segs, ["user", text.as_str(), "user", text.as_str()]);
            let completion = serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": text}))
                .expect("json");
            let p = ParsedBody::parse(&completion).expect("parse");
            proptest::prop_assert_eq!(p.segments, [text.as_str()]);
        }
    }

    #[test]
    fn multibyte_text_is_borrowed_whole() {
        let body = "{\"model\":\"m\",\"prompt\":\"d\u{e9}j\u{e0} vu \u{1f600}\"}";
        let p = ParsedBody::parse(body.as_bytes()).expect("parse");
        assert_eq!(p.segments, ["d\u{e9}j\u{e0} vu \u{1f600}"]);
        assert!(matches!(p.segments[0], Cow::Borrowed(_)), "no copy");
    }
}
