//! GraphQL at `/graphql`: the knowledge graph and the routing state to read (agents,
//! concepts, `candidates` with the routing score and its parts, status), and `process` —
//! the same pipeline, limits and auth as `POST /process`. Depth and complexity are limited
//! on the schema; its SDL is committed (`openapi/schema.graphql`) and checked by a test.

use std::{collections::BTreeMap, sync::Arc};

use async_graphql::{
    http::ALL_WEBSOCKET_PROTOCOLS, Context, Enum, ErrorExtensions, InputObject, Json, Object,
    Schema, SimpleObject, Subscription, Union,
};
use async_graphql_poem::{GraphQLProtocol, GraphQLWebSocket};
use futures::Stream;
use poem::{
    handler,
    web::{websocket::WebSocket, Data},
    IntoResponse, Request, Response,
};
use poem_openapi::types::ParseFromJSON;
use serde_json::{json, Value};

use super::{
    auth::{client_key, presented_key},
    batch::Prepared,
    dto::{ProcessBody, PROCESS_SHAPE},
    errors::{error_response, ApiError, ErrorCode},
    stream::{Progress, Update},
    ws::Upgrade,
    AppState,
};
use crate::{context::RequestCtx, graph::AgentRecord, pipeline::TaskResult, routing::Admission};

/// Nesting a query may reach.
pub const MAX_DEPTH: usize = 8;
/// Fields a query may select, counted over every list item's selection once.
pub const MAX_COMPLEXITY: usize = 500;

pub type MyriadSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema, with its limits; the application's state is added per request.
pub fn schema() -> MyriadSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// The schema in SDL (`myriad-orchestrator graphql-schema`; committed as
/// `openapi/schema.graphql`).
pub fn sdl() -> String {
    schema().sdl()
}

/// `POST /graphql`: a client key as on `/process`, the inbound rate limit, then the query.
#[handler]
pub(super) async fn endpoint(
    req: &Request,
    gql: async_graphql_poem::GraphQLRequest,
    app: Data<&Arc<AppState>>,
    schema: Data<&MyriadSchema>,
) -> Response {
    let app = app.0.clone();
    if let Err(e) = app.authenticate_key(presented_key(req)) {
        return ApiError::from(e).into_response();
    }
    if let Err(e) = app.admit_client(&client_key(req)).await {
        return e.into_response();
    }
    let agent_time: Arc<crate::context::AgentTime> =
        req.extensions().get().cloned().unwrap_or_default();
    let request = gql.0.data(app).data(agent_time);
    async_graphql_poem::GraphQLResponse::from(schema.0.execute(request).await).into_response()
}

/// Who a subscription socket counts against, for the inbound rate limit.
struct ClientId(String);

/// `GET /graphql/ws`: subscriptions over graphql-ws (or the older subscriptions-transport-ws).
/// A client key in a header is checked before the upgrade; without one (and with keys
/// configured) the `connection_init` payload must carry `{"apiKey": …}`.
#[handler]
pub(super) async fn subscriptions(
    req: &Request,
    upgrade: WebSocket,
    protocol: GraphQLProtocol,
    app: Data<&Arc<AppState>>,
    schema: Data<&MyriadSchema>,
) -> Response {
    let (app, schema) = (app.0.clone(), schema.0.clone());
    let Upgrade {
        authed,
        client,
        config,
    } = match Upgrade::check(&app, req) {
        Ok(start) => start,
        Err(e) => return ApiError::from(e).into_response(),
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .config(config)
        .on_upgrade(move |socket| {
            let mut data = async_graphql::Data::default();
            data.insert(app.clone());
            data.insert(ClientId(client));
            GraphQLWebSocket::new(socket, schema, protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    let key = payload.get("apiKey").and_then(Value::as_str);
                    if !authed && app.authenticate_key(key).is_err() {
                        return Err(async_graphql::Error::new("a valid API key is required"));
                    }
                    Ok(async_graphql::Data::default())
                })
                .serve()
        })
        .into_response()
}

