//! The prefix index's storage: a flat open-addressing table of block entries, half a cache
//! line each, with CLOCK eviction over the table's own slots.
//!
//! Why not a `HashMap` and a separate CLOCK ring: a lookup walks up to `max_blocks` hashes of one
//! prompt, and in a table of megabytes every probe is a cache miss. With a map those misses are
//! paid one after another (each probe reads control bytes, then the bucket, both behind
//! branches). Here a hash's home slot is `hash & mask` and its entry is the slot itself, so the
//! index can first ask for every home slot of a prompt at once ([`BlockTable::prefetch`]) and
//! let the CPU keep all those misses in flight together; the walk and the record that follow
//! then hit the cache. Linear probing keeps a collision's next candidate on the same or the
//! adjacent line.
//!
//! Eviction is CLOCK (second chance): a reference bit per slot, set when the entry is inserted or
//! used; the hand sweeps slot positions, clearing bits, and evicts the first occupied slot whose
//! bit is already clear. Occupied and referenced are bitsets, so the sweep reads 64 slots per word
//! and never touches the entries it passes. Deletion is by backward shift (no tombstones), so
//! probes stay short however much churn the index sees.

use super::ENDPOINTS_PER_BLOCK;

/// Marks a free slot. A real hash of 0 is stored as 1 ([`key_of`]).
const EMPTY: u64 = 0;

/// The table key of a block hash: never [`EMPTY`].
pub(super) fn key_of(hash: u64) -> u64 {
    hash.max(1)
}

/// One block hash and the endpoints recently sent it, most recent first: 32 bytes, two to a
/// cache line. Keeping the endpoints in recency order replaces a timestamp per endpoint, which
/// would double the slot and with it the memory a lookup has to pull in.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub(super) struct Slot {
    /// The block's key ([`key_of`]), or [`EMPTY`].
    key: u64,
    endpoints: [u32; ENDPOINTS_PER_BLOCK],
    len: u8,
}

// Half a line per probe is the point of the layout; a field added by mistake should fail the build.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    const FREE: Slot = Slot {
        key: EMPTY,
        endpoints: [0; ENDPOINTS_PER_BLOCK],
        len: 0,
    };

    pub(super) fn endpoints(&self) -> &[u32] {
        &self.endpoints[..usize::from(self.len)]
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        self.endpoints().contains(&id)
    }

    /// Records that `id` was just sent this block: it moves to the front; when the slot is full
    /// and `id` is new, the least recently sent endpoint (the last) makes room.
    pub(super) fn touch(&mut self, id: u32) {
        let len = usize::from(self.len);
        let at = match self.endpoints[..len].iter().position(|&e| e == id) {
            Some(k) => k,
            None if len < ENDPOINTS_PER_BLOCK => {
                self.len += 1;
                len
            }
            None => ENDPOINTS_PER_BLOCK - 1,
        };
        self.endpoints.copy_within(0..at, 1);
        self.endpoints[0] = id;
    }

    pub(super) fn remove(&mut self, id: u32) {
        let len = usize::from(self.len);
        if let Some(pos) = self.endpoints[..len].iter().position(|&e| e == id) {
            self.endpoints.copy_within(pos + 1..len, pos);
            self.len -= 1;
        }
    }
}

/// Open-addressing table of [`Slot`]s holding at most `max_len` entries.
pub(super) struct BlockTable {
    /// A power of two long, at most 3/4 full (so a probe always meets a free slot soon).
    slots: Vec<Slot>,
    occupied: Vec<u64>,
    referenced: Vec<u64>,
    len: usize,
    max_len: usize,
    /// The size the table grows to at most: the smallest power of two holding `max_len` at 3/4.
    max_size: usize,
    /// The CLOCK hand: the next slot position to examine.
    hand: usize,
    evictions: u64,
}

/// Slots allocated up front: a pool that never sees long prompts stays small.
const INITIAL_SIZE: usize = 1024;

