//! Every stage's state for one agent, and what `/status` reads of it.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use super::{
    breaker::{self, Breaker},
    bulkhead::Bulkhead,
    limit::AgentLimiter,
    retry::RetryBudget,
};

/// An agent's breaker and load as `/status` shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentLoad {
    pub breaker: breaker::BreakerState,
    pub in_flight: u32,
    /// Calls in flight allowed now (`AGENT_MAX_INFLIGHT`, or the adaptive limit).
    pub concurrency_limit: u32,
    /// Share of upstream faults among the last 100 calls.
    pub recent_failure_rate: f64,
    pub calls_total: u64,
    pub breaker_opened_total: u64,
    /// Another replica's breaker for it is open: calls are held back.
    pub held_by_peer: bool,
}

/// Outcomes kept for an agent's recent failure rate.
pub(super) const RECENT: usize = 100;

/// Every stage's state for one agent.
pub struct AgentStages {
    pub(super) limiter: Option<AgentLimiter>,
    pub(super) bulkhead: Bulkhead,
    pub(super) breaker: Breaker,
    pub(super) budget: RetryBudget,
    pub(super) calls: AtomicU64,
    pub(super) recent: Mutex<VecDeque<bool>>,
    /// `calls` when the last summary was published for the peers.
    pub(super) summarized: AtomicU64,
    /// `myriad_agent_call_duration_seconds{agent}`, resolved once.
    pub(super) duration: prometheus::Histogram,
    /// `myriad_agent_calls_total{agent}`, by outcome.
    pub(super) outcomes: crate::metrics::Memo,
    /// Until when the agent asked (429 + `Retry-After`) to be sent nothing.
    pub(super) throttled_until: Mutex<Option<tokio::time::Instant>>,
    /// When the last `panic` call went to the agent (ms since [`EPOCH`], 0: never).
    pub(super) panicked_at: AtomicU64,
    /// Its latest answered calls' latencies, for the hedge delay.
    pub(super) latencies: Mutex<Latencies>,
}

/// The latencies of an agent's last [`Latencies::WINDOW`] answered calls, and their p95
/// (computed again every [`Latencies::EVERY`] samples: a sort of 128 numbers).
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Vec<u32>,
    next: usize,
    since: usize,
    p95_us: Option<u32>,
}

impl Latencies {
    pub const WINDOW: usize = 128;
    pub const EVERY: usize = 16;
    /// Fewer samples than this: no p95 yet.
    pub const MIN_SAMPLES: usize = 20;

    pub fn record(&mut self, latency: std::time::Duration) {
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        if self.samples.len() < Self::WINDOW {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
        }
        self.next = (self.next + 1) % Self::WINDOW;
        self.since += 1;
        if self.samples.len() >= Self::MIN_SAMPLES
            && (self.since >= Self::EVERY || self.p95_us.is_none())
        {
            self.since = 0;
            let mut sorted = self.samples.clone();
            sorted.sort_unstable();
            self.p95_us = Some(sorted[(sorted.len() * 95).div_ceil(100) - 1]);
        }
    }

    pub fn p95(&self) -> Option<std::time::Duration> {
        self.p95_us
            .map(|us| std::time::Duration::from_micros(u64::from(us)))
    }
}

/// The origin of [`AgentStages::panicked_at`].
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// What a 429 without a usable `Retry-After` holds an agent back for.
pub const THROTTLE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest an agent's `Retry-After` holds it back.
pub const THROTTLE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl AgentStages {
    /// The agent answered 429 asking for `retry_after`: nothing is sent to it until then
    /// (at most [`THROTTLE_MAX`]; [`THROTTLE_DEFAULT`] when it did not say).
    pub(super) fn throttle(&self, retry_after: Option<std::time::Duration>) {
        let wait = retry_after.unwrap_or(THROTTLE_DEFAULT).min(THROTTLE_MAX);
        let until = tokio::time::Instant::now() + wait;
        let mut t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *t = Some(t.map_or(until, |old| old.max(until)));
    }

    /// Takes the agent's `panic` call if none was taken within `interval` (zero: never).
    pub(super) fn try_panic(&self, interval: std::time::Duration) -> bool {
        if interval.is_zero() {
            return false;
        }
        // +1: 0 means never.
        let now = EPOCH.elapsed().as_millis() as u64 + 1;
        let last = self.panicked_at.load(Ordering::Acquire);
        (last == 0 || now.saturating_sub(last) >= interval.as_millis() as u64)
            && self
                .panicked_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Whether the agent's last 429 still holds it back.
    pub(super) fn throttled(&self) -> bool {
        let mut t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *t {
            Some(until) if tokio::time::Instant::now() < until => true,
            Some(_) => {
                *t = None;
                false
            }
            None => false,
        }
    }

    pub(super) fn record(&self, fault: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(fault);
    }

    /// Share of upstream faults among the last 100 calls.
    pub fn recent_failure_rate(&self) -> f64 {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_empty() {
            0.0
        } else {
            r.iter().filter(|f| **f).count() as f64 / r.len() as f64
        }
    }
}
