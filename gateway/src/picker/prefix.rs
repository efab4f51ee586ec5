//! The prefix index: which endpoints were recently sent which prompt prefixes.
//!
//! A model server keeps the KV blocks of recent prompts in its prefix cache, so the endpoint that was
//! last sent a long shared system prompt can skip recomputing it. The gateway cannot see those caches;
//! it remembers instead what it sent where. Since block hashes are chained
//! ([`super::PromptHasher`]), one hash names a whole prefix, and "longest cached prefix" becomes "how
//! many of the request's leading hashes has this endpoint been sent".
//!
//! Bounded on purpose: at most `capacity` hashes, each with at most [`ENDPOINTS_PER_BLOCK`]
//! endpoints, so memory is capped (about 80 bytes a hash) whatever the traffic. Eviction is CLOCK
//! (second chance), an approximation of LRU that needs no linked list: a lookup or a record sets the
//! hash's reference bit, and the hand clears bits until it finds a hash nobody used since its last
//! pass. Engines evict their own caches LRU too, so an old entry here is most likely gone there.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most endpoints remembered per block hash; the least recently sent is replaced. A prefix sent to
/// more endpoints than this is cached nearly everywhere and affinity matters little for it.
pub const ENDPOINTS_PER_BLOCK: usize = 4;

/// Identifies an endpoint within its pool for the lifetime of the process: stable across discovery
/// updates, never reused, so an index entry can never point at a different endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct EndpointId(pub u32);

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type FastMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// The endpoints recently sent one block hash, with when. Endpoints and stamps in separate
/// arrays (no padding after each `u32`): 56 bytes, so a map slot with its key is one 64-byte
/// cache line instead of 80 bytes straddling two; the index is megabytes, and a lookup is a
/// cache miss per block.
#[derive(Clone, Debug)]
struct Entry {
    endpoints: [u32; ENDPOINTS_PER_BLOCK],
    /// The index's clock when each was last sent (newer is larger).
    stamps: [u64; ENDPOINTS_PER_BLOCK],
    len: u8,
    /// Position of this hash in the CLOCK ring.
    slot: u32,
}

impl Entry {
    fn new(slot: u32) -> Entry {
        Entry {
            endpoints: [0; ENDPOINTS_PER_BLOCK],
            stamps: [0; ENDPOINTS_PER_BLOCK],
            len: 0,
            slot,
        }
    }

    fn endpoints(&self) -> &[u32] {
        &self.endpoints[..self.len as usize]
    }

    fn contains(&self, id: u32) -> bool {
        self.endpoints().contains(&id)
    }

    fn touch(&mut self, id: u32, stamp: u64) {
        let len = self.len as usize;
        if let Some(k) = self.endpoints[..len].iter().position(|&e| e == id) {
            self.stamps[k] = stamp;
        } else if len < ENDPOINTS_PER_BLOCK {
            self.endpoints[len] = id;
            self.stamps[len] = stamp;
            self.len += 1;
        } else {
            // Full: replace the least recently sent (the first of equal stamps, as before).
            let mut oldest = 0;
            for k in 1..ENDPOINTS_PER_BLOCK {
                if self.stamps[k] < self.stamps[oldest] {
                    oldest = k;
                }
            }
            self.endpoints[oldest] = id;
            self.stamps[oldest] = stamp;
        }
    }

    fn remove(&mut self, id: u32) {
        let len = self.len as usize;
        if let Some(pos) = self.endpoints[..len].iter().position(|&e| e == id) {
            self.endpoints.copy_within(pos + 1..len, pos);
            self.stamps.copy_within(pos + 1..len, pos);
            self.len -= 1;
        }
    }
}

// The layout above is the point of it; a field added by mistake should fail the build.
const _: () = assert!(std::mem::size_of::<Entry>() == 56);

/// Bounded map from block hash to the endpoints recently sent it.
pub struct PrefixIndex {
    capacity: usize,
    map: FastMap<Entry>,
    /// CLOCK ring: the hash in each slot.
    ring: Vec<u64>,
    /// The ring's reference bits, one per slot, 64 to a word: a lookup sets one per block, and
    /// as a bitset they stay in cache (25 KB for 200,000 hashes) where a `bool` next to each
    /// hash was another cache miss per block.
    referenced: Vec<u64>,
    hand: usize,
    clock: u64,
    evictions: u64,
}

