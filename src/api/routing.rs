//! Routing: `/process` (and its alias), `/discover`, and the agent list.

use std::collections::BTreeMap;

use poem::Request;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};
use serde_json::{json, Value};

use super::{
    agents::agent_view,
    auth::ClientAuth,
    dto::*,
    errors::{ApiError, ErrorCode},
    stream::{self, ProcessReply, Progress},
    validate::{
        validate_concept, validate_intent, validate_new_concept, MAX_ID_CHARS, MAX_QUERY_CHARS,
    },
    AppState, State, Tag,
};
use crate::{
    agents::guard::redact_endpoint,
    context::RequestCtx,
    graph::{AgentRecord, Candidate},
    pipeline::{overall_status, processors, TaskSpec},
    routing::Admission,
};

pub struct RoutingApi;

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

/// The answer to a question that names no concept.
pub(super) fn unparseable() -> ProcessResponse {
    let spec = TaskSpec {
        task_id: json!(1),
        concept: String::new(),
        intent: "define".into(),
        args: json!({}),
    };
    let result = crate::pipeline::TaskResult::failed(
        &spec,
        "unparseable_query",
        "the question names no concept; try \"What is a lightbulb?\"",
    );
    ProcessResponse {
        status: OverallStatus::Failed,
        result: Some(TaskResultBody(result.clone())),
        answer: Some(json!(
            "I could not find a concept in that question. Try \"What is a lightbulb?\""
        )),
        tasks: Some(Vec::new()),
        results: BTreeMap::from([("1".to_string(), TaskResultBody(result))]),
    }
}

pub(super) fn by_id(results: Vec<crate::pipeline::TaskResult>) -> BTreeMap<String, TaskResultBody> {
    results
        .into_iter()
        .map(|r| (crate::pipeline::task_key(&r.task_id), TaskResultBody(r)))
        .collect()
}

/// A `/process` request, validated: an answer already, or tasks to run.
pub(super) enum Prepared {
    /// Answered without running anything (a question that names no concept).
    Answered(Box<ProcessResponse>),
    /// Tasks to run; `query` (with its user) when they came from a question.
    Run {
        specs: Vec<TaskSpec>,
        query: Option<(String, Option<String>)>,
    },
}

impl AppState {
    /// Validates the body and, for a question, turns it into tasks.
    pub(super) async fn prepare(
        &self,
        req: ProcessRequest,
        ctx: &RequestCtx,
    ) -> Result<Prepared, ApiError> {
        let config = &self.config;
        match req {
            ProcessRequest::Batch(BatchRequest { tasks, .. }) => Ok(Prepared::Run {
                specs: self.task_specs(tasks)?,
                query: None,
            }),
            ProcessRequest::Query(QueryRequest { query, user_id }) => {
                let query = query.trim().to_string();
                let user_id = user_id
                    .as_ref()
                    .and_then(|u| u.0.as_ref())
                    .map(|u| u.0.as_str());
                if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
                    return Err(ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("query must be 1–{MAX_QUERY_CHARS} characters"),
                    ));
                }
                if user_id
                    .as_ref()
                    .is_some_and(|u| u.chars().count() > MAX_ID_CHARS)
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidUserId,
                        format!("user_id must be at most {MAX_ID_CHARS} characters"),
                    ));
                }
                let step = config.agent_timeout.min(ctx.remaining());
                let parsed = self.processors().parse_query(&query, user_id, step).await;
                let mut specs = match parsed {
                    Ok(specs) => specs,
                    // Not a client error: the question was fine, it just names nothing we
                    // can route. The answer says so, like any task that finds no agent.
                    Err(processors::InputError::NothingToDo) => {
                        return Ok(Prepared::Answered(Box::new(unparseable())));
                    }
                    Err(processors::InputError::Unavailable) => {
                        return Err(ApiError::new(
                            ErrorCode::InputProcessorUnavailable,
                            "the input processor did not answer",
                        ))
                    }
                    Err(processors::InputError::BadAnswer) => {
                        return Err(ApiError::new(
                            ErrorCode::InputProcessorInvalid,
                            "the input processor's answer is not a task list",
                        ))
                    }
                };
                specs.truncate(config.max_tasks);
                for s in &mut specs {
                    s.concept = validate_concept(&s.concept)?;
                    if config.enable_dynamic_agents {
                        validate_new_concept(&s.concept)?;
                    }
                    s.intent = validate_intent(&s.intent)?;
                }
                Ok(Prepared::Run {
                    specs,
                    query: Some((query, user_id.map(str::to_string))),
                })
            }
        }
    }

    /// The body for `results` (in the order of `specs`): for a question, with the
    /// synthesized answer and the tasks it became.
    pub(super) async fn finish(
        &self,
        specs: &[TaskSpec],
        query: Option<(String, Option<String>)>,
        results: Vec<crate::pipeline::TaskResult>,
        ctx: &RequestCtx,
    ) -> ProcessResponse {
        let Some((query, user_id)) = query else {
            return ProcessResponse {
                status: overall_status(&results).into(),
                result: None,
                answer: None,
                tasks: None,
                results: by_id(results),
            };
        };
        let step = self.config.agent_timeout.min(ctx.remaining());
        let answer = self
            .processors()
            .synthesize(&query, user_id.as_deref(), &results, step)
            .await;
        let tasks = specs
            .iter()
            .map(|s| ParsedTaskView {
                task_id: match &s.task_id {
                    Value::String(t) => TaskId::Text(Text(t.clone())),
                    v => TaskId::Int(v.as_i64().unwrap_or_default()),
                },
                concept: s.concept.clone(),
                intent: s.intent.clone(),
                args: s.args.clone(),
            })
            .collect();
        ProcessResponse {
            status: overall_status(&results).into(),
            result: results.first().cloned().map(TaskResultBody),
            answer: Some(answer),
            tasks: Some(tasks),
            results: by_id(results),
        }
    }

    fn processors(&self) -> processors::Processors<'_> {
        processors::Processors {
            transport: self.pipeline.stack.transport().as_ref(),
            input: self.config.input_processor_url.as_deref(),
            output: self.config.output_processor_url.as_deref(),
        }
    }
}

#[OpenApi]
impl RoutingApi {
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
        let (order, assessed) = pipeline.listing(&candidates);
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
