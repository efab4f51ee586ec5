//! What the picker knows about one request: the facts the proxy extracts from its body and headers.
//!
//! The prompt itself never reaches the picker, only the chained hashes of its leading blocks
//! ([`PromptHasher`]). Two requests that share a 3,000-character system prompt share their first
//! hashes, and the prefix index remembers which endpoint was sent them: that endpoint probably still
//! has those KV blocks cached.

use infergate_config::PrefixConfig;
use std::hash::{BuildHasher, Hasher};

/// Scheduling priority, from the `x-infergate-priority` header.
///
/// Ordered from most to least important, so `Critical < Standard < Sheddable` sorts the
/// most important first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Never shed; waits longest.
    Critical,
    /// The default.
    #[default]
    Standard,
    /// Refused first (429) when the pool is full.
    Sheddable,
}

impl Priority {
    /// The header that carries it.
    pub const HEADER: &'static str = "x-infergate-priority";

    /// The priority a header value asks for; absent or unknown values are `Standard`, so a typo
    /// never makes a request more important (nor gets it refused).
    pub fn from_header(value: Option<&str>) -> Priority {
        value
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_default()
    }

    /// The name used in the header and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Standard => "standard",
            Priority::Sheddable => "sheddable",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Priority::Critical, Priority::Standard, Priority::Sheddable]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown priority `{s}`; expected critical, standard or sheddable")
            })
    }
}

/// The facts about one request that the picker decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestFacts {
    /// The request's `model` field.
    pub model: String,
    /// Chained hashes of the prompt's leading full blocks ([`PromptHasher::finish`]).
    pub prefix: Vec<u64>,
    /// The LoRA adapter the request names, when the pool serves adapters under their own names.
    pub lora: Option<String>,
    pub priority: Priority,
    /// Characters of prompt (all messages' contents), for metrics and cost estimates.
    pub prompt_chars: usize,
    /// `max_tokens` / `max_completion_tokens`, if the client set one.
    pub max_tokens: Option<u32>,
}

/// Hashes a prompt into chained hashes of fixed-size character blocks, as it streams past.
///
/// `hash_i` is the hash of the whole prefix up to and including block `i`: one streaming hasher
/// takes the blocks in order and is read after each, so two prompts share `hash_i` only if they
/// share the first `i + 1` blocks. Only full blocks are hashed, because an engine caches only full
/// KV blocks: a trailing partial block could never be a cache hit.
///
/// The streaming hasher is foldhash's (`quality`, fixed seed): its state carries from block to
/// block, so the chain costs one pass over the bytes. Hashing every block separately with xxh3 and
/// chaining the results, as this did before, cost twice as much on a 16 KiB prompt: xxh3 pays a
/// setup and a finish for every 256-byte input. The hashes live only inside this process (the
/// prefix index), so neither hash needs to be stable across versions.
///
/// Blocks are counted in characters, not bytes, so the same text hashes the same whatever its
/// script; and feeding a prompt in pieces (each chat message's role, then its content) gives the
/// same hashes as feeding the concatenation, so the proxy never has to join strings. A block that
/// lies wholly inside one piece is hashed straight from the piece; only blocks that straddle pieces
/// are copied into one reusable buffer.
#[derive(Clone)]
pub struct PromptHasher {
    block_chars: usize,
    max_blocks: usize,
    /// The chain: every full block so far, in order.
    chain: foldhash::quality::FoldHasher<'static>,
    /// Bytes of the current, incomplete block (only when it straddles pieces).
    partial: Vec<u8>,
    /// Characters in `partial`.
    partial_chars: usize,
    hashes: Vec<u64>,
    chars: usize,
}

/// Seed of the chain: a fixed, arbitrary constant, so that hashes agree between hashers (and
/// between runs, which keeps tests and the planner's replays deterministic).
const CHAIN_SEED: u64 = 0x1f2e_3d4c_5b6a_7988;

fn chain_start() -> foldhash::quality::FoldHasher<'static> {
    foldhash::quality::FixedState::with_seed(CHAIN_SEED).build_hasher()
}

impl std::fmt::Debug for PromptHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptHasher")
            .field("block_chars", &self.block_chars)
            .field("max_blocks", &self.max_blocks)
            .field("partial_chars", &self.partial_chars)
            .field("hashes", &self.hashes)
            .field("chars", &self.chars)
            .finish_non_exhaustive()
    }
}

