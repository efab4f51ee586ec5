//! One simulated request as both ends of the live path would see it: the engine's prompt tokens
//! (what `infergate sim` computes from the chat body) and the gateway's prefix block hashes (what
//! `infergate gateway` computes from the same body).
//!
//! The planner builds the same chat messages the load generator sends (`generate::run`): an
//! optional shared system prompt, then each turn's user message, with every earlier answer fed back
//! as an assistant message. From those messages it computes:
//! - the gateway's [`RequestFacts::prefix`]: [`PromptHasher`] fed each message's role then its
//!   content, exactly the segments the proxy's body parser yields for a chat request;
//! - the engine's tokens: the Llama 3 chat template rendered and tokenized with
//!   [`tokenize_with_special`], as the simulator's API does.
//!
//! Both are computed from the real text. The hashes are the gateway's own code on the text. The
//! tokens take an exact shortcut: the template's markers are their fixed ids, and filler words (a
//! space and three letters, one token each) are looked up in a table built with the tokenizer,
//! which makes a day of prompts several times cheaper to tokenize; anything else goes through the
//! tokenizer. The tests check the result against the simulator's own body parser.
//!
//! One approximation: the live generator feeds back the server's real answer text, which the
//! planner cannot know without simulating the sampler; it feeds back filler text of the answer's
//! length instead. Answers only appear from the second turn on, after the shared system prompt and
//! the first user message, so prefix affinity on the shared prefix is exact.

use std::sync::{Arc, OnceLock};

use infergate_config::PrefixConfig;
use infergate_gateway::picker::{PromptHasher, RequestFacts};

use crate::sim::tokens::{
    SPECIAL_TOKENS, VOCAB_SIZE, filler_text, tokenize, tokenize_with_special,
};

/// A chat message of a simulated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The content as the client sends it.
    pub content: Arc<str>,
}

/// What one request carries into the gateway and the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The picker's facts (model, prefix hashes, prompt characters, `max_tokens`).
    pub facts: RequestFacts,
    /// The engine's prompt tokens.
    pub tokens: Vec<u32>,
}

/// Builds the gateway's facts and the engine's tokens for a chat request with `messages`.
pub fn build(messages: &[ChatTurn], model: &str, max_tokens: u32, prefix: &PrefixConfig) -> Prompt {
    let mut hasher = PromptHasher::new(prefix);
    let mut tokens = Vec::with_capacity(
        16 + messages
            .iter()
            .map(|m| m.content.len() / 4 + 8)
            .sum::<usize>(),
    );
    let exact_path = messages.iter().any(|m| m.content.contains("<|"));
    tokens.push(special(BEGIN_OF_TEXT));
    for m in messages {
        hasher.feed(m.role);
        hasher.feed(&m.content);
        tokens.push(special(START_HEADER));
        tokens.extend(tokenize(m.role));
        tokens.push(special(END_HEADER));
        content_tokens(&m.content, &mut tokens);
        tokens.push(special(EOT));
    }
    tokens.push(special(START_HEADER));
    tokens.extend(tokenize("assistant"));
    tokens.push(special(END_HEADER));
    tokens.extend(tokenize("\n\n"));
    if exact_path {
        // Content that itself contains template markers: render and tokenize as the simulator does.
        tokens = tokenize_with_special(&render(messages));
    }
    let facts = RequestFacts {
        model: model.to_string(),
        prompt_chars: hasher.chars(),
        prefix: hasher.finish(),
        max_tokens: Some(max_tokens),
        ..RequestFacts::default()
    };
    Prompt { facts, tokens }
}

/// Indexes into [`SPECIAL_TOKENS`]; each marker's id follows the vocabulary, as the tokenizer does.
const BEGIN_OF_TEXT: usize = 0;
const START_HEADER: usize = 1;
const END_HEADER: usize = 2;
const EOT: usize = 3;

fn special(i: usize) -> u32 {
    debug_assert!(i < SPECIAL_TOKENS.len());
    VOCAB_SIZE as u32 + i as u32
}

/// The simulator's `render_llama3_chat`, byte for byte (the fallback path and the tests).
fn render(messages: &[ChatTurn]) -> String {
    let mut s = String::from("<|begin_of_text|>");
    for m in messages {
        s.push_str("<|start_header_id|>");
        s.push_str(m.role);
        s.push_str("<|end_header_id|>\n\n");
        s.push_str(m.content.trim());
        s.push_str("<|eot_id|>");
    }
    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    s
}

