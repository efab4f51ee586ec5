//! The open-loop driver: follow the plan on the wall clock, whatever the server does.
//!
//! The whole schedule is computed before the first request ([`Plan::build`]). A dedicated blocking
//! thread walks it: it sleeps until each arrival's instant with `std::thread::sleep` (tens of
//! microseconds of precision, where tokio's timer wheel rounds to whole milliseconds) and spawns that
//! arrival's session onto the runtime. The session task measures how late it actually sent, relative
//! to the scheduled instant ("late start"): that figure is the generator's own error, and the
//! `schedule_lag` benchmark shows it stays small at 2,000 requests a second.
//!
//! Nothing the server does delays an arrival. Past `max_in_flight` requests in flight, an arrival is
//! not queued but counted at once as failed `client-overload`: silently delaying it would turn the
//! open loop into a closed one and hide exactly the overload the run is meant to expose.
//!
//! Multi-turn sessions send their next turn `think_time` after the previous answer finished
//! (closed-loop inside a session, as a person reads and types); new sessions keep arriving on the
//! schedule. A failed turn ends its session; its remaining turns are reported as skipped. The run
//! ends when the schedule is exhausted (by `duration` or `requests`) and every started session has
//! finished; each request is bounded by `timeout`, so the drain is bounded too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::arrival::{ArrivalProcess, Bound};
use super::client::{Client, ClientConfig, ClientError, Endpoint, Exchange, Message, Outcome};
use super::progress::{Counts, Progress, ProgressMode};
use super::report::{Recorder, RunMeta, RunReport, Slo};
use super::workload::{Plan, SessionPlan, WorkloadError, WorkloadSpec};
use crate::sim::tokens::{count_tokens, filler_text};

/// Everything a run needs. Build with [`RunConfig::new`] and set fields; the defaults are the CLI's.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URL of the server or gateway, e.g. `http://127.0.0.1:8000`.
    pub target: String,
    /// The `model` field.
    pub model: String,
    /// Chat or completions API (default chat).
    pub endpoint: Endpoint,
    /// Stream answers (default true).
    pub stream: bool,
    /// Replace every planned output length with this.
    pub max_tokens: Option<u32>,
    /// Send `ignore_eos: true` so outputs are as long as planned (default true).
    pub ignore_eos: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Per-request deadline, headers to last byte (default 300 s: a 4,096-token answer at 50 ms a
    /// token takes over 200 s, and a load test must not cut off the answers it measures).
    pub timeout: Duration,
    /// What to ask for.
    pub workload: WorkloadSpec,
    /// Arrival process (None: Poisson, or the trace's own times).
    pub arrival: Option<ArrivalProcess>,
    /// New sessions per second (required unless the workload is a trace).
    pub rate: Option<f64>,
    /// Schedule arrivals in `[0, duration)`.
    pub duration: Option<Duration>,
    /// Schedule at most this many arrivals.
    pub requests: Option<u64>,
    /// Seed of arrivals and lengths.
    pub seed: u64,
    /// Goodput objectives.
    pub slo: Slo,
    /// Hard cap on requests in flight; arrivals past it fail as `client-overload` (default 10,000).
    pub max_in_flight: usize,
    /// Pause between a session's answer and its next turn (default 1 s).
    pub think_time: Duration,
    /// Progress display (library default: off).
    pub progress: ProgressMode,
    /// Cancel to stop scheduling and abandon requests in flight; the report covers what ran.
    pub cancel: CancellationToken,
}

impl RunConfig {
    /// A config with the CLI's defaults; set `rate` and `duration` or `requests` before running.
    pub fn new(
        target: impl Into<String>,
        model: impl Into<String>,
        workload: WorkloadSpec,
    ) -> Self {
        Self {
            target: target.into(),
            model: model.into(),
            endpoint: Endpoint::Chat,
            stream: true,
            max_tokens: None,
            ignore_eos: true,
            headers: Vec::new(),
            timeout: Duration::from_secs(300),
            workload,
            arrival: None,
            rate: None,
            duration: None,
            requests: None,
            seed: 0,
            slo: Slo::default(),
            max_in_flight: 10_000,
            think_time: Duration::from_secs(1),
            progress: ProgressMode::Off,
            cancel: CancellationToken::new(),
        }
    }
}

/// Why a run could not start (once started, every failure is a counted outcome instead).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The workload or schedule cannot be planned.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The client cannot be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The scheduler thread died.
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
}

