//! A data-plane worker's timer for the deadlines every request carries but almost never reaches:
//! the time a client has to send its request head (hyper's header-read timeout, through
//! [`hyper::rt::Timer`]) and the time an upstream has to send its answer's head
//! (`limits.first_byte_timeout`).
//!
//! Why not tokio's timer: each of those two deadlines is armed and disarmed once per request, and
//! through tokio each cost a boxed `Sleep`, an insertion into the runtime's timer wheel under the
//! driver's lock and a removal under it again: together about 1,800 of the gateway's ~51,000
//! user-space instructions per proxied request (docs/BENCHMARKS.md, runs of 2026-12-03). Here a
//! deadline is a slot in a per-worker table, armed on its first poll and freed when dropped, and
//! one ticker task per worker fires the slots that are due every [`RESOLUTION`].
//!
//! The price is precision: a deadline fires at the first tick at or after it, so up to one
//! [`RESOLUTION`] late (never early). The deadlines it serves are seconds long (10 s and 300 s
//! by default), and a timeout that fires 100 ms late changes nothing for the client.
//!
//! One table per worker thread, so its lock is never contended (the ticker runs on the same
//! thread); the lock is there because hyper requires its sleeps to be `Send + Sync`.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the ticker fires the due deadlines: the most a deadline fires late.
pub const RESOLUTION: Duration = Duration::from_millis(100);

/// A handle to one worker's deadline table (clones share it).
#[derive(Clone, Debug, Default)]
pub struct CoarseTimer {
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    /// Indices of unused slots.
    free: Vec<usize>,
}

#[derive(Debug)]
struct Slot {
    deadline: Instant,
    /// `None` once fired (or while unused).
    waker: Option<Waker>,
    fired: bool,
}

impl CoarseTimer {
    pub fn new() -> CoarseTimer {
        CoarseTimer::default()
    }

    /// A future that completes at the first tick at or after `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> CoarseSleep {
        CoarseSleep {
            table: self.table.clone(),
            deadline,
            slot: None,
        }
    }

    /// `fut`, or `Err(Elapsed)` if it has not completed `after` from the first time it had to
    /// wait (up to one [`RESOLUTION`] later). A future that is ready when first polled (a body
    /// frame already read, a socket with bytes waiting) reads no clock and takes no slot, so a
    /// caller need not test for that case itself. A named future rather than an `async fn`:
    /// `fut` is stored once, in place (an `async fn` kept the argument and its pinned copy, and
    /// copied the one into the other on the first poll).
    pub fn timeout<F: Future>(&self, after: Duration, fut: F) -> Timeout<'_, F> {
        Timeout {
            fut,
            timer: self,
            after,
            sleep: None,
        }
    }

    /// Deadlines armed and not yet fired.
    #[cfg(test)]
    fn pending(&self) -> usize {
        let t = self.table.lock();
        t.slots.iter().filter(|s| s.waker.is_some()).count()
    }

    /// Fires every deadline at or before `now` (the ticker's work; tests call it with their own
    /// clock). Wakers are woken after the lock is released.
    pub fn fire(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut t = self.table.lock();
            for slot in &mut t.slots {
                if slot.deadline <= now
                    && let Some(waker) = slot.waker.take()
                {
                    slot.fired = true;
                    due.push(waker);
                }
            }
        }
        for waker in due {
            waker.wake();
        }
    }

    /// Fires the due deadlines every [`RESOLUTION`] until every handle to the table is gone.
    /// Spawn one per worker, on the worker's runtime.
    pub async fn tick(self) {
        let table = Arc::downgrade(&self.table);
        drop(self);
        let mut interval = tokio::time::interval(RESOLUTION);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(table) = Weak::upgrade(&table) else {
                return;
            };
            CoarseTimer { table }.fire(Instant::now());
        }
    }
}

