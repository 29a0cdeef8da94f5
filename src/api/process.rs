//! `/process` (and its alias `/process_query`) and `/discover`.

use poem::Request;
use poem_openapi::{param::Header, payload::Json, ApiResponse, OpenApi};

use super::{
    agents::agent_view,
    auth::ClientAuth,
    batch::Progress,
    dto::*,
    errors::{ApiError, ErrorCode},
    stream::{self, ProcessReply},
    validate::{validate_concept, validate_intent},
    State, Tag,
};
use crate::{
    agents::endpoint::redact_endpoint,
    context::{Priority, RequestCtx},
    graph::{AgentRecord, Candidate},
    routing::Admission,
};

pub struct ProcessApi;

#[derive(ApiResponse)]
pub(super) enum DiscoverResponse {
    /// The best agent and every ranked candidate.
    #[oai(status = 200)]
    Found(Json<Discovered>),
    /// No agent handles this concept and intent.
    #[oai(status = 404)]
    NotFound(Json<NoAgentFound>),
}

/// False when the client asked to bypass caches (`Cache-Control: no-cache` or `no-store`).
pub(super) fn use_cache<R: super::Asked + ?Sized>(req: &R) -> bool {
    !req.values("cache-control").any(|v| {
        v.split(',').any(|d| {
            matches!(
                d.trim().to_ascii_lowercase().as_str(),
                "no-cache" | "no-store"
            )
        })
    })
}

#[derive(ApiResponse)]
pub(super) enum FeedbackResponse {
    /// Counted: one more outcome of the agent that answered, on the task's concept.
    #[oai(status = 200)]
    Accepted(Json<FeedbackAccepted>),
    /// No task of that trace and id was answered by an agent within the feedback window
    /// (15 minutes, and among the replica's last 10,000 answers), or it already had its
    /// feedback (`task_not_found`).
    #[oai(status = 404)]
    NotFound(Json<super::errors::ErrorBody>),
}

/// A trace id as `x-trace-id` gives it: 32 lowercase hexadecimal digits, not all zero.
fn valid_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}

