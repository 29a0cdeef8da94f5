//! The path of one call through the stack: deadline → rate limit → cache → bulkhead →
//! breaker (and the peers' hold) → the retry loop ([`retry::attempts`]) → one attempt.

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use tokio::time::Instant;

use super::{
    breaker, outcome::attempt_outcome, retry, stages::AgentStages, CallOutcome, Failure, Stack,
};
use crate::{
    agents::{AgentReply, AgentRequest, CallError, Reply},
    cache::{response_key, Lookup, Subject, Tier},
    context::{remaining, RequestCtx},
    graph::AgentInfo,
    routing::Attempt,
};

impl Stack {
    /// Whether tasks of `intent` may be hedged.
    pub fn hedges(&self, intent: &str) -> bool {
        self.settings.hedge_intents.iter().any(|i| i == intent)
    }

    /// How long a call to `agent` runs before it is hedged: its measured p95 latency within
    /// `HEDGE_DELAY_MIN_MS..=HEDGE_DELAY_MAX_MS` (the maximum until it has enough samples).
    pub fn hedge_delay(&self, agent: &str) -> std::time::Duration {
        let (min, max) = self.settings.hedge_delay;
        let p95 = self
            .stages(agent)
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .p95();
        p95.map_or(max, |d| d.clamp(min, max))
    }

    /// Whether a hedge of a call to `agent` may be sent now: time enough left for an
    /// answer, and a withdrawal from `agent`'s retry budget (a hedge is extra load, as a
    /// retry is). Counted as `myriad_hedges_total{result="sent"|"no_budget"}`.
    pub fn try_hedge(&self, agent: &str, ctx: &RequestCtx) -> bool {
        if ctx.remaining() <= self.settings.min_time_left {
            return false;
        }
        let sent = self.stages(agent).budget.try_withdraw();
        let label = if sent { "sent" } else { "no_budget" };
        self.metrics.hedges.with_label_values(&[label]).inc();
        sent
    }

    /// A hedge's answer came first.
    pub fn count_hedge_won(&self) {
        self.metrics.hedges.with_label_values(&["won"]).inc();
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
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
    ) -> CallOutcome {
        self.call_as(agent, req, ctx, false).await
    }

    /// The floor under ejection: a call to `agent` although its breaker is open or peers
    /// hold it back — one attempt, past the cache, breaker and hold — made when every
    /// candidate of a task was refused, at most once per `ROUTING_PANIC_INTERVAL_MS` per
    /// agent (`None`: not now, or the agent asked for time with a 429). An answer closes
    /// the breaker and tells the peers: the concept recovers as soon as the agent answers.
    pub async fn call_in_panic(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
    ) -> Option<CallOutcome> {
        let stages = self.stages(&agent.name);
        if stages.throttled() || !stages.try_panic(self.settings.panic_interval) {
            return None;
        }
        Some(self.call_as(agent, req, ctx, true).await)
    }

