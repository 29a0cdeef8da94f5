//! The path of one task: discover → (for each candidate, best first) resilient call → learn.
//!
//! ```text
//! task ─▶ discover(concept, intent) ─▶ candidate 1 ─▶ resilience::Stack ─▶ agent
//!                                   └▶ candidate 2 (failover) …
//!      ─▶ learning::Learner (off the request path)
//! ```

mod discovery;
pub mod learning;
pub mod neurogenesis;
pub mod parser;
pub mod processors;
mod task;

pub use discovery::{GraphAvailability, Regions, GRAPH_SETTLE, REGIONS_REFRESH};
pub use task::*;

use std::{borrow::Cow, sync::Arc};

use serde_json::Value;
use tokio::time::Instant;

use crate::{
    agents::{AgentReply, AgentRequest, Reply},
    cache::Tier,
    context::RequestCtx,
    failure::FailureCode,
    graph::{Candidate, KnowledgeGraph, Outcome},
    metrics::Metrics,
    resilience::{Failure, Stack},
    routing::{Inputs, Live, Plan, Router},
};

pub struct Pipeline {
    pub graph: Arc<dyn KnowledgeGraph>,
    pub stack: Arc<Stack>,
    pub router: Arc<Router>,
    pub learner: learning::Learner,
    pub metrics: Arc<Metrics>,
    pub task_concurrency: usize,
    /// Present when ENABLE_DYNAMIC_AGENTS is on.
    pub neurogenesis: Option<Arc<neurogenesis::Neurogenesis>>,
    /// When the graph last failed and since when it has answered.
    pub graph_availability: GraphAvailability,
    /// "discovery failed", logged at most once a second with a count.
    pub discovery_warning: crate::telemetry::Throttle,
    /// This replica's region and each agent's, from the graph (`REGION` set).
    pub regions: Option<Regions>,
    /// `myriad_tasks_total` by status and `myriad_routing_decisions_total` by reason,
    /// resolved once.
    pub counts: TaskCounts,
}

/// The per-task counters, each label set resolved once.
pub struct TaskCounts {
    status: crate::metrics::Memo,
    decisions: crate::metrics::Memo,
}

impl TaskCounts {
    pub fn new(metrics: &Metrics) -> Self {
        TaskCounts {
            status: crate::metrics::Memo::new(&metrics.tasks, &[]),
            decisions: crate::metrics::Memo::new(&metrics.routing_decisions, &[]),
        }
    }
}

/// Failed calls of one task the estimate learns at most (attempts are bounded by the retry
/// settings already; this keeps one task's weight in the estimate bounded whatever they are).
const MAX_LEARNED_ATTEMPTS: u32 = 8;