/// `GET /graphql`: GraphiQL, its assets served from the binary (no CDN).
#[handler]
pub(super) fn page() -> poem::web::Html<&'static str> {
    poem::web::Html(GRAPHIQL_PAGE)
}

const GRAPHIQL_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Myriad Orchestrator · GraphiQL</title>
<style>body { margin: 0; } #graphiql { height: 100vh; }</style>
<link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphql/assets/react.production.min.js"></script>
<script src="/graphql/assets/react-dom.production.min.js"></script>
<script src="/graphql/assets/graphiql.min.js"></script>
<script>
  const ws = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql/ws';
  const fetcher = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: ws });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: '{\n  candidates(concept: "lightbulb") {\n    agent\n    score\n    health\n    breaker\n  }\n}\n',
    }));
</script>
</body>
</html>
"#;

/// GraphiQL's files (MIT; `assets/graphiql/LICENSE.*`), by name.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!("../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!("../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// `GET /graphql/assets/{file}`.
#[handler]
pub(super) fn asset(poem::web::Path(file): poem::web::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, bytes)) => Response::builder()
            .content_type(*content_type)
            .header("cache-control", "public, max-age=86400")
            .body(*bytes),
        None => error_response(ErrorCode::NotFound, "no such asset"),
    }
}

/// `GET /graphql/schema`: the SDL.
#[handler]
pub(super) fn schema_text() -> String {
    sdl()
}

fn app<'a>(ctx: &Context<'a>) -> &'a Arc<AppState> {
    ctx.data_unchecked::<Arc<AppState>>()
}

/// Every agent with its concepts, from the graph.
async fn agent_records(ctx: &Context<'_>) -> async_graphql::Result<Vec<AgentRecord>> {
    app(ctx)
        .pipeline
        .graph
        .agents()
        .await
        .map_err(|_| unavailable())
}

fn unavailable() -> async_graphql::Error {
    async_graphql::Error::new("the knowledge graph is unavailable")
        .extend_with(|_, e| e.set("code", "graph_unavailable"))
}

fn api_error(e: ApiError) -> async_graphql::Error {
    let body = e.into_body().0;
    async_graphql::Error::new(body.error).extend_with(|_, e| e.set("code", body.code.as_str()))
}