impl BlockTable {
    pub(super) fn new(max_len: usize) -> BlockTable {
        let max_len = max_len.max(1);
        let max_size = (max_len * 4).div_ceil(3).next_power_of_two().max(8);
        let size = max_size.min(INITIAL_SIZE);
        BlockTable {
            slots: vec![Slot::FREE; size],
            occupied: vec![0; size.div_ceil(64)],
            referenced: vec![0; size.div_ceil(64)],
            len: 0,
            max_len,
            max_size,
            hand: 0,
            evictions: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Asks the CPU to bring the home slot of every key into cache, without waiting for any of
    /// them: the misses overlap with each other and with whatever the caller does next, and the
    /// probes that follow find the lines in cache. A hint only: it changes no result.
    pub(super) fn prefetch(&self, keys: &[u64]) {
        let mask = self.mask();
        for &k in keys {
            prefetch_line(&self.slots[key_of(k) as usize & mask]);
        }
    }

    /// The position of `key`'s entry, if present.
    pub(super) fn find(&self, key: u64) -> Option<usize> {
        let mask = self.mask();
        let mut pos = key as usize & mask;
        loop {
            let k = self.slots[pos].key;
            if k == key {
                return Some(pos);
            }
            if k == EMPTY {
                return None;
            }
            pos = (pos + 1) & mask;
        }
    }

    pub(super) fn slot(&self, pos: usize) -> &Slot {
        &self.slots[pos]
    }

    pub(super) fn slot_mut(&mut self, pos: usize) -> &mut Slot {
        &mut self.slots[pos]
    }

    /// Gives the entry at `pos` its second chance.
    pub(super) fn mark(&mut self, pos: usize) {
        self.referenced[pos / 64] |= 1 << (pos % 64);
    }

    /// Inserts `key` (which must be absent) with no endpoints, referenced, evicting an entry
    /// first when full; returns its position.
    pub(super) fn insert(&mut self, key: u64) -> usize {
        debug_assert!(key != EMPTY && self.find(key).is_none());
        if self.len >= self.max_len {
            self.evict();
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 && self.slots.len() < self.max_size {
            self.grow();
        }
        let pos = self.place(key);
        self.slots[pos] = Slot { key, ..Slot::FREE };
        self.len += 1;
        pos
    }

    /// Every entry, for the rare whole-table pass (an endpoint leaving the pool).
    pub(super) fn entries_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().filter(|s| s.key != EMPTY)
    }

    /// Claims the first free slot on `key`'s probe path and marks it occupied and referenced.
    fn place(&mut self, key: u64) -> usize {
        let mask = self.mask();
        let mut pos = key as usize & mask;
        while self.slots[pos].key != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.occupied[pos / 64] |= 1 << (pos % 64);
        self.referenced[pos / 64] |= 1 << (pos % 64);
        pos
    }

    /// Doubles the table, keeping every entry and its reference bit.
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![Slot::FREE; size]);
        let old_ref = std::mem::replace(&mut self.referenced, vec![0; size.div_ceil(64)]);
        self.occupied = vec![0; size.div_ceil(64)];
        for (i, slot) in old.into_iter().enumerate() {
            if slot.key == EMPTY {
                continue;
            }
            let pos = self.place(slot.key);
            self.slots[pos] = slot;
            if old_ref[i / 64] & (1 << (i % 64)) == 0 {
                self.referenced[pos / 64] &= !(1 << (pos % 64));
            }
        }
        self.hand = 0;
    }

    /// Removes one entry, CLOCK's victim: sweeping from the hand, referenced slots lose their
    /// bit and are passed; the first occupied slot without one goes.
    fn evict(&mut self) {
        let size = self.slots.len();
        // Two full sweeps at most: the first clears every bit. Bounded for safety anyway.
        for _ in 0..=2 * size.div_ceil(64) + 1 {
            let (w, bit) = (self.hand / 64, self.hand % 64);
            let ahead = !0u64 << bit;
            let victims = self.occupied[w] & !self.referenced[w] & ahead;
            if victims != 0 {
                let b = victims.trailing_zeros() as usize;
                // The referenced slots passed on the way to the victim use up their chance.
                let passed = ahead & !(!0u64 << b);
                self.referenced[w] &= !passed;
                let pos = w * 64 + b;
                self.hand = (pos + 1) & (size - 1);
                self.remove(pos);
                self.evictions += 1;
                return;
            }
            self.referenced[w] &= !ahead;
            self.hand = ((w + 1) * 64) & (size - 1);
        }
        debug_assert!(false, "CLOCK found no victim in a full table");
    }

    /// Frees `pos` by backward shift: later entries of the same probe run move up, so that no
    /// probe path ever crosses a hole.
    fn remove(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let key = self.slots[j].key;
            if key == EMPTY {
                break;
            }
            let home = key as usize & mask;
            // The entry at j may fill the hole only if the hole is on its probe path (between
            // its home and j, cyclically).
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j];
                let referenced = self.referenced[j / 64] & (1 << (j % 64)) != 0;
                if referenced {
                    self.referenced[hole / 64] |= 1 << (hole % 64);
                } else {
                    self.referenced[hole / 64] &= !(1 << (hole % 64));
                }
                hole = j;
            }
        }
        self.slots[hole] = Slot::FREE;
        self.occupied[hole / 64] &= !(1 << (hole % 64));
        self.referenced[hole / 64] &= !(1 << (hole % 64));
        self.len -= 1;
    }
}