/// What the collector hears.
enum Event {
    Lag(Duration),
    /// Refused at this offset into the run.
    Overload(Duration),
    Skipped(u64),
    Done {
        ex: Exchange,
        planned_input: u64,
        /// Offset of the send into the run.
        sent: Duration,
    },
}

/// State every session task shares.
struct Shared {
    /// The run's time zero.
    start: Instant,
    client: Client,
    events: mpsc::UnboundedSender<Event>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    max_tokens: Option<u32>,
    think_time: Duration,
    cancel: CancellationToken,
}

/// One slot of the in-flight cap, released on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    fn try_acquire(&self) -> Option<InFlight> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(self.in_flight.clone()))
    }

    fn emit(&self, ev: Event) {
        // The collector outlives every sender; a send can only fail if it panicked.
        let _ = self.events.send(ev);
    }
}

/// Runs a load test and returns its report. Must be called inside a tokio runtime (a
/// multi-threaded one, so the server's and the generator's work can overlap).
pub async fn run(config: RunConfig) -> Result<RunReport, RunError> {
    if config.max_in_flight == 0 {
        return Err(RunError::Config("max_in_flight must be at least 1".into()));
    }
    if config.max_tokens == Some(0) {
        return Err(RunError::Config("--max-tokens must be at least 1".into()));
    }
    let bound = Bound {
        duration: config.duration,
        requests: config.requests,
    };
    let spec = config.workload.clone();
    let (arrival, rate, seed) = (config.arrival, config.rate, config.seed);
    let plan = tokio::task::spawn_blocking(move || Plan::build(&spec, arrival, rate, bound, seed))
        .await
        .map_err(|e| RunError::Scheduler(e.to_string()))??;
    let client = Client::new(ClientConfig {
        target: config.target.clone(),
        model: config.model.clone(),
        endpoint: config.endpoint,
        stream: config.stream,
        ignore_eos: config.ignore_eos,
        headers: config.headers.clone(),
        timeout: config.timeout,
    })?;
    let target = client.uri().to_string();
    let total_requests = plan.total_requests();

    let (tx, rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        client,
        events: tx,
        in_flight: in_flight.clone(),
        max_in_flight: config.max_in_flight,
        max_tokens: config.max_tokens,
        think_time: config.think_time,
        cancel: config.cancel.clone(),
    });
    let progress = Progress::new(config.progress, total_requests);
    let collector = tokio::spawn(collect(rx, Recorder::new(config.slo), progress, in_flight));

    let tracker = TaskTracker::new();
    let handle = tokio::runtime::Handle::current();
    let scheduler = {
        let shared = shared.clone();
        let tracker = tracker.clone();
        tokio::task::spawn_blocking(move || schedule(plan, start, &shared, &tracker, &handle))
    };
    let dispatched = scheduler.await;
    tracker.close();
    tracker.wait().await;
    let wall = start.elapsed();
    drop(shared); // the last sender: the collector sees the end of the stream
    let (recorder, progress) = collector
        .await
        .map_err(|e| RunError::Scheduler(e.to_string()))?;
    progress.finish();
    let (sessions, start_span) = dispatched.map_err(|e| RunError::Scheduler(e.to_string()))?;
    Ok(recorder.finish(RunMeta {
        target,
        model: config.model,
        workload: config.workload.to_string(),
        arrival: match (&config.workload, config.arrival) {
            (WorkloadSpec::Trace(_), _) => "trace".into(),
            (_, a) => a.unwrap_or(ArrivalProcess::Poisson).to_string(),
        },
        rate: config.rate,
        seed: config.seed,
        sessions,
        wall,
        start_span,
    }))
}