impl PromptHasher {
    pub fn new(cfg: &PrefixConfig) -> PromptHasher {
        let block_chars = cfg.block_chars.max(1);
        PromptHasher {
            block_chars,
            max_blocks: cfg.max_blocks,
            chain: chain_start(),
            partial: Vec::new(),
            partial_chars: 0,
            hashes: Vec::with_capacity(cfg.max_blocks.min(64)),
            chars: 0,
        }
    }

    /// Feeds the next piece of the prompt.
    pub fn feed(&mut self, piece: &str) {
        let mut rest = piece;
        while !rest.is_empty() && self.hashes.len() < self.max_blocks {
            let need = self.block_chars - self.partial_chars;
            // Block by block, each checked for ASCII just before it is hashed (nearly always:
            // prompts are mostly ASCII, and then a boundary is plain arithmetic): one pass over
            // the prompt's bytes rather than a whole-piece check first and the hashing after.
            match split_after_chars(rest, need) {
                // The rest of the block is inside this piece.
                Ok(end) => {
                    let (block, tail) = rest.split_at(end);
                    if self.partial.is_empty() {
                        self.push_block(block.as_bytes());
                    } else {
                        let mut partial = std::mem::take(&mut self.partial);
                        partial.extend_from_slice(block.as_bytes());
                        self.push_block(&partial);
                        partial.clear();
                        self.partial = partial;
                        self.partial_chars = 0;
                    }
                    self.chars += need;
                    rest = tail;
                }
                // The piece ends inside the block: keep it for the next piece.
                Err(chars) => {
                    if self.partial.capacity() == 0 {
                        self.partial.reserve(self.block_chars * 4);
                    }
                    self.partial.extend_from_slice(rest.as_bytes());
                    self.partial_chars += chars;
                    self.chars += chars;
                    rest = "";
                }
            }
        }
        // Past `max_blocks`: only counted.
        if !rest.is_empty() {
            self.chars += if rest.is_ascii() {
                rest.len()
            } else {
                rest.chars().count()
            };
        }
    }

    /// Characters fed so far (all of them, not only the hashed blocks).
    pub fn chars(&self) -> usize {
        self.chars
    }

    /// The chained hashes of the full blocks fed, at most `max_blocks` of them.
    pub fn finish(self) -> Vec<u64> {
        self.hashes
    }

    /// Adds a full block to the chain and records the chain's hash so far.
    fn push_block(&mut self, block: &[u8]) {
        self.chain.write(block);
        self.hashes.push(self.chain.finish());
    }
}

/// `Ok`: the byte offset just after the first `n` characters of `s`, if `s` has at least `n`;
/// `Err`: else, how many characters `s` has.
fn split_after_chars(s: &str, n: usize) -> Result<usize, usize> {
    if n == 0 {
        return Ok(0);
    }
    let bytes = s.as_bytes();
    // ASCII fast path: characters are bytes there.
    let probe = bytes.len().min(n);
    if all_ascii(&bytes[..probe]) {
        return if bytes.len() >= n {
            Ok(n)
        } else {
            Err(bytes.len())
        };
    }
    let mut count = 0;
    for (i, _) in s.char_indices() {
        if count == n {
            return Ok(i);
        }
        count += 1;
    }
    if count == n { Ok(s.len()) } else { Err(count) }
}

