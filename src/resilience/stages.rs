//! Every stage's state for one agent, and what the routing policy and `/status` read of it.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    breaker::{self, Breaker},
    bulkhead::Bulkhead,
    limit::AgentLimiter,
    retry::RetryBudget,
};
use crate::routing::{Admission, Signals};

/// An agent's breaker and load as `/status` shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentLoad {
    pub breaker: breaker::BreakerState,
    pub in_flight: u32,
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
    /// Health, latency and share for the routing policy.
    pub(super) signals: Mutex<Signals>,
    /// Breaker closings already turned into a slow-start restart.
    pub(super) closes_seen: AtomicU64,
    /// `calls` when the last summary was published for the peers.
    pub(super) summarized: AtomicU64,
}

/// What the routing policy reads of one agent at decision time.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Success share of the health window, local counts first, the peers' folded in.
    pub health: f64,
    /// A peer's breaker is open and this replica's is closed: held back (refused).
    pub held_by_peer: bool,
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    pub admission: Admission,
    pub breaker: breaker::BreakerState,
    /// Slow-start factor (0.1..=1).
    pub ramp: f64,
    /// Share of recent routing decisions where it came first.
    pub share: Option<f64>,
}

impl AgentStages {
    pub(super) fn signals(&self) -> std::sync::MutexGuard<'_, Signals> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn observe(&self, fault: bool, took: Duration) {
        self.signals().observe(Instant::now(), fault, took);
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
