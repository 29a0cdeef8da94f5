//! The resilience stack every agent call goes through.
//!
//! Outside in: request deadline → outbound rate limit → [cache] → bulkhead → circuit breaker
//! → retry → per-try timeout → HTTP call. Every stage reports *why* it refused in
//! [`Failure`], whose `code` is what a task result shows.
//!
//! Files: this one the [`Stack`] — its settings and its registry of per-agent stages, and
//! what routing and `/status` read of them; `call.rs` the path of one call; one file per
//! stage (`limit`, `bulkhead`, `breaker`, `retry`), `peers.rs` what the other replicas say,
//! `outcome.rs` what a call ends with.

pub mod breaker;
pub mod bulkhead;
mod call;
pub mod limit;
mod outcome;
pub mod peers;
pub mod retry;
mod stages;

pub use outcome::{CallOutcome, Failure};
pub use stages::AgentLoad;
use stages::{AgentStages, RECENT};

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    agents::AgentTransport,
    cache::Caches,
    config::BreakerSettings,
    metrics::Metrics,
    routing::{Gates, LiveSignals},
};
use breaker::Breaker;
use bulkhead::Bulkhead;
use limit::{AgentLimiter, Global};
use peers::{Peers, Report};
use retry::{RetryBudget, RetryPolicy};

/// Settings of every stage.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub agent_timeout: Duration,
    /// No call is started with less than this left before the request's deadline.
    pub min_time_left: Duration,
    /// One `panic` call per agent at most this often (zero: never).
    pub panic_interval: Duration,
    /// Intents whose tasks may be hedged (sent to a second candidate too).
    pub hedge_intents: Vec<String>,
    /// Bounds of the hedge delay (the agent's measured p95 latency between them).
    pub hedge_delay: (Duration, Duration),
    pub retry: RetryPolicy,
    pub retry_budget_percent: u32,
    /// One budget for all replicas (with a shared store).
    pub retry_budget_cluster: bool,
    pub breaker: BreakerSettings,
    pub agent_rate_limit: u32,
    pub agent_max_inflight: u32,
    /// `Some(floor)`: the in-flight limit adapts between it and `agent_max_inflight`.
    pub adaptive_floor: Option<u32>,
}

impl StackSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        StackSettings {
            agent_timeout: c.agent_timeout,
            min_time_left: c.agent_min_time_left,
            panic_interval: c.panic_interval,
            hedge_intents: c.hedge_intents.clone(),
            hedge_delay: (c.hedge_delay_min, c.hedge_delay_max.max(c.hedge_delay_min)),
            retry: RetryPolicy::new(c.http_retries, c.http_backoff),
            retry_budget_percent: c.retry_budget_percent,
            retry_budget_cluster: c.retry_budget_scope == crate::config::BudgetScope::Cluster,
            breaker: c.breaker.clone(),
            agent_rate_limit: c.agent_rate_limit,
            agent_max_inflight: c.agent_max_inflight,
            adaptive_floor: (c.concurrency == crate::config::Concurrency::Adaptive)
                .then_some(c.agent_min_inflight),
        }
    }
}

pub struct Stack {
    transport: Arc<dyn AgentTransport>,
    settings: StackSettings,
    pub caches: Arc<Caches>,
    global: Option<Global>,
    /// One entry per agent name the graph has routed to (graph-controlled, so bounded).
    by_agent: crate::NameMap<String, Arc<AgentStages>>,
    metrics: Arc<Metrics>,
    /// Routing's live signals, told of every attempt's outcome.
    signals: Arc<LiveSignals>,
    /// What the other replicas say about agents (with Redis).
    peers: Option<Arc<Peers>>,
}

impl Stack {
    pub fn new(
        transport: Arc<dyn AgentTransport>,
        settings: StackSettings,
        caches: Arc<Caches>,
        global: Option<Global>,
        metrics: Arc<Metrics>,
        signals: Arc<LiveSignals>,
    ) -> Self {
        Stack {
            transport,
            settings,
            caches,
            global,
            by_agent: Default::default(),
            metrics,
            signals,
            peers: None,
        }
    }