/// The tokens of one message's body as the template renders it: `"\n\n" + content.trim()`.
///
/// The fast path is exact, not an approximation: filler text (the load generator's and the
/// planner's prompts) is words of a space and three lowercase letters, each exactly one piece of
/// the tokenizer, so each word's id is looked up in a table of the 17,576 possible words, built
/// once with the tokenizer itself. The first word rides with the header's `"\n\n"` and is
/// tokenized directly. Anything that is not filler goes through the tokenizer.
fn content_tokens(content: &str, out: &mut Vec<u32>) {
    let t = content.trim();
    let b = t.as_bytes();
    let is_filler = b.len() % 4 == 3
        && b.iter().enumerate().all(|(i, &c)| {
            if i % 4 == 3 {
                c == b' '
            } else {
                c.is_ascii_lowercase()
            }
        });
    if !is_filler {
        out.extend(tokenize(&format!("\n\n{t}")));
        return;
    }
    out.extend(tokenize(&format!("\n\n{}", &t[..3])));
    let table = word_table();
    for w in b[3..].chunks_exact(4) {
        out.push(table[word_index(&w[1..4])]);
    }
}

fn word_index(w: &[u8]) -> usize {
    w.iter().fold(0, |acc, &c| acc * 26 + usize::from(c - b'a'))
}

/// Token ids of every filler word `" xyz"`, computed with the simulator's tokenizer.
fn word_table() -> &'static [u32] {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![0u32; 26 * 26 * 26];
        let mut word = *b" aaa";
        for a in b'a'..=b'z' {
            for b in b'a'..=b'z' {
                for c in b'a'..=b'z' {
                    word[1..].copy_from_slice(&[a, b, c]);
                    let text = std::str::from_utf8(&word).unwrap_or(" aaa");
                    let id = tokenize(text).first().copied().unwrap_or(0);
                    table[word_index(&word[1..])] = id;
                }
            }
        }
        table
    })
}

/// The answer fed back into the next turn: filler of the answer's length (see the module docs).
pub fn answer_text(tokens: u32, seed: u64) -> Arc<str> {
    Arc::from(filler_text(tokens as usize, seed ^ 0xA5A5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::CompletionBody;

    #[test]
    fn tokens_match_what_the_simulator_computes_from_the_body() {
        let system: Arc<str> = Arc::from(filler_text(300, 1));
        let user: Arc<str> = Arc::from(filler_text(40, 2));
        let messages = vec![
            ChatTurn {
                role: "system",
                content: system.clone(),
            },
            ChatTurn {
                role: "user",
                content: user.clone(),
            },
        ];
        let p = build(&messages, "m", 16, &PrefixConfig::default());
        let body = serde_json::json!({
            "model": "m",
            "messages": [{"role": "system", "content": &*system}, {"role": "user", "content": &*user}],
            "max_tokens": 16,
        });
        let parsed = CompletionBody::parse(body.to_string().as_bytes()).expect("parse");
        assert_eq!(p.tokens, parsed.prompt_tokens());
        // Hashes: role then content per message, as the proxy's parser yields them.
        let mut h = PromptHasher::new(&PrefixConfig::default());
        for s in ["system", &system, "user", &user] {
            h.feed(s);
        }
        assert_eq!(p.facts.prefix, h.finish());
        assert!(!p.facts.prefix.is_empty());
    }

    #[test]
    fn non_filler_content_takes_the_tokenizer_path_exactly() {
        for content in [
            " Hello,   wörld!\nHow are you?  ",
            "",
            "abc",
            " abc def",
            "ab cd",
            "odd <|eot_id|> marker",
        ] {
            let messages = vec![ChatTurn {
                role: "user",
                content: Arc::from(content),
            }];
            let p = build(&messages, "m", 4, &PrefixConfig::default());
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]});
            let parsed = CompletionBody::parse(body.to_string().as_bytes()).expect("parse");
            assert_eq!(p.tokens, parsed.prompt_tokens(), "{content:?}");
        }
    }

    #[test]
    fn shared_system_prompts_share_hashes() {
        let system: Arc<str> = Arc::from(filler_text(500, 9));
        let mk = |seed| {
            let msgs = vec![
                ChatTurn {
                    role: "system",
                    content: system.clone(),
                },
                ChatTurn {
                    role: "user",
                    content: Arc::from(filler_text(50, seed)),
                },
            ];
            build(&msgs, "m", 8, &PrefixConfig::default()).facts.prefix
        };
        let (a, b) = (mk(1), mk(2));
        let shared = (500 * 4) / PrefixConfig::default().block_chars;
        assert_eq!(a[..shared], b[..shared]);
        assert_ne!(a.last(), b.last());
    }
}
