//! The resilience stack every agent call goes through.
//!
//! Outside in: request deadline → outbound rate limit → [cache] → bulkhead → circuit breaker
//! → retry → per-try timeout → HTTP call. Every stage reports *why* it refused in
//! [`Failure`], whose `code` is what a task result shows.

pub mod breaker;
pub mod bulkhead;
pub mod limit;
mod outcome;
pub mod peers;
pub mod retry;
mod stages;

use outcome::attempt_outcome;
pub use outcome::{CallOutcome, Failure};
pub use stages::{AgentLoad, Live};
use stages::{AgentStages, RECENT};

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;

use crate::routing::{Admission, Signals};
use crate::{
    agents::{AgentReply, AgentRequest, AgentTransport, CallError},
    cache::{response_key, Caches, Lookup, Subject, Tier},
    config::BreakerSettings,
    context::{remaining, RequestCtx},
    graph::AgentInfo,
};
use breaker::Breaker;
use bulkhead::Bulkhead;
use limit::{AgentLimiter, Global};

use crate::metrics::Metrics;

use peers::{PeerHealth, Report};
use retry::{fits, RetryBudget, RetryPolicy};

/// Settings of every stage.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub agent_timeout: Duration,
    pub retry: RetryPolicy,
    pub retry_budget_percent: u32,
    /// One budget for all replicas (with a shared store).
    pub retry_budget_cluster: bool,
    pub breaker: BreakerSettings,
    pub agent_rate_limit: u32,
    pub agent_max_inflight: u32,
    /// Routing's slow-start window (agents known at start-up skip it).
    pub slow_start: Duration,
}

impl StackSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        StackSettings {
            agent_timeout: c.agent_timeout,
            retry: RetryPolicy::new(c.http_retries, c.http_backoff),
            retry_budget_percent: c.retry_budget_percent,
            retry_budget_cluster: c.retry_budget_scope == crate::config::BudgetScope::Cluster,
            breaker: c.breaker.clone(),
            agent_rate_limit: c.agent_rate_limit,
            agent_max_inflight: c.agent_max_inflight,
            slow_start: c.routing.slow_start,
        }
    }
}

pub struct Stack {
    transport: Arc<dyn AgentTransport>,
    settings: StackSettings,
    pub caches: Arc<Caches>,
    global: Option<Global>,
    /// One entry per agent name the graph has routed to (graph-controlled, so bounded).
    by_agent: RwLock<HashMap<String, Arc<AgentStages>>>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// What the other replicas say about agents (with Redis).
    peers: Option<Arc<PeerHealth>>,
}

impl Stack {
    pub fn new(
        transport: Arc<dyn AgentTransport>,
        settings: StackSettings,
        caches: Arc<Caches>,
        global: Option<Global>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Stack {
            transport,
            settings,
            caches,
            global,
            by_agent: RwLock::new(HashMap::new()),
            metrics,
            started: Instant::now(),
            peers: None,
        }
    }

    /// Shares agent health with the other replicas through `peers`.
    pub fn share_health(mut self, peers: Arc<PeerHealth>) -> Self {
        self.peers = Some(peers);
        self
    }

