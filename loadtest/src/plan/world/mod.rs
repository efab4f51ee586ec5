//! The discrete-event loop: one gateway, one pool of simulated pods, one autoscaler, in virtual
//! time.
//!
//! Events, earliest first (ties in the order they were scheduled, so a run is deterministic):
//! - an **arrival** (from the plan) or a session's **next turn** (its think time after the previous
//!   answer): the gateway builds the request's facts and asks the picker;
//! - a pod's **step end**: the step's tokens reach the clients (first tokens, finished requests),
//!   and the pod starts its next step if it has work;
//! - a **scrape tick** (`scrape_interval`): every listed pod's engine load is recorded as the
//!   gateway's scraper would, and the in-flight correction restarts from it;
//! - an **autoscaler tick** (`autoscaler_interval`): signals in, [`ScalerState::step`] out, and the
//!   actuator applies the replica count;
//! - a pod's **ready** time (its cold start after it was requested);
//! - a **sample tick** each virtual minute for the time series.
//!
//! The gateway half mirrors `gateway::pool::Pool::pick`: listed pods become [`EndpointView`]s with
//! the load of their last scrape, the gateway's own in-flight count and the picks since that scrape;
//! the prefix index says which pods were sent the prompt's leading blocks; the pure
//! [`picker::pick`] decides; a pick is recorded in the index and counted in flight. A `Hold` puts
//! the request in flow control's [`WaitQueue`] (bounded, with the queue timeout); the head is
//! retried whenever capacity may have freed up (an answer finished, a scrape landed, a pod became
//! ready), as the gateway's dispatcher does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use infergate_autoscaler::policy::ScalerState;
use infergate_config::AutoscalingConfig;
use infergate_gateway::flow::WaitQueue;
use infergate_gateway::picker::{EndpointId, PrefixIndex, PrefixMatch};

mod gateway;
mod scaler;

use super::pod::{Pod, PodState};
use super::report::{Recorder, RunResult, ScaleEvent, SeriesPoint};
use super::request::{ChatTurn, Prompt};
use super::scenario::{Scenario, ScenarioError};
use crate::generate::workload::Plan;
use crate::sim::{Engine, EngineConfig, Profile, RequestId};

/// How the pool is sized.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolMode {
    /// By the autoscaling policy with these settings.
    Autoscaled(Box<AutoscalingConfig>),
    /// A fixed number of pods, ready from the start.
    Fixed(u32),
}

/// One run's inputs besides the scenario.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Name in reports.
    pub name: String,
    /// How the pool is sized.
    pub pool: PoolMode,
    /// The span pod-time is measured over (at least; a run that finishes later counts to its end).
    pub span: Duration,
    /// Pause between an answer and the session's next turn.
    pub think_time: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    StepDone(u32),
    PodReady(u32),
    Turn { session: u32, turn: u32 },
    Scrape,
    Decide,
    Sample,
}

/// A request the gateway knows about.
#[derive(Debug)]
struct Req {
    session: u32,
    turn: u32,
    arrived: Duration,
    /// The facts and tokens, while held (taken when dispatched).
    prompt: Option<Prompt>,
    pod: u32,
    first_token: Option<Duration>,
}

/// Request and session ids are small sequential integers: a multiply-fold hash is plenty, and
/// SipHash showed up in profiles of day-long runs.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Runs one simulation. Pure: the same scenario, plan and spec give the same result.
pub fn simulate(
    scenario: &Scenario,
    plan: &Plan,
    spec: &RunSpec,
) -> Result<RunResult, ScenarioError> {
    let started = Instant::now();
    let (profile, engine_cfg) = scenario.pods.engine()?;
    let mut w = World::new(scenario, plan, spec, profile, engine_cfg);
    w.run();
    Ok(w.finish(started.elapsed()))
}

struct World<'a> {
    sc: &'a Scenario,
    plan: &'a Plan,
    spec: &'a RunSpec,
    profile: Profile,
    engine_cfg: EngineConfig,
    now: Duration,
    heap: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    seq: u64,
    next_arrival: usize,
    pods: Vec<Pod>,
    /// Replicas asked for.
    wanted: u32,
    scaler: Option<ScalerState>,
    prefix: PrefixIndex,
    rr: usize,
    queue: WaitQueue<RequestId>,
    reqs: IdMap<RequestId, Req>,
    next_req: RequestId,
    /// Sessions with turns still to come: their conversation so far.
    sessions: IdMap<u32, Vec<ChatTurn>>,
    /// Turn events scheduled and not yet run.
    pending_turns: u64,
    rec: Recorder,
    series: Vec<SeriesPoint>,
    events: Vec<ScaleEvent>,
    /// Recent first tokens, for the autoscaler's TTFT p90 signal (only with a TTFT target).
    recent_ttft: VecDeque<(Duration, Duration)>,
    peak_pods: u32,
    matches: Vec<PrefixMatch>,
    first_arrival: Option<Duration>,
    last_done: Duration,
}

