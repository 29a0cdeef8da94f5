//! The HTTP surface: operations, DTOs and error mapping. Nothing here knows a backend type.

pub mod dto;
pub mod errors;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use poem::{Endpoint, EndpointExt, IntoEndpoint, Request, Route};
use poem_openapi::{
    auth::{ApiKey, Bearer},
    param::Path,
    payload::{Json, PlainText},
    ApiResponse, OpenApi, OpenApiService, ResponseContent, SecurityScheme, Tags,
};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    agents::guard::{normalize_endpoint, redact_endpoint, EndpointError},
    cache::Invalidation,
    config::Config,
    graph::{
        normalize_concept,
        seed::{validate_agent_name, validate_name},
        AgentInfo, AgentRecord, Candidate,
    },
    metrics::prom,
    metrics::Metrics,
    pipeline::{overall_status, processors, Pipeline, TaskSpec},
    resilience::{
        limit::{ClientLimiter, Verdict},
        Live,
    },
    routing::{Admission, PolicyKind},
    VERSION,
};
use dto::*;
use errors::{ApiError, AuthError, ErrorBody};

/// Everything the operations need, shared by every request.
pub struct AppState {
    pub config: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// Inbound per-client limit of `/process` and `/discover` (None = off).
    pub client_limiter: Option<Arc<ClientLimiter>>,
    /// Spans are exported (error bodies then carry `trace_id`).
    pub tracing_enabled: bool,
    /// What the accept loop counts (`/metrics` → `performance.connections`).
    pub connections: Arc<crate::server::ConnectionStats>,
    status_cache: Mutex<Option<(Instant, Value, bool)>>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        client_limiter: Option<Arc<ClientLimiter>>,
    ) -> Self {
        AppState {
            tracing_enabled: config.tracing.endpoint.is_some(),
            config,
            pipeline,
            metrics,
            client_limiter,
            connections: Default::default(),
            status_cache: Mutex::new(None),
        }
    }
}

/// True when `Accept` names `text/plain` or OpenMetrics before (or without) JSON.
fn wants_prometheus(req: &Request) -> bool {
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let pos = |needle: &str| accept.find(needle);
    let text = [pos("text/plain"), pos("application/openmetrics-text")]
        .into_iter()
        .flatten()
        .min();
    match (text, pos("application/json")) {
        (Some(t), Some(j)) => t < j,
        (Some(_), None) => true,
        _ => false,
    }
}

#[derive(ResponseContent)]
enum MetricsContent {
    Json(Json<MetricsBody>),
    Text(PlainText<String>),
}

#[derive(ApiResponse)]
enum MetricsResponse {
    /// JSON counters, or Prometheus text (`text/plain; version=0.0.4`).
    #[oai(status = 200)]
    Ok(MetricsContent),
}