/// Whether every byte is ASCII: 16 bytes a step, OR-ed into one word and tested once at the end
/// (a few vector instructions per step). With the standard library's `is_ascii` in its place,
/// [`PromptHasher::feed`] took 1,112 instructions on the 1 KiB prompt of
/// scripts/bench-instructions.sh; with this, 639. No early exit: the caller asks about one block
/// (256 characters by default) at a time.
fn all_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let mut high = 0u128;
    for chunk in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(chunk);
        high |= u128::from_ne_bytes(word);
    }
    high & u128::from_ne_bytes([0x80; 16]) == 0 && chunks.remainder().is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(block_chars: usize, max_blocks: usize) -> PrefixConfig {
        PrefixConfig {
            block_chars,
            max_blocks,
            ..PrefixConfig::default()
        }
    }

    fn hash_pieces(c: &PrefixConfig, pieces: &[&str]) -> Vec<u64> {
        let mut h = PromptHasher::new(c);
        for p in pieces {
            h.feed(p);
        }
        h.finish()
    }

    proptest::proptest! {
        #[test]
        fn all_ascii_agrees_with_the_standard_library(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
            ascii in proptest::collection::vec(0u8..128, 0..100),
            at in 0usize..100,
            high in 128u8..,
        ) {
            proptest::prop_assert_eq!(all_ascii(&bytes), bytes.is_ascii());
            proptest::prop_assert!(all_ascii(&ascii));
            let mut one = ascii.clone();
            if !one.is_empty() {
                let i = at % one.len();
                one[i] = high;
                proptest::prop_assert!(!all_ascii(&one), "a high byte at {}", i);
            }
        }
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let c = cfg(4, 100);
        assert_eq!(hash_pieces(&c, &["abc"]).len(), 0);
        assert_eq!(hash_pieces(&c, &["abcd"]).len(), 1);
        assert_eq!(hash_pieces(&c, &["abcdefg"]).len(), 1);
        assert_eq!(hash_pieces(&c, &["abcdefgh"]).len(), 2);
    }

    #[test]
    fn hashes_are_chained() {
        let c = cfg(4, 100);
        let a = hash_pieces(&c, &["aaaabbbb"]);
        let b = hash_pieces(&c, &["ccccbbbb"]);
        assert_ne!(
            a[1], b[1],
            "same second block after a different first must differ"
        );
        let a2 = hash_pieces(&c, &["aaaabbbbzzzz"]);
        assert_eq!(a[..], a2[..2]);
    }

    #[test]
    fn pieces_hash_like_their_concatenation() {
        let c = cfg(5, 100);
        let whole = "systemYou are helpful.userHéllo wörld, ünïcode 🎉 text here";
        let expect = hash_pieces(&c, &[whole]);
        assert!(expect.len() >= 5);
        for cut1 in 0..whole.len() {
            if !whole.is_char_boundary(cut1) {
                continue;
            }
            for cut2 in cut1..whole.len() {
                if !whole.is_char_boundary(cut2) {
                    continue;
                }
                let got = hash_pieces(&c, &[&whole[..cut1], &whole[cut1..cut2], &whole[cut2..]]);
                assert_eq!(got, expect, "cuts at {cut1},{cut2}");
            }
        }
    }

    /// The definition, written plainly: join the pieces, cut every `block_chars` characters,
    /// write the blocks in order into one hasher seeded with the chain's seed, and read it after
    /// each. The streaming hasher must agree exactly (hashes are compared with ones recorded
    /// earlier in the same process, and the planner replays them).
    fn reference(block_chars: usize, max_blocks: usize, text: &str) -> Vec<u64> {
        let chars: Vec<char> = text.chars().collect();
        let mut chain = foldhash::quality::FixedState::with_seed(CHAIN_SEED).build_hasher();
        let mut out = Vec::new();
        for block in chars.chunks_exact(block_chars).take(max_blocks) {
            let block: String = block.iter().collect();
            chain.write(block.as_bytes());
            out.push(chain.finish());
        }
        out
    }

    #[test]
    fn matches_the_plain_definition() {
        let ascii = "You are a careful assistant. ".repeat(40);
        let mixed = "Grüße, 世界! ascii tail and émojis 🎉🎉 ".repeat(30);
        for (block, max) in [(1, 1000), (7, 1000), (64, 3), (256, 256)] {
            for text in [ascii.as_str(), mixed.as_str()] {
                let expect = reference(block, max, text);
                let c = cfg(block, max);
                assert_eq!(hash_pieces(&c, &[text]), expect, "block {block}");
                // Uneven pieces, cut at character boundaries.
                let cuts: Vec<usize> = (0..text.len())
                    .step_by(37)
                    .filter(|&i| text.is_char_boundary(i))
                    .chain([text.len()])
                    .collect();
                let pieces: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
                let mut h = PromptHasher::new(&c);
                for p in &pieces {
                    h.feed(p);
                }
                assert_eq!(h.chars(), text.chars().count());
                assert_eq!(h.finish(), expect, "block {block}, in pieces");
            }
        }
    }

    #[test]
    fn blocks_count_characters_not_bytes() {
        let c = cfg(3, 100);
        assert_eq!(hash_pieces(&c, &["ééé"]).len(), 1);
        assert_eq!(hash_pieces(&c, &["éé"]).len(), 0);
    }

    #[test]
    fn at_most_max_blocks() {
        let c = cfg(2, 3);
        let mut h = PromptHasher::new(&c);
        h.feed(&"x".repeat(100));
        assert_eq!(h.chars(), 100);
        assert_eq!(h.finish().len(), 3);
    }

    #[test]
    fn priority_from_header() {
        assert_eq!(Priority::from_header(Some("critical")), Priority::Critical);
        assert_eq!(
            Priority::from_header(Some(" Sheddable ")),
            Priority::Sheddable
        );
        assert_eq!(Priority::from_header(Some("urgent!!")), Priority::Standard);
        assert_eq!(Priority::from_header(None), Priority::Standard);
        assert!(Priority::Critical < Priority::Sheddable);
    }
}