/// Walks the schedule on a blocking thread; returns the arrivals dispatched and the span between
/// the first and the last dispatch.
fn schedule(
    plan: Plan,
    start: Instant,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    handle: &tokio::runtime::Handle,
) -> (u64, Duration) {
    // Sleep in slices so cancellation is noticed within one slice.
    const SLICE: Duration = Duration::from_millis(50);
    let mut dispatched = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = start;
    for (offset, session) in plan.arrivals.into_iter().zip(plan.sessions) {
        let deadline = start + offset;
        loop {
            if shared.cancel.is_cancelled() {
                return (
                    dispatched,
                    last.saturating_duration_since(first.unwrap_or(last)),
                );
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(SLICE));
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        dispatched += 1;
        match shared.try_acquire() {
            Some(slot) => {
                tracker.spawn_on(run_session(shared.clone(), session, deadline, slot), handle);
            }
            None => {
                shared.emit(Event::Lag(now.saturating_duration_since(deadline)));
                shared.emit(Event::Overload(now.saturating_duration_since(start)));
                let rest = session.turns.len().saturating_sub(1) as u64;
                if rest > 0 {
                    shared.emit(Event::Skipped(rest));
                }
            }
        }
    }
    (
        dispatched,
        last.saturating_duration_since(first.unwrap_or(last)),
    )
}

/// One session: its turns in order, each after the previous answer and the think time.
async fn run_session(
    shared: Arc<Shared>,
    plan: SessionPlan,
    deadline: Instant,
    first_slot: InFlight,
) {
    let user = format!("session-{}", plan.id);
    let mut messages: Vec<Message> = Vec::with_capacity(1 + 2 * plan.turns.len());
    let mut context_tokens = 0u64; // planned prompt tokens before this turn's user message
    if let Some((_, system)) = &plan.system {
        context_tokens += count_tokens(system) as u64;
        messages.push(Message {
            role: "system",
            content: system.clone(),
        });
    }
    let mut first_slot = Some(first_slot);
    let turns = plan.turns.len();
    for (k, turn) in plan.turns.iter().enumerate() {
        let slot = match first_slot.take() {
            Some(slot) => slot,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(shared.think_time) => {}
                    _ = shared.cancel.cancelled() => {
                        shared.emit(Event::Skipped((turns - k) as u64));
                        return;
                    }
                }
                match shared.try_acquire() {
                    Some(slot) => slot,
                    None => {
                        shared.emit(Event::Overload(shared.start.elapsed()));
                        shared.emit(Event::Skipped((turns - k - 1) as u64));
                        return;
                    }
                }
            }
        };
        messages.push(Message {
            role: "user",
            content: Arc::from(plan.user_text(k)),
        });
        context_tokens += u64::from(turn.user_tokens);
        let max_tokens = shared.max_tokens.unwrap_or(turn.max_tokens);
        let body = shared.client.body(&messages, max_tokens, &user);
        let more = k + 1 < turns;
        if k == 0 {
            shared.emit(Event::Lag(
                Instant::now().saturating_duration_since(deadline),
            ));
        }
        let sent = Instant::now();
        let mut ex = tokio::select! {
            ex = shared.client.send(body, more) => ex,
            _ = shared.cancel.cancelled() => Exchange::failed(Outcome::Cancelled, sent.elapsed()),
        };
        drop(slot);
        let ok = ex.outcome == Outcome::Ok;
        let out_tokens = ex.output_tokens();
        let text = ex.text.take();
        shared.emit(Event::Done {
            ex,
            planned_input: context_tokens,
            sent: sent.saturating_duration_since(shared.start),
        });
        if !ok {
            let rest = (turns - k - 1) as u64;
            if rest > 0 {
                shared.emit(Event::Skipped(rest));
            }
            return;
        }
        if more {
            // Feed the real answer back, as a chat client does; a server that sent no text still
            // gets an assistant turn of the length it reported.
            let answer = match text {
                Some(t) if !t.is_empty() => t,
                _ => filler_text(out_tokens as usize, turn.text_seed ^ 0xA5A5),
            };
            context_tokens += count_tokens(&answer) as u64;
            messages.push(Message {
                role: "assistant",
                content: Arc::from(answer),
            });
        }
    }
}

/// Folds events into the recorder and keeps the progress display current.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut recorder: Recorder,
    mut progress: Progress,
    in_flight: Arc<AtomicUsize>,
) -> (Recorder, Progress) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(Event::Lag(lag)) => recorder.record_lag(lag),
                Some(Event::Overload(at)) => {
                    if warned.insert(Outcome::ClientOverload.label()) {
                        tracing::warn!("in-flight cap reached: arrivals past it fail as client-overload");
                    }
                    recorder.record_overload(at);
                }
                Some(Event::Skipped(n)) => recorder.record_skipped(n),
                Some(Event::Done { ex, planned_input, sent }) => {
                    if ex.outcome != Outcome::Ok && warned.insert(ex.outcome.label()) {
                        tracing::warn!(
                            outcome = %ex.outcome.label(),
                            error = ex.error.as_deref().unwrap_or(""),
                            "first request with this outcome"
                        );
                    }
                    recorder.record(&ex, planned_input, sent);
                }
            },
            _ = ticker.tick() => progress.update(Counts {
                done: recorder.requests(),
                completed: recorder.completed(),
                in_flight: in_flight.load(Ordering::Relaxed),
            }),
        }
    }
    progress.update(Counts {
        done: recorder.requests(),
        completed: recorder.completed(),
        in_flight: 0,
    });
    (recorder, progress)
}
