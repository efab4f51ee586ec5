//! Runs the pure [`Engine`] in real time: one task per process steps it, sleeps for each step's
//! modelled duration (divided by `--speed`), then hands each request its tokens.
//!
//! Time: the engine's clock is virtual (`real elapsed x speed`). While the engine stays busy, each
//! step starts where the previous one ended and the task sleeps until that end's real deadline, so
//! timer slack does not accumulate. An idle engine waits on a [`Notify`]: no timer, no polling, no CPU.
//!
//! Delivery: each request has a bounded channel. A slow reader never blocks the engine: tokens that
//! do not fit are kept and sent, merged, with the next step's; a final message that does not fit is
//! sent by a small task of its own. A closed channel means the client left: the request is aborted
//! and its KV blocks freed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::engine::{AddError, Engine, EngineRequest, FinishReason, RequestId, Step};
use super::metrics::Recorder;

/// Capacity of a request's token channel, in messages.
const CHANNEL_CAPACITY: usize = 32;

/// What a request's reader receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// New tokens since the previous delivery.
    pub tokens: u32,
    /// Set on the last delivery.
    pub finished: Option<FinishReason>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is at its bound.
    #[error("the engine is overloaded: {waiting} requests are waiting")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
    },
    /// The engine refused it.
    #[error(transparent)]
    Rejected(#[from] AddError),
}

struct Sink {
    tx: mpsc::Sender<Delivery>,
    pending: u32,
}

/// The engine and what is shared with it, behind one lock held only for short, CPU-only sections.
pub struct Core {
    /// The engine.
    pub engine: Engine,
    /// Latency histograms for `/metrics`.
    pub recorder: Recorder,
    sinks: HashMap<RequestId, Sink>,
}

/// The real-time host of one engine.
pub struct Host {
    speed: f64,
    started: Instant,
    core: Mutex<Core>,
    wake: Notify,
}

