//! Watching a response for its token `usage` without re-framing or delaying it.
//!
//! OpenAI-compatible servers report tokens in the body's `usage` (non-streaming) or in the last
//! SSE event before `[DONE]` (streaming with `stream_options.include_usage`; vLLM's
//! `continuous_usage_stats` repeats it, cumulatively, in every event: the last one wins). The
//! watcher sees each frame after it was handed on. Complete lines are examined in place; only a
//! line cut by a frame boundary is copied (bounded), so a usage object split across two frames is
//! still read, and a stream of small events costs a scan for `\n` and nothing else.
//!
//! Only the `usage` object itself is parsed ([`read_usage`]): the rest of an answer (its
//! generated text, its logprobs) is neither parsed nor validated. That read was a whole parse of
//! every non-streaming answer, about 4% of the gateway's CPU per request on a 1 KiB answer
//! (docs/BENCHMARKS.md, 2026-12-03). The `usage` key is found with `memchr`'s SIMD substring
//! search, and the object's keys are compared as raw bytes (serde_json's checked string path
//! ran the standard library's UTF-8 check on each key): together they took watching a 1 KiB
//! answer from about 1,600 instructions to about 600 (docs/BENCHMARKS.md, runs of 2026-12-03
//! 05:50-07:30).

use memchr::memmem;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