impl<'a> World<'a> {
    fn new(
        sc: &'a Scenario,
        plan: &'a Plan,
        spec: &'a RunSpec,
        profile: Profile,
        engine_cfg: EngineConfig,
    ) -> World<'a> {
        let (initial, scaler) = match &spec.pool {
            PoolMode::Fixed(n) => (*n, None),
            PoolMode::Autoscaled(cfg) => (
                sc.initial_pods(cfg),
                Some(ScalerState::new((**cfg).clone())),
            ),
        };
        let mut w = World {
            sc,
            plan,
            spec,
            profile,
            engine_cfg,
            now: Duration::ZERO,
            heap: BinaryHeap::new(),
            seq: 0,
            next_arrival: 0,
            pods: Vec::new(),
            wanted: initial,
            scaler,
            prefix: PrefixIndex::new(sc.picker.prefix.capacity),
            rr: 0,
            queue: WaitQueue::new(sc.flow.max_queued),
            reqs: IdMap::default(),
            next_req: 0,
            sessions: IdMap::default(),
            pending_turns: 0,
            rec: Recorder::new(sc.slo.ttft, sc.slo.itl),
            series: Vec::new(),
            events: Vec::new(),
            recent_ttft: VecDeque::new(),
            peak_pods: 0,
            matches: Vec::new(),
            first_arrival: None,
            last_done: Duration::ZERO,
        };
        for _ in 0..initial {
            w.add_pod(PodState::Ready);
        }
        w.schedule(sc.scrape_interval, Ev::Scrape);
        if w.scaler.is_some() {
            w.schedule(sc.autoscaler_interval, Ev::Decide);
        }
        w.schedule(Duration::from_secs(60), Ev::Sample);
        w
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    /// Work remains: arrivals to come, turns to come, requests held or in flight.
    fn active(&self) -> bool {
        self.next_arrival < self.plan.arrivals.len()
            || self.pending_turns > 0
            || !self.reqs.is_empty()
    }