impl Pipeline {
    /// One task, never longer than `deadline`, never an error: failures are in the result.
    pub async fn run_task(&self, task: &TaskSpec, ctx: &RequestCtx) -> TaskResult {
        // Recorded later: status, code, agent, chosen_reason, estimate (the answering
        // agent's success estimate on the concept, this outcome in), attempts, cached,
        // neurogenesis; what the in-process graph answered (cache_tier, candidates;
        // a remote one has a `discover` span); hedged and hedge_won (a second candidate was
        // asked too, and answered first); otel.status_code.
        let span = tracing::info_span!(
            "task",
            task_id = task.key().as_str(),
            concept = task.concept.as_str(),
            intent = task.intent.as_str()
        );
        let started = Instant::now();
        // Boxed once here: built in place, it was copied whole at each level above it
        // (kilobytes a task).
        let served = crate::telemetry::in_span(
            &span,
            tokio::time::timeout_at(ctx.deadline, Box::pin(self.serve(task, ctx, &span))),
        )
        .await;
        let mut result = match served {
            Ok(r) => r,
            Err(_) => TaskResult::failed(
                task,
                FailureCode::Timeout,
                "the request deadline passed before an agent answered",
            ),
        };
        result.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = if result.succeeded() {
            "success"
        } else {
            "error"
        };
        // One dispatch for the fields every task has (a `record` each is a span lookup).
        let cached = result.cached.unwrap_or("none");
        match &result.agent_name {
            Some(agent) => crate::record!(
                span,
                status = status,
                attempts = result.attempts,
                cached = cached,
                agent = agent.as_str(),
            ),
            None => crate::record!(
                span,
                status = status,
                attempts = result.attempts,
                cached = cached,
            ),
        };
        if let Some(code) = result.code {
            crate::record!(span, code = code.as_str(), otel.status_code = "ERROR");
        }
        if let Some(Value::String(n)) = result.extra.get("neurogenesis_status") {
            crate::record!(span, neurogenesis = n.as_str());
        }
        self.counts.status.inc(&[status]);
        self.metrics
            .task_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// `span` is the task's (handed down: looking up the current span costs a look-up).
    async fn serve(&self, task: &TaskSpec, ctx: &RequestCtx, span: &tracing::Span) -> TaskResult {
        let mut grown = None;
        let mut candidates = match self
            .discover(&task.concept, &task.intent, ctx.use_cache, Some(span))
            .await
        {
            Ok((c, _)) => c,
            Err(e) => {
                if let Some(since) = self.discovery_warning.ready() {
                    tracing::warn!(error = %e, suppressed = since, "discovery failed");
                }
                return TaskResult::failed(
                    task,
                    FailureCode::GraphUnavailable,
                    "the knowledge graph is unavailable",
                );
            }
        };
        if candidates.is_empty() {
            if let Some(ng) = &self.neurogenesis {
                // Boxed: the rare path does not size every task's future.
                let outcome = Box::pin(ng.ensure(&task.concept, &task.intent)).await;
                if outcome != neurogenesis::Grown::Failed {
                    candidates = self
                        .discover(&task.concept, &task.intent, false, Some(span))
                        .await
                        .map(|(c, _)| c)
                        .unwrap_or_default();
                }
                grown = Some(outcome.status());
            }
        }
        let mut result = if candidates.is_empty() {
            TaskResult::failed(
                task,
                FailureCode::NoAgent,
                format!(
                    "no agent handles intent '{}' for concept '{}'",
                    task.intent, task.concept
                ),
            )
        } else {
            self.route(task, &candidates, ctx, span).await
        };
        if let Some(status) = grown {
            result
                .extra
                .insert("neurogenesis_status".into(), Value::from(status));
        }
        result
    }

    /// Whether `agent` is in this replica's region (`None` when `REGION` is unset).
    fn local(&self, agent: &str) -> Option<bool> {
        self.regions.as_ref().map(|r| r.is_local(agent))
    }

    /// What the routing policy reads of `agent` now.
    pub fn live(&self, agent: &str) -> Live {
        self.router.signals().live(agent, self.stack.gates(agent))
    }

    /// What the routing policy knows of each candidate of a task on `concept` now.
    pub fn assess(&self, concept: &str, candidates: &[Candidate]) -> Vec<(Inputs, Live)> {
        candidates
            .iter()
            .map(|c| {
                let agent = c.agent.name.as_str();
                self.router.assess(
                    agent,
                    concept,
                    (c.stats.weight, c.stats.estimate),
                    self.local(agent),
                    self.stack.gates(agent),
                )
            })
            .collect()
    }

    /// The order candidates are shown in (`/discover` and GraphQL `candidates` alike), with
    /// what the policy knows of each ([`Router::listing`]).
    pub fn listing(
        &self,
        concept: &str,
        candidates: &[Candidate],
    ) -> (Vec<usize>, Vec<(Inputs, Live)>) {
        let assessed = self.assess(concept, candidates);
        let inputs: Vec<Inputs> = assessed.iter().map(|(i, _)| *i).collect();
        (self.router.listing(&inputs), assessed)
    }

    /// The routing policy's order for `candidates` (and why the first is first).
    fn plan(&self, task: &TaskSpec, candidates: &[Candidate], use_cache: bool) -> Plan {
        let agents: Vec<&str> = candidates.iter().map(|c| c.agent.name.as_str()).collect();
        // Repeats of a cacheable task stick to one agent, so they keep hitting its answer.
        let sticky = (use_cache && self.stack.caches.cacheable(&task.intent))
            .then(|| crate::routing::Draws::of_task(&task.concept, &task.intent, &task.args));
        let assess = || {
            self.assess(&task.concept, candidates)
                .into_iter()
                .map(|(i, _)| i)
                .collect()
        };
        self.router.choose(&agents, assess, sticky)
    }

    /// Tries each candidate in the routing policy's order until one answers.
    async fn route(
        &self,
        task: &TaskSpec,
        candidates: &[Candidate],
        ctx: &RequestCtx,
        span: &tracing::Span,
    ) -> TaskResult {
        let plan = self.plan(task, candidates, ctx.use_cache);
        let mut attempts = 0;
        let mut last: Option<(Failure, &Candidate)> = None;
        let mut rejected: Option<TaskResult> = None;
        // The plan's candidates, then — when every one was refused by its breaker or the
        // peers' hold — the same again for the floor under ejection (`panic`): the first
        // whose trickle allows a call now gets one.
        let mut order: Vec<(usize, bool)> = plan.order.iter().map(|&i| (i, false)).collect();
        let mut all_refused = true;
        let mut position = 0;
        let hedge = plan.order.len() >= 2 && self.stack.hedges(&task.intent);
        while let Some(&(index, panic)) = order.get(position) {
            position += 1;
            let outcomes = if panic {
                let candidate = &candidates[index];
                let request = request_for(task, candidate);
                // Boxed, as the hedge below: a rare path's future does not size every task's.
                match Box::pin(self.stack.call_in_panic(&candidate.agent, &request, ctx)).await {
                    Some(outcome) => vec![(position - 1, index, outcome, Via::Panic)],
                    None => continue,
                }
            } else if hedge && position == 1 {
                let (outcomes, sent) =
                    Box::pin(self.hedged(task, candidates, &plan.order, ctx)).await;
                if sent {
                    position = 2;
                }
                outcomes
            } else {
                let candidate = &candidates[index];
                let request = request_for(task, candidate);
                let outcome = self.stack.call(&candidate.agent, &request, ctx).await;
                vec![(position - 1, index, outcome, Via::Plan)]
            };
            for (at, index, outcome, via) in outcomes {
                let candidate = &candidates[index];
                attempts += outcome.attempts;
                all_refused &= matches!(outcome.result, Err(Failure::BreakerOpen));
                match outcome.result {
                    Ok(reply) => {
                        let success = reply.succeeded();
                        let learned = if outcome.cached.is_none() {
                            // A cached answer says nothing new about the agent.
                            let answer = success.then(|| reply.confidence().unwrap_or(1.0));
                            self.learn(candidate, &task.concept, answer, outcome.attempts)
                        } else {
                            None
                        };
                        let mut r = TaskResult::new(
                            task,
                            if success {
                                TaskStatus::Success
                            } else {
                                TaskStatus::Error
                            },
                        );
                        r.agent_name = Some(candidate.agent.name.clone());
                        r.absorb(reply);
                        r.attempts = attempts;
                        r.cached = outcome.cached.map(Tier::as_str);
                        r.stale = outcome.stale;
                        if success {
                            let reason = match via {
                                Via::Panic => crate::routing::Reason::Panic,
                                Via::Hedge => crate::routing::Reason::Hedge,
                                Via::Plan => {
                                    plan.reason_at(at, |i| self.local(&candidates[i].agent.name))
                                }
                            };
                            // The decision on the task's span, and the span's ids: feedback
                            // names the task by its request's trace (no trace, no feedback:
                            // tracing off); a cached answer's agent was not asked.
                            let traced = if span.is_disabled() {
                                None
                            } else {
                                let estimate = learned.unwrap_or_else(|| {
                                    self.router
                                        .estimates()
                                        .posterior(
                                            &candidate.agent.name,
                                            &task.concept,
                                            candidate.stats.weight,
                                        )
                                        .mean()
                                });
                                crate::record!(
                                    span,
                                    chosen_reason = reason.as_str(),
                                    estimate = estimate,
                                )
                            };
                            if let Some(cx) = traced.filter(|_| r.cached.is_none()) {
                                self.router.served().record(
                                    cx.trace_id,
                                    &task.task_id,
                                    crate::routing::ServedTask {
                                        agent: candidate.agent.name.clone(),
                                        concept: task.concept.clone(),
                                        weight: candidate.stats.weight,
                                    },
                                );
                            }
                            self.counts.decisions.inc(&[reason.as_str()]);
                            return r;
                        }
                        r.code = Some(FailureCode::AgentError);
                        r.error = Some(format!("agent {} reported an error", candidate.agent.name));
                        rejected.get_or_insert(r);
                    }
                    Err(failure) => {
                        if failure.reached_agent() {
                            self.learn(candidate, &task.concept, None, outcome.attempts);
                        }
                        if let Failure::Call(crate::agents::CallError::Status {
                            status,
                            body: Some(body),
                        }) = &failure
                        {
                            if *status < 500 {
                                let mut r = TaskResult::failed(
                                    task,
                                    FailureCode::AgentRejected,
                                    format!(
                                        "agent {} rejected the task (HTTP {status})",
                                        candidate.agent.name
                                    ),
                                );
                                r.agent_name = Some(candidate.agent.name.clone());
                                r.absorb(Reply::Own(AgentReply::from_object(body.clone())));
                                rejected.get_or_insert(r);
                            }
                        }
                        tracing::debug!(agent = %candidate.agent.name, code = failure.code().as_str(), "candidate failed; trying the next one");
                        last = Some((failure, candidate));
                    }
                }
            }
            if panic || ctx.remaining().is_zero() {
                break;
            }
            if position == plan.order.len() && all_refused {
                order.extend(plan.order.iter().map(|&i| (i, true)));
            }
        }
        if let Some(mut r) = rejected {
            r.attempts = attempts;
            return r;
        }
        let (failure, candidate) = last.expect("at least one candidate was tried");
        let mut r =
            TaskResult::failed(task, failure.code(), failure.message(&candidate.agent.name));
        r.agent_name = Some(candidate.agent.name.clone());
        r.attempts = attempts;
        r
    }

    /// One task's outcome with `candidate` after `attempts` HTTP calls — `answer`: it
    /// succeeded, graded by the agent's own confidence (1 when it gave none). The Hebbian
    /// weight learns the task's outcome (the contract's rule); the estimate learns every
    /// call (the retries that came before an answer failed), so an agent that needs a
    /// retry for one call in five, or that is unsure of its answers, is worth less than one
    /// that answers at once and surely. A caller that shared another's call (single flight:
    /// no attempts of its own) teaches the estimate nothing.
    ///
    /// Returns the agent's estimate on the concept with this outcome in, if it took any.
    fn learn(
        &self,
        candidate: &Candidate,
        concept: &str,
        answer: Option<f64>,
        attempts: u32,
    ) -> Option<f64> {
        let agent = candidate.agent.name.as_str();
        let success = answer.is_some();
        let mut estimate = None;
        // Whatever the policy, so `/discover` shows what `learned` would route on.
        if attempts > 0 {
            let weight = candidate.stats.weight;
            let estimates = self.router.estimates();
            for _ in 0..(attempts - u32::from(success)).min(MAX_LEARNED_ATTEMPTS) {
                estimate = Some(estimates.observe(agent, concept, weight, false).mean());
            }
            if let Some(grade) = answer {
                estimate = Some(
                    estimates
                        .observe_graded(agent, concept, weight, grade)
                        .mean(),
                );
            }
        }
        if self.learner.enabled() {
            self.learner.record(Outcome {
                agent: agent.to_string(),
                concept: concept.to_string(),
                success,
                estimate: self.router.estimates().evidence(agent, concept),
            });
        }
        estimate
    }
}

/// The agent protocol body for one candidate: a dynamic agent also gets what neurogenesis
/// learned, as `args.facts`, unless the client sent facts itself.
/// How a candidate came to be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// In the routing policy's order.
    Plan,
    /// As a hedge of the first candidate's call.
    Hedge,
    /// By the floor under ejection.
    Panic,
}