/// The longest run of a request's leading blocks that one endpoint was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    pub endpoint: EndpointId,
    /// Leading blocks matched (the first `blocks` hashes of the request).
    pub blocks: u32,
}

impl PrefixIndex {
    /// An index remembering at most `capacity` block hashes (at least one).
    pub fn new(capacity: usize) -> PrefixIndex {
        let capacity = capacity.max(1);
        PrefixIndex {
            capacity,
            map: FastMap::with_capacity_and_hasher(capacity.min(1 << 16), Default::default()),
            ring: Vec::with_capacity(capacity.min(1 << 16)),
            referenced: Vec::with_capacity(capacity.min(1 << 16).div_ceil(64)),
            hand: 0,
            clock: 0,
            evictions: 0,
        }
    }

    /// For every endpoint sent the request's first block, the number of leading blocks it was sent,
    /// appended to `out` (cleared first). Marks the matched hashes as recently used.
    ///
    /// Walks the request's hashes in order and stops as soon as no endpoint still matches, so a
    /// prompt the index has never seen costs one lookup.
    pub fn lookup(&mut self, hashes: &[u64], out: &mut Vec<PrefixMatch>) {
        out.clear();
        let Some((&first, rest)) = hashes.split_first() else {
            return;
        };
        let Some(entry) = self.map.get(&first) else {
            return;
        };
        set_bit(&mut self.referenced, entry.slot);
        for &e in entry.endpoints() {
            out.push(PrefixMatch {
                endpoint: EndpointId(e),
                blocks: 1,
            });
        }
        // `alive` = how many of `out` (a prefix, kept by swapping) still match.
        let mut alive = out.len();
        for (i, h) in rest.iter().enumerate() {
            let Some(entry) = self.map.get(h) else {
                break;
            };
            set_bit(&mut self.referenced, entry.slot);
            let mut j = 0;
            while j < alive {
                if entry.contains(out[j].endpoint.0) {
                    out[j].blocks = i as u32 + 2;
                    j += 1;
                } else {
                    alive -= 1;
                    out.swap(j, alive);
                }
            }
            if alive == 0 {
                break;
            }
        }
    }

    /// Records that `endpoint` was sent a request with these leading block hashes.
    pub fn record(&mut self, hashes: &[u64], endpoint: EndpointId) {
        for &h in hashes {
            self.clock += 1;
            let stamp = self.clock;
            if let Some(entry) = self.map.get_mut(&h) {
                entry.touch(endpoint.0, stamp);
                set_bit(&mut self.referenced, entry.slot);
                continue;
            }
            // Unreferenced until used again: a hash sent once and never again is the first to go,
            // while one that keeps coming back gets its second chance.
            let slot = self.free_slot();
            self.ring[slot] = h;
            clear_bit(&mut self.referenced, slot as u32);
            let mut entry = Entry::new(slot as u32);
            entry.touch(endpoint.0, stamp);
            self.map.insert(h, entry);
        }
    }

    /// Forgets an endpoint everywhere (it left the pool). Linear in the index's size; rare.
    pub fn forget(&mut self, endpoint: EndpointId) {
        for entry in self.map.values_mut() {
            entry.remove(endpoint.0);
        }
    }

    /// Block hashes remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hashes forgotten to stay within capacity, since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// A slot for a new hash: a fresh one while below capacity, else the CLOCK victim's.
    fn free_slot(&mut self) -> usize {
        if self.ring.len() < self.capacity {
            self.ring.push(0);
            if self.referenced.len() * 64 < self.ring.len() {
                self.referenced.push(0);
            }
            return self.ring.len() - 1;
        }
        loop {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.ring.len();
            if clear_bit(&mut self.referenced, slot as u32) {
                continue;
            }
            let victim = self.ring[slot];
            self.map.remove(&victim);
            self.evictions += 1;
            return slot;
        }
    }
}

