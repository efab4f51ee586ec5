//! Flow control: where a request waits when its pool has no capacity, and who is refused first.
//!
//! A pool is "full" when the picker holds the request (every endpoint saturated, or none ready, as
//! at zero replicas while the autoscaler starts the first pod). Such requests wait in the pool's
//! bounded [`WaitQueue`], ordered by priority then arrival. One dispatcher task per pool re-tries the
//! head of the queue whenever the pool says its capacity changed (an answer finished, a scrape
//! landed, an endpoint appeared) and on a short backstop tick, so a missed notification delays a
//! waiter by at most one tick instead of forever. Only the head is tried: a later arrival can never
//! overtake an earlier or more urgent one.
//!
//! A waiter leaves with an admission ticket, or is shed: refused at arrival when the queue is full
//! of more urgent work, evicted by a more urgent arrival, or timed out. Sheddable requests have the
//! shorter timeout and are evicted first; the proxy answers them 429, everyone else 503 with
//! Retry-After.
//!
//! The module is generic over [`Capacity`] so that the ordering and shedding rules are tested with
//! a fake pool; the gateway plugs in its `Pool`.

mod queue;

pub use queue::{Push, WaitId, WaitQueue};

use infergate_config::FlowConfig;
use parking_lot::{Mutex, MutexGuard};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::time::Duration;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// A pool's "capacity may have freed up" signal, which its flow dispatcher waits on.
///
/// It is raised at the end of every request, and almost always nobody waits (the queue is
/// empty), so a raise without a watcher costs a fence and a load of a line nobody writes: a
/// `Notify::notify_waiters` on every request took the notifier's lock and bumped its counter,
/// writes to lines that every data-plane worker writes.
///
/// One watcher (the pool's dispatcher) at a time. No raise is lost: [`CapacitySignal::watch`]
/// publishes its interest before the dispatcher looks at the pool again, and
/// [`CapacitySignal::raise`] looks for it only after the change it reports; between two
/// `SeqCst` fences, either the dispatcher's look sees the change or the raise sees the watcher.
#[derive(Debug, Default)]
pub struct CapacitySignal {
    notify: Notify,
    watched: AtomicBool,
}

impl CapacitySignal {
    pub fn new() -> CapacitySignal {
        CapacitySignal::default()
    }

    /// Capacity may have changed (a request ended, a scrape landed, endpoints changed): wakes the
    /// watcher, if there is one. Call it after the change.
    pub fn raise(&self) {
        fence(Ordering::SeqCst);
        if self.watched.load(Ordering::Relaxed) {
            self.notify.notify_waiters();
        }
    }

    /// The next raise, registered now: look at the pool again after this call, then await it.
    pub fn watch(&self) -> Notified<'_> {
        // Made first: a `Notified` also completes for a `notify_waiters` between its making and
        // its first poll.
        let next = self.notify.notified();
        if !self.watched.load(Ordering::Relaxed) {
            self.watched.store(true, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        next
    }

    /// Nobody waits for capacity any more: raises go back to costing nothing.
    pub fn unwatch(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.watched.store(false, Ordering::Relaxed);
        }
    }
}

/// The wait queue behind its lock, with its length readable without the lock: every request
/// asks whether anyone waits before it takes an endpoint directly, and locking for that wrote
/// the lock's line, which every worker writes, on every request.
struct SharedQueue<T> {
    queue: Mutex<WaitQueue<T>>,
    len: AtomicUsize,
}

impl<T> SharedQueue<T> {
    fn new(queue: WaitQueue<T>) -> Self {
        SharedQueue {
            queue: Mutex::new(queue),
            len: AtomicUsize::new(0),
        }
    }

    /// The queue, locked; its length is published when the guard drops.
    fn lock(&self) -> QueueGuard<'_, T> {
        QueueGuard {
            queue: self.queue.lock(),
            len: &self.len,
        }
    }

    /// The queue's length at the last unlock (every change is made under the lock and
    /// published at its unlock, so this is the length now, as far as anyone can know it).
    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct QueueGuard<'a, T> {
    queue: MutexGuard<'a, WaitQueue<T>>,
    len: &'a AtomicUsize,
}

impl<T> Deref for QueueGuard<'_, T> {
    type Target = WaitQueue<T>;
    fn deref(&self) -> &WaitQueue<T> {
        &self.queue
    }
}

impl<T> DerefMut for QueueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut WaitQueue<T> {
        &mut self.queue
    }
}

impl<T> Drop for QueueGuard<'_, T> {
    fn drop(&mut self) {
        let len = self.queue.len();
        if self.len.load(Ordering::Relaxed) != len {
            self.len.store(len, Ordering::Release);
        }
    }
}