impl Host {
    /// Wraps `engine`; `speed` > 0 scales the engine clock against real time.
    pub fn new(engine: Engine, recorder: Recorder, speed: f64) -> Host {
        Host {
            speed: if speed > 0.0 { speed } else { 1.0 },
            started: Instant::now(),
            core: Mutex::new(Core {
                engine,
                recorder,
                sinks: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }

    /// The engine clock now.
    pub fn now(&self) -> Duration {
        self.started.elapsed().mul_f64(self.speed)
    }

    /// Runs `f` with the engine state locked (keep it short).
    pub fn with_core<T>(&self, f: impl FnOnce(&mut Core) -> T) -> T {
        f(&mut self.core.lock())
    }

    /// Queues a request unless `max_waiting` requests already wait; returns its drawn output length
    /// and the channel its tokens will arrive on.
    pub fn submit(
        &self,
        req: EngineRequest,
        max_waiting: usize,
    ) -> Result<(u32, mpsc::Receiver<Delivery>), SubmitError> {
        let id = req.id;
        let mut core = self.core.lock();
        // A busy engine that lags real time (CPU-bound) stamps arrivals on its own clock, so that
        // no request is admitted before it arrived.
        let now = if core.engine.has_work() {
            self.now().min(core.engine.clock())
        } else {
            self.now()
        };
        let waiting = core.engine.stats().waiting;
        if waiting >= max_waiting {
            return Err(SubmitError::Overloaded { waiting });
        }
        let output = core.engine.add_request(req, now)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        core.sinks.insert(id, Sink { tx, pending: 0 });
        drop(core);
        self.wake.notify_one();
        Ok((output, rx))
    }

    /// Drops a request (its reader went away).
    pub fn abort(&self, id: RequestId) {
        let mut core = self.core.lock();
        core.sinks.remove(&id);
        core.engine.abort(id);
    }

    /// The engine loop; runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut cursor: Option<Duration> = None;
        loop {
            let real = self.now();
            // Continue from the previous step's end unless the host fell well behind real time.
            let slack = Duration::from_millis(20).mul_f64(self.speed);
            let start = match cursor {
                Some(end) if real <= end + slack => end,
                _ => real,
            };
            let step = self.core.lock().engine.step(start);
            let Some(step) = step else {
                cursor = None;
                self.wake.notified().await;
                continue;
            };
            let end = step.ends_at();
            let deadline = self.started + end.div_f64(self.speed);
            tokio::time::sleep_until(deadline.into()).await;
            self.deliver(step);
            cursor = Some(end);
        }
    }

    fn deliver(&self, step: Step) {
        let mut core = self.core.lock();
        let core = &mut *core;
        for u in step.updates {
            if let Some(t) = u.ttft {
                core.recorder.observe_ttft(t.as_secs_f64());
            }
            if let Some(t) = u.itl {
                core.recorder.observe_itl(t.as_secs_f64());
            }
            if let Some(f) = &u.finished {
                core.recorder.observe_finished(f);
            }
            let finished = u.finished.as_ref().map(|f| f.reason);
            if u.new_tokens == 0 && finished.is_none() {
                continue;
            }
            let Some(sink) = core.sinks.get_mut(&u.id) else {
                continue;
            };
            sink.pending += u.new_tokens;
            let d = Delivery {
                tokens: sink.pending,
                finished,
            };
            match sink.tx.try_send(d) {
                Ok(()) => {
                    sink.pending = 0;
                    if finished.is_some() {
                        core.sinks.remove(&u.id);
                    }
                }
                Err(mpsc::error::TrySendError::Full(d)) => {
                    if finished.is_some() {
                        let tx = sink.tx.clone();
                        core.sinks.remove(&u.id);
                        tokio::spawn(async move {
                            let _ = tx.send(d).await;
                        });
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    core.sinks.remove(&u.id);
                    if finished.is_none() {
                        core.engine.abort(u.id);
                    }
                }
            }
        }
    }
}

/// Aborts its request when dropped before being disarmed: the response body or handler holding it
/// was dropped because the client went away.
pub struct AbortGuard {
    host: Arc<Host>,
    id: RequestId,
    armed: bool,
}

impl AbortGuard {
    /// Guards request `id`.
    pub fn new(host: Arc<Host>, id: RequestId) -> AbortGuard {
        AbortGuard {
            host,
            id,
            armed: true,
        }
    }

    /// The request completed; nothing to abort.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            self.host.abort(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::engine::EngineConfig;
    use crate::sim::metrics::Flavor;
    use crate::sim::profile::Profile;

    fn host(speed: f64) -> Arc<Host> {
        let profile = Profile::default();
        let engine = Engine::new(EngineConfig::for_profile(&profile), profile, 1);
        Arc::new(Host::new(engine, Recorder::new(Flavor::Vllm, 8192), speed))
    }

    fn req(id: RequestId, max_tokens: u32) -> EngineRequest {
        EngineRequest {
            id,
            prompt_tokens: vec![1, 2, 3, 4, 5],
            max_tokens,
            ignore_eos: true,
            min_tokens: 0,
        }
    }

    #[tokio::test]
    async fn delivers_every_token_then_finishes() {
        let h = host(100.0);
        tokio::spawn(h.clone().run());
        let (n, mut rx) = h.submit(req(1, 50), 10).expect("submit");
        assert_eq!(n, 50);
        let mut got = 0;
        let mut finish = None;
        while let Some(d) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("in time")
        {
            got += d.tokens;
            finish = d.finished;
        }
        assert_eq!((got, finish), (50, Some(FinishReason::Length)));
        assert_eq!(
            h.with_core(|c| c.engine.stats().counters.generation_tokens),
            50
        );
    }

    #[tokio::test]
    async fn slow_reader_loses_nothing_and_dropped_reader_aborts() {
        let h = host(1000.0);
        tokio::spawn(h.clone().run());
        let (_, mut slow) = h.submit(req(1, 200), 10).expect("submit");
        let (_, gone) = h.submit(req(2, 5000), 10).expect("submit");
        drop(gone);
        // Let the engine run ahead of the slow reader.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = 0;
        while let Some(d) = tokio::time::timeout(Duration::from_secs(10), slow.recv())
            .await
            .expect("in time")
        {
            got += d.tokens;
        }
        assert_eq!(got, 200);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.with_core(|c| c.engine.contains(2)) {
            assert!(Instant::now() < deadline, "request 2 was not aborted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn overload_bound_rejects() {
        let h = host(1.0);
        h.submit(req(1, 5), 1).expect("first");
        assert!(matches!(
            h.submit(req(2, 5), 1),
            Err(SubmitError::Overloaded { waiting: 1 })
        ));
    }
}