/// Token counts from a response's `usage`; absent counts are 0, other keys are skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Usage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Usage, A::Error> {
                let mut usage = Usage::default();
                while let Some(RawKey(key)) = map.next_key()? {
                    match &*key {
                        b"prompt_tokens" => usage.prompt_tokens = map.next_value()?,
                        b"completion_tokens" => usage.completion_tokens = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(usage)
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key as serde_json's raw-string path gives it: bytes, escapes decoded, not checked
/// for UTF-8 (it is only compared with ASCII names).
struct RawKey<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for RawKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(RawKey(Cow::Owned(v.to_vec())))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Longest partial line kept between frames; a longer line (a huge event) is skipped for usage.
const MAX_CARRY: usize = 64 * 1024;

/// Incremental SSE scanner for the last `usage` object.
#[derive(Debug, Default)]
pub struct SseUsageWatcher {
    carry: Vec<u8>,
    /// The current line outgrew `MAX_CARRY`: skip to its end.
    skipping: bool,
    usage: Option<Usage>,
    done: bool,
    /// Newlines at the end of what was seen so far (0, 1, 2+), to start an error event cleanly.
    trailing_newlines: usize,
}

impl SseUsageWatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last usage seen.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Newlines (up to 2) ending the bytes seen so far.
    pub fn trailing_newlines(&self) -> usize {
        self.trailing_newlines
    }

    /// Examines one frame of the stream.
    pub fn feed(&mut self, frame: &[u8]) {
        if frame.is_empty() {
            return;
        }
        let tail = frame.iter().rev().take_while(|&&b| b == b'\n').count();
        self.trailing_newlines = if tail == frame.len() {
            (self.trailing_newlines + tail).min(2)
        } else {
            tail.min(2)
        };
        let mut rest = frame;
        if !self.carry.is_empty() || self.skipping {
            match memchr::memchr(b'\n', rest) {
                None => {
                    self.keep(rest);
                    return;
                }
                Some(i) => {
                    let skipping = std::mem::take(&mut self.skipping);
                    if !skipping {
                        let mut line = std::mem::take(&mut self.carry);
                        line.extend_from_slice(&rest[..i]);
                        self.line(&line);
                        line.clear();
                        self.carry = line;
                    }
                    self.carry.clear();
                    rest = &rest[i + 1..];
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..i]);
            rest = &rest[i + 1..];
        }
        self.keep(rest);
    }

    fn keep(&mut self, partial: &[u8]) {
        if self.skipping || partial.is_empty() {
            return;
        }
        if self.carry.len() + partial.len() > MAX_CARRY {
            self.carry.clear();
            self.skipping = true;
        } else {
            self.carry.extend_from_slice(partial);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if let Some(u) = read_usage(data) {
            self.usage = Some(u);
        }
    }
}

/// The `usage` object of one JSON document (an answer, or one SSE event's data), parsed alone.
///
/// The first key `"usage"` whose value is an object is taken. Inside a JSON string every `"` is
/// escaped, so generated text cannot hold such a key: only a key of an object can. OpenAI-shaped
/// answers have one `usage`, at the top level. Nothing after the object is read.
pub fn read_usage(data: &[u8]) -> Option<Usage> {
    let object = usage_object(data)?;
    Usage::deserialize(&mut serde_json::Deserializer::from_slice(object)).ok()
}

/// From the `{` of the first `"usage": {` key whose opening quote is not escaped, to the end.
fn usage_object(data: &[u8]) -> Option<&[u8]> {
    static KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
    for key in KEY.find_iter(data) {
        let escapes = data[..key]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if escapes % 2 == 1 {
            continue; // `\"usage"`: the end of a string, not a key
        }
        let Some(value) = skip_whitespace(&data[key + KEY.needle().len()..]).strip_prefix(b":")
        else {
            continue;
        };
        let value = skip_whitespace(value);
        if value.starts_with(b"{") {
            return Some(value);
        }
    }
    None
}

fn skip_whitespace(data: &[u8]) -> &[u8] {
    let start = data.iter().position(|b| !b.is_ascii_whitespace());
    &data[start.unwrap_or(data.len())..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\" there\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n",
        "data: [DONE]\n\n"
    );

    fn expected() -> Usage {
        Usage {
            prompt_tokens: 12,
            completion_tokens: 7,
        }
    }

    #[test]
    fn reads_usage_from_whole_events() {
        let mut w = SseUsageWatcher::new();
        w.feed(STREAM.as_bytes());
        assert_eq!(w.usage(), Some(expected()));
        assert!(w.saw_done());
        assert_eq!(w.trailing_newlines(), 2);
    }

    #[test]
    fn reads_usage_split_across_frames_at_every_point() {
        let bytes = STREAM.as_bytes();
        for cut in 1..bytes.len() {
            let mut w = SseUsageWatcher::new();
            w.feed(&bytes[..cut]);
            w.feed(&bytes[cut..]);
            assert_eq!(w.usage(), Some(expected()), "cut at {cut}");
            assert!(w.saw_done(), "cut at {cut}");
        }
        // And one byte at a time.
        let mut w = SseUsageWatcher::new();
        for b in bytes.chunks(1) {
            w.feed(b);
        }
        assert_eq!(w.usage(), Some(expected()));
    }

    #[test]
    fn crlf_and_no_space_after_colon() {
        let mut w = SseUsageWatcher::new();
        w.feed(b"data:{\"usage\": {\"prompt_tokens\":3,\"completion_tokens\":4}}\r\n\r\n");
        assert_eq!(
            w.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
    }

    #[test]
    fn last_cumulative_usage_wins() {
        let mut w = SseUsageWatcher::new();
        w.feed(b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n");
        w.feed(b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n");
        assert_eq!(w.usage().map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn oversized_line_is_skipped_without_losing_later_usage() {
        let mut w = SseUsageWatcher::new();
        let big = vec![b'x'; MAX_CARRY + 10];
        w.feed(b"data: ");
        w.feed(&big);
        w.feed(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        assert_eq!(w.usage().map(|u| u.prompt_tokens), Some(1));
    }

    #[test]
    fn trailing_newlines_track_partial_events() {
        let mut w = SseUsageWatcher::new();
        w.feed(b"data: {\"a\":1}");
        assert_eq!(w.trailing_newlines(), 0);
        w.feed(b"\n");
        assert_eq!(w.trailing_newlines(), 1);
        w.feed(b"\n");
        assert_eq!(w.trailing_newlines(), 2);
    }

    #[test]
    fn usage_of_a_completion_and_an_embedding() {
        let body = br#"{"id":"x","choices":[{"text":"usage"}],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#;
        assert_eq!(
            read_usage(body),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9
            })
        );
        let emb = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(read_usage(emb).map(|u| u.prompt_tokens), Some(8));
        assert_eq!(read_usage(br#"{"usage":null}"#), None);
        assert_eq!(read_usage(b"not json \"usage\": {"), None);
    }

    #[test]
    fn usage_is_read_alone_wherever_it_stands() {
        let expected = Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
        });
        // First, as echo_upstream sends it; last, as vLLM does; with a nested object in it.
        let first = br#"{"id":"c","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30},"choices":[]}"#;
        let last = br#"{"id":"c","choices":[{"message":{"content":"hi"}}], "usage" : { "prompt_tokens":10, "completion_tokens":20, "prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(read_usage(first), expected);
        assert_eq!(read_usage(last), expected);
        // The rest of the answer is not read: a cut-off tail does not hide the usage before it.
        assert_eq!(read_usage(&first[..first.len() - 10]), expected);
    }

    #[test]
    fn usage_written_inside_generated_text_is_not_taken() {
        // The model wrote `"usage": {...}` in its answer: inside a string, its quotes are escaped.
        let body = br#"{"choices":[{"text":"say \"usage\": {\"prompt_tokens\": 999}"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(read_usage(body).map(|u| u.prompt_tokens), Some(3));
        // A string value that ends in `usage` is no key either.
        let body = br#"{"a":"x\"usage","usage":{"prompt_tokens":5}}"#;
        assert_eq!(read_usage(body).map(|u| u.prompt_tokens), Some(5));
        // Nor is a key that ends in `"usage` (its quote escaped), though a colon and an object
        // follow it.
        let body = br#"{"say \"usage":{"prompt_tokens":999},"usage":{"prompt_tokens":7}}"#;
        assert_eq!(read_usage(body).map(|u| u.prompt_tokens), Some(7));
        assert_eq!(read_usage(br#"{"usage":{"prompt_tokens":"many"}}"#), None);
    }

    #[test]
    fn usage_keys_are_read_with_their_escapes_decoded() {
        let body = br#"{"usage":{"prompt\u005ftokens":3,"completion_tokens":4,"x\"y":[1]}}"#;
        assert_eq!(
            read_usage(body),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(read_usage(br#"{"usage":{}}"#), Some(Usage::default()));
        assert_eq!(read_usage(br#"{"usage":{"prompt_tokens":null}}"#), None);
    }
}