pin_project_lite::pin_project! {
    /// [`CoarseTimer::timeout`]'s future.
    #[derive(Debug)]
    pub struct Timeout<'a, F> {
        #[pin]
        fut: F,
        timer: &'a CoarseTimer,
        after: Duration,
        // The deadline, from the first poll on which `fut` was not ready.
        sleep: Option<CoarseSleep>,
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let (timer, after) = (*this.timer, *this.after);
        let sleep = this
            .sleep
            .get_or_insert_with(|| timer.sleep_until(Instant::now() + after));
        Pin::new(sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// The deadline passed before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// A deadline in a [`CoarseTimer`]'s table: its slot is taken on the first poll and given back
/// when it is dropped.
#[derive(Debug)]
pub struct CoarseSleep {
    table: Arc<Mutex<Table>>,
    deadline: Instant,
    slot: Option<usize>,
}

impl CoarseSleep {
    /// Moves the deadline; a fired sleep becomes pending again.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(i) = self.slot {
            let mut t = self.table.lock();
            let slot = &mut t.slots[i];
            slot.deadline = deadline;
            slot.fired = false;
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut t = this.table.lock();
        match this.slot {
            Some(i) => {
                let slot = &mut t.slots[i];
                if slot.fired {
                    return Poll::Ready(());
                }
                match &mut slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            None => {
                let slot = Slot {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                };
                let i = match t.free.pop() {
                    Some(i) => {
                        t.slots[i] = slot;
                        i
                    }
                    None => {
                        t.slots.push(slot);
                        t.slots.len() - 1
                    }
                };
                this.slot = Some(i);
                Poll::Pending
            }
        }
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut t = self.table.lock();
            let slot = &mut t.slots[i];
            slot.waker = None;
            slot.fired = false;
            t.free.push(i);
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseTimer::sleep_until(self, deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<CoarseSleep>() {
            Some(mut ours) => ours.as_mut().get_mut().reset(new_deadline),
            None => *sleep = hyper::rt::Timer::sleep_until(self, new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A timer, the test's clock origin, and a counting waker (its count and itself).
    fn setup() -> (CoarseTimer, Instant, Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        (CoarseTimer::new(), Instant::now(), count, waker)
    }

    fn poll(sleep: &mut CoarseSleep, waker: &Waker) -> Poll<()> {
        Pin::new(sleep).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn fires_at_the_first_tick_at_or_after_the_deadline_never_before() {
        let (timer, t0, count, waker) = setup();
        let mut sleep = timer.sleep_until(t0 + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_pending());
        assert_eq!(timer.pending(), 1);
        timer.fire(t0 + Duration::from_millis(999));
        assert_eq!(count.wakes(), 0, "not due yet");
        assert!(poll(&mut sleep, &waker).is_pending());
        timer.fire(t0 + Duration::from_secs(1));
        assert_eq!(count.wakes(), 1, "woken once");
        assert!(poll(&mut sleep, &waker).is_ready());
        timer.fire(t0 + Duration::from_secs(2));
        assert_eq!(count.wakes(), 1, "a fired deadline is not woken again");
        assert_eq!(timer.pending(), 0);
    }

    #[test]
    fn a_dropped_sleep_gives_its_slot_back_and_is_never_woken() {
        let (timer, t0, count, waker) = setup();
        let mut a = timer.sleep_until(t0 + Duration::from_secs(1));
        assert!(poll(&mut a, &waker).is_pending());
        drop(a);
        assert_eq!(timer.pending(), 0);
        timer.fire(t0 + Duration::from_secs(5));
        assert_eq!(count.wakes(), 0);
        // The freed slot serves the next sleep, and is armed afresh (not fired).
        let mut b = timer.sleep_until(t0 + Duration::from_secs(10));
        assert!(poll(&mut b, &waker).is_pending());
        assert_eq!(timer.table.lock().slots.len(), 1, "slot reused");
        timer.fire(t0 + Duration::from_secs(6));
        assert!(poll(&mut b, &waker).is_pending());
    }

    #[test]
    fn the_latest_waker_is_the_one_woken() {
        let (timer, t0, first, first_waker) = setup();
        let second = Arc::new(Count::default());
        let mut sleep = timer.sleep_until(t0);
        assert!(poll(&mut sleep, &first_waker).is_pending());
        assert!(poll(&mut sleep, &Waker::from(second.clone())).is_pending());
        timer.fire(t0);
        assert_eq!(first.wakes(), 0);
        assert_eq!(second.wakes(), 1);
    }

    #[test]
    fn reset_moves_a_deadline_and_rearms_a_fired_one() {
        let (timer, t0, _, waker) = setup();
        let mut sleep = timer.sleep_until(t0 + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_pending());
        timer.fire(t0 + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_ready());
        sleep.reset(t0 + Duration::from_secs(3));
        assert!(poll(&mut sleep, &waker).is_pending());
        timer.fire(t0 + Duration::from_secs(2));
        assert!(poll(&mut sleep, &waker).is_pending());
        timer.fire(t0 + Duration::from_secs(3));
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[test]
    fn hyper_resets_its_boxed_sleep_in_place() {
        use hyper::rt::Timer as _;
        let (timer, t0, _, waker) = setup();
        let mut boxed = hyper::rt::Timer::sleep_until(&timer, t0 + Duration::from_secs(1));
        let mut cx = Context::from_waker(&waker);
        assert!(boxed.as_mut().poll(&mut cx).is_pending());
        timer.reset(&mut boxed, t0 + Duration::from_secs(5));
        timer.fire(t0 + Duration::from_secs(2));
        assert!(
            boxed.as_mut().poll(&mut cx).is_pending(),
            "moved, not fired"
        );
        assert_eq!(
            timer.table.lock().slots.len(),
            1,
            "the same slot, not a new sleep"
        );
        timer.fire(t0 + Duration::from_secs(5));
        assert!(boxed.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn timeout_passes_a_ready_future_through_and_cuts_a_stuck_one() {
        let timer = CoarseTimer::new();
        tokio::spawn(timer.clone().tick());
        assert_eq!(
            timer.timeout(Duration::from_secs(60), async { 7 }).await,
            Ok(7)
        );
        assert_eq!(timer.pending(), 0, "an unpolled deadline holds no slot");
        let stuck = timer
            .timeout(Duration::from_millis(50), std::future::pending::<()>())
            .await;
        assert_eq!(stuck, Err(Elapsed));
        assert_eq!(timer.pending(), 0);
    }

    #[tokio::test]
    async fn a_timeouts_clock_starts_at_its_first_wait_not_at_its_making() {
        let timer = CoarseTimer::new();
        tokio::spawn(timer.clone().tick());
        let made = timer.timeout(
            Duration::from_millis(300),
            // Ready 100 ms after its first poll.
            async { tokio::time::sleep(Duration::from_millis(100)).await },
        );
        // Longer than the bound passes before the timeout is first polled: a clock started at
        // its making would have run out by the first tick after the wait began.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(made.await, Ok(()));
    }

    #[tokio::test]
    async fn the_ticker_ends_with_the_last_handle() {
        let timer = CoarseTimer::new();
        let ticker = tokio::spawn(timer.clone().tick());
        drop(timer);
        tokio::time::timeout(Duration::from_secs(5), ticker)
            .await
            .expect("the ticker stopped")
            .expect("no panic");
    }
}
