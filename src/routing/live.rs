//! The live signals routing keeps for every agent it has offered tasks to, fed by the
//! outcomes the resilience stack reports ([`LiveSignals::observe`]), and what the policy
//! reads of one agent at decision time ([`Live`]): its own signals, the stack's gates
//! ([`Gates`]) and what the peers said ([`PeerView`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{folded_health, Admission, Signals};
use crate::resilience::breaker::BreakerState;

/// What the peers said about one agent (with shared health on).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerView {
    /// A peer's breaker is open: hold calls back.
    pub held: bool,
    /// A peer saw the agent recover since the last look: restart the slow start.
    pub recovered: bool,
    /// Decayed (successes, attempts) the peers reported, summed.
    pub ok: f64,
    pub total: f64,
    /// The peers' latency averages, weighted by their attempts (for an agent this replica
    /// has no latency of its own for).
    pub latency_ms: Option<f64>,
}

/// What the resilience stack says of one agent at decision time.
#[derive(Debug, Clone, Copy)]
pub struct Gates {
    pub admission: Admission,
    pub breaker: BreakerState,
    pub in_flight: u32,
    /// Times its breaker has closed (each one restarts the slow start once).
    pub closes: u64,
    pub peers: PeerView,
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
    pub breaker: BreakerState,
    /// Slow-start factor (0.1..=1).
    pub ramp: f64,
    /// Share of recent routing decisions where it came first.
    pub share: Option<f64>,
    /// When slow start last began (its registration after start-up, or its last recovery):
    /// the learned estimate forgets what the agent did before.
    pub since: Option<Instant>,
    /// Seconds since the latency average last took a sample (0 when it has none).
    pub latency_age_s: f64,
}

/// One upstream attempt as routing counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The agent answered (success or an error of its own): its latency counts.
    Answered,
    /// The agent failed it (5xx, timeout, broken connection…).
    Fault,
}

struct Entry {
    signals: Mutex<Signals>,
    /// Breaker closings already turned into a slow-start restart.
    closes_seen: AtomicU64,
}

impl Entry {
    fn signals(&self) -> MutexGuard<'_, Signals> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every agent's live signals. One entry per agent name the graph has offered (graph
/// controlled, so bounded).
pub struct LiveSignals {
    by_agent: crate::NameMap<String, Arc<Entry>>,
    started: Instant,
    slow_start: Duration,
}

impl LiveSignals {
    /// Agents first seen within `slow_start` of now are not new: they skip the slow start.
    pub fn new(slow_start: Duration) -> Self {
        LiveSignals {
            by_agent: Default::default(),
            started: Instant::now(),
            slow_start,
        }
    }

    /// `f` of `agent`'s entry, read in place (no handle taken: the entries are shared by
    /// every core, and a handle is two atomic writes on a line they all touch).
    fn with_entry<R>(&self, agent: &str, f: impl FnOnce(&Entry) -> R) -> R {
        if let Some(e) = self.by_agent.get(agent) {
            return f(&e);
        }
        f(&self.entry(agent))
    }

    fn entry(&self, agent: &str) -> Arc<Entry> {
        if let Some(e) = self.by_agent.get(agent) {
            return e.clone();
        }
        self.by_agent
            .entry(agent.to_string())
            .or_insert_with(|| {
                Arc::new(Entry {
                    signals: Mutex::new(Signals::new(
                        Instant::now(),
                        self.started.elapsed() >= self.slow_start,
                    )),
                    closes_seen: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// One upstream attempt of `agent` that took `latency`.
    pub fn observe(&self, agent: &str, attempt: Attempt, latency: Duration) {
        self.with_entry(agent, |e| {
            e.signals()
                .observe(Instant::now(), attempt == Attempt::Fault, latency)
        });
    }

    /// One routing decision among `agents`, whose first was chosen.
    pub fn offered<'a>(&self, agents: impl IntoIterator<Item = &'a str>, first: &str) {
        let now = Instant::now();
        for agent in agents {
            self.with_entry(agent, |e| e.signals().offered(now, agent == first));
        }
    }

    /// This replica's decayed (successes, attempts) and latency average of `agent`, for
    /// the summaries it sends the peers.
    pub fn summary(&self, agent: &str, now: Instant) -> (f64, f64, Option<f64>) {
        let entry = self.entry(agent);
        let s = entry.signals();
        let (ok, total) = s.counts(now);
        (ok, total, s.latency_ms())
    }

    /// What the policy reads of `agent` now. A breaker that closed since the last look, or
    /// a recovery a peer saw, restarts its slow start; a peer's open breaker holds back an
    /// agent whose own breaker lets calls pass.
    pub fn live(&self, agent: &str, gates: Gates) -> Live {
        self.with_entry(agent, |entry| self.live_of(entry, gates))
    }

    fn live_of(&self, entry: &Entry, gates: Gates) -> Live {
        let now = Instant::now();
        let mut signals = entry.signals();
        let peers = gates.peers;
        if entry.closes_seen.swap(gates.closes, Ordering::Relaxed) != gates.closes
            || peers.recovered
        {
            signals.restart_ramp(now);
        }
        let (ok, total) = signals.counts(now);
        let held = peers.held && gates.admission == Admission::Pass;
        Live {
            health: folded_health(ok, total, peers.ok, peers.total),
            held_by_peer: held,
            latency_ms: signals.latency_ms().or(peers.latency_ms),
            in_flight: gates.in_flight,
            admission: if held {
                Admission::Refused
            } else {
                gates.admission
            },
            breaker: gates.breaker,
            ramp: signals.ramp(now, self.slow_start),
            share: signals.share(now),
            since: signals.ready_since(),
            latency_age_s: signals.latency_age(now).as_secs_f64(),
        }
    }
}