/// False when the client asked to bypass caches (`Cache-Control: no-cache` or `no-store`).
fn use_cache(req: &Request) -> bool {
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

/// Who a request counts against: its API key when it has one, else its IP.
fn client_key(req: &Request) -> String {
    let headers = req.headers();
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match key {
        Some(k) => format!("key:{k}"),
        None => match req.remote_addr().as_socket_addr() {
            Some(addr) => format!("ip:{}", addr.ip()),
            None => "ip:unknown".to_string(),
        },
    }
}

/// How long `/status` reuses its dependency probes.
const STATUS_CACHE: Duration = Duration::from_secs(1);
/// Upper bound of one dependency probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted query, user id and task id.
const MAX_QUERY_CHARS: usize = 2_000;
const MAX_ID_CHARS: usize = 128;
const MAX_INTENT_CHARS: usize = 64;

#[derive(Tags)]
enum Tag {
    /// Liveness, readiness, status and metrics.
    Operations,
    /// Registering and removing agents (needs `X-Admin-Key`).
    Admin,
    /// Routing tasks to agents.
    Routing,
}

pub struct Api {
    state: Arc<AppState>,
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// The service can route tasks.
    #[oai(status = 200)]
    Ready(Json<Ready>),
    /// The service cannot route; `reasons` says why.
    #[oai(status = 503)]
    NotReady(Json<NotReady>),
}

#[derive(ApiResponse)]
enum DiscoverResponse {
    /// The best agent and every ranked candidate.
    #[oai(status = 200)]
    Found(Json<Discovered>),
    /// No agent handles this concept and intent.
    #[oai(status = 404)]
    NotFound(Json<NoAgentFound>),
}

/// A client API key as a Bearer token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
struct BearerKey(Bearer);

/// A client API key in the `X-API-Key` header.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-API-Key", key_in = "header")]
struct HeaderKey(ApiKey);

/// How a client identified itself; `Anonymous` when it sent no key (allowed only when no
/// API keys are configured).
#[derive(SecurityScheme)]
enum ClientAuth {
    Bearer(BearerKey),
    Header(HeaderKey),
    #[oai(fallback)]
    Anonymous,
}

impl ClientAuth {
    fn key(&self) -> Option<&str> {
        match self {
            ClientAuth::Bearer(b) => Some(&b.0.token),
            ClientAuth::Header(h) => Some(&h.0.key),
            ClientAuth::Anonymous => None,
        }
    }
}

/// The admin key, sent as `X-Admin-Key`.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-Admin-Key", key_in = "header")]
struct AdminKey(ApiKey);

#[derive(ApiResponse, Debug)]
enum AdminError {
    /// The registration is not valid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No admin key was sent. (Answered by the security scheme's extractor before the
    /// operation runs; declared here so the spec lists it.)
    #[oai(status = 401)]
    #[allow(dead_code)]
    Unauthorized(Json<ErrorBody>),
    /// The admin key is wrong, or the admin API is disabled (`ADMIN_API_KEY` unset).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No agent of that name.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The body is larger than allowed.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The knowledge graph is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// A graph failure during an admin change: logged, answered 503 without the detail.
fn graph_unavailable(e: crate::graph::GraphError, what: &str) -> AdminError {
    tracing::warn!(error = %e, "{what}");
    AdminError::Unavailable(Json(ErrorBody::new(
        "graph_unavailable",
        "the knowledge graph is unavailable",
    )))
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::PayloadTooLarge(b) => AdminError::PayloadTooLarge(b),
            ApiError::UnsupportedMediaType(b) => AdminError::UnsupportedMediaType(b),
            ApiError::Unavailable(b) => AdminError::Unavailable(b),
            ApiError::BadRequest(b)
            | ApiError::Unauthorized(b)
            | ApiError::HeadersTooLarge(b)
            | ApiError::TooManyRequests(b, ..)
            | ApiError::BadGateway(b) => AdminError::BadRequest(b),
        }
    }
}

/// Equal without revealing where they differ (timing).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[derive(ApiResponse)]
enum AgentsError {
    /// API keys are configured and the request has no valid one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The knowledge graph is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn validate_concept(raw: &str) -> Result<String, ApiError> {
    let concept = normalize_concept(raw);
    validate_name(&concept)
        .map_err(|why| ApiError::bad_request("invalid_concept", format!("concept: {why}")))?;
    Ok(concept)
}

/// With neurogenesis on, any unknown concept may be written to the graph, so names are
/// held to a plain alphabet before anything runs.
fn validate_new_concept(concept: &str) -> Result<(), ApiError> {
    let plain = concept
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\''));
    if plain && concept.chars().count() <= 64 {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_concept",
            "with dynamic agents on, a concept is at most 64 letters, digits, spaces or - _ . '",
        ))
    }
}

fn validate_intent(raw: &str) -> Result<String, ApiError> {
    let intent = raw.trim().to_ascii_lowercase();
    if intent.is_empty()
        || intent.len() > MAX_INTENT_CHARS
        || !intent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::bad_request(
            "invalid_intent",
            format!("intent: 1–{MAX_INTENT_CHARS} characters of a-z, 0-9, '_' or '-'"),
        ));
    }
    Ok(intent)
}

fn agent_view(record: &AgentRecord, live: &Live) -> AgentView {
    AgentView {
        name: record.agent.name.clone(),
        agent_type: record.agent.agent_type.clone(),
        endpoint: redact_endpoint(&record.agent.endpoint),
        status: record.agent.status.clone(),
        intents: record.agent.intents.clone(),
        concepts: record
            .concepts
            .iter()
            .map(|(c, s)| ConceptEdge::new(c.clone(), s))
            .collect(),
        capabilities: record.agent.capabilities.clone(),
        breaker: live.breaker.as_str().to_string(),
        health: live.health,
        latency_ms: Nullable(live.latency_ms),
    }
}

impl Api {
    pub fn new(state: Arc<AppState>) -> Self {
        Api { state }
    }

    /// With API keys configured, the request must carry one of them.
    fn authenticate(&self, auth: &ClientAuth) -> Result<(), AuthError> {
        let keys = &self.state.config.api_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let presented = auth.key().unwrap_or("");
        // Compare against every key, so timing does not tell which one (or none) matched.
        let ok = keys.iter().fold(false, |ok, k| {
            constant_time_eq(presented.as_bytes(), k.expose().as_bytes()) | ok
        });
        if ok {
            Ok(())
        } else {
            Err(AuthError::new())
        }
    }