impl Pipeline {
    /// The first candidate's call, hedged: if it has not answered after its agent's hedge
    /// delay (and the hedge is allowed: time and retry budget), the second candidate is
    /// asked too, and the first success wins — the other call is cancelled (its breaker
    /// does not count it). Returns the outcomes in the order they are to be judged (the
    /// winner, or every one that completed when none succeeded) and whether the hedge was
    /// sent.
    async fn hedged(
        &self,
        task: &TaskSpec,
        candidates: &[Candidate],
        order: &[usize],
        ctx: &RequestCtx,
    ) -> (
        Vec<(usize, usize, crate::resilience::CallOutcome, Via)>,
        bool,
    ) {
        let (a, b) = (&candidates[order[0]], &candidates[order[1]]);
        let (req_a, req_b) = (request_for(task, a), request_for(task, b));
        let (ctx_a, ctx_b) = (ctx.child(), ctx.child());
        let first = self.stack.call(&a.agent, &req_a, &ctx_a);
        let second = self.stack.call(&b.agent, &req_b, &ctx_b);
        // Declared after the calls: dropped before them, so a request the client left
        // cancels both.
        let _forward = crate::context::Forward {
            parent: ctx,
            children: [&ctx_a, &ctx_b],
        };
        tokio::pin!(first, second);
        let delay = self.stack.hedge_delay(&a.agent.name);
        let early = tokio::select! {
            out = &mut first => Some(out),
            _ = tokio::time::sleep(delay) => None,
        };
        if let Some(out) = early {
            return (vec![(0, order[0], out, Via::Plan)], false);
        }
        if !self.stack.try_hedge(&a.agent.name, ctx) {
            return (vec![(0, order[0], first.await, Via::Plan)], false);
        }
        let span = tracing::Span::current();
        crate::record!(span, hedged = true);
        let answered =
            |o: &crate::resilience::CallOutcome| o.result.as_ref().is_ok_and(|r| r.succeeded());
        let (winner, loser_ctx) = tokio::select! {
            out = &mut first => ((0, order[0], out, Via::Plan), &ctx_b),
            out = &mut second => ((1, order[1], out, Via::Hedge), &ctx_a),
        };
        if answered(&winner.2) {
            // The other call is dropped with this function: a cancel, not a failure.
            loser_ctx.cancel();
            if winner.3 == Via::Hedge {
                crate::record!(span, hedge_won = true);
                self.stack.count_hedge_won();
            }
            return (vec![winner], true);
        }
        let other = if winner.3 == Via::Hedge {
            (0, order[0], first.await, Via::Plan)
        } else {
            (1, order[1], second.await, Via::Hedge)
        };
        if other.3 == Via::Hedge && answered(&other.2) {
            crate::record!(span, hedge_won = true);
            self.stack.count_hedge_won();
        }
        (vec![winner, other], true)
    }
}

