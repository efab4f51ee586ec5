//! The pure part of flow control: who waits, in which order, and who is refused when the queue is
//! full. No clocks, no channels: the async shell in [`super`] owns those.
//!
//! Order is priority first (lower rank first: critical, standard, sheddable), then arrival. A full
//! queue makes room by refusing the least urgent, newest waiter when the newcomer outranks it;
//! otherwise the newcomer is refused. Sheddable work therefore always goes first, and among equals
//! the one that waited least loses least.

use std::collections::BTreeMap;

/// Where a waiter sits: its rank, then its arrival number. Also its identity for removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaitId {
    rank: u8,
    seq: u64,
}

impl WaitId {
    /// The waiter's priority rank (0 is the most urgent).
    pub fn rank(&self) -> u8 {
        self.rank
    }
}

/// The result of [`WaitQueue::push`].
#[derive(Debug)]
pub enum Push<T> {
    /// The item waits under `id`; `evicted` is the waiter that was pushed out to make room.
    Queued {
        id: WaitId,
        evicted: Option<(WaitId, T)>,
    },
    /// The queue is full of waiters at least as urgent: the item is handed back.
    Refused(T),
}

/// A bounded queue ordered by (rank, arrival).
#[derive(Debug)]
pub struct WaitQueue<T> {
    entries: BTreeMap<WaitId, T>,
    next_seq: u64,
    capacity: usize,
}

impl<T> WaitQueue<T> {
    /// A queue holding at most `capacity` waiters (0 refuses everything).
    pub fn new(capacity: usize) -> Self {
        WaitQueue {
            entries: BTreeMap::new(),
            next_seq: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a waiter of `rank`, making room by evicting a less urgent one if the queue is full.
    pub fn push(&mut self, rank: u8, item: T) -> Push<T> {
        let id = WaitId {
            rank,
            seq: self.next_seq,
        };
        let mut evicted = None;
        if self.entries.len() >= self.capacity {
            match self.entries.last_key_value() {
                Some((last, _)) if last.rank > rank => {
                    evicted = self.entries.pop_last();
                }
                _ => return Push::Refused(item),
            }
        }
        self.next_seq += 1;
        self.entries.insert(id, item);
        Push::Queued { id, evicted }
    }

    /// The most urgent, oldest waiter.
    pub fn head(&self) -> Option<(&WaitId, &T)> {
        self.entries.first_key_value()
    }

    pub fn pop_head(&mut self) -> Option<(WaitId, T)> {
        self.entries.pop_first()
    }

    /// Removes a waiter (it timed out or its client left); `None` if it already left the queue.
    pub fn remove(&mut self, id: WaitId) -> Option<T> {
        self.entries.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued<T: std::fmt::Debug>(p: Push<T>) -> (WaitId, Option<(WaitId, T)>) {
        match p {
            Push::Queued { id, evicted } => (id, evicted),
            Push::Refused(t) => panic!("refused {t:?}"),
        }
    }

    #[test]
    fn orders_by_rank_then_arrival() {
        let mut q = WaitQueue::new(10);
        queued(q.push(1, "standard-1"));
        queued(q.push(2, "sheddable-1"));
        queued(q.push(0, "critical-1"));
        queued(q.push(1, "standard-2"));
        queued(q.push(0, "critical-2"));
        let order: Vec<_> = std::iter::from_fn(|| q.pop_head().map(|(_, v)| v)).collect();
        assert_eq!(
            order,
            [
                "critical-1",
                "critical-2",
                "standard-1",
                "standard-2",
                "sheddable-1"
            ]
        );
    }

    #[test]
    fn full_queue_evicts_the_newest_least_urgent_for_a_more_urgent_arrival() {
        let mut q = WaitQueue::new(3);
        queued(q.push(2, "shed-old"));
        queued(q.push(2, "shed-new"));
        queued(q.push(1, "std"));
        let (_, evicted) = queued(q.push(1, "std-2"));
        let (id, item) = evicted.expect("a sheddable waiter makes room");
        assert_eq!((id.rank(), item), (2, "shed-new"));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn full_queue_refuses_an_arrival_that_outranks_nobody() {
        let mut q = WaitQueue::new(2);
        queued(q.push(1, "a"));
        queued(q.push(1, "b"));
        assert!(matches!(q.push(1, "c"), Push::Refused("c")));
        assert!(matches!(q.push(2, "d"), Push::Refused("d")));
        let (_, evicted) = queued(q.push(0, "e"));
        assert_eq!(evicted.map(|(_, v)| v), Some("b"));
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut q = WaitQueue::new(0);
        assert!(matches!(q.push(0, 1), Push::Refused(1)));
    }

    #[test]
    fn removal_by_id_and_twice() {
        let mut q = WaitQueue::new(4);
        let (a, _) = queued(q.push(1, "a"));
        queued(q.push(1, "b"));
        assert_eq!(q.remove(a), Some("a"));
        assert_eq!(q.remove(a), None);
        assert_eq!(q.head().map(|(_, v)| *v), Some("b"));
    }
}