    /// `/metrics` and `/status` need a key only with METRICS_REQUIRE_AUTH.
    fn authenticate_ops(&self, auth: &ClientAuth) -> Result<(), AuthError> {
        if self.state.config.metrics_require_auth {
            self.authenticate(auth)
        } else {
            Ok(())
        }
    }

    fn check_admin(&self, key: &AdminKey) -> Result<(), AdminError> {
        let Some(expected) = &self.state.config.admin_api_key else {
            return Err(AdminError::Forbidden(Json(ErrorBody::new(
                "admin_disabled",
                "the admin API is disabled (ADMIN_API_KEY is not set)",
            ))));
        };
        if constant_time_eq(key.0.key.as_bytes(), expected.expose().as_bytes()) {
            Ok(())
        } else {
            Err(AdminError::Forbidden(Json(ErrorBody::new(
                "forbidden",
                "the admin key is not valid",
            ))))
        }
    }

    fn registration(
        &self,
        r: AgentRegistration,
    ) -> Result<(AgentInfo, Vec<(String, f64)>), ApiError> {
        validate_agent_name(&r.name)
            .map_err(|why| ApiError::bad_request("invalid_name", format!("name: {why}")))?;
        let endpoint = normalize_endpoint(&r.endpoint).map_err(|why| match why {
            EndpointError::NotHttp => ApiError::bad_request("invalid_endpoint", why.to_string()),
            _ => ApiError::bad_request("endpoint_not_allowed", why.to_string()),
        })?;
        if !self.state.config.agent_allowed_hosts.allows(&endpoint) {
            return Err(ApiError::bad_request(
                "endpoint_not_allowed",
                "the endpoint's host is not in AGENT_ALLOWED_HOSTS",
            ));
        }
        if r.intents.is_empty() || r.intents.len() > 64 {
            return Err(ApiError::bad_request(
                "invalid_intents",
                "list 1–64 intents",
            ));
        }
        if r.concepts.is_empty() || r.concepts.len() > 256 {
            return Err(ApiError::bad_request(
                "invalid_concepts",
                "list 1–256 concepts",
            ));
        }
        let capabilities = r.capabilities.unwrap_or_default();
        if capabilities.len() > 64 || capabilities.iter().any(|c| c.is_empty() || c.len() > 64) {
            return Err(ApiError::bad_request(
                "invalid_capabilities",
                "at most 64 capabilities of 1–64 characters",
            ));
        }
        let agent_type = r.agent_type.map(|t| t.0).unwrap_or_else(|| "static".into());
        if agent_type.is_empty() || agent_type.len() > 32 {
            return Err(ApiError::bad_request(
                "invalid_type",
                "type must be 1–32 characters",
            ));
        }
        let mut concepts = Vec::with_capacity(r.concepts.len());
        for c in r.concepts {
            let weight = c.weight.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&weight) {
                return Err(ApiError::bad_request(
                    "invalid_weight",
                    "weights are in [0, 1]",
                ));
            }
            concepts.push((validate_concept(&c.name)?, weight));
        }
        let agent = AgentInfo {
            name: r.name.0.trim().to_string(),
            agent_type,
            endpoint,
            status: "active".into(),
            intents: r
                .intents
                .iter()
                .map(|i| validate_intent(i))
                .collect::<Result<_, _>>()?,
            capabilities: capabilities.into_iter().map(|c| c.0).collect(),
            facts: None,
        };
        Ok((agent, concepts))
    }

    /// The inbound rate limit; `Err` is the 429 to answer with.
    async fn admit(&self, req: &Request) -> Result<(), ApiError> {
        let Some(limiter) = &self.state.client_limiter else {
            return Ok(());
        };
        match limiter.check(&client_key(req)).await {
            Verdict::Allowed { .. } => Ok(()),
            Verdict::Limited { limit, retry_after } => {
                prom::PROM.rate_limited.with_label_values(&["client"]).inc();
                self.state
                    .metrics
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                Err(ApiError::TooManyRequests(
                    Json(ErrorBody::new(
                        "rate_limited",
                        format!("too many requests; retry in {secs} s"),
                    )),
                    secs,
                    limit,
                    0,
                ))
            }
        }
    }

    fn live(&self, agent: &str) -> Live {
        self.state.pipeline.stack.live(agent)
    }

    fn breaker(&self, agent: &str) -> &'static str {
        self.state.pipeline.stack.breaker_state(agent)
    }

    fn metrics_body(&self) -> MetricsBody {
        let c = &self.state.config;
        let mut performance = self.state.metrics.performance();
        let learning = &self.state.pipeline.learner.stats;
        performance["learning"] = json!({
            "outcomes_applied_total": learning.applied.load(std::sync::atomic::Ordering::Relaxed),
            "outcomes_dropped_total": learning.dropped.load(std::sync::atomic::Ordering::Relaxed),
            "batches_total": learning.batches.load(std::sync::atomic::Ordering::Relaxed),
            "decays_total": learning.decays.load(std::sync::atomic::Ordering::Relaxed),
        });
        performance["rejections"] = self.state.pipeline.stack.rejections.to_json();
        performance["cache"] = self.state.pipeline.stack.caches.stats_json();
        if let Some(ng) = &self.state.pipeline.neurogenesis {
            performance["neurogenesis"] = ng.stats.to_json();
        }
        performance["rate_limit_fallbacks_total"] = json!(self
            .state
            .metrics
            .rate_limit_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed));
        performance["rejections"]["inbound_rate_limited"] = json!(self
            .state
            .metrics
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed));
        if let Some(l) = &self.state.client_limiter {
            performance["rate_limited_clients_tracked"] = json!(l.tracked_clients());
        }
        let conns = &self.state.connections;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        performance["connections"] = json!({
            "open": get(&conns.open),
            "accepted_total": get(&conns.accepted),
            "refused_total": get(&conns.refused),
            "evicted_total": get(&conns.evicted),
            "idle_closed_total": get(&conns.idle_closed),
            "accept_errors_total": get(&conns.accept_errors),
        });
        MetricsBody {
            service: "orchestrator".into(),
            version: VERSION.into(),
            features: Features {
                autonomous_learning: self.state.pipeline.learner.enabled(),
                dynamic_agents: c.enable_dynamic_agents,
                cache: c.cache_enabled,
                redis: c.redis_url.is_some(),
                tracing: self.state.tracing_enabled,
                remote_input_processor: c.input_processor_url.is_some(),
                remote_output_processor: c.output_processor_url.is_some(),
                graph_backend: self.state.pipeline.graph.backend().into(),
            },
            performance,
        }
    }

    /// Dependency probes for `/status`, bounded and briefly cached.
    async fn dependencies(&self) -> (Value, bool) {
        if let Some((at, deps, degraded)) = self.state.status_cache.lock().unwrap().clone() {
            if at.elapsed() < STATUS_CACHE {
                return (deps, degraded);
            }
        }
        let graph = &self.state.pipeline.graph;
        let started = Instant::now();
        let graph_ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, graph.ping()).await,
            Ok(Ok(()))
        );
        let graph_ms = started.elapsed().as_secs_f64() * 1000.0;
        let agents = match tokio::time::timeout(PROBE_TIMEOUT, graph.agents()).await {
            Ok(Ok(list)) => list,
            _ => Vec::new(),
        };
        let agent_states: serde_json::Map<String, Value> = agents
            .iter()
            .map(|a| {
                (
                    a.agent.name.clone(),
                    self.state.pipeline.stack.agent_status(&a.agent.name),
                )
            })
            .collect();
        let redis = match &self.state.pipeline.stack.caches.store {
            None => json!({"status": "not_configured"}),
            Some(store) => {
                let ping = tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await;
                let mut health = serde_json::to_value(store.health()).unwrap_or_default();
                if !matches!(ping, Ok(Ok(()))) {
                    health["status"] = json!("degraded");
                }
                health
            }
        };
        let redis_ok = redis["status"] != "degraded";
        let degraded = !graph_ok || !redis_ok;
        let deps = json!({
            "graph": {"backend": graph.backend(), "status": if graph_ok { "up" } else { "down" }, "probe_ms": graph_ms},
            "redis": redis,
            "telemetry": if self.state.tracing_enabled {
                json!({"status": "exporting", "protocol": self.state.config.public_view()["otel_protocol"], "service_name": self.state.config.tracing.service_name})
            } else {
                json!({"status": "disabled"})
            },
            "agents": agent_states,
        });
        *self.state.status_cache.lock().unwrap() = Some((Instant::now(), deps.clone(), degraded));
        (deps, degraded)
    }

    fn task_specs(&self, tasks: Vec<TaskInput>) -> Result<Vec<TaskSpec>, ApiError> {
        if tasks.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "tasks must list at least one task",
            ));
        }
        let max = self.state.config.max_tasks;
        if tasks.len() > max {
            return Err(ApiError::too_large(
                "too_many_tasks",
                format!(
                    "a batch holds at most {max} tasks (MAX_TASKS); this one has {}",
                    tasks.len()
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(tasks.len());
        let mut specs = Vec::with_capacity(tasks.len());
        for t in tasks {
            let task_id = t.task_id.to_value();
            let key = crate::pipeline::task_key(&task_id);
            if key.chars().count() > MAX_ID_CHARS {
                return Err(ApiError::bad_request(
                    "invalid_task_id",
                    format!("task_id must be at most {MAX_ID_CHARS} characters"),
                ));
            }
            if !seen.insert(key.clone()) {
                return Err(ApiError::bad_request(
                    "duplicate_task_id",
                    format!("task_id {key:?} appears more than once"),
                ));
            }
            let args = match t.args.and_then(|a| a.0).map(|o| Value::Object(o.0)) {
                None | Some(Value::Null) => json!({}),
                Some(v @ Value::Object(_)) => {
                    let config = &self.state.config;
                    if json_depth(&v) > config.max_args_depth {
                        return Err(ApiError::bad_request(
                            "args_too_deep",
                            format!(
                                "task {key:?}: args nest deeper than {} levels (MAX_ARGS_DEPTH)",
                                config.max_args_depth
                            ),
                        ));
                    }
                    if serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len())
                        > config.max_args_bytes
                    {
                        return Err(ApiError::too_large(
                            "args_too_large",
                            format!(
                                "task {key:?}: args are larger than {} bytes (MAX_ARGS_BYTES)",
                                config.max_args_bytes
                            ),
                        ));
                    }
                    v
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "invalid_args",
                        format!("task {key:?}: args must be a JSON object"),
                    ))
                }
            };
            let concept = validate_concept(&t.concept)?;
            if self.state.config.enable_dynamic_agents {
                validate_new_concept(&concept)?;
            }
            specs.push(TaskSpec {
                task_id,
                concept,
                intent: validate_intent(&t.intent)?,
                args,
            });
        }
        Ok(specs)
    }

    async fn process_impl(
        &self,
        req: ProcessRequest,
        use_cache: bool,
    ) -> Result<Json<ProcessResponse>, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.state.metrics.process_requests.fetch_add(1, Relaxed);
        let config = &self.state.config;
        let deadline = Instant::now() + config.request_timeout;
        match req {
            ProcessRequest::Batch(BatchRequest { tasks, .. }) => {
                let specs = self.task_specs(tasks)?;
                let results = self
                    .state
                    .pipeline
                    .run_batch(&specs, deadline, use_cache)
                    .await;
                Ok(Json(ProcessResponse {
                    status: overall_status(&results).to_string(),
                    result: None,
                    answer: None,
                    tasks: None,
                    results: by_id(results),
                }))
            }
            ProcessRequest::Query(QueryRequest { query, user_id }) => {
                let query = query.trim().to_string();
                let user_id = user_id
                    .as_ref()
                    .and_then(|u| u.0.as_ref())
                    .map(|u| u.0.as_str());
                if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("query must be 1–{MAX_QUERY_CHARS} characters"),
                    ));
                }
                if user_id
                    .as_ref()
                    .is_some_and(|u| u.chars().count() > MAX_ID_CHARS)
                {
                    return Err(ApiError::bad_request(
                        "invalid_user_id",
                        format!("user_id must be at most {MAX_ID_CHARS} characters"),
                    ));
                }
                let transport = self.state.pipeline.stack.transport().as_ref();
                let step = config
                    .agent_timeout
                    .min(crate::pipeline::remaining(deadline));
                let parsed = processors::parse_query(
                    transport,
                    config.input_processor_url.as_deref(),
                    &query,
                    user_id,
                    step,
                )
                .await;
                let mut specs = match parsed {
                    Ok(specs) => specs,
                    // Not a client error: the question was fine, it just names nothing we
                    // can route. The answer says so, like any task that finds no agent.
                    Err(processors::InputError::NothingToDo) => {
                        return Ok(Json(unparseable()));
                    }
                    Err(processors::InputError::Unavailable) => {
                        return Err(ApiError::bad_gateway(
                            "input_processor_unavailable",
                            "the input processor did not answer",
                        ))
                    }
                    Err(processors::InputError::BadAnswer) => {
                        return Err(ApiError::bad_gateway(
                            "input_processor_invalid",
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
                let results = self
                    .state
                    .pipeline
                    .run_batch(&specs, deadline, use_cache)
                    .await;
                let step = config
                    .agent_timeout
                    .min(crate::pipeline::remaining(deadline));
                let answer = processors::synthesize(
                    transport,
                    config.output_processor_url.as_deref(),
                    &query,
                    user_id,
                    &results,
                    step,
                )
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
                Ok(Json(ProcessResponse {
                    status: overall_status(&results).to_string(),
                    result: results.first().cloned().map(TaskResultBody),
                    answer: Some(answer),
                    tasks: Some(tasks),
                    results: by_id(results),
                }))
            }
        }
    }
}