/// A prefetch hint for the cache line holding `slot`.
///
/// `_mm_prefetch` is an `unsafe fn` only because it takes a raw pointer; the instruction never
/// dereferences it architecturally (it cannot fault, and no later load sees a different value), and
/// this pointer comes from a live reference anyway. `std::hint::prefetch_read` is the safe
/// spelling, but still unstable. Elsewhere the hint is skipped: only the speed differs.
#[allow(unsafe_code)]
#[inline(always)]
fn prefetch_line(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads no memory visible to the program and cannot fault; the pointer is
    // derived from a valid reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry is findable from its home, and the bitsets agree with the slots.
    fn check(t: &BlockTable) {
        let mut n = 0;
        for (i, s) in t.slots.iter().enumerate() {
            let occ = t.occupied[i / 64] & (1 << (i % 64)) != 0;
            assert_eq!(occ, s.key != EMPTY, "slot {i}");
            if s.key != EMPTY {
                n += 1;
                assert_eq!(t.find(s.key), Some(i), "key {} at {i}", s.key);
            }
        }
        assert_eq!(n, t.len);
        assert!(t.len <= t.max_len);
    }

    #[test]
    fn colliding_keys_survive_removals_anywhere_in_their_run() {
        let mut t = BlockTable::new(48);
        let size = t.slots.len() as u64;
        // Keys sharing a home, and a run wrapping around the end of the table.
        let keys: Vec<u64> = (1..=5)
            .map(|k| 3 + k * size)
            .chain((1..=4).map(|k| size - 1 + k * size))
            .collect();
        for &k in &keys {
            t.insert(k);
        }
        check(&t);
        for (n, &k) in keys.iter().enumerate().rev().step_by(2) {
            let pos = t.find(k).expect("present");
            t.remove(pos);
            assert_eq!(t.find(k), None, "removed #{n}");
            check(&t);
        }
    }

    #[test]
    fn grows_to_its_bound_then_evicts() {
        let mut t = BlockTable::new(5_000);
        for k in 1..=20_000u64 {
            t.insert(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        check(&t);
        assert_eq!(t.len(), 5_000);
        assert_eq!(t.evictions(), 15_000);
        assert_eq!(t.slots.len(), t.max_size);
        assert!(t.slots.len() * 3 >= t.len() * 4);
    }

    proptest::proptest! {
        /// Against a plain set: inserts (evicting one entry exactly when full), finds and
        /// removals keep every entry findable, the bitsets true, and the bound held.
        #[test]
        fn agrees_with_a_set(ops in proptest::collection::vec((0u8..3, 1u64..400), 1..400)) {
            let mut t = BlockTable::new(50);
            let mut model = std::collections::BTreeSet::new();
            for (op, k) in ops {
                // Five homes in a 128-slot table (the bound of 50 entries): long probe runs, and
                // one home at the last slot so that runs wrap around the end.
                let key = (k << 7) | [0, 1, 2, 64, 127][(k % 5) as usize];
                match (op, t.find(key)) {
                    (0, None) => {
                        let before = t.evictions();
                        t.insert(key);
                        model.insert(key);
                        if t.evictions() > before {
                            let gone: Vec<u64> =
                                model.iter().copied().filter(|&m| t.find(m).is_none()).collect();
                            proptest::prop_assert_eq!(gone.len(), 1);
                            model.remove(&gone[0]);
                        }
                    }
                    (1, Some(pos)) => {
                        t.remove(pos);
                        model.remove(&key);
                    }
                    (_, found) => proptest::prop_assert_eq!(found.is_some(), model.contains(&key)),
                }
                check(&t);
                proptest::prop_assert_eq!(t.len(), model.len());
            }
        }
    }

    #[test]
    fn endpoints_stay_in_recency_order_and_the_oldest_goes() {
        let mut s = Slot::FREE;
        for id in 1..=4 {
            s.touch(id);
        }
        assert_eq!(s.endpoints(), &[4, 3, 2, 1]);
        s.touch(2);
        assert_eq!(s.endpoints(), &[2, 4, 3, 1]);
        s.touch(5);
        assert_eq!(s.endpoints(), &[5, 2, 4, 3]);
        s.remove(4);
        assert_eq!(s.endpoints(), &[5, 2, 3]);
        s.touch(3);
        assert_eq!(s.endpoints(), &[3, 5, 2]);
    }

    #[test]
    fn prefetch_changes_nothing() {
        let mut t = BlockTable::new(10);
        let pos = t.insert(7);
        t.prefetch(&[7, 8, 0, u64::MAX]);
        assert_eq!(t.find(7), Some(pos));
        assert_eq!(t.len(), 1);
    }
}