/// Sets bit `i` of a bitset.
fn set_bit(words: &mut [u64], i: u32) {
    let i = i as usize;
    if let Some(w) = words.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

/// Clears bit `i` of a bitset; returns whether it was set.
fn clear_bit(words: &mut [u64], i: u32) -> bool {
    let i = i as usize;
    let Some(w) = words.get_mut(i / 64) else {
        return false;
    };
    let mask = 1 << (i % 64);
    let was = *w & mask != 0;
    *w &= !mask;
    was
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("evictions", &self.evictions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(ix: &mut PrefixIndex, hashes: &[u64]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        ix.lookup(hashes, &mut out);
        let mut v: Vec<_> = out.iter().map(|m| (m.endpoint.0, m.blocks)).collect();
        v.sort();
        v
    }

    #[test]
    fn longest_leading_run_per_endpoint() {
        let mut ix = PrefixIndex::new(100);
        ix.record(&[1, 2, 3, 4], EndpointId(7));
        ix.record(&[1, 2, 9], EndpointId(8));
        assert_eq!(matches(&mut ix, &[1, 2, 3, 4, 5]), vec![(7, 4), (8, 2)]);
        assert_eq!(matches(&mut ix, &[1, 2, 9]), vec![(7, 2), (8, 3)]);
        assert_eq!(matches(&mut ix, &[5, 6]), vec![]);
        assert_eq!(matches(&mut ix, &[]), vec![]);
    }

    #[test]
    fn capacity_is_never_exceeded_and_recent_survives() {
        let mut ix = PrefixIndex::new(10);
        ix.record(&[1000, 1001], EndpointId(1));
        for i in 0..100u64 {
            // Keep the hot prefix referenced between insertions.
            let _ = matches(&mut ix, &[1000, 1001]);
            ix.record(&[i], EndpointId(2));
            assert!(ix.len() <= 10);
        }
        assert_eq!(matches(&mut ix, &[1000, 1001]), vec![(1, 2)]);
        assert!(ix.evictions() >= 90);
    }

    #[test]
    fn few_endpoints_per_block_newest_kept() {
        let mut ix = PrefixIndex::new(10);
        for e in 0..6 {
            ix.record(&[42], EndpointId(e));
        }
        let got = matches(&mut ix, &[42]);
        assert_eq!(got.len(), ENDPOINTS_PER_BLOCK);
        assert!(got.iter().all(|&(e, _)| e >= 2), "{got:?}");
    }

    #[test]
    fn evicted_middle_block_ends_the_run() {
        let mut ix = PrefixIndex::new(3);
        ix.record(&[1, 2, 3], EndpointId(1));
        // Reference the first and the last block only; the middle one is CLOCK's victim.
        assert_eq!(matches(&mut ix, &[1]), vec![(1, 1)]);
        assert_eq!(matches(&mut ix, &[3]), vec![(1, 1)]);
        ix.record(&[9], EndpointId(2));
        assert_eq!(ix.evictions(), 1);
        assert_eq!(ix.len(), 3);
        // The run is leading blocks: it stops at the hole even though block 3 is still there.
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![(1, 1)]);
        assert_eq!(matches(&mut ix, &[9]), vec![(2, 1)]);
    }

    #[test]
    fn second_chance_bits_survive_many_words() {
        // More than 64 slots, so the reference bits span several words of the bitset.
        let mut ix = PrefixIndex::new(200);
        for i in 0..200u64 {
            ix.record(&[i], EndpointId(1));
        }
        // Referenced hashes in several words survive one full sweep of the hand.
        let hot = [3u64, 64, 130, 199];
        for h in hot {
            assert_eq!(matches(&mut ix, &[h]), vec![(1, 1)]);
        }
        for i in 1000..1196u64 {
            ix.record(&[i], EndpointId(2));
        }
        assert_eq!(ix.len(), 200);
        for h in hot {
            assert_eq!(matches(&mut ix, &[h]), vec![(1, 1)], "hash {h}");
        }
        assert_eq!(matches(&mut ix, &[5]), vec![]);
    }

    #[test]
    fn forget_removes_endpoint() {
        let mut ix = PrefixIndex::new(10);
        ix.record(&[1, 2], EndpointId(1));
        ix.record(&[1, 2], EndpointId(2));
        ix.forget(EndpointId(1));
        assert_eq!(matches(&mut ix, &[1, 2]), vec![(2, 2)]);
    }
}
