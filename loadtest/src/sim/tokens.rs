//! The simulator's tokenizer: a deterministic text-to-token mapping with no vocabulary file.
//!
//! What matters for a simulated engine is not which ids a real tokenizer would give, but that
//! (1) token counts are close to a real BPE tokenizer's on English text (about 4 characters a token),
//! (2) the same text always gives the same tokens, and (3) texts that share a prefix share the tokens
//! of that prefix, so that prefix caching by chained block hashes behaves as it does in vLLM.
//!
//! The rule: the text is cut into *words*, each a run of whitespace followed by a run of
//! non-whitespace (as GPT-style BPE keeps the leading space with the word); each word is cut into
//! *pieces* of at most [`PIECE_CHARS`] non-whitespace characters (the leading whitespace rides with
//! the first piece, as the leading space does in BPE: ` over` is one token); a piece's id is its xxh3
//! hash modulo [`VOCAB_SIZE`].
//! Two texts that agree up to some character agree on every token that ends before the start of the
//! word containing it, which is the prefix-sharing property.
//!
//! The load generator uses [`filler_text`] to make prompts of an exact token length: each filler word
//! is a space and three lowercase letters, which is exactly one piece and so exactly one token.

use xxhash_rust::xxh3::xxh3_64;

/// Characters per piece: real BPE tokenizers average about four characters a token on English text.
pub const PIECE_CHARS: usize = 4;

/// Llama 3's vocabulary size, so ids look like real ones.
pub const VOCAB_SIZE: u64 = 128_256;

/// Tokenizes `text` into ids (see the module docs for the rule).
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / PIECE_CHARS + 1);
    for_each_piece(text, |piece| out.push(piece_id(piece)));
    out
}

/// The number of tokens [`tokenize`] would return, without allocating them.
pub fn count_tokens(text: &str) -> usize {
    let mut n = 0;
    for_each_piece(text, |_| n += 1);
    n
}

/// Text of exactly `n` tokens, different for different seeds and the same for the same seed.
pub fn filler_text(n: usize, seed: u64) -> String {
    let mut s = String::with_capacity(n * 4);
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        // splitmix64: a tiny, well-mixed generator; quality beyond "varied words" does not matter here.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push(' ');
        for k in 0..3 {
            s.push((b'a' + ((z >> (k * 8)) % 26) as u8) as char);
        }
    }
    s
}

/// Llama 3's chat-template markers, each one token (ids after the vocabulary, as in Llama 3).
pub const SPECIAL_TOKENS: [&str; 4] = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// Like [`tokenize`], but each of [`SPECIAL_TOKENS`] in `text` is one token, as a real tokenizer
/// treats a rendered chat template. The text between markers follows the ordinary rule.
pub fn tokenize_with_special(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / PIECE_CHARS + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let next = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .filter_map(|(i, m)| rest.find(m).map(|at| (at, i, m.len())))
            .min();
        match next {
            Some((at, i, len)) => {
                for_each_piece(&rest[..at], |piece| out.push(piece_id(piece)));
                out.push(VOCAB_SIZE as u32 + i as u32);
                rest = &rest[at + len..];
            }
            None => {
                for_each_piece(rest, |piece| out.push(piece_id(piece)));
                rest = "";
            }
        }
    }
    out
}

fn piece_id(piece: &str) -> u32 {
    (xxh3_64(piece.as_bytes()) % VOCAB_SIZE) as u32
}

/// Calls `f` with each piece of `text`, in order.
fn for_each_piece(text: &str, mut f: impl FnMut(&str)) {
    let mut word_start = 0;
    let mut in_word = false; // true once the word's non-whitespace run has begun
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if ws && in_word {
            emit_word(&text[word_start..i], &mut f);
            word_start = i;
            in_word = false;
        } else if !ws {
            in_word = true;
        }
    }
    if word_start < text.len() {
        emit_word(&text[word_start..], &mut f);
    }
}

fn emit_word(word: &str, f: &mut impl FnMut(&str)) {
    let mut start = 0;
    let mut chars = 0;
    for (i, c) in word.char_indices() {
        if chars == PIECE_CHARS {
            f(&word[start..i]);
            start = i;
            chars = 0;
        }
        // The word's leading whitespace does not count towards its first piece's length.
        if !c.is_whitespace() {
            chars += 1;
        }
    }
    if start < word.len() {
        f(&word[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_exact_token_count() {
        for n in [0, 1, 2, 17, 1000] {
            let text = filler_text(n, 7);
            assert_eq!(count_tokens(&text), n, "n={n}");
            assert_eq!(tokenize(&text).len(), n);
        }
        assert_ne!(filler_text(50, 1), filler_text(50, 2));
        assert_eq!(filler_text(50, 3), filler_text(50, 3));
    }

    #[test]
    fn shared_prefix_shares_tokens() {
        let prefix = filler_text(300, 11);
        let a = tokenize(&format!("{prefix} the user asks about cats"));
        let b = tokenize(&format!("{prefix} another question entirely"));
        assert_eq!(a[..300], b[..300]);
        assert_ne!(a[300..], b[300..]);
    }

    #[test]
    fn special_markers_are_one_token_each() {
        let t = tokenize_with_special(
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        );
        assert_eq!(t.len(), 6, "{t:?}");
        assert_eq!(t[0], VOCAB_SIZE as u32);
        assert_eq!(
            tokenize_with_special("plain text here"),
            tokenize("plain text here")
        );
    }

    #[test]
    fn counts_are_like_bpe_on_prose() {
        let text = "The quick brown fox jumps over the lazy dog, and then it runs away quickly.";
        let n = count_tokens(text);
        // A real BPE tokenizer gives 17 tokens here; four characters a token gives about 19.
        assert!((14..=24).contains(&n), "{n}");
        assert_eq!(tokenize("").len(), 0);
        assert_eq!(tokenize("   ").len(), 1);
        assert_eq!(tokenize("héllo wörld").len(), count_tokens("héllo wörld"));
    }
}
