//! The autoscaler's half of the world: signals as the live reader builds them, the policy, and
//! the actuator (cold starts, drains).

use std::time::Duration;

use infergate_autoscaler::signals::{GatewayLoad, GatewayReading, PodLoads, Replicas, Signals};

use super::World;
use crate::plan::pod::PodState;
use crate::plan::report::ScaleEvent;

impl World<'_> {
    pub(super) fn scaler_wants_ttft(&self) -> bool {
        self.scaler
            .as_ref()
            .is_some_and(|s| s.config.targets.ttft_p90.is_some())
    }

    /// One autoscaler interval: signals, the policy, the actuator.
    pub(super) fn decide(&mut self) {
        let Some(scaler) = self.scaler.as_mut() else {
            return;
        };
        let mut pods = PodLoads::default();
        let (mut ready, mut starting) = (0, 0);
        let mut in_flight = 0u32;
        for pod in &self.pods {
            match pod.state {
                PodState::Ready => {
                    ready += 1;
                    pods.add(Some(pod.load()));
                }
                PodState::Starting => starting += 1,
                _ => {}
            }
            in_flight += pod.inflight;
        }
        let window = Duration::from_secs(30);
        while self
            .recent_ttft
            .front()
            .is_some_and(|(t, _)| self.now.saturating_sub(*t) > window)
        {
            self.recent_ttft.pop_front();
        }
        let ttft_p90 = (!self.recent_ttft.is_empty()).then(|| {
            let mut v: Vec<Duration> = self.recent_ttft.iter().map(|(_, d)| *d).collect();
            v.sort();
            v[((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1]
        });
        let signals = Signals {
            replicas: Replicas {
                wanted: self.wanted,
                ready,
                starting,
            },
            pods,
            gateway: GatewayLoad::Known(GatewayReading {
                held: self.queue.len() as f64,
                in_flight: Some(f64::from(in_flight)),
                arrival_rate: None,
                ttft_p90,
            }),
        };
        let rec = scaler.step(&signals, self.now);
        if rec.replicas != self.wanted {
            self.events.push(ScaleEvent {
                t_s: self.now.as_secs_f64(),
                from: self.wanted,
                to: rec.replicas,
                reason: rec.reason.as_str().to_string(),
                mode: rec.mode.as_str().to_string(),
            });
            self.wanted = rec.replicas;
            self.actuate();
        }
    }

    /// Brings the replicas (starting + ready) to `wanted`: new pods start cold; removals take
    /// starting pods first, then the newest ready ones (as a ReplicaSet does), which drain.
    pub(super) fn actuate(&mut self) {
        let replicas = self.pods.iter().filter(|p| p.is_replica()).count() as u32;
        for _ in replicas..self.wanted {
            self.add_pod(PodState::Starting);
        }
        let mut excess = replicas.saturating_sub(self.wanted);
        for want in [PodState::Starting, PodState::Ready] {
            for p in (0..self.pods.len()).rev() {
                if excess == 0 {
                    return;
                }
                if self.pods[p].state != want {
                    continue;
                }
                excess -= 1;
                if want == PodState::Starting || self.pods[p].inflight == 0 {
                    self.remove_pod(p);
                } else {
                    self.pods[p].state = PodState::Draining;
                }
            }
        }
    }
}