    /// Shares agent health with the other replicas through `peers`.
    pub fn share_health(mut self, peers: Arc<Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    pub fn shared_health(&self) -> Option<&Arc<Peers>> {
        self.peers.as_ref()
    }

    /// Publishes, every [`peers::SUMMARY_EVERY`], a summary of each agent called since the
    /// last one (the loop is the peers module's; it stops when the stack is gone).
    pub fn spawn_summaries(self: &Arc<Self>) {
        let Some(peers) = &self.peers else { return };
        let stack = Arc::downgrade(self);
        peers.spawn_summaries(move |now| Some(stack.upgrade()?.called_since_summary(now)));
    }

    /// Each agent called since the last summary, with its decayed counts and latency (at
    /// most [`peers::MAX_SUMMARIES`]).
    fn called_since_summary(&self, now: Instant) -> Vec<(String, Report)> {
        let by_agent: Vec<(String, Arc<AgentStages>)> = self
            .by_agent
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        by_agent
            .into_iter()
            .filter(|(_, stages)| {
                let calls = stages.calls.load(Ordering::Relaxed);
                stages.summarized.swap(calls, Ordering::Relaxed) != calls
            })
            .take(peers::MAX_SUMMARIES)
            .map(|(agent, _)| {
                let (ok, total, latency_ms) = self.signals.summary(&agent, now);
                (
                    agent,
                    Report::Summary {
                        ok,
                        total,
                        latency_ms,
                    },
                )
            })
            .collect()
    }

    pub fn transport(&self) -> &Arc<dyn AgentTransport> {
        &self.transport
    }

    /// What an agent's breaker reports on each transition: its state to the metrics
    /// (`myriad_agent_breaker_state{agent}`, under the agent's metric `label`), and opening or
    /// closing to the peers.
    fn on_breaker_change(&self, label: &str) -> breaker::OnChange {
        use breaker::BreakerState;
        let gauge = self.metrics.breaker_state.with_label_values(&[label]);
        gauge.set(0);
        let peers = self.peers.clone();
        Arc::new(move |agent, state| {
            gauge.set(match state {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            });
            let report = match state {
                BreakerState::Open => Report::Opened,
                BreakerState::Closed => Report::Closed,
                BreakerState::HalfOpen => return,
            };
            if let Some(peers) = &peers {
                peers.publish(agent, report);
            }
        })
    }

    fn stages(&self, agent: &str) -> Arc<AgentStages> {
        if let Some(g) = self.by_agent.get(agent) {
            return g.clone();
        }
        self.by_agent
            .entry(agent.to_string())
            .or_insert_with(|| {
                let label = self.metrics.agent_label(agent);
                Arc::new(AgentStages {
                    limiter: AgentLimiter::new(
                        agent,
                        self.settings.agent_rate_limit,
                        self.global.clone(),
                    ),
                    bulkhead: match self.settings.adaptive_floor {
                        Some(floor) => Bulkhead::adaptive(floor, self.settings.agent_max_inflight),
                        None => Bulkhead::new(self.settings.agent_max_inflight),
                    },
                    breaker: Breaker::new(
                        agent,
                        &self.settings.breaker,
                        Some(self.on_breaker_change(&label)),
                    ),
                    budget: self.retry_budget(agent),
                    calls: AtomicU64::new(0),
                    recent: Mutex::new(VecDeque::with_capacity(RECENT)),
                    summarized: AtomicU64::new(0),
                    duration: self.metrics.agent_duration.with_label_values(&[&label]),
                    outcomes: crate::metrics::Memo::new(&self.metrics.agent_calls, &[&label]),
                    throttled_until: Mutex::new(None),
                    panicked_at: AtomicU64::new(0),
                    latencies: Mutex::new(stages::Latencies::default()),
                })
            })
            .clone()
    }

    /// An agent's retry budget: cluster-wide when a shared store is in use and the scope
    /// says so.
    fn retry_budget(&self, agent: &str) -> RetryBudget {
        let budget = RetryBudget::new(self.settings.retry_budget_percent);
        match &self.global {
            Some(g) if self.settings.retry_budget_cluster => budget.shared(
                g.store.clone(),
                format!("myriad:v1:rb:agent:{:016x}", limit::hashed(agent)),
            ),
            _ => budget,
        }
    }

    /// What routing reads of `agent`'s stages at decision time: the breaker's admission
    /// (an open breaker whose interval ended turns half-open here), the calls in flight,
    /// and what the peers said.
    pub fn gates(&self, agent: &str) -> Gates {
        match self.by_agent.get(agent) {
            // Read in place: no handle taken on an entry every core touches.
            Some(stages) => self.gates_of(agent, &stages),
            None => self.gates_of(agent, &self.stages(agent)),
        }
    }

    fn gates_of(&self, agent: &str, stages: &AgentStages) -> Gates {
        Gates {
            // An agent that asked for time is offered nothing until it has passed.
            admission: if stages.throttled() {
                crate::routing::Admission::Refused
            } else {
                stages.breaker.admission()
            },
            breaker: stages.breaker.state(),
            in_flight: stages.bulkhead.in_flight(),
            closes: stages.breaker.observed().closed.load(Ordering::Relaxed),
            peers: self
                .peers
                .as_ref()
                .map(|s| s.view(agent))
                .unwrap_or_default(),
        }
    }

    /// Breaker state of `agent` as shown by `/agents` and `/status`.
    pub fn breaker_state(&self, agent: &str) -> breaker::BreakerState {
        let stages = self.by_agent.get(agent).map(|g| g.clone());
        stages.map_or(breaker::BreakerState::Closed, |g| g.breaker.advance())
    }

    /// An agent's breaker and load, for `/status`.
    pub fn agent_load(&self, agent: &str) -> AgentLoad {
        let stages = self.by_agent.get(agent).map(|g| g.clone());
        match stages {
            None => AgentLoad::default(),
            Some(g) => AgentLoad {
                breaker: g.breaker.advance(),
                in_flight: g.bulkhead.in_flight(),
                concurrency_limit: g.bulkhead.limit(),
                recent_failure_rate: g.recent_failure_rate(),
                calls_total: g.calls.load(Ordering::Relaxed),
                breaker_opened_total: g.breaker.observed().opened.load(Ordering::Relaxed),
                held_by_peer: self.peers.as_ref().is_some_and(|s| s.held(agent)),
            },
        }
    }
}