/// What flow control needs from a pool: a non-blocking attempt to get capacity, and a signal that
/// trying again might now succeed.
pub trait Capacity: Send + Sync + 'static {
    /// What the attempt needs to know about the request.
    type Facts: Send + 'static;
    /// Proof of admission (the chosen endpoint and its in-flight guard).
    type Ticket: Send + 'static;
    /// `None` means "hold": no endpoint can take the request now.
    fn try_admit(&self, facts: &Self::Facts) -> Option<Self::Ticket>;
    /// Raised when capacity may have freed up.
    fn capacity_changed(&self) -> &CapacitySignal;
}

/// Why a request left the queue without an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full of requests at least as urgent.
    QueueFull,
    /// A more urgent arrival took this request's place in a full queue.
    Evicted,
    /// The request waited its whole timeout.
    Timeout,
    /// The gateway is shutting down.
    ShuttingDown,
}

impl Shed {
    /// The `reason` label of `infergate_shed_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::Evicted => "evicted",
            Shed::Timeout => "timeout",
            Shed::ShuttingDown => "shutting_down",
        }
    }
}

/// How urgent a request is, as flow control sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Urgency {
    /// Lower goes first (critical 0, standard 1, sheddable 2).
    pub rank: u8,
    /// Sheddable requests use `sheddable_timeout` instead of `queue_timeout`.
    pub sheddable: bool,
}

type Reply<C> = Result<(<C as Capacity>::Ticket, <C as Capacity>::Facts), Shed>;

struct Waiter<C: Capacity> {
    facts: C::Facts,
    reply: oneshot::Sender<Reply<C>>,
}

struct Inner<C: Capacity> {
    capacity: Arc<C>,
    queue: SharedQueue<Waiter<C>>,
    arrived: Notify,
    config: FlowConfig,
}

/// One pool's flow control: cheap to clone.
pub struct FlowControl<C: Capacity> {
    inner: Arc<Inner<C>>,
}

impl<C: Capacity> Clone for FlowControl<C> {
    fn clone(&self) -> Self {
        FlowControl {
            inner: self.inner.clone(),
        }
    }
}

/// Backstop for a missed capacity notification.
const RETRY_TICK: Duration = Duration::from_millis(50);

impl<C: Capacity> FlowControl<C> {
    /// Flow control over `capacity`, with its dispatcher task running until `cancel`.
    pub fn start(capacity: Arc<C>, config: FlowConfig, cancel: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            capacity,
            queue: SharedQueue::new(WaitQueue::new(config.max_queued)),
            arrived: Notify::new(),
            config,
        });
        tokio::spawn(dispatch(inner.clone(), cancel));
        FlowControl { inner }
    }

    /// Requests waiting now (`infergate_pool_queued_requests`).
    pub fn queued(&self) -> usize {
        self.inner.queue.len()
    }

    /// Admits the request at once if the pool has capacity and nobody waits; otherwise waits in
    /// the queue. Returns the ticket and the facts (handed back for retries), or why it was shed.
    /// Dropping the future (the client left) removes the waiter.
    pub async fn admit(
        &self,
        facts: C::Facts,
        urgency: Urgency,
    ) -> Result<(C::Ticket, C::Facts), (Shed, Option<C::Facts>)> {
        let inner = &self.inner;
        if inner.queue.is_empty()
            && let Some(ticket) = inner.capacity.try_admit(&facts)
        {
            return Ok((ticket, facts));
        }
        let (tx, mut rx) = oneshot::channel();
        let waiter = Waiter { facts, reply: tx };
        let id = match inner.queue.lock().push(urgency.rank, waiter) {
            Push::Refused(w) => return Err((Shed::QueueFull, Some(w.facts))),
            Push::Queued { id, evicted } => {
                if let Some((_, w)) = evicted {
                    let _ = w.reply.send(Err(Shed::Evicted));
                }
                id
            }
        };
        inner.arrived.notify_one();
        let mut leave = LeaveOnDrop {
            inner,
            id: Some(id),
        };
        let timeout = if urgency.sheddable {
            inner.config.sheddable_timeout
        } else {
            inner.config.queue_timeout
        };
        let reply = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(reply)) => reply,
            // The dispatcher never drops a sender without replying, except at shutdown.
            Ok(Err(_)) => Err(Shed::ShuttingDown),
            Err(_) => {
                // Timed out; but the dispatcher may have admitted us in the same instant.
                let removed = inner.queue.lock().remove(id);
                match removed {
                    Some(w) => {
                        leave.id = None;
                        return Err((Shed::Timeout, Some(w.facts)));
                    }
                    None => rx.try_recv().unwrap_or(Err(Shed::Timeout)),
                }
            }
        };
        leave.id = None;
        reply.map_err(|shed| (shed, None))
    }
}

