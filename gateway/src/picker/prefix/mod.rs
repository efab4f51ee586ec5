//! The prefix index: which endpoints were recently sent which prompt prefixes.
//!
//! A model server keeps the KV blocks of recent prompts in its prefix cache, so the endpoint that was
//! last sent a long shared system prompt can skip recomputing it. The gateway cannot see those caches;
//! it remembers instead what it sent where. Since block hashes are chained
//! ([`super::PromptHasher`]), one hash names a whole prefix, and "longest cached prefix" becomes "how
//! many of the request's leading hashes has this endpoint been sent".
//!
//! Bounded on purpose: at most `capacity` hashes, each with at most [`ENDPOINTS_PER_BLOCK`]
//! endpoints, so memory is capped (32 bytes a hash, in a table at most 3/4 full) whatever
//! the traffic. Eviction is CLOCK (second chance), an approximation of LRU that needs no linked
//! list: inserting or using a hash sets its reference bit, and the hand clears bits until it finds
//! a hash nobody used since its last pass. Engines evict their own caches LRU too, so an old entry
//! here is most likely gone there. The storage, and why it is not a `HashMap`, is in [`table`].

mod table;

use table::BlockTable;

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

/// Bounded map from block hash to the endpoints recently sent it.
pub struct PrefixIndex {
    capacity: usize,
    table: BlockTable,
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
            table: BlockTable::new(capacity),
        }
    }

    /// For every endpoint sent the request's first block, the number of leading blocks it was sent,
    /// appended to `out` (cleared first). Marks the hashes it probes as recently used.
    ///
    /// Per endpoint, the run is found by bisection, not by walking every block: the whole prompt
    /// first (a repeated prompt matches in two probes), then halving, so a 64-block prompt costs
    /// about 7 probes an endpoint instead of 64 cache misses. Bisection relies on runs being
    /// prefix-closed: an endpoint sent block `k` of a chain was sent every block before it, which
    /// is how [`PrefixIndex::record`] stores them. Where this index's own eviction left a hole
    /// inside a run, the bisection may step over it and count the deeper block; that is also
    /// the better guess about the engine, which evicts a cached prefix from its tail first, so
    /// its deeper block still cached means the ones before it are too.
    ///
    /// Call [`PrefixIndex::prefetch`] with the same hashes first, as early as possible.
    pub fn lookup(&mut self, hashes: &[u64], out: &mut Vec<PrefixMatch>) {
        out.clear();
        let Some(&first) = hashes.first() else {
            return;
        };
        let Some(pos) = self.table.find(table::key_of(first)) else {
            return;
        };
        self.table.mark(pos);
        for &e in self.table.slot(pos).endpoints() {
            out.push(PrefixMatch {
                endpoint: EndpointId(e),
                blocks: 1,
            });
        }
        for m in out.iter_mut() {
            // Invariant: the first `lo` blocks match, and none past `hi` do.
            let (mut lo, mut hi) = (1, hashes.len());
            let mut probe = hi;
            while lo < hi {
                if self.sent(hashes[probe - 1], m.endpoint) {
                    lo = probe;
                } else {
                    hi = probe - 1;
                }
                probe = lo + (hi - lo).div_ceil(2);
            }
            m.blocks = u32::try_from(lo).unwrap_or(u32::MAX);
        }
    }

    /// Whether `endpoint` is among those recently sent this block (marking the block used).
    fn sent(&mut self, hash: u64, endpoint: EndpointId) -> bool {
        match self.table.find(table::key_of(hash)) {
            Some(pos) => {
                self.table.mark(pos);
                self.table.slot(pos).contains(endpoint.0)
            }
            None => false,
        }
    }

    /// Starts bringing the entries of these hashes into cache, and returns at once. In an index
    /// of megabytes each of a long prompt's blocks is a cache miss; asked for together, and some
    /// work before [`PrefixIndex::lookup`], they overlap instead of adding up, and the
    /// [`PrefixIndex::record`] after the pick (which visits every block, matched or new) finds
    /// them in cache too. A hint: it changes no result.
    pub fn prefetch(&self, hashes: &[u64]) {
        self.table.prefetch(hashes);
    }

    /// Records that `endpoint` was sent a request with these leading block hashes.
    pub fn record(&mut self, hashes: &[u64], endpoint: EndpointId) {
        // In two passes per chunk: first every block's position, then the updates. The finds of
        // the first pass do not depend on each other, so the CPU runs many of them at once and
        // their cache misses overlap; interleaved with the updates, each miss would be waited
        // for in turn.
        const CHUNK: usize = 64;
        let mut found = [None; CHUNK];
        for chunk in hashes.chunks(CHUNK) {
            for (slot, &h) in found.iter_mut().zip(chunk) {
                *slot = self.table.find(table::key_of(h));
            }
            // Once this chunk has inserted, the first pass's answers may be stale: an insert can
            // evict and shift entries, or (for a repeated hash) add what was missing. From then
            // on each block is found again, on lines that are now in cache.
            let mut inserted = false;
            for (&pos, &h) in found.iter().zip(chunk) {
                let key = table::key_of(h);
                let pos = if inserted { self.table.find(key) } else { pos };
                let pos = match pos {
                    Some(pos) => {
                        self.table.mark(pos);
                        pos
                    }
                    // New hashes start referenced: a hash sent once survives at least one sweep
                    // of the hand, then goes unless it was used again.
                    None => {
                        inserted = true;
                        self.table.insert(key)
                    }
                };
                self.table.slot_mut(pos).touch(endpoint.0);
            }
        }
    }

    /// Forgets an endpoint everywhere (it left the pool). Linear in the index's size; rare.
    pub fn forget(&mut self, endpoint: EndpointId) {
        for slot in self.table.entries_mut() {
            slot.remove(endpoint.0);
        }
    }

    /// Block hashes remembered now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hashes forgotten to stay within capacity, since creation.
    pub fn evictions(&self) -> u64 {
        self.table.evictions()
    }
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("evictions", &self.evictions())
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
    fn runs_are_found_by_bisection_over_holes_left_by_eviction() {
        // Capacity 4 makes an 8-slot table where small keys sit in their own home slots, so the
        // hand's order is the keys' order: 8 (slot 0), then 1, 2, 3.
        let mut ix = PrefixIndex::new(4);
        ix.record(&[1, 2, 3], EndpointId(1));
        ix.record(&[8], EndpointId(3));
        // Full: the first eviction sweeps every bit clear, then takes slot 0 (hash 8).
        ix.record(&[9], EndpointId(2));
        assert_eq!(ix.evictions(), 1);
        assert_eq!(matches(&mut ix, &[8]), vec![]);
        // Use the first and the last block only; the middle one is CLOCK's next victim.
        assert_eq!(matches(&mut ix, &[1]), vec![(1, 1)]);
        assert_eq!(matches(&mut ix, &[3]), vec![(1, 1)]);
        ix.record(&[10], EndpointId(2));
        assert_eq!(ix.evictions(), 2);
        assert_eq!(ix.len(), 4);
        // Block 2 is gone from the index, block 3 is not: the engine evicts a prefix's tail
        // first, so it most likely still holds all three, and the run counts them.
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![(1, 3)]);
        // A run that ends at the hole ends there.
        assert_eq!(matches(&mut ix, &[1, 2, 4]), vec![(1, 1)]);
        assert_eq!(matches(&mut ix, &[9]), vec![(2, 1)]);
    }

    #[test]
    fn bisection_agrees_with_a_walk_on_prefix_closed_runs() {
        // Many prompts sharing prefixes of every length with each other, on several endpoints.
        let mut ix = PrefixIndex::new(100_000);
        let mut sent: Vec<(Vec<u64>, u32)> = Vec::new();
        let mut x = 7u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        for p in 0..300u64 {
            // A new prompt: a prefix of an earlier one (any length), then its own blocks.
            let mut prompt: Vec<u64> = match sent.len() {
                0 => Vec::new(),
                n => {
                    let (base, _) = &sent[(next() as usize) % n];
                    base[..(next() as usize) % (base.len() + 1)].to_vec()
                }
            };
            let own = 1 + (next() % 40) as usize;
            prompt.extend((0..own as u64).map(|b| (p + 1) * 1_000 + b));
            let endpoint = (next() % 3) as u32;
            ix.record(&prompt, EndpointId(endpoint));
            sent.push((prompt, endpoint));
        }
        for (prompt, _) in &sent {
            // What a walk block by block over what was sent would say, endpoint by endpoint.
            let walk = |e: u32| -> u32 {
                let mut run = 0;
                for k in 1..=prompt.len() {
                    if sent
                        .iter()
                        .any(|(q, f)| *f == e && q.len() >= k && q[..k] == prompt[..k])
                    {
                        run = k as u32;
                    } else {
                        break;
                    }
                }
                run
            };
            let got = matches(&mut ix, prompt);
            for (e, blocks) in &got {
                assert_eq!(
                    *blocks,
                    walk(*e),
                    "endpoint {e}, prompt of {}",
                    prompt.len()
                );
            }
            // Every endpoint with a run is reported (at most ENDPOINTS_PER_BLOCK = 4 > 3).
            for e in 0..3 {
                assert_eq!(
                    walk(e) > 0,
                    got.iter().any(|(f, _)| *f == e),
                    "endpoint {e}"
                );
            }
        }
    }

    #[test]
    fn second_chance_bits_survive_many_words() {
        // More than 64 slots, so the reference bits span several words of the bitset.
        let mut ix = PrefixIndex::new(200);
        for i in 1..=200u64 {
            ix.record(&[i], EndpointId(1));
        }
        // Hashes in several words that keep being used survive while the rest is replaced.
        let hot = [3u64, 64, 130, 199];
        for i in 1000..1196u64 {
            for h in hot {
                assert_eq!(matches(&mut ix, &[h]), vec![(1, 1)], "hash {h}");
            }
            ix.record(&[i], EndpointId(2));
            assert_eq!(ix.len(), 200);
        }
        for h in hot {
            assert_eq!(matches(&mut ix, &[h]), vec![(1, 1)], "hash {h}");
        }
        assert_eq!(ix.evictions(), 196);
        let old_left = (1..=200u64)
            .filter(|&h| !matches(&mut ix, &[h]).is_empty())
            .count();
        assert_eq!(old_left, hot.len(), "only the hot old hashes are left");
    }

    #[test]
    fn long_prompts_churning_a_small_index_keep_exact_runs_of_the_recent() {
        // Far more blocks than capacity: every lookup must still be exact for what is left.
        let mut ix = PrefixIndex::new(500);
        let prompt = |p: u64| -> Vec<u64> { (0..40).map(|b| p * 1000 + b + 1).collect() };
        for p in 0..200u64 {
            ix.record(&prompt(p), EndpointId((p % 7) as u32));
            assert!(ix.len() <= 500);
            // The prompt just recorded is whole, on its endpoint only.
            assert_eq!(
                matches(&mut ix, &prompt(p)),
                vec![((p % 7) as u32, 40)],
                "prompt {p}"
            );
        }
        assert!(ix.evictions() >= 200 * 40 - 500);
    }

    #[test]
    fn a_record_that_evicts_its_own_blocks_updates_only_its_own_entries() {
        // The record's second half was found in its first pass, then the inserts of its first
        // half evict and shift entries under it: every update must still land on its own hash.
        let mut ix = PrefixIndex::new(64);
        let old: Vec<u64> = (1..=60).collect();
        ix.record(&old, EndpointId(1));
        let new: Vec<u64> = (1000..1040).chain(1..=40).collect();
        ix.record(&new, EndpointId(2));
        assert!(ix.len() <= 64);
        assert!(ix.evictions() > 0);
        for h in (1..=60).chain(1000..1040) {
            let got = matches(&mut ix, &[h]);
            let sent_to_2 = new.contains(&h);
            for (e, _) in &got {
                assert!(*e != 2 || sent_to_2, "hash {h} never went to 2: {got:?}");
            }
        }
        // The blocks inserted last are the least likely to have been evicted: most are there,
        // on endpoint 2.
        let kept = (1..=40)
            .filter(|&h| matches(&mut ix, &[h]).contains(&(2, 1)))
            .count();
        assert!(kept >= 20, "{kept}");
    }

    #[test]
    fn a_hash_repeated_within_one_record_is_stored_once() {
        let mut ix = PrefixIndex::new(100);
        ix.record(&[5, 6, 5, 7, 6], EndpointId(1));
        assert_eq!(ix.len(), 3);
        assert_eq!(matches(&mut ix, &[5, 6, 5, 7, 6]), vec![(1, 5)]);
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
