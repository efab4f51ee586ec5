//! The paged KV cache: a fixed pool of blocks of `block_size` tokens, reference-counted, with a
//! prefix cache keyed by chained block hashes, as in vLLM V1's `BlockPool`.
//!
//! - A request holds a list of blocks covering its tokens. Blocks shared through the prefix cache
//!   have a reference count above one.
//! - When a block fills with prompt tokens it gets a hash chained from its parent's
//!   (`hash(parent, tokens)`), so a hash names the whole prefix up to and including that block, and a
//!   later request whose prompt starts with the same tokens finds the same blocks.
//! - A freed block (reference count zero) keeps its hash and content: it is still a cache hit until
//!   it is reused. Free blocks wait in one queue ordered by when they were freed; allocation takes
//!   from the front and evicts the hash of the block it takes, which is LRU eviction of unused cached
//!   blocks. Blocks that never held a full cached block go to the front, so they are reused first.
//! - Usage, as vLLM reports it: `1 - free / total`, where cached-but-unused blocks count as free.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Index of a block in the pool.
pub type BlockId = u32;

/// Sentinel for "no neighbour" in the free queue's links.
const NIL: u32 = u32::MAX;

/// Chained hashes of the full blocks of `tokens`: element `i` names `tokens[..(i + 1) * block_size]`.
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block_size.max(1));
    let mut parent = 0u64;
    for block in tokens.chunks_exact(block_size.max(1)) {
        let mut bytes = Vec::with_capacity(block.len() * 4);
        for t in block {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        parent = xxh3_64_with_seed(&bytes, parent);
        out.push(parent);
    }
    out
}

#[derive(Debug, Clone)]
struct Block {
    ref_count: u32,
    hash: Option<u64>,
    /// Links of the free queue; meaningful only while `ref_count == 0`.
    prev: u32,
    next: u32,
}

/// The pool of KV blocks with its prefix cache.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<Block>,
    block_size: u32,
    cached: HashMap<u64, BlockId>,
    head: u32,
    tail: u32,
    num_free: u32,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks of `block_size` tokens.
    pub fn new(num_blocks: u32, block_size: u32) -> BlockPool {
        let mut pool = BlockPool {
            blocks: Vec::with_capacity(num_blocks as usize),
            block_size: block_size.max(1),
            cached: HashMap::new(),
            head: NIL,
            tail: NIL,
            num_free: 0,
        };
        for id in 0..num_blocks {
            pool.blocks.push(Block {
                ref_count: 0,
                hash: None,
                prev: NIL,
                next: NIL,
            });
            pool.push_back(id);
        }
        pool
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// Blocks not held by any request (including cached ones that can be evicted).
    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Share of blocks held by requests, 0..=1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - f64::from(self.num_free) / self.blocks.len() as f64
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size as usize)
    }

    /// The longest run of leading `hashes` that are cached, as the blocks holding them.
    pub fn cached_prefix(&self, hashes: &[u64]) -> Vec<BlockId> {
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// How many of `blocks` sit in the free queue (touching them takes them out of it).
    pub fn count_free(&self, blocks: &[BlockId]) -> u32 {
        blocks
            .iter()
            .filter(|&&b| self.blocks[b as usize].ref_count == 0)
            .count() as u32
    }

    /// Takes a reference on each of `blocks` (cache hits), pulling free ones out of the queue.
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b as usize].ref_count == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].ref_count += 1;
        }
    }

    /// Takes `n` blocks from the front of the free queue, evicting their cached hashes; `None` (and
    /// nothing taken) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free as usize {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            let block = &mut self.blocks[b as usize];
            if let Some(h) = block.hash.take()
                && self.cached.get(&h) == Some(&b)
            {
                self.cached.remove(&h);
            }
            block.ref_count = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Records that `block` is full and holds the prefix named by `hash`. If another block already
    /// holds that prefix, this one stays uncached (a duplicate, as in vLLM).
    pub fn cache_full_block(&mut self, block: BlockId, hash: u64) {
        if self.blocks[block as usize].hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.blocks[block as usize].hash = Some(hash);
        }
    }

    /// Drops a request's references. Blocks are released last-first so that a sequence's tail is
    /// evicted before its head (the head is the part other requests are likeliest to share).
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.ref_count > 0, "double free of block {b}");
            block.ref_count = block.ref_count.saturating_sub(1);
            if block.ref_count == 0 {
                if block.hash.is_some() {
                    self.push_back(b);
                } else {
                    self.push_front(b);
                }
            }
        }
    }

    fn push_back(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        block.prev = self.tail;
        block.next = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.blocks[self.tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn push_front(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        block.next = self.head;
        block.prev = NIL;
        if self.head == NIL {
            self.tail = b;
        } else {
            self.blocks[self.head as usize].prev = b;
        }
        self.head = b;
        self.num_free += 1;
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let block = &self.blocks[b as usize];
            (block.prev, block.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let block = &mut self.blocks[b as usize];
        block.prev = NIL;
        block.next = NIL;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_over_full_blocks_only() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[35] = 999;
        let ha = block_hashes(&a, 16);
        let hb = block_hashes(&b, 16);
        assert_eq!(ha.len(), 2);
        assert_eq!(ha, hb, "the third (partial) block is not hashed");
        let mut c = a.clone();
        c[3] = 7;
        let hc = block_hashes(&c, 16);
        assert_ne!(ha[0], hc[0]);
        assert_ne!(ha[1], hc[1], "a change in block 0 changes every later hash");
    }

    #[test]
    fn allocate_free_and_usage() {
        let mut pool = BlockPool::new(10, 16);
        assert_eq!(pool.usage(), 0.0);
        let got = pool.allocate(4).expect("4 free");
        assert_eq!(pool.num_free(), 6);
        assert!((pool.usage() - 0.4).abs() < 1e-9);
        assert!(pool.allocate(7).is_none());
        assert_eq!(pool.num_free(), 6, "a failed allocation takes nothing");
        pool.free(&got);
        assert_eq!(pool.num_free(), 10);
    }

    #[test]
    fn freed_cached_blocks_still_hit_until_evicted_lru() {
        let mut pool = BlockPool::new(4, 16);
        let a = pool.allocate(2).expect("free");
        pool.cache_full_block(a[0], 100);
        pool.cache_full_block(a[1], 101);
        pool.free(&a);
        assert_eq!(pool.cached_prefix(&[100, 101, 102]), a);
        // A hit takes the blocks back out of the free queue.
        pool.touch(&a);
        assert_eq!(pool.num_free(), 2);
        pool.free(&a);
        // Uncached blocks are reused first, then the least recently freed cached one (the tail block,
        // freed first).
        let b = pool.allocate(3).expect("free");
        assert!(!b.contains(&a[0]));
        assert_eq!(pool.cached_prefix(&[100, 101]), vec![a[0]]);
        assert!(pool.cached_prefix(&[101]).is_empty());
    }

    #[test]
    fn shared_blocks_are_ref_counted() {
        let mut pool = BlockPool::new(4, 16);
        let a = pool.allocate(1).expect("free");
        pool.cache_full_block(a[0], 7);
        pool.touch(&a);
        pool.free(&a);
        assert_eq!(pool.num_free(), 3, "still held by the other request");
        pool.free(&a);
        assert_eq!(pool.num_free(), 4);
    }
}