/// Takes a waiter out of the queue when its `admit` future is dropped early.
struct LeaveOnDrop<'a, C: Capacity> {
    inner: &'a Inner<C>,
    id: Option<WaitId>,
}

impl<C: Capacity> Drop for LeaveOnDrop<'_, C> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.inner.queue.lock().remove(id);
        }
    }
}

/// The dispatcher: admits the head of the queue for as long as the pool has capacity, then sleeps
/// until capacity may have changed, a request arrived, or the backstop tick.
async fn dispatch<C: Capacity>(inner: Arc<Inner<C>>, cancel: CancellationToken) {
    let signal = inner.capacity.capacity_changed();
    loop {
        let changed = signal.watch();
        let arrived = inner.arrived.notified();
        tokio::pin!(changed, arrived);
        // Registered before trying, so a notification during the attempt is not lost.
        changed.as_mut().enable();
        arrived.as_mut().enable();
        admit_heads(&inner);
        if inner.queue.is_empty() {
            // Nobody waits: sleep until someone does (no tick while idle), and let request ends
            // stop raising the signal for nobody.
            signal.unwatch();
            tokio::select! {
                _ = arrived => {}
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        tokio::select! {
            _ = changed => {}
            _ = arrived => {}
            _ = tokio::time::sleep(RETRY_TICK) => {}
            _ = cancel.cancelled() => break,
        }
    }
    // Shutting down: everyone still waiting gets an answer now.
    let mut queue = inner.queue.lock();
    while let Some((_, w)) = queue.pop_head() {
        let _ = w.reply.send(Err(Shed::ShuttingDown));
    }
}

fn admit_heads<C: Capacity>(inner: &Inner<C>) {
    let mut queue = inner.queue.lock();
    loop {
        let Some((_, head)) = queue.head() else {
            return;
        };
        if head.reply.is_closed() {
            queue.pop_head();
            continue;
        }
        let Some(ticket) = inner.capacity.try_admit(&head.facts) else {
            return;
        };
        if let Some((_, w)) = queue.pop_head() {
            // A receiver gone in the meantime drops the ticket, which releases the capacity.
            let _ = w.reply.send(Ok((ticket, w.facts)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool with `slots` free slots; a ticket holds one and frees it on drop.
    struct Slots {
        free: AtomicUsize,
        changed: CapacitySignal,
    }

    struct Ticket(Arc<Slots>);
    impl Drop for Ticket {
        fn drop(&mut self) {
            self.0.free.fetch_add(1, Ordering::SeqCst);
            self.0.changed.raise();
        }
    }

    struct Pool(Arc<Slots>);
    impl Capacity for Pool {
        type Facts = &'static str;
        type Ticket = Ticket;
        fn try_admit(&self, _: &&'static str) -> Option<Ticket> {
            self.0
                .free
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| Ticket(self.0.clone()))
        }
        fn capacity_changed(&self) -> &CapacitySignal {
            &self.0.changed
        }
    }

    fn flow(slots: usize, max_queued: usize, timeout_ms: u64) -> (FlowControl<Pool>, Arc<Slots>) {
        let s = Arc::new(Slots {
            free: AtomicUsize::new(slots),
            changed: CapacitySignal::new(),
        });
        let config = FlowConfig {
            max_queued,
            queue_timeout: Duration::from_millis(timeout_ms),
            sheddable_timeout: Duration::from_millis(timeout_ms / 4),
            ..FlowConfig::default()
        };
        let fc = FlowControl::start(Arc::new(Pool(s.clone())), config, CancellationToken::new());
        (fc, s)
    }

    const STANDARD: Urgency = Urgency {
        rank: 1,
        sheddable: false,
    };
    const CRITICAL: Urgency = Urgency {
        rank: 0,
        sheddable: false,
    };
    const SHEDDABLE: Urgency = Urgency {
        rank: 2,
        sheddable: true,
    };

    async fn wait_queued(fc: &FlowControl<Pool>, n: usize) {
        for _ in 0..500 {
            if fc.queued() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("queue never reached {n} (is {})", fc.queued());
    }

    #[tokio::test]
    async fn admits_at_once_with_capacity() {
        let (fc, _) = flow(1, 4, 1000);
        let (_t, facts) = fc.admit("a", STANDARD).await.expect("admitted");
        assert_eq!(facts, "a");
        assert_eq!(fc.queued(), 0);
    }

    #[tokio::test]
    async fn waiters_are_admitted_by_priority_then_arrival_as_capacity_frees() {
        let (fc, _) = flow(1, 8, 10_000);
        let (first, _) = fc.admit("first", STANDARD).await.expect("admitted");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (name, urgency) in [
            ("std-1", STANDARD),
            ("shed", SHEDDABLE),
            ("std-2", STANDARD),
            ("crit", CRITICAL),
        ] {
            let fc2 = fc.clone();
            let tx = tx.clone();
            let n = fc.queued();
            tasks.push(tokio::spawn(async move {
                let (ticket, facts) = fc2.admit(name, urgency).await.expect("admitted");
                tx.send(facts).expect("send");
                // Hold the slot briefly so the next waiter is admitted strictly after us.
                tokio::task::yield_now().await;
                drop(ticket);
            }));
            wait_queued(&fc, n + 1).await;
        }
        drop(first);
        let mut order = Vec::new();
        for _ in 0..4 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("admitted in time")
                .expect("sender alive");
            order.push(got);
        }
        assert_eq!(order, ["crit", "std-1", "std-2", "shed"]);
    }

    #[tokio::test]
    async fn full_queue_sheds_sheddable_first_then_refuses() {
        let (fc, _) = flow(0, 2, 10_000);
        let shed = tokio::spawn({
            let fc = fc.clone();
            async move { fc.admit("shed", SHEDDABLE).await.map(|_| ()) }
        });
        wait_queued(&fc, 1).await;
        let std1 = tokio::spawn({
            let fc = fc.clone();
            async move { fc.admit("std-1", STANDARD).await.map(|_| ()) }
        });
        wait_queued(&fc, 2).await;
        // Full: a standard arrival evicts the sheddable waiter.
        let std2 = tokio::spawn({
            let fc = fc.clone();
            async move { fc.admit("std-2", STANDARD).await.map(|_| ()) }
        });
        let shed_result = shed.await.expect("join");
        assert!(matches!(shed_result, Err((Shed::Evicted, None))));
        wait_queued(&fc, 2).await;
        // Full of standard work: a sheddable or standard arrival is refused at once.
        assert!(matches!(
            fc.admit("late", SHEDDABLE).await,
            Err((Shed::QueueFull, Some("late")))
        ));
        assert!(matches!(
            fc.admit("late", STANDARD).await,
            Err((Shed::QueueFull, Some("late")))
        ));
        std1.abort();
        std2.abort();
    }

    #[tokio::test]
    async fn waiters_time_out_sheddable_sooner() {
        let (fc, _) = flow(0, 8, 400);
        let started = tokio::time::Instant::now();
        let shed = fc.admit("shed", SHEDDABLE).await;
        let shed_waited = started.elapsed();
        assert!(matches!(shed, Err((Shed::Timeout, Some("shed")))));
        let started = tokio::time::Instant::now();
        let std = fc.admit("std", STANDARD).await;
        assert!(matches!(std, Err((Shed::Timeout, Some("std")))));
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(shed_waited < Duration::from_millis(400));
        assert_eq!(fc.queued(), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let (fc, _) = flow(0, 8, 10_000);
        let task = tokio::spawn({
            let fc = fc.clone();
            async move { fc.admit("gone", STANDARD).await.map(|_| ()) }
        });
        wait_queued(&fc, 1).await;
        task.abort();
        wait_queued(&fc, 0).await;
    }

    #[tokio::test]
    async fn a_watched_signal_is_never_lost_and_an_unwatched_one_wakes_nobody() {
        let signal = CapacitySignal::new();
        // A raise between `watch` and the first poll still completes the notification.
        let next = signal.watch();
        signal.raise();
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("notified");
        // Unwatched, a raise does not reach the notifier at all.
        signal.unwatch();
        let direct = signal.notify.notified();
        tokio::pin!(direct);
        direct.as_mut().enable();
        signal.raise();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(direct.as_mut().poll(&mut cx).is_pending());
        // Watched again, it does.
        let again = signal.watch();
        signal.raise();
        assert!(direct.as_mut().poll(&mut cx).is_ready());
        tokio::time::timeout(Duration::from_secs(5), again)
            .await
            .expect("notified");
    }

    #[tokio::test]
    async fn a_freed_slot_admits_a_waiter() {
        let (fc, slots) = flow(0, 8, 10_000);
        let task = tokio::spawn({
            let fc = fc.clone();
            async move { fc.admit("w", STANDARD).await.map(|(_, f)| f) }
        });
        wait_queued(&fc, 1).await;
        slots.free.fetch_add(1, Ordering::SeqCst);
        slots.changed.raise();
        let got = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("in time")
            .expect("join");
        assert!(matches!(got, Ok("w")));
    }
}