fn request_for<'a>(task: &'a TaskSpec, candidate: &Candidate) -> AgentRequest<'a> {
    let mut args = Cow::Borrowed(&task.args);
    if let Some(facts) = &candidate.agent.facts {
        if let Value::Object(map) = args.to_mut() {
            map.entry("facts")
                .or_insert_with(|| Value::from(facts.clone()));
        }
    }
    AgentRequest {
        task_id: &task.task_id,
        intent: &task.intent,
        concept: &task.concept,
        args,
    }
}

pub use crate::context::remaining;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> TaskSpec {
        TaskSpec {
            task_id: json!(7),
            concept: "lamp".into(),
            intent: "define".into(),
            args: json!({}),
        }
    }

    #[test]
    fn an_agent_is_asked_the_task_as_sent_and_a_dynamic_agent_its_facts_too() {
        let agent = |facts: Option<&str>| Candidate {
            agent: Arc::new(crate::graph::AgentInfo {
                name: "A".into(),
                agent_type: "http".into(),
                endpoint: "http://127.0.0.1:1/q".into(),
                status: "active".into(),
                intents: vec!["define".into()],
                capabilities: vec![],
                facts: facts.map(str::to_string),
            }),
            stats: crate::graph::EdgeStats::new(0.9),
        };
        let mut task = spec();
        task.args = json!({"n": 1});
        let plain = request_for(&task, &agent(None));
        assert!(
            matches!(plain.args, Cow::Borrowed(_)),
            "nothing added: not copied"
        );
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"task_id":7,"intent":"define","concept":"lamp","args":{"n":1}}"#
        );
        let learned = request_for(&task, &agent(Some("lamps give light")));
        assert_eq!(
            serde_json::to_value(&learned).unwrap()["args"],
            json!({"n": 1, "facts": "lamps give light"})
        );
        assert_eq!(
            task.args,
            json!({"n": 1}),
            "the task's own args are unchanged"
        );
        // Facts a client sent already are the client's.
        task.args = json!({"facts": "mine"});
        let theirs = request_for(&task, &agent(Some("lamps give light")));
        assert_eq!(theirs.args["facts"], "mine");
    }

    #[test]
    fn agent_fields_pass_through_but_cannot_overwrite_the_gateways() {
        let mut r = TaskResult::new(&spec(), TaskStatus::Success);
        r.agent_name = Some("A".into());
        let body = r#"{"agent_name": "A", "status": "success", "data": "x", "confidence": 0.9, "attempts": 99}"#;
        r.absorb(Reply::Own(AgentReply::parse(body.as_bytes()).unwrap()));
        r.attempts = 1;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["data"], "x");
        assert_eq!(v["confidence"], 0.9);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["task_id"], 7);
        assert!(v.get("agent_reported_name").is_none());
        // A name of its own that is not the graph's is kept beside it, whichever way the
        // answer came (as text from the agent, as one object in a 4xx body, or kept by the
        // cache, its fields then copied out of the shared answer).
        let body = json!({"agent_name": "B", "status": "success", "data": "x"});
        let parsed = || AgentReply::parse(body.to_string().as_bytes()).unwrap();
        for reply in [
            Reply::Own(parsed()),
            Reply::Own(AgentReply::from_object(body.as_object().unwrap().clone())),
            Reply::Kept(parsed().keep()),
        ] {
            let mut r = TaskResult::new(&spec(), TaskStatus::Success);
            r.agent_name = Some("A".into());
            r.absorb(reply);
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(
                (&v["agent_name"], &v["agent_reported_name"], &v["data"]),
                (&json!("A"), &json!("B"), &json!("x"))
            );
        }
    }

    #[test]
    fn a_kept_answer_passes_its_fields_as_its_own_would() {
        let text = r#"{"agent_name":"B","agent_reported_name":"A","status":"success","data":{"k": [1, 2]},"confidence":0.5,"task_id":9}"#;
        let result = |reply| {
            let mut r = TaskResult::new(&spec(), TaskStatus::Success);
            r.agent_name = Some("A".into());
            r.absorb(reply);
            serde_json::to_string(&r).unwrap()
        };
        let own = result(Reply::Own(AgentReply::parse(text.as_bytes()).unwrap()));
        let kept = AgentReply::parse(text.as_bytes()).unwrap().keep();
        assert_eq!(result(Reply::Kept(kept.clone())), own);
        assert!(own.contains(r#""data":{"k": [1, 2]}"#), "{own}");
        // The kept answer is shared, not taken apart: a second hit reads it whole.
        assert_eq!(result(Reply::Kept(kept)), own);
    }

    #[test]
    fn overall_status_table() {
        let ok = TaskResult::new(&spec(), TaskStatus::Success);
        let bad = TaskResult::new(&spec(), TaskStatus::Error);
        assert_eq!(overall_status([&ok, &ok]), Overall::Success);
        assert_eq!(overall_status([&ok, &bad]), Overall::Partial);
        assert_eq!(overall_status([&bad]), Overall::Failed);
        assert_eq!(overall_status([]), Overall::Failed);
    }

    #[test]
    fn keys_of_integer_and_string_ids() {
        assert_eq!(task_key(&json!(1)), "1");
        assert_eq!(task_key(&json!(0)), "0");
        assert_eq!(task_key(&json!(-42)), "-42");
        assert_eq!(task_key(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(task_key(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(task_key(&json!(2.5)), "2.5");
        assert_eq!(task_key(&json!("a")), "a");
    }
}