/// The answer to a question that names no concept.
fn unparseable() -> ProcessResponse {
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
        status: "failed".into(),
        result: Some(TaskResultBody(result.clone())),
        answer: Some(json!(
            "I could not find a concept in that question. Try \"What is a lightbulb?\""
        )),
        tasks: Some(Vec::new()),
        results: BTreeMap::from([("1".to_string(), TaskResultBody(result))]),
    }
}

/// Nesting depth of a JSON value (a scalar is 0).
fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn by_id(results: Vec<crate::pipeline::TaskResult>) -> BTreeMap<String, TaskResultBody> {
    results
        .into_iter()
        .map(|r| (crate::pipeline::task_key(&r.task_id), TaskResultBody(r)))
        .collect()
}

#[OpenApi]
impl Api {
    /// Liveness: answers without touching any dependency.
    #[oai(path = "/health", method = "get", tag = "Tag::Operations")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "healthy".into(),
            service: "orchestrator".into(),
            version: VERSION.into(),
        })
    }

    /// Readiness for a load balancer: 200 when tasks can be routed, 503 with reasons if not.
    #[oai(path = "/ready", method = "get", tag = "Tag::Operations")]
    async fn ready(&self) -> ReadyResponse {
        let graph = &self.state.pipeline.graph;
        let mut reasons = Vec::new();
        let agents = match tokio::time::timeout(PROBE_TIMEOUT, graph.agents()).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) | Err(_) => {
                reasons.push("the knowledge graph is unavailable".to_string());
                Vec::new()
            }
        };
        let routable = agents
            .iter()
            .filter(|a| a.agent.status == "active" && self.breaker(&a.agent.name) != "open")
            .count();
        if reasons.is_empty() && routable == 0 {
            reasons.push("no agent can currently be routed to".to_string());
        }
        if reasons.is_empty() {
            ReadyResponse::Ready(Json(Ready {
                status: "ready".into(),
                routable_agents: routable as u32,
            }))
        } else {
            ReadyResponse::NotReady(Json(NotReady {
                error: format!("not ready: {}", reasons.join("; ")),
                code: "not_ready".into(),
                reasons,
            }))
        }
    }

    /// Service status with dependency health (probes bounded to 1 s and cached for 1 s).
    #[oai(path = "/status", method = "get", tag = "Tag::Operations")]
    async fn status(&self, auth: ClientAuth) -> Result<Json<StatusBody>, AuthError> {
        self.authenticate_ops(&auth)?;
        let (dependencies, degraded) = self.dependencies().await;
        Ok(Json(StatusBody {
            service: "orchestrator".into(),
            status: if degraded { "degraded" } else { "running" }.into(),
            version: VERSION.into(),
            uptime_s: self.state.metrics.uptime().as_secs_f64(),
            dependencies,
            environment: self.state.config.public_view(),
        }))
    }

    /// Every agent with its intents, concepts (with learned weights) and breaker state.
    #[oai(path = "/agents", method = "get", tag = "Tag::Routing")]
    async fn agents(&self, auth: ClientAuth) -> Result<Json<AgentList>, AgentsError> {
        self.authenticate(&auth).map_err(|e| {
            let AuthError::Unauthorized(b) = e;
            AgentsError::Unauthorized(b)
        })?;
        let records = self.state.pipeline.graph.agents().await.map_err(|e| {
            tracing::warn!(error = %e, "listing agents failed");
            AgentsError::Unavailable(Json(ErrorBody::new(
                "graph_unavailable",
                "the knowledge graph is unavailable",
            )))
        })?;
        let agents: Vec<AgentView> = records
            .iter()
            .map(|r| agent_view(r, &self.live(&r.agent.name)))
            .collect();
        Ok(Json(AgentList {
            count: agents.len() as u32,
            agents,
        }))
    }

    /// Registers an agent, or updates the agent of that name (admin). Caches of every
    /// replica forget what they held about it and its concepts.
    #[oai(path = "/agents", method = "post", tag = "Tag::Admin")]
    async fn register_agent(
        &self,
        key: AdminKey,
        body: Json<AgentRegistration>,
    ) -> Result<Json<Registered>, AdminError> {
        self.check_admin(&key)?;
        let (agent, concepts) = self.registration(body.0)?;
        let graph = &self.state.pipeline.graph;
        let existed = graph
            .upsert_agent(agent.clone(), &concepts)
            .await
            .map_err(|e| graph_unavailable(e, "registering an agent failed"))?;
        tracing::info!(agent = %agent.name, existed, "agent registered");
        self.state
            .pipeline
            .stack
            .caches
            .invalidate(Invalidation {
                agents: vec![agent.name.clone()],
                concepts: concepts.iter().map(|(c, _)| c.clone()).collect(),
            })
            .await;
        let record = graph
            .agents()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|a| a.agent.name == agent.name))
            .unwrap_or(AgentRecord {
                agent,
                concepts: Vec::new(),
            });
        Ok(Json(Registered {
            status: if existed { "updated" } else { "registered" }.into(),
            agent: agent_view(&record, &self.live(&record.agent.name)),
        }))
    }

    /// Removes an agent and its edges (admin). Caches of every replica forget it.
    #[oai(path = "/agents/:name", method = "delete", tag = "Tag::Admin")]
    async fn remove_agent(
        &self,
        key: AdminKey,
        name: Path<String>,
    ) -> Result<Json<Removed>, AdminError> {
        self.check_admin(&key)?;
        let removed = self
            .state
            .pipeline
            .graph
            .remove_agent(&name)
            .await
            .map_err(|e| graph_unavailable(e, "removing an agent failed"))?;
        let Some(concepts) = removed else {
            return Err(AdminError::NotFound(Json(ErrorBody::new(
                "agent_not_found",
                "no agent of that name",
            ))));
        };
        tracing::info!(agent = %name.0, "agent removed");
        self.state
            .pipeline
            .stack
            .caches
            .invalidate(Invalidation {
                agents: vec![name.0.clone()],
                concepts: concepts.clone(),
            })
            .await;
        Ok(Json(Removed {
            status: "removed".into(),
            name: name.0,
            concepts,
        }))
    }

    /// Counters and feature flags as JSON (the default, `Accept: */*`), or the Prometheus
    /// text exposition when the client asks for `text/plain` or OpenMetrics, as scrapers do.
    #[oai(path = "/metrics", method = "get", tag = "Tag::Operations")]
    async fn metrics(&self, req: &Request, auth: ClientAuth) -> Result<MetricsResponse, AuthError> {
        self.authenticate_ops(&auth)?;
        Ok(if wants_prometheus(req) {
            MetricsResponse::Ok(MetricsContent::Text(PlainText(prom::PROM.render())))
        } else {
            MetricsResponse::Ok(MetricsContent::Json(Json(self.metrics_body())))
        })
    }

    /// Alias of `GET /metrics` (JSON), kept for existing clients.
    #[oai(path = "/metrics/json", method = "get", tag = "Tag::Operations")]
    async fn metrics_json(&self, auth: ClientAuth) -> Result<Json<MetricsBody>, AuthError> {
        self.authenticate_ops(&auth)?;
        Ok(Json(self.metrics_body()))
    }

    /// Which agent handles a concept and intent, with every ranked candidate.
    #[oai(path = "/discover", method = "post", tag = "Tag::Routing")]
    async fn discover(
        &self,
        req: &Request,
        auth: ClientAuth,
        body: Json<DiscoverRequest>,
    ) -> Result<DiscoverResponse, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.authenticate(&auth)?;
        self.admit(req).await?;
        self.state.metrics.discover_requests.fetch_add(1, Relaxed);
        let concept = validate_concept(&body.concept)?;
        let intent = validate_intent(
            body.intent
                .as_ref()
                .and_then(|i| i.0.as_deref())
                .unwrap_or("define"),
        )?;
        let candidates: Vec<Candidate> = self
            .state
            .pipeline
            .discover(&concept, &intent, use_cache(req))
            .await
            .map(|(candidates, _)| candidates)
            .map_err(|e| {
                tracing::warn!(error = %e, "discovery failed");
                ApiError::unavailable("graph_unavailable", "the knowledge graph is unavailable")
            })?;
        let pipeline = &self.state.pipeline;
        let assessed = pipeline.assess(&candidates);
        // Best first: by score under the score policy (refused breakers last), in the
        // graph's order under the weight policy; the best is the first a call would pass.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        if pipeline.router.policy() == PolicyKind::Score {
            order.sort_by(|&a, &b| {
                let refused = |i: usize| assessed[i].0.admission == Admission::Refused;
                refused(a)
                    .cmp(&refused(b))
                    .then(assessed[b].0.score().total_cmp(&assessed[a].0.score()))
            });
        }
        let Some(&best) = order
            .iter()
            .find(|&&i| assessed[i].0.admission != Admission::Refused)
            .or(order.first())
        else {
            let message = format!("no agent handles intent '{intent}' for concept '{concept}'");
            return Ok(DiscoverResponse::NotFound(Json(NoAgentFound {
                status: "no_agent_found".into(),
                concept,
                intent,
                agent_url: Nullable(None),
                error: message.clone(),
                message,
                code: "no_agent_found".into(),
            })));
        };
        let record = AgentRecord {
            agent: candidates[best].agent.clone(),
            concepts: vec![(concept.clone(), candidates[best].stats.clone())],
        };
        Ok(DiscoverResponse::Found(Json(Discovered {
            status: "success".into(),
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
                        breaker: live.breaker.as_str().into(),
                        score: inputs.score(),
                        health: live.health,
                        latency_ms: Nullable(live.latency_ms),
                        in_flight: live.in_flight,
                        slow_start: live.ramp,
                        share: Nullable(live.share),
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
        req: &Request,
        auth: ClientAuth,
        body: Json<ProcessRequest>,
    ) -> Result<Json<ProcessResponse>, ApiError> {
        self.authenticate(&auth)?;
        self.admit(req).await?;
        self.process_impl(body.0, use_cache(req)).await
    }

    /// Alias of `POST /process`, kept for existing clients.
    #[oai(path = "/process_query", method = "post", tag = "Tag::Routing")]
    async fn process_query(
        &self,
        req: &Request,
        auth: ClientAuth,
        body: Json<ProcessRequest>,
    ) -> Result<Json<ProcessResponse>, ApiError> {
        self.authenticate(&auth)?;
        self.admit(req).await?;
        self.process_impl(body.0, use_cache(req)).await
    }
}

/// The OpenAPI service (also used by `myriad-orchestrator openapi`).
pub fn service(state: Arc<AppState>) -> OpenApiService<Api, ()> {
    OpenApiService::new(Api::new(state), "Myriad Orchestrator", VERSION).description(
        "Routes questions and concept/intent tasks to agent services found in a knowledge graph, \
         through rate limits, circuit breakers, retries and caches.",
    )
}

/// The whole HTTP application: API, `/openapi.json`, Swagger UI at `/docs`, and the edge
/// middleware (server span, body limit, error normalization, request metrics).
pub fn app(state: Arc<AppState>) -> impl Endpoint {
    let api = service(state.clone());
    let ui = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec)
        .nest("/", api)
        .into_endpoint()
        .around(move |ep, req| {
            let state = state.clone();
            async move { Ok::<_, poem::Error>(edge(&*ep, req, &state).await) }
        })
}

/// Everything every request goes through, once.
async fn edge<E: Endpoint>(ep: &E, req: Request, state: &AppState) -> poem::Response {
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = prom::route_template(req.uri().path());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    span.set_parent(crate::telemetry::extract(req.headers()));
    let max_body = state.config.max_body_bytes;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    let max_headers = state.config.max_header_bytes;
    let mut resp = async {
        if header_bytes > max_headers {
            return errors::error_response(
                poem::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("request line and headers exceed {max_headers} bytes (MAX_HEADER_BYTES)"),
            );
        }
        match errors::limit_body(req, max_body, state.config.body_read_timeout).await {
            Ok(req) => errors::normalize(ep, req).await,
            Err(resp) => resp,
        }
    }
    .instrument(span.clone())
    .await;
    let status = resp.status().as_u16();
    if status == 405 {
        if let Ok(v) = poem::http::HeaderValue::from_str(prom::allowed_methods(route)) {
            resp.headers_mut().insert(poem::http::header::ALLOW, v);
        }
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let trace_id = span
        .in_scope(crate::telemetry::current_trace_id)
        .filter(|_| state.tracing_enabled);
    if let Some(id) = &trace_id {
        if let Ok(v) = poem::http::HeaderValue::from_str(id) {
            resp.headers_mut().insert("x-trace-id", v);
        }
        if status >= 400 {
            resp = errors::with_trace_id(resp, id).await;
        }
    }
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            route,
            method = %method,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        )
    });
    state.metrics.record_status(status);
    let p = &prom::PROM;
    p.http_requests
        .with_label_values(&[route, method.as_str(), &status.to_string()])
        .inc();
    p.http_duration
        .with_label_values(&[route, method.as_str()])
        .observe(elapsed.as_secs_f64());
    resp
}