    fn run(&mut self) {
        loop {
            let next_ev = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let next_arr = self.plan.arrivals.get(self.next_arrival).copied();
            let arrival_first = match (next_arr, next_ev) {
                (None, None) => break,
                (Some(a), Some(e)) => a <= e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if arrival_first {
                if let Some(a) = next_arr {
                    self.now = self.now.max(a);
                }
                let session = self.next_arrival as u32;
                self.next_arrival += 1;
                self.start_turn(session, 0);
            } else if let Some(Reverse((t, _, ev))) = self.heap.pop() {
                self.now = self.now.max(t);
                self.handle(ev);
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::StepDone(p) => self.step_done(p as usize),
            Ev::PodReady(p) => {
                let pod = &mut self.pods[p as usize];
                if pod.state == PodState::Starting {
                    pod.state = PodState::Ready;
                    self.drain_queue();
                }
            }
            Ev::Turn { session, turn } => {
                self.pending_turns -= 1;
                self.start_turn(session, turn);
            }
            Ev::Scrape => {
                for pod in &mut self.pods {
                    if matches!(pod.state, PodState::Ready | PodState::Draining) {
                        pod.scraped = Some(pod.load());
                        pod.picks_at_scrape = pod.picks_total;
                    }
                }
                self.drain_queue();
                if self.active() {
                    self.schedule(self.now + self.sc.scrape_interval, Ev::Scrape);
                }
            }
            Ev::Decide => {
                self.decide();
                if self.active() {
                    self.schedule(self.now + self.sc.autoscaler_interval, Ev::Decide);
                }
            }
            Ev::Sample => {
                self.sample();
                if self.active() {
                    self.schedule(self.now + Duration::from_secs(60), Ev::Sample);
                }
            }
        }
    }

    fn add_pod(&mut self, state: PodState) {
        let n = self.pods.len() as u32;
        let seed = self.sc.seed ^ (u64::from(n) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let engine = Engine::new(self.engine_cfg.clone(), self.profile.clone(), seed);
        self.pods
            .push(Pod::new(EndpointId(n + 1), engine, state, self.now));
        if state == PodState::Starting {
            self.schedule(self.now + self.sc.pods.cold_start, Ev::PodReady(n));
        }
        let alive = self.pods.iter().filter(|p| p.is_alive()).count() as u32;
        self.peak_pods = self.peak_pods.max(alive);
    }

    fn start_step(&mut self, p: usize) {
        let pod = &mut self.pods[p];
        match pod.engine.step(self.now) {
            Some(step) => {
                let end = step.ends_at();
                pod.pending = step.updates;
                pod.stepping = true;
                self.schedule(end, Ev::StepDone(p as u32));
            }
            None => pod.stepping = false,
        }
    }

    fn step_done(&mut self, p: usize) {
        let updates = std::mem::take(&mut self.pods[p].pending);
        let mut finished_any = false;
        for u in &updates {
            let Some(req) = self.reqs.get_mut(&u.id) else {
                continue;
            };
            if u.ttft.is_some() && req.first_token.is_none() {
                req.first_token = Some(self.now);
                let ttft = self.now - req.arrived;
                self.rec.first_token(ttft);
                if self.scaler_wants_ttft() {
                    self.recent_ttft.push_back((self.now, ttft));
                }
            }
            if let Some(f) = &u.finished {
                finished_any = true;
                self.last_done = self.now;
                let Some(req) = self.reqs.remove(&u.id) else {
                    continue;
                };
                let first = req.first_token.unwrap_or(self.now);
                self.rec
                    .completed(first - req.arrived, self.now - req.arrived, f.output_tokens);
                self.pods[p].inflight = self.pods[p].inflight.saturating_sub(1);
                self.next_turn(&req, f.output_tokens);
            }
        }
        self.pods[p].stepping = false;
        if self.pods[p].engine.has_work() {
            self.start_step(p);
        }
        if self.pods[p].state == PodState::Draining && self.pods[p].inflight == 0 {
            self.remove_pod(p);
        }
        if finished_any {
            self.drain_queue();
        }
    }

    fn remove_pod(&mut self, p: usize) {
        let pod = &mut self.pods[p];
        pod.state = PodState::Gone;
        // Like the live pool, the prefix index is not purged: ids are never reused, and entries
        // for a gone pod age out of the CLOCK ring (purging is linear in the index's size).
        pod.removed = Some(self.now);
    }

    fn sample(&mut self) {
        let (p90, ok, arrivals) = self.rec.take_minute();
        let count = |s: PodState| self.pods.iter().filter(|p| p.state == s).count() as u32;
        let engine_waiting = self
            .pods
            .iter()
            .filter(|p| p.is_alive())
            .map(|p| p.engine.stats().waiting as u32)
            .sum();
        self.series.push(SeriesPoint {
            t_s: self.now.as_secs_f64() - 60.0,
            wanted: self.wanted,
            ready: count(PodState::Ready),
            starting: count(PodState::Starting),
            draining: count(PodState::Draining),
            held: self.queue.len() as u32,
            engine_waiting,
            arrivals,
            ttft_p90_ms: p90,
            ttft_ok_share: ok,
        });
    }

    fn finish(self, wall: Duration) -> RunResult {
        let end = self.now.max(self.spec.span);
        let pool = match self.spec.pool {
            PoolMode::Autoscaled(_) => "autoscaled".to_string(),
            PoolMode::Fixed(n) => format!("fixed {n}"),
        };
        let mut s = self.rec.finish(&self.spec.name, &pool);
        let pod_s: f64 = self.pods.iter().map(|p| p.seconds(end)).sum();
        let span_s = end.as_secs_f64().max(1e-9);
        s.pod_hours = pod_s / 3600.0;
        s.span_h = span_s / 3600.0;
        s.mean_pods = pod_s / span_s;
        s.peak_pods = self.peak_pods;
        s.scale_events = self.events.len() as u64;
        let (q, h) = self.pods.iter().fold((0u64, 0u64), |(q, h), p| {
            let c = p.engine.stats().counters;
            (q + c.prefix_queries, h + c.prefix_hits)
        });
        s.prefix_hit_rate = if q == 0 { 0.0 } else { h as f64 / q as f64 };
        s.throughput_rps = s.completed as f64 / span_s;
        s.first_arrival_s = self.first_arrival.unwrap_or_default().as_secs_f64();
        s.last_done_s = self.last_done.as_secs_f64();
        s.sim_wall_s = wall.as_secs_f64();
        RunResult {
            summary: s,
            series: self.series,
            events: self.events,
        }
    }
}
