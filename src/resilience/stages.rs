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
}

impl AgentStages {
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
