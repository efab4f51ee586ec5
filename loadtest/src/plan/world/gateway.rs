//! The gateway's half of the world: arrivals, picks over pool snapshots, flow control's queue,
//! and what happens to a session when its request ends.

use infergate_gateway::flow::Push;
use infergate_gateway::picker::{self, Balance, EndpointView, Pick, PoolSnapshot, Saturation};

use super::{Ev, Req, World};
use crate::plan::pod::PodState;
use crate::plan::request::{self, ChatTurn};
use crate::sim::{EngineRequest, RequestId};

impl World<'_> {
    /// A session's turn `turn` reaches the gateway.
    pub(super) fn start_turn(&mut self, session: u32, turn: u32) {
        let plan = &self.plan.sessions[session as usize];
        let Some(t) = plan.turns.get(turn as usize) else {
            self.sessions.remove(&session);
            return;
        };
        let mut messages = self.sessions.remove(&session).unwrap_or_default();
        if turn == 0
            && let Some((_, system)) = &plan.system
        {
            messages.push(ChatTurn {
                role: "system",
                content: system.clone(),
            });
        }
        messages.push(ChatTurn {
            role: "user",
            content: plan.user_text(turn as usize).into(),
        });
        let prompt = request::build(
            &messages,
            &self.sc.model,
            t.max_tokens,
            &self.sc.picker.prefix,
        );
        if (turn as usize) + 1 < plan.turns.len() {
            self.sessions.insert(session, messages);
        }
        self.rec.minute_arrivals += 1;
        self.first_arrival.get_or_insert(self.now);
        let id = self.next_req;
        self.next_req += 1;
        self.reqs.insert(
            id,
            Req {
                session,
                turn,
                arrived: self.now,
                prompt: Some(prompt),
                pod: 0,
                first_token: None,
            },
        );
        if self.queue.is_empty() && self.try_dispatch(id) {
            return;
        }
        match self.queue.push(1, id) {
            Push::Queued { evicted, .. } => {
                if let Some((_, old)) = evicted {
                    self.fail(old, "queue_full");
                }
            }
            Push::Refused(id) => self.fail(id, "queue_full"),
        }
        self.drain_queue();
    }

    /// Asks the picker for request `id`; on a pick, sends it. Returns false on `Hold`.
    pub(super) fn try_dispatch(&mut self, id: RequestId) -> bool {
        let Some(req) = self.reqs.get(&id) else {
            return true;
        };
        let Some(prompt) = req.prompt.as_ref() else {
            return true;
        };
        // The pool's listed endpoints: every pod not gone (starting ones are listed unready).
        let listed: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].is_alive())
            .collect();
        let mut blocks = vec![0u32; listed.len()];
        if !prompt.facts.prefix.is_empty() {
            self.prefix.lookup(&prompt.facts.prefix, &mut self.matches);
            for m in &self.matches {
                if let Some(v) = listed.iter().position(|&i| self.pods[i].id == m.endpoint) {
                    blocks[v] = m.blocks;
                }
            }
        }
        let views: Vec<EndpointView<'_>> = listed
            .iter()
            .zip(&blocks)
            .map(|(&i, &prefix_blocks)| {
                let p = &self.pods[i];
                let l = p.scraped;
                EndpointView {
                    ready: matches!(p.state, PodState::Ready | PodState::Draining),
                    ejected: false,
                    terminating: p.state == PodState::Draining,
                    waiting: l.map(|l| l.waiting),
                    running: l.map(|l| l.running),
                    kv_usage: l.map(|l| l.kv_usage),
                    inflight: p.inflight,
                    picks_since_scrape: if l.is_some() {
                        u32::try_from(p.picks_total - p.picks_at_scrape).unwrap_or(u32::MAX)
                    } else {
                        0
                    },
                    prefix_blocks,
                    ..EndpointView::default()
                }
            })
            .collect();
        let snapshot = PoolSnapshot {
            endpoints: &views,
            rr_cursor: self.rr,
            policy: self.sc.picker.policy,
            weights: &self.sc.picker.weights,
            saturation: Saturation::from(&self.sc.flow),
            balance: Balance::default(),
        };
        self.rr = self.rr.wrapping_add(1);
        let index = match picker::pick(&snapshot, &prompt.facts) {
            Pick::Endpoint { index, .. } => index,
            Pick::Hold { .. } => return false,
        };
        let p = listed[index];
        drop(views);
        let Some(req) = self.reqs.get_mut(&id) else {
            return true;
        };
        let Some(prompt) = req.prompt.take() else {
            return true;
        };
        if req.arrived < self.now {
            self.rec.held(self.now - req.arrived);
        }
        req.pod = p as u32;
        self.prefix.record(&prompt.facts.prefix, self.pods[p].id);
        let pod = &mut self.pods[p];
        pod.inflight += 1;
        pod.picks_total += 1;
        let added = pod.engine.add_request(
            EngineRequest {
                id,
                prompt_tokens: prompt.tokens,
                max_tokens: prompt.facts.max_tokens.unwrap_or(1),
                ignore_eos: true,
                min_tokens: 0,
            },
            self.now,
        );
        if added.is_err() {
            pod.inflight -= 1;
            self.fail(id, "rejected");
            return true;
        }
        if !pod.stepping {
            self.start_step(p);
        }
        true
    }

    /// Retries the queue's head until the picker holds it again, dropping timed-out waiters.
    pub(super) fn drain_queue(&mut self) {
        loop {
            let Some((_, &head)) = self.queue.head() else {
                return;
            };
            let expired = self
                .reqs
                .get(&head)
                .is_none_or(|r| self.now.saturating_sub(r.arrived) >= self.sc.flow.queue_timeout);
            if expired {
                self.queue.pop_head();
                if self.reqs.contains_key(&head) {
                    self.fail(head, "queue_timeout");
                }
                continue;
            }
            if !self.try_dispatch(head) {
                return;
            }
            self.queue.pop_head();
        }
    }

    pub(super) fn next_turn(&mut self, req: &Req, output_tokens: u32) {
        let plan = &self.plan.sessions[req.session as usize];
        let next = req.turn + 1;
        if (next as usize) < plan.turns.len() {
            let seed = plan.turns[req.turn as usize].text_seed;
            if let Some(msgs) = self.sessions.get_mut(&req.session) {
                msgs.push(ChatTurn {
                    role: "assistant",
                    content: request::answer_text(output_tokens, seed),
                });
            }
            self.pending_turns += 1;
            self.schedule(
                self.now + self.spec.think_time,
                Ev::Turn {
                    session: req.session,
                    turn: next,
                },
            );
        }
    }

    pub(super) fn fail(&mut self, id: RequestId, reason: &'static str) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        self.rec.failed(reason);
        let plan = &self.plan.sessions[req.session as usize];
        let rest = plan.turns.len().saturating_sub(req.turn as usize + 1) as u64;
        self.rec.skipped_turns += rest;
        self.sessions.remove(&req.session);
    }
}
