//! Bulkhead: at most `limit` calls in flight per agent; the next one fails fast.
//!
//! The limit is `AGENT_MAX_INFLIGHT`, or — with `AGENT_CONCURRENCY=adaptive` — it follows
//! the agent's measured latency between `AGENT_MIN_INFLIGHT` and `AGENT_MAX_INFLIGHT`: a
//! gradient limit after Netflix concurrency-limits' `Gradient2` and Envoy's adaptive
//! concurrency filter. Each answered call's latency is compared with the agent's latency
//! unloaded (the least seen, measured again every [`Gradient::RESET`]): while the call took
//! at most [`Gradient::TOLERANCE`] × that, the limit grows by its square root; beyond, it
//! shrinks in proportion; a timeout shrinks it by a tenth. Calls made while the limit was
//! far from used (fewer than half of it in flight) leave it as it is. So an agent pushed past
//! what it sustains keeps its latency near its unloaded latency, and the excess is refused
//! at once (and fails over) instead of queueing at the agent.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::context::Priority;

pub struct Bulkhead {
    in_flight: AtomicU32,
    /// The limit now (the ceiling when fixed).
    limit: AtomicU32,
    ceiling: u32,
    adaptive: Option<Mutex<Gradient>>,
}

/// A call's place in the bulkhead, given back on drop.
pub struct Slot<'a>(&'a Bulkhead);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// A fixed limit of `max` calls in flight.
    pub fn new(max: u32) -> Self {
        Bulkhead {
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(max),
            ceiling: max,
            adaptive: None,
        }
    }

    /// A limit that follows the agent's latency between `floor` and `ceiling`.
    pub fn adaptive(floor: u32, ceiling: u32) -> Self {
        let floor = floor.clamp(1, ceiling.max(1));
        let g = Gradient::new(f64::from(floor), f64::from(ceiling));
        Bulkhead {
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(g.limit as u32),
            ceiling,
            adaptive: Some(Mutex::new(g)),
        }
    }

    /// A slot, or `None` when the agent already has `limit` calls in flight — or, for a
    /// `low` priority call, a quarter of it (the rest is kept for the others).
    pub fn try_enter(&self, priority: Priority) -> Option<Slot<'_>> {
        let limit = self.limit_for(priority);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The calls in flight a call of `priority` may join.
    pub fn limit_for(&self, priority: Priority) -> u32 {
        let limit = self.limit.load(Ordering::Acquire);
        match priority {
            Priority::Low => limit.div_ceil(4),
            Priority::Normal | Priority::High => limit,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// An answered call took `latency` (adaptive limits learn from it).
    pub fn answered(&self, latency: Duration) {
        self.adapt(|g, in_flight| g.sample(latency, in_flight, Instant::now()));
    }

    /// A call timed out: the agent is past what it sustains.
    pub fn timed_out(&self) {
        self.adapt(|g, _| g.drop_seen());
    }

    fn adapt(&self, f: impl FnOnce(&mut Gradient, u32)) {
        if let Some(g) = &self.adaptive {
            let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g, self.in_flight());
            self.limit.store(g.limit.round() as u32, Ordering::Release);
        }
    }
}

/// The gradient limit's state.
#[derive(Debug)]
pub struct Gradient {
    pub limit: f64,
    floor: f64,
    ceiling: f64,
    /// The least latency seen since `since`, in µs: the agent unloaded.
    unloaded_us: f64,
    since: Option<Instant>,
}

impl Gradient {
    /// Latency up to this many times the unloaded latency is not a reason to shrink.
    pub const TOLERANCE: f64 = 1.25;
    /// Weight of each new estimate of the limit.
    pub const SMOOTHING: f64 = 0.2;
    /// The unloaded latency is measured again this often (a slower agent is not measured
    /// against a latency it no longer has).
    pub const RESET: Duration = Duration::from_secs(30);
    /// The limit a fresh agent starts at (within the bounds).
    pub const INITIAL: f64 = 20.0;

    fn new(floor: f64, ceiling: f64) -> Self {
        Gradient {
            limit: Self::INITIAL.clamp(floor, ceiling),
            floor,
            ceiling,
            unloaded_us: f64::MAX,
            since: None,
        }
    }