/// A circuit breaker's state.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl From<crate::resilience::breaker::BreakerState> for BreakerState {
    fn from(s: crate::resilience::breaker::BreakerState) -> Self {
        use crate::resilience::breaker::BreakerState as B;
        match s {
            B::Closed => BreakerState::Closed,
            B::Open => BreakerState::Open,
            B::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// A concept an agent handles, with the learned edge.
#[derive(SimpleObject)]
pub struct Handles {
    pub concept: String,
    pub weight: f64,
    pub success_rate: f64,
    pub usage_count: u64,
}

/// An agent service.
#[derive(SimpleObject)]
pub struct Agent {
    pub name: String,
    pub intents: Vec<String>,
    pub capabilities: Vec<String>,
    pub concepts: Vec<Handles>,
    pub breaker: BreakerState,
}

/// A region of the graph and what belongs to it.
#[derive(SimpleObject)]
pub struct Region {
    pub name: String,
    pub concepts: Vec<String>,
    pub agents: Vec<String>,
}

/// A concept and the agents that handle it.
#[derive(SimpleObject)]
pub struct Concept {
    pub name: String,
    pub agents: Vec<String>,
}

/// One candidate for a concept and intent: the routing score and every part of it.
#[derive(SimpleObject)]
pub struct Candidate {
    pub agent: String,
    /// weight × health² ÷ (1 + latency_ms × (1 + in_flight) ÷ 100), before slow start.
    pub score: f64,
    pub weight: f64,
    /// Success share of recent calls (1 = healthy).
    pub health: f64,
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    /// Slow-start factor (0.1 just after registration or recovery, 1 at full share).
    pub slow_start: f64,
    /// False while the breaker refuses calls (or a peer's open breaker holds them back).
    pub admitted: bool,
    pub breaker: BreakerState,
    /// Another replica's breaker for this agent is open: calls are held back here too.
    pub held_by_peer: bool,
    /// The agent's region in the graph (null: none, or `REGION` unset here).
    pub region: Option<String>,
    /// In this replica's region; null when `REGION` is unset.
    pub local: Option<bool>,
}

/// The service at a glance.
#[derive(SimpleObject)]
pub struct Status {
    pub service: String,
    pub version: String,
    pub graph_backend: String,
    pub tracing: bool,
    pub agents: usize,
}

/// What the service has done since it started (the `/metrics` document, summarized).
#[derive(SimpleObject)]
pub struct MetricsSummary {
    pub uptime_s: f64,
    pub requests_total: u64,
    pub tasks_total: u64,
    pub tasks_succeeded_total: u64,
    pub tasks_failed_total: u64,
    pub tasks_cancelled_total: u64,
    pub task_latency_avg_ms: f64,
    /// Answers served from a cache (L1 or L2).
    pub response_cache_hits_total: u64,
    pub connections_open: u64,
}

/// One task of a batch.
#[derive(InputObject)]
pub struct TaskInput {
    /// An integer or a string of at most 128 characters, unique in the batch.
    pub task_id: Json<Value>,
    pub concept: String,
    pub intent: String,
    /// A JSON object passed to the agent.
    pub args: Option<Json<Value>>,
}

/// How a batch or a question ended.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum OverallStatus {
    Success,
    Partial,
    Failed,
}

impl From<super::dto::OverallStatus> for OverallStatus {
    fn from(s: super::dto::OverallStatus) -> Self {
        match s {
            super::dto::OverallStatus::Success => OverallStatus::Success,
            super::dto::OverallStatus::Partial => OverallStatus::Partial,
            super::dto::OverallStatus::Failed => OverallStatus::Failed,
        }
    }
}

/// One task's result, as in `POST /process`.
#[derive(SimpleObject)]
pub struct TaskOutcome {
    pub task_id: Json<Value>,
    /// `success` or `error`.
    pub status: String,
    pub agent_name: Option<String>,
    pub data: Json<Value>,
    pub concept: String,
    pub intent: String,
    pub cached: Option<String>,
    pub stale: bool,
    pub attempts: u32,
    pub latency_ms: f64,
    pub code: Option<String>,
    pub error: Option<String>,
}

impl From<TaskResult> for TaskOutcome {
    fn from(r: TaskResult) -> Self {
        let status = if r.succeeded() { "success" } else { "error" };
        TaskOutcome {
            task_id: Json(r.task_id),
            status: status.into(),
            agent_name: r.agent_name,
            data: Json(r.data),
            concept: r.concept,
            intent: r.intent,
            cached: r.cached.map(str::to_string),
            stale: r.stale,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            code: r.code.map(str::to_string),
            error: r.error,
        }
    }
}

/// The answer to `process`.
#[derive(SimpleObject)]
pub struct Processed {
    pub status: OverallStatus,
    /// For a question: the synthesized answer.
    pub answer: Option<Json<Value>>,
    /// Every task's result, in the order of the batch (or of the question's tasks).
    pub results: Vec<TaskOutcome>,
}

/// The `/process` body of a GraphQL `process`, checked by the same rules.
fn process_request(
    tasks: Option<Vec<TaskInput>>,
    query: Option<String>,
    user_id: Option<String>,
) -> async_graphql::Result<crate::api::dto::ProcessRequest> {
    let mut body = serde_json::Map::new();
    if let Some(tasks) = tasks {
        let tasks: Vec<Value> = tasks
            .into_iter()
            .map(|t| {
                let mut task =
                    json!({"task_id": t.task_id.0, "concept": t.concept, "intent": t.intent});
                if let Some(args) = t.args {
                    task["args"] = args.0;
                }
                task
            })
            .collect();
        body.insert("tasks".into(), Value::Array(tasks));
    }
    if let Some(query) = query {
        body.insert("query".into(), Value::String(query));
    }
    if let Some(user) = user_id {
        body.insert("user_id".into(), Value::String(user));
    }
    let request = ProcessBody::parse_from_json(Some(Value::Object(body)))
        .map_err(|_| {
            async_graphql::Error::new(PROCESS_SHAPE)
                .extend_with(|_, e| e.set("code", ErrorCode::InvalidBody.as_str()))
        })?
        .0;
    Ok(request)
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Every agent, with the concepts it handles and its breaker.
    async fn agents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Agent>> {
        let app = app(ctx);
        let records = agent_records(ctx).await?;
        Ok(records
            .into_iter()
            .map(|r| Agent {
                breaker: app.pipeline.stack.breaker_state(&r.agent.name).into(),
                name: r.agent.name,
                intents: r.agent.intents,
                capabilities: r.agent.capabilities,
                concepts: r
                    .concepts
                    .into_iter()
                    .map(|(concept, s)| Handles {
                        concept,
                        weight: s.weight,
                        success_rate: s.success_rate,
                        usage_count: s.usage_count,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Every region, with the concepts and agents that belong to it.
    async fn regions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Region>> {
        let regions = app(ctx)
            .pipeline
            .graph
            .regions()
            .await
            .map_err(|_| unavailable())?;
        Ok(regions
            .into_iter()
            .map(|r| Region {
                name: r.name,
                concepts: r.concepts,
                agents: r.agents,
            })
            .collect())
    }

    /// Every concept some agent handles, with those agents.
    async fn concepts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Concept>> {
        let records = agent_records(ctx).await?;
        let mut by_concept: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in records {
            for (concept, _) in r.concepts {
                by_concept
                    .entry(concept)
                    .or_default()
                    .push(r.agent.name.clone());
            }
        }
        Ok(by_concept
            .into_iter()
            .map(|(name, agents)| Concept { name, agents })
            .collect())
    }

    /// The candidates for a concept and intent, as the routing policy sees them now.
    async fn candidates(
        &self,
        ctx: &Context<'_>,
        concept: String,
        #[graphql(default = "define")] intent: String,
    ) -> async_graphql::Result<Vec<Candidate>> {
        let app = app(ctx);
        let concept = super::validate::validate_concept(&concept).map_err(api_error)?;
        let intent = super::validate::validate_intent(&intent).map_err(api_error)?;
        let (found, _) = app
            .pipeline
            .discover(&concept, &intent, true)
            .await
            .map_err(|_| unavailable())?;
        // The order `/discover` lists them in.
        let (order, assessed) = app.pipeline.listing(&found);
        let regions = app.pipeline.regions.as_ref();
        let out: Vec<Candidate> = order
            .into_iter()
            .map(|i| {
                let (c, (inputs, live)) = (&found[i], &assessed[i]);
                Candidate {
                    agent: c.agent.name.clone(),
                    score: inputs.score(),
                    weight: inputs.weight,
                    health: inputs.health,
                    latency_ms: inputs.latency_ms,
                    in_flight: inputs.in_flight,
                    slow_start: inputs.ramp,
                    admitted: inputs.admission != Admission::Refused,
                    breaker: live.breaker.into(),
                    held_by_peer: live.held_by_peer,
                    region: regions.and_then(|r| r.of(&c.agent.name)),
                    local: inputs.local,
                }
            })
            .collect();
        Ok(out)
    }

    /// What the service has done since it started.
    async fn metrics(&self, ctx: &Context<'_>) -> MetricsSummary {
        let p = app(ctx).metrics_body().performance;
        MetricsSummary {
            uptime_s: p.uptime_s,
            requests_total: p.requests_total,
            tasks_total: p.tasks_total,
            tasks_succeeded_total: p.tasks_succeeded_total,
            tasks_failed_total: p.tasks_failed_total,
            tasks_cancelled_total: p.tasks_cancelled_total,
            task_latency_avg_ms: p.task_latency_avg_ms,
            response_cache_hits_total: p.cache.responses.l1_hits + p.cache.responses.l2_hits,
            connections_open: p.connections.open,
        }
    }

    /// The service, its graph backend and whether traces are exported.
    async fn status(&self, ctx: &Context<'_>) -> async_graphql::Result<Status> {
        let app = app(ctx);
        let agents = agent_records(ctx).await?.len();
        Ok(Status {
            service: "orchestrator".into(),
            version: crate::VERSION.into(),
            graph_backend: app.pipeline.graph.backend().into(),
            tracing: app.tracing_enabled,
            agents,
        })
    }
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Runs a batch of `tasks`, or a `query` (exactly one), like `POST /process`.
    async fn process(
        &self,
        ctx: &Context<'_>,
        tasks: Option<Vec<TaskInput>>,
        query: Option<String>,
        user_id: Option<String>,
    ) -> async_graphql::Result<Processed> {
        let app = app(ctx);
        let request = process_request(tasks, query, user_id)?;
        let agent_time = ctx
            .data_opt::<Arc<crate::context::AgentTime>>()
            .cloned()
            .unwrap_or_default();
        let rctx = RequestCtx::new(app.config.request_timeout, true, agent_time);
        let prepared = app.prepare(request, &rctx).await.map_err(api_error)?;
        let answered = matches!(prepared, Prepared::Answered(_));
        // In the order of the batch, which a GraphQL list promises.
        let (body, results) = Progress::new(app.clone(), prepared, rctx)
            .complete_in_order()
            .await;
        let outcomes = if answered {
            body.results
                .values()
                .map(|r| TaskOutcome::from(r.0.clone()))
                .collect()
        } else {
            results.into_iter().map(TaskOutcome::from).collect()
        };
        let status = body.status.into();
        Ok(Processed {
            status,
            answer: body.answer.map(Json),
            results: outcomes,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_sdl_is_the_schema() {
        let committed = include_str!("../../openapi/schema.graphql");
        assert!(
            committed == super::sdl(),
            "openapi/schema.graphql is out of date: \
             cargo run -q -- graphql-schema > openapi/schema.graphql"
        );
    }
}

/// The end of a batch: how it went, and for a question the synthesized answer.
#[derive(SimpleObject)]
pub struct BatchDone {
    pub status: OverallStatus,
    pub answer: Option<Json<Value>>,
}

/// What a running batch reports: each task's result as it completes, then the end.
#[derive(Union)]
#[allow(clippy::large_enum_variant)] // one at a time, moved once into the response
pub enum BatchEvent {
    Task(TaskOutcome),
    Done(BatchDone),
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Runs a batch of `tasks` or a `query`, yielding each task's result the moment it
    /// completes, then one `BatchDone`. Unsubscribing (or closing the socket) cancels what
    /// is left.
    async fn process(
        &self,
        ctx: &Context<'_>,
        tasks: Option<Vec<TaskInput>>,
        query: Option<String>,
        user_id: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = BatchEvent>> {
        let app = app(ctx).clone();
        if let Some(client) = ctx.data_opt::<ClientId>() {
            app.admit_client(&client.0).await.map_err(api_error)?;
        }
        let request = process_request(tasks, query, user_id)?;
        let rctx = RequestCtx::new(app.config.request_timeout, true, Arc::default());
        let prepared = app.prepare(request, &rctx).await.map_err(api_error)?;
        // One server span per subscription, the task spans under it (as for `/ws`).
        let span = tracing::info_span!(
            "GraphQL /graphql/ws process",
            otel.kind = "server",
            http.route = "/graphql/ws",
        );
        let progress = span.in_scope(|| Progress::new(app, prepared, rctx));
        Ok(futures::stream::unfold(
            Some(progress),
            |progress| async move {
                let mut progress = progress?;
                let (update, more) = progress.next().await;
                let event = match update {
                    Update::Task(result) => BatchEvent::Task(result.into()),
                    Update::Done(body) => BatchEvent::Done(BatchDone {
                        status: body.status.into(),
                        answer: body.answer.map(Json),
                    }),
                };
                Some((event, more.then_some(progress)))
            },
        ))
    }
}