    pub fn shared_health(&self) -> Option<&Arc<PeerHealth>> {
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
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        by_agent
            .into_iter()
            .filter(|(_, stages)| {
                let calls = stages.calls.load(Ordering::Relaxed);
                stages.summarized.swap(calls, Ordering::Relaxed) != calls
            })
            .take(peers::MAX_SUMMARIES)
            .map(|(agent, stages)| {
                let s = stages.signals();
                let (ok, total) = s.counts(now);
                let latency_ms = s.latency_ms();
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
    /// (`myriad_agent_breaker_state{agent}`), and opening or closing to the peers.
    fn on_breaker_change(&self, agent: &str) -> breaker::OnChange {
        use breaker::BreakerState;
        let gauge = self
            .metrics
            .breaker_state
            .with_label_values(&[self.metrics.agent_label(agent).as_str()]);
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
        if let Some(g) = self
            .by_agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
        {
            return g.clone();
        }
        let mut by_agent = self.by_agent.write().unwrap_or_else(|e| e.into_inner());
        by_agent
            .entry(agent.to_string())
            .or_insert_with(|| {
                Arc::new(AgentStages {
                    limiter: AgentLimiter::new(
                        agent,
                        self.settings.agent_rate_limit,
                        self.global.clone(),
                    ),
                    bulkhead: Bulkhead::new(self.settings.agent_max_inflight),
                    breaker: Breaker::new(
                        agent,
                        &self.settings.breaker,
                        Some(self.on_breaker_change(agent)),
                    ),
                    budget: self.retry_budget(agent),
                    calls: AtomicU64::new(0),
                    recent: Mutex::new(VecDeque::with_capacity(RECENT)),
                    // Agents first seen in the start-up window are not new: no slow start.
                    signals: Mutex::new(Signals::new(
                        Instant::now(),
                        self.started.elapsed() >= self.settings.slow_start,
                    )),
                    closes_seen: AtomicU64::new(0),
                    summarized: AtomicU64::new(0),
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

    /// Refuses a call before any attempt; `reason` labels `myriad_calls_refused_total`
    /// (agent rate limits are counted by the limiter's own series).
    fn refuse(&self, reason: Option<&str>, failure: Failure) -> CallOutcome {
        if let Some(reason) = reason {
            self.metrics.refused.with_label_values(&[reason]).inc();
        }
        tracing::debug!(code = failure.code().as_str(), "call refused");
        CallOutcome::upstream(Err(failure), 0)
    }

    /// Calls `agent` with `req` through every stage, never past the request's deadline; a
    /// request that bypasses the caches (`Cache-Control: no-cache`) skips the cache stage.
    pub async fn call(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest,
        ctx: &RequestCtx,
    ) -> CallOutcome {
        // The stages decide in an instant: their verdicts are attributes of this span, not
        // spans of their own (a span costs more than the decision it would record).
        let span = crate::later_span!(
            "agent_call",
            [agent = agent.name.as_str()],
            [
                outcome,
                attempts,
                cached,
                stale,
                rate_limit,
                cache.tier,
                cache.result,
                bulkhead,
                breaker.state,
                breaker.admitted,
                otel.status_code
            ]
        );
        let started = std::time::Instant::now();
        let outcome = self
            .call_stages(agent, req, ctx)
            .instrument(span.clone())
            .await;
        let label = match &outcome.result {
            Ok(_) if outcome.stale => "stale",
            Ok(_) if outcome.cached.is_some() => "cached",
            Ok(reply) if reply.succeeded() => "success",
            Ok(_) => "agent_error",
            Err(f) => f.code().as_str(),
        };
        span.record("outcome", label);
        span.record("attempts", outcome.attempts);
        span.record("cached", outcome.cached.map_or("none", Tier::as_str));
        span.record("stale", outcome.stale);
        if outcome.result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        let p = &self.metrics;
        let agent_label = p.agent_label(&agent.name);
        p.agent_calls
            .with_label_values(&[agent_label.as_str(), label])
            .inc();
        p.agent_duration
            .with_label_values(&[agent_label.as_str()])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    async fn call_stages(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest,
        ctx: &RequestCtx,
    ) -> CallOutcome {
        if ctx.remaining().is_zero() {
            return self.refuse(Some("deadline"), Failure::Deadline);
        }
        let stages = self.stages(&agent.name);
        if let Some(limiter) = &stages.limiter {
            let allowed = limiter.allow().await;
            let verdict = if allowed { "allowed" } else { "limited" };
            tracing::Span::current().record("rate_limit", verdict);
            if !allowed {
                self.metrics
                    .rate_limited
                    .with_label_values(&["agent"])
                    .inc();
                return self.refuse(None, Failure::RateLimited);
            }
        }
        if !self.caches.cacheable(&req.intent) {
            return self.upstream(&stages, agent, req, ctx).await;
        }
        if !ctx.use_cache {
            self.caches.responses.count("none", "bypass");
            tracing::Span::current().record("cache.result", "bypass");
            return self.upstream(&stages, agent, req, ctx).await;
        }
        let key = response_key(&agent.name, &req.concept, &req.intent, &req.args);
        let subject = Subject {
            agent: Some(&agent.name),
            concept: &req.concept,
        };
        let attempts = AtomicU32::new(0);
        let ttl = self.caches.settings.ttl;
        let call_span = tracing::Span::current();
        let lookup = self
            .caches
            .responses
            .get_or_fetch(&key, subject, |_| {
                async {
                    let out = self.upstream(&stages, agent, req, ctx).await;
                    attempts.store(out.attempts, Ordering::Relaxed);
                    out.result.map(|reply| {
                        let keep = reply.succeeded().then_some(ttl);
                        (Value::Object(reply.body), keep)
                    })
                }
                .instrument(tracing::Span::current())
            })
            .await;
        let attempts = attempts.load(Ordering::Relaxed);
        let reply = |value: Value| AgentReply {
            body: match value {
                Value::Object(map) => map,
                _ => Default::default(),
            },
        };
        match lookup {
            Lookup::Fresh { value, tier } => {
                call_span.record("cache.tier", tier.map_or("upstream", Tier::as_str));
                call_span.record("cache.result", if tier.is_some() { "hit" } else { "miss" });
                CallOutcome {
                    result: Ok(reply(value)),
                    attempts,
                    cached: tier,
                    stale: false,
                }
            }
            Lookup::Stale { value, tier, error } => {
                call_span.record("cache.tier", tier.as_str());
                call_span.record("cache.result", "stale");
                tracing::info!(agent = %agent.name, code = error.code().as_str(), tier = tier.as_str(), "serving a stale answer");
                CallOutcome {
                    result: Ok(reply(value)),
                    attempts,
                    cached: Some(tier),
                    stale: true,
                }
            }
            Lookup::Failed(failure) => {
                call_span.record("cache.tier", "upstream");
                call_span.record("cache.result", "miss");
                CallOutcome {
                    result: Err(failure),
                    attempts,
                    cached: None,
                    stale: false,
                }
            }
        }
    }

    /// Bulkhead → breaker → retry → per-try timeout → HTTP call.
    async fn upstream(
        &self,
        stages: &AgentStages,
        agent: &AgentInfo,
        req: &AgentRequest,
        ctx: &RequestCtx,
    ) -> CallOutcome {
        let deadline = ctx.deadline;
        let Some(_slot) = stages.bulkhead.try_enter() else {
            tracing::Span::current().record("bulkhead", "full");
            return self.refuse(Some("bulkhead_full"), Failure::BulkheadFull);
        };
        let call_span = tracing::Span::current();
        // A peer's open breaker holds calls back while this replica's own is closed (an
        // open or half-open local breaker decides by itself: local wins).
        if stages.breaker.state() == breaker::BreakerState::Closed
            && self.peers.as_ref().is_some_and(|s| s.held(&agent.name))
        {
            call_span.record("breaker.state", "held_by_peer");
            call_span.record("breaker.admitted", false);
            return self.refuse(Some("held_by_peer"), Failure::BreakerOpen);
        }
        let permit = stages.breaker.try_acquire();
        call_span.record("breaker.state", stages.breaker.state().as_str());
        call_span.record("breaker.admitted", permit.is_some());
        let Some(mut permit) = permit else {
            return self.refuse(Some("breaker_open"), Failure::BreakerOpen);
        };
        permit.cancelled_by(ctx.cancelled.clone());
        stages.budget.deposit();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let budget = remaining(deadline).min(self.settings.agent_timeout);
            let span = crate::later_span!(
                "agent_attempt",
                [agent = agent.name.as_str(), attempt = attempts],
                [outcome, retry_reason, otel.status_code]
            );
            let sent = Instant::now();
            let result = if budget.is_zero() {
                Err(CallError::Timeout)
            } else {
                let _waiting = ctx.agent_time.start();
                self.transport
                    .call(&agent.endpoint, req, budget)
                    .instrument(span.clone())
                    .await
            };
            stages.observe(
                result.as_ref().is_err_and(CallError::is_upstream_fault),
                sent.elapsed(),
            );
            let err = match result {
                Ok(reply) => {
                    span.record(
                        "outcome",
                        if reply.succeeded() {
                            "success"
                        } else {
                            "agent_error"
                        },
                    );
                    permit.success();
                    stages.record(false);
                    if let Some(peers) = &self.peers {
                        peers.local_success(&agent.name);
                    }
                    return CallOutcome::upstream(Ok(reply), attempts);
                }
                Err(e) => e,
            };
            span.record("outcome", attempt_outcome(&err));
            span.record("otel.status_code", "ERROR");
            if attempts <= self.settings.retry.max_retries && err.is_retryable() {
                let wait = self.settings.retry.backoff(attempts);
                if fits(deadline, wait) {
                    let (granted, decided) = stages.budget.withdraw().await;
                    if decided == retry::Decided::Fallback {
                        self.metrics
                            .retries
                            .with_label_values(&["budget_fallback"])
                            .inc();
                    }
                    if granted {
                        self.metrics.retries.with_label_values(&["sent"]).inc();
                        span.record("retry_reason", attempt_outcome(&err));
                        tracing::debug!(agent = %agent.name, attempt = attempts, code = err.code().as_str(), ?wait, "retrying");
                        drop(span);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    self.metrics
                        .retries
                        .with_label_values(&["denied_by_budget"])
                        .inc();
                }
            }
            let fault = err.is_upstream_fault();
            if fault {
                permit.failure();
            } else {
                permit.success();
            }
            stages.record(fault);
            return CallOutcome::upstream(Err(Failure::Call(err)), attempts);
        }
    }

    /// The live signals of `agent` for the routing policy. A breaker that closed since the
    /// last look restarts the agent's slow start.
    pub fn live(&self, agent: &str) -> Live {
        let stages = self.stages(agent);
        let admission = stages.breaker.admission();
        let now = Instant::now();
        let mut signals = stages.signals();
        let closes = stages.breaker.observed().closed.load(Ordering::Relaxed);
        let peers = self
            .peers
            .as_ref()
            .map(|s| s.view(agent))
            .unwrap_or_default();
        if stages.closes_seen.swap(closes, Ordering::Relaxed) != closes || peers.recovered {
            signals.restart_ramp(now);
        }
        let (ok, total) = signals.counts(now);
        let held = peers.held && admission == Admission::Pass;
        Live {
            health: crate::routing::folded_health(ok, total, peers.ok, peers.total),
            held_by_peer: held,
            latency_ms: signals.latency_ms().or(peers.latency_ms),
            in_flight: stages.bulkhead.in_flight(),
            admission: if held { Admission::Refused } else { admission },
            breaker: stages.breaker.state(),
            ramp: signals.ramp(now, self.settings.slow_start),
            share: signals.share(now),
        }
    }

    /// Records one routing decision among `agents`, whose first was chosen.
    pub fn note_decision<'a>(&self, agents: impl IntoIterator<Item = &'a str>, first: &str) {
        let now = Instant::now();
        for agent in agents {
            self.stages(agent).signals().offered(now, agent == first);
        }
    }

    /// Breaker state of `agent` as shown by `/agents` and `/status`.
    pub fn breaker_state(&self, agent: &str) -> breaker::BreakerState {
        self.by_agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .map_or(breaker::BreakerState::Closed, |g| g.breaker.current())
    }

    /// Per-agent stage state for `/status`.
    /// An agent's breaker and load, for `/status`.
    pub fn agent_load(&self, agent: &str) -> AgentLoad {
        let stages = self
            .by_agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .cloned();
        match stages {
            None => AgentLoad::default(),
            Some(g) => AgentLoad {
                breaker: g.breaker.current(),
                in_flight: g.bulkhead.in_flight(),
                recent_failure_rate: g.recent_failure_rate(),
                calls_total: g.calls.load(Ordering::Relaxed),
                breaker_opened_total: g.breaker.observed().opened.load(Ordering::Relaxed),
                held_by_peer: self.peers.as_ref().is_some_and(|s| s.held(agent)),
            },
        }
    }
}