    async fn call_as(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
        panic: bool,
    ) -> CallOutcome {
        // The stages decide in an instant: their verdicts are attributes of this span, not
        // spans of their own (a span costs more than the decision it would record).
        // Recorded later: outcome, attempts, cached, stale; the stages' verdicts
        // (rate_limit, cache.tier, cache.result, bulkhead, breaker.state, breaker.admitted);
        // panic; otel.status_code.
        let span = tracing::info_span!("agent_call", agent = agent.name.as_str());
        if panic {
            crate::record!(span, panic = true);
        }
        let started = std::time::Instant::now();
        let stages = self.stages(&agent.name);
        let outcome = crate::telemetry::in_span(
            &span,
            self.call_stages(&span, &stages, agent, req, ctx, panic),
        )
        .await;
        let label = match &outcome.result {
            Ok(_) if outcome.stale => "stale",
            Ok(_) if outcome.cached.is_some() => "cached",
            Ok(reply) if reply.succeeded() => "success",
            Ok(_) => "agent_error",
            Err(f) => f.code().as_str(),
        };
        crate::record!(
            span,
            outcome = label,
            attempts = outcome.attempts,
            cached = outcome.cached.map_or("none", Tier::as_str),
            stale = outcome.stale,
        );
        if outcome.result.is_err() {
            crate::record!(span, otel.status_code = "ERROR");
        }
        stages.outcomes.inc(&[label]);
        stages.duration.observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// `span`: the call's own (what the stages decide is recorded on it).
    async fn call_stages(
        &self,
        span: &tracing::Span,
        stages: &Arc<AgentStages>,
        agent: &AgentInfo,
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
        panic: bool,
    ) -> CallOutcome {
        if ctx.remaining() <= self.settings.min_time_left {
            return self.refuse(Some("deadline"), Failure::Deadline);
        }
        if stages.throttled() {
            crate::record!(span, breaker.state = "throttled");
            return self.refuse(Some("throttled"), Failure::Throttled);
        }
        if let Some(limiter) = &stages.limiter {
            let allowed = limiter.allow().await;
            let verdict = if allowed { "allowed" } else { "limited" };
            crate::record!(span, rate_limit = verdict);
            if !allowed {
                self.metrics
                    .rate_limited
                    .with_label_values(&["agent"])
                    .inc();
                return self.refuse(None, Failure::RateLimited);
            }
        }
        if panic || !self.caches.cacheable(req.intent) {
            return self.upstream(span, stages, agent, req, ctx, panic).await;
        }
        if !ctx.use_cache {
            self.caches.responses.count("none", "bypass");
            crate::record!(span, cache.result = "bypass");
            return self.upstream(span, stages, agent, req, ctx, false).await;
        }
        let key = response_key(&agent.name, req.concept, req.intent, &req.args);
        let subject = Subject {
            agent: Some(&agent.name),
            concept: req.concept,
        };
        let attempts = AtomicU32::new(0);
        let ttl = self.caches.settings.ttl;
        let call_span = span;
        // Boxed: the caches' lookups (a shared tier's round trip among them) do not size
        // the future of every call, cached or not.
        let lookup = Box::pin(self.caches.responses.get_or_fetch(&key, subject, |_| {
            crate::telemetry::in_span(span, async {
                let out = self.upstream(span, stages, agent, req, ctx, false).await;
                attempts.store(out.attempts, Ordering::Relaxed);
                out.result.map(|reply| {
                    let keep = reply.succeeded().then_some(ttl);
                    (reply.keep(), keep)
                })
            })
        }))
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        let reply = Reply::Kept;
        match lookup {
            Lookup::Fresh { value, tier } => {
                crate::record!(
                    call_span,
                    cache.tier = tier.map_or("upstream", Tier::as_str),
                    cache.result = if tier.is_some() { "hit" } else { "miss" }
                );
                CallOutcome {
                    result: Ok(reply(value)),
                    attempts,
                    cached: tier,
                    stale: false,
                }
            }
            Lookup::Stale { value, tier, error } => {
                crate::record!(
                    call_span,
                    cache.tier = tier.as_str(),
                    cache.result = "stale"
                );
                tracing::info!(agent = %agent.name, code = error.code().as_str(), tier = tier.as_str(), "serving a stale answer");
                CallOutcome {
                    result: Ok(reply(value)),
                    attempts,
                    cached: Some(tier),
                    stale: true,
                }
            }
            Lookup::Failed(failure) => {
                crate::record!(call_span, cache.tier = "upstream", cache.result = "miss");
                CallOutcome {
                    result: Err(failure),
                    attempts,
                    cached: None,
                    stale: false,
                }
            }
        }
    }

    /// Bulkhead → breaker → retry → per-try timeout → HTTP call; in `panic`, past the
    /// peers' hold and an open breaker, one attempt.
    /// `call_span`: the call's own.
    async fn upstream(
        &self,
        call_span: &tracing::Span,
        stages: &AgentStages,
        agent: &AgentInfo,
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
        panic: bool,
    ) -> CallOutcome {
        let deadline = ctx.deadline;
        let Some(_slot) = stages.bulkhead.try_enter(ctx.priority) else {
            // A low priority call the others' share would still take: shed.
            let shed = stages.bulkhead.in_flight() < stages.bulkhead.limit();
            let reason = if shed { "shed" } else { "bulkhead_full" };
            crate::record!(call_span, bulkhead = if shed { "shed" } else { "full" });
            return self.refuse(Some(reason), Failure::BulkheadFull);
        };
        // A peer's open breaker holds calls back while this replica's own is closed (an
        // open or half-open local breaker decides by itself: local wins).
        if !panic
            && stages.breaker.state() == breaker::BreakerState::Closed
            && self.peers.as_ref().is_some_and(|s| s.held(&agent.name))
        {
            crate::record!(
                call_span,
                breaker.state = "held_by_peer",
                breaker.admitted = false
            );
            return self.refuse(Some("held_by_peer"), Failure::BreakerOpen);
        }
        let permit = stages.breaker.try_acquire();
        crate::record!(
            call_span,
            breaker.state = stages.breaker.state().as_str(),
            breaker.admitted = permit.is_some() || panic,
        );
        let mut permit = match permit {
            Some(p) => Some(p),
            None if panic => None,
            None => return self.refuse(Some("breaker_open"), Failure::BreakerOpen),
        };
        if let Some(p) = &mut permit {
            p.cancelled_by(ctx.cancelled.clone());
        }
        stages.budget.deposit();
        let sent = Instant::now();
        let (result, attempts) = if panic {
            (self.attempt(agent, req, ctx, 1).await.0, 1)
        } else {
            retry::attempts(
                &self.settings.retry,
                &stages.budget,
                &self.metrics.retries,
                deadline
                    .checked_sub(self.settings.min_time_left)
                    .unwrap_or(deadline),
                |attempt| self.attempt(agent, req, ctx, attempt),
            )
            .await
        };
        // The adaptive limit learns from first attempts: an answer's latency, a timeout.
        match &result {
            Ok(_) if attempts == 1 => stages.bulkhead.answered(sent.elapsed()),
            Err(CallError::Timeout) => stages.bulkhead.timed_out(),
            _ => {}
        }
        let fault = result.as_ref().is_err_and(CallError::is_upstream_fault);
        match (&result, permit) {
            (Err(CallError::Throttled { retry_after, .. }), permit) => {
                // Neither a fault nor an answer: the agent asked for time, and gets it.
                stages.throttle(*retry_after);
                if let Some(p) = permit {
                    p.neutral();
                }
            }
            (_, Some(p)) if fault => p.failure(),
            (_, Some(p)) => p.success(),
            // A panic call past an open breaker: an answer closes it (a probe that came
            // early); a fault leaves it open.
            (_, None) if !fault => stages.breaker.reset(),
            (_, None) => {}
        }
        stages.record(fault);
        if result.is_ok() {
            if let Some(peers) = &self.peers {
                peers.local_success(&agent.name);
            }
        }
        CallOutcome::upstream(result.map_err(Failure::Call), attempts)
    }

    /// Attempt number `attempt` of a call: per-try timeout → HTTP call, its outcome told to
    /// routing's live signals. Returns the attempt's span for the retry loop's verdict.
    async fn attempt(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest<'_>,
        ctx: &RequestCtx,
        attempt: u32,
    ) -> (Result<AgentReply, CallError>, tracing::Span) {
        let budget = remaining(ctx.deadline).min(self.settings.agent_timeout);
        // Recorded later: outcome, retry_reason, otel.status_code.
        let span = tracing::info_span!("agent_attempt", agent = agent.name.as_str(), attempt);
        let sent = Instant::now();
        let result = if budget.is_zero() {
            Err(CallError::Timeout)
        } else {
            let _waiting = ctx.agent_time.start();
            let _outbound = crate::cores::Outbound::start();
            crate::telemetry::in_span(&span, self.transport.call(&agent.endpoint, req, budget))
                .await
        };
        let seen = if result.as_ref().is_err_and(CallError::is_upstream_fault) {
            Attempt::Fault
        } else {
            Attempt::Answered
        };
        // A 429 is fast and says nothing of the agent's health or speed: a latency-aware
        // policy would otherwise prefer the agent that refuses work.
        if !matches!(result, Err(CallError::Throttled { .. })) {
            self.signals.observe(&agent.name, seen, sent.elapsed());
        }
        if result.is_ok() && !self.settings.hedge_intents.is_empty() {
            self.stages(&agent.name)
                .latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(sent.elapsed());
        }
        match &result {
            Ok(reply) => {
                crate::record!(
                    span,
                    outcome = if reply.succeeded() {
                        "success"
                    } else {
                        "agent_error"
                    }
                );
            }
            Err(err) => {
                crate::record!(
                    span,
                    outcome = attempt_outcome(err),
                    otel.status_code = "ERROR"
                );
            }
        }
        (result, span)
    }
}