    fn sample(&mut self, latency: Duration, in_flight: u32, now: Instant) {
        let rtt = (latency.as_secs_f64() * 1e6).max(1.0);
        if self
            .since
            .is_none_or(|s| now.duration_since(s) >= Self::RESET)
        {
            self.since = Some(now);
            self.unloaded_us = rtt;
        } else {
            self.unloaded_us = self.unloaded_us.min(rtt);
        }
        // A call made while the limit was far from used says nothing of what the agent
        // sustains (its latency is its own, not the load's): the limit stays.
        if f64::from(in_flight) + 1.0 < self.limit / 2.0 {
            return;
        }
        let gradient = (Self::TOLERANCE * self.unloaded_us / rtt).clamp(0.5, 1.0);
        // Within tolerance: room to grow by the limit's square root; beyond: one call of
        // room (probing), so an overloaded agent settles at TOLERANCE × its unloaded latency.
        let room = if gradient >= 1.0 {
            self.limit.sqrt()
        } else {
            1.0
        };
        let estimate = self.limit * gradient + room;
        let next = self.limit * (1.0 - Self::SMOOTHING) + estimate * Self::SMOOTHING;
        self.limit = next.clamp(self.floor, self.ceiling);
    }

    fn drop_seen(&mut self) {
        self.limit = (self.limit * 0.9).clamp(self.floor, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_after_the_last_fails_fast_and_frees_on_drop() {
        let b = Bulkhead::new(2);
        let one = b.try_enter(Priority::Normal).unwrap();
        let _two = b.try_enter(Priority::Normal).unwrap();
        assert!(b.try_enter(Priority::Normal).is_none());
        assert_eq!(b.in_flight(), 2);
        drop(one);
        assert!(b.try_enter(Priority::Normal).is_some());
    }

    #[test]
    fn an_adaptive_limit_shrinks_when_latency_grows_and_grows_back_when_it_falls() {
        let b = Bulkhead::adaptive(2, 64);
        assert_eq!(b.limit(), 20);
        let busy: Vec<Slot<'_>> = (0..20)
            .map(|_| b.try_enter(Priority::Normal).unwrap())
            .collect();
        // Unloaded: 10 ms, the limit in use: it grows toward the ceiling.
        for _ in 0..50 {
            b.answered(Duration::from_millis(10));
        }
        let grown = b.limit();
        assert!(grown > 40, "{grown}");
        // Queueing at the agent (every slot taken): 4× its unloaded latency. The limit
        // falls to the floor.
        let more: Vec<Slot<'_>> = std::iter::from_fn(|| b.try_enter(Priority::Normal)).collect();
        assert_eq!(b.in_flight(), grown);
        for _ in 0..100 {
            b.answered(Duration::from_millis(40));
        }
        assert_eq!(b.limit(), 2);
        drop((busy, more));
        // Timeouts shrink it, never under the floor.
        for _ in 0..20 {
            b.timed_out();
        }
        assert_eq!(b.limit(), 2);
        // Latency back to normal and the limit in use: it grows again.
        let _busy: Vec<Slot<'_>> = (0..2)
            .map(|_| b.try_enter(Priority::Normal).unwrap())
            .collect();
        assert!(b.try_enter(Priority::Normal).is_none(), "the limit holds");
        for _ in 0..20 {
            b.answered(Duration::from_millis(10));
        }
        assert!(b.limit() > 2, "{}", b.limit());
        let fixed = Bulkhead::new(8);
        fixed.answered(Duration::from_secs(5));
        fixed.timed_out();
        assert_eq!(fixed.limit(), 8, "a fixed limit does not move");
    }

    #[test]
    fn a_low_priority_call_gets_a_quarter_of_the_limit_and_the_others_the_rest() {
        let b = Bulkhead::new(5);
        let low: Vec<Slot<'_>> = std::iter::from_fn(|| b.try_enter(Priority::Low)).collect();
        assert_eq!(low.len(), 2);
        let normal = b.try_enter(Priority::Normal);
        let more: Vec<Slot<'_>> = std::iter::from_fn(|| b.try_enter(Priority::High)).collect();
        assert!(normal.is_some() && more.len() == 2);
        assert!(
            b.try_enter(Priority::High).is_none(),
            "the limit holds for all"
        );
    }

    #[test]
    fn an_idle_agents_limit_does_not_grow() {
        let b = Bulkhead::adaptive(1, 100);
        for _ in 0..100 {
            b.answered(Duration::from_millis(5));
        }
        assert_eq!(b.limit(), 20, "answers one at a time say nothing of more");
    }
}