#[OpenApi]
impl ProcessApi {
    /// Says whether an agent's answer to a task was right. The task is named by the
    /// `x-trace-id` of its response and its `task_id`; each answered task takes one
    /// feedback within 15 minutes (among the replica's last 10,000 answers), which counts as one more outcome of that agent on that
    /// concept in the learned routing estimate. Needs tracing on (no trace id otherwise).
    #[oai(path = "/feedback", method = "post", tag = "Tag::Routing")]
    async fn feedback(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
        body: Json<FeedbackRequest>,
    ) -> Result<FeedbackResponse, ApiError> {
        state.authenticate(&auth)?;
        state.admit(req).await?;
        let trace_id = body.trace_id.to_ascii_lowercase();
        if !valid_trace_id(&trace_id) {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "trace_id must be 32 hexadecimal digits, not all zero (the x-trace-id header of the answer)",
            ));
        }
        let task_id = crate::pipeline::task_key(&body.task_id.to_value());
        let grade = body.score.unwrap_or(if body.success { 1.0 } else { 0.0 });
        let router = &state.pipeline.router;
        let Some(served) = router.served().take(&trace_id, &task_id) else {
            return Ok(FeedbackResponse::NotFound(Json(super::errors::ErrorBody::new(
                ErrorCode::TaskNotFound,
                "no task of that trace_id and task_id was answered by an agent among this replica's last 10,000 answers within 15 minutes, or it already had its feedback",
            ))));
        };
        let estimate = router
            .estimates()
            .observe_graded(&served.agent, &served.concept, served.weight, grade)
            .mean();
        tracing::info!(agent = %served.agent, concept = %served.concept, grade, "feedback");
        Ok(FeedbackResponse::Accepted(Json(FeedbackAccepted {
            status: FeedbackStatus::Accepted,
            agent: served.agent,
            concept: served.concept,
            estimate,
        })))
    }

    /// Which agent handles a concept and intent, with every ranked candidate.
    #[oai(path = "/discover", method = "post", tag = "Tag::Routing")]
    async fn discover(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
        body: Json<DiscoverRequest>,
    ) -> Result<DiscoverResponse, ApiError> {
        state.authenticate(&auth)?;
        state.admit(req).await?;
        let concept = validate_concept(&*body.concept)?;
        let intent = validate_intent(
            body.intent
                .as_ref()
                .and_then(|i| i.0.as_deref())
                .unwrap_or("define"),
        )?;
        let candidates: Vec<Candidate> = state
            .pipeline
            .discover(&concept, &intent, use_cache(req), None)
            .await
            .map(|(candidates, _)| candidates)
            .map_err(|e| {
                if let Some(since) = state.pipeline.discovery_warning.ready() {
                    tracing::warn!(error = %e, suppressed = since, "discovery failed");
                }
                ApiError::new(
                    ErrorCode::GraphUnavailable,
                    "the knowledge graph is unavailable",
                )
            })?;
        let pipeline = &state.pipeline;
        // Best first; the best is the first a call would pass.
        let (order, assessed) = pipeline.listing(&concept, &candidates);
        let Some(&best) = order
            .iter()
            .find(|&&i| assessed[i].0.admission != Admission::Refused)
            .or(order.first())
        else {
            let message = format!("no agent handles intent '{intent}' for concept '{concept}'");
            return Ok(DiscoverResponse::NotFound(Json(NoAgentFound {
                status: DiscoverStatus::NoAgentFound,
                concept,
                intent,
                agent_url: Nullable(None),
                error: message.clone(),
                message,
                code: ErrorCode::NoAgentFound,
            })));
        };
        let record = AgentRecord {
            agent: crate::graph::AgentInfo::clone(&candidates[best].agent),
            concepts: vec![(concept.clone(), candidates[best].stats.clone())],
        };
        Ok(DiscoverResponse::Found(Json(Discovered {
            status: DiscoverStatus::Success,
            agent_url: redact_endpoint(&record.agent.endpoint),
            agent: agent_view(&record, &assessed[best].1),
            candidates: order
                .iter()
                .map(|&i| {
                    let (c, (inputs, live)) = (&candidates[i], &assessed[i]);
                    CandidateView {
                        name: c.agent.name.clone(),
                        endpoint: redact_endpoint(&c.agent.endpoint),
                        weight: c.stats.weight,
                        success_rate: c.stats.success_rate,
                        usage_count: c.stats.usage_count,
                        breaker: live.breaker.into(),
                        score: inputs.score(),
                        health: live.health,
                        latency_ms: Nullable(live.latency_ms),
                        in_flight: live.in_flight,
                        slow_start: live.ramp,
                        share: Nullable(live.share),
                        held_by_peer: live.held_by_peer,
                        region: Nullable(
                            pipeline.regions.as_ref().and_then(|r| r.of(&c.agent.name)),
                        ),
                        local: Nullable(inputs.local),
                        estimate: inputs.posterior.mean(),
                        estimate_sd: inputs.posterior.sd(),
                        evidence: inputs.posterior.evidence(),
                    }
                })
                .collect(),
            concept,
            intent,
        })))
    }

    /// Answers a question (`query`) or a batch of concept/intent `tasks`.
    #[oai(path = "/process", method = "post", tag = "Tag::Routing")]
    async fn process(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
        /// How long the client will wait, in ms: the request's deadline is the smaller of
        /// this and `REQUEST_TIMEOUT_MS`. Every agent call is told the time left in the same
        /// header, and none is started with less than `AGENT_MIN_TIME_LEFT_MS` left.
        #[oai(
            name = "X-Request-Timeout-Ms",
            validator(minimum(value = "1"), maximum(value = "600000"))
        )]
        timeout: Header<Option<u64>>,
        /// The request's rank under overload: `low` requests get at most a quarter of each
        /// agent's in-flight limit, and one whose every task was refused for it is answered
        /// 503 `overloaded` with `Retry-After`. Default `normal`; the body's `priority`
        /// overrides it.
        #[oai(name = "X-Priority")]
        priority: Header<Option<PriorityParam>>,
        body: Json<ProcessBody>,
    ) -> Result<ProcessReply, ApiError> {
        state.authenticate(&auth)?;
        state.admit(req).await?;
        let priority = body
            .0
             .0
            .priority()
            .or(priority.0.map(Priority::from))
            .unwrap_or_default();
        let ctx = RequestCtx::new(
            state.request_timeout(timeout.0),
            use_cache(req),
            req.extensions().get().cloned().unwrap_or_default(),
        )
        .with_priority(priority);
        let prepared = state.prepare(body.0 .0, &ctx).await?;
        if stream::wants_events(req) {
            return Ok(stream::events(state.0.clone(), prepared, ctx));
        }
        let body = Progress::polled_in_span(state.0.clone(), prepared, ctx)
            .complete()
            .await;
        shed(priority, body).map(|body| ProcessReply::Body(Box::new(Json(body))))
    }

    /// Alias of `POST /process`, kept for existing clients.
    #[oai(path = "/process_query", method = "post", tag = "Tag::Routing")]
    async fn process_query(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
        /// As for `POST /process`.
        #[oai(
            name = "X-Request-Timeout-Ms",
            validator(minimum(value = "1"), maximum(value = "600000"))
        )]
        timeout: Header<Option<u64>>,
        /// As for `POST /process`.
        #[oai(name = "X-Priority")]
        priority: Header<Option<PriorityParam>>,
        body: Json<ProcessBody>,
    ) -> Result<ProcessReply, ApiError> {
        self.process(state, req, auth, timeout, priority, body)
            .await
    }
}

/// The answer to a finished batch: its body, or — for a `low` priority request none of
/// whose tasks was served and some refused for want of capacity — 503 `overloaded` with
/// `Retry-After: 1`, so the client backs off instead of reading a batch of failures.
pub(super) fn shed(priority: Priority, body: ProcessResponse) -> Result<ProcessResponse, ApiError> {
    use crate::{failure::FailureCode, pipeline::TaskStatus};
    let results = body.results.values().map(|r| &r.0);
    let served = results.clone().any(|r| r.status == TaskStatus::Success);
    let refused = results
        .clone()
        .any(|r| r.code == Some(FailureCode::BulkheadFull));
    if priority == Priority::Low && !served && refused {
        let ApiError::Unavailable(b, _) = ApiError::new(
            ErrorCode::Overloaded,
            "the agents are at capacity and low priority requests are shed; retry later",
        ) else {
            unreachable!("overloaded is a 503")
        };
        return Err(ApiError::Unavailable(b, Some(1)));
    }
    Ok(body)
}
