//! `/process` (and its alias `/process_query`) and `/discover`.

use poem::Request;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

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
    context::RequestCtx,
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
pub(super) fn use_cache(req: &Request) -> bool {
    !req.headers()
        .get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|d| {
                matches!(
                    d.trim().to_ascii_lowercase().as_str(),
                    "no-cache" | "no-store"
                )
            })
        })
}

#[OpenApi]
impl ProcessApi {
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
        let concept = validate_concept(&body.concept)?;
        let intent = validate_intent(
            body.intent
                .as_ref()
                .and_then(|i| i.0.as_deref())
                .unwrap_or("define"),
        )?;
        let candidates: Vec<Candidate> = state
            .pipeline
            .discover(&concept, &intent, use_cache(req))
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
            agent: candidates[best].agent.clone(),
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
        body: Json<ProcessBody>,
    ) -> Result<ProcessReply, ApiError> {
        state.authenticate(&auth)?;
        state.admit(req).await?;
        let ctx = RequestCtx::new(
            state.config.request_timeout,
            use_cache(req),
            req.extensions().get().cloned().unwrap_or_default(),
        );
        let prepared = state.prepare(body.0 .0, &ctx).await?;
        if stream::wants_events(req) {
            return Ok(stream::events(state.0.clone(), prepared, ctx));
        }
        let body = Progress::new(state.0.clone(), prepared, ctx)
            .complete()
            .await;
        Ok(ProcessReply::Body(Box::new(Json(body))))
    }

    /// Alias of `POST /process`, kept for existing clients.
    #[oai(path = "/process_query", method = "post", tag = "Tag::Routing")]
    async fn process_query(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
        body: Json<ProcessBody>,
    ) -> Result<ProcessReply, ApiError> {
        self.process(state, req, auth, body).await
    }
}
