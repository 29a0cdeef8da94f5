//! Operations: liveness, readiness, status and metrics.

use std::time::Duration;

use poem::Request;
use poem_openapi::{
    payload::{Json, PlainText},
    ApiResponse, OpenApi, ResponseContent,
};
use tokio::time::Instant;

use super::{
    auth::ClientAuth,
    dto::*,
    errors::{AuthError, ErrorCode},
    AppState, State, Tag,
};
use crate::{
    config::kinds::Named, metrics::document::Sizes, resilience::breaker::BreakerState, VERSION,
};

pub struct OpsApi;

/// True when `Accept` names `text/plain` or OpenMetrics before (or without) JSON.
pub(super) fn wants_prometheus(req: &Request) -> bool {
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
pub(super) enum MetricsContent {
    Json(Json<Box<MetricsBody>>),
    Text(PlainText<String>),
}

#[derive(ApiResponse)]
pub(super) enum MetricsResponse {
    /// JSON counters, or Prometheus text (`text/plain; version=0.0.4`).
    #[oai(status = 200)]
    Ok(MetricsContent),
}

#[derive(ApiResponse)]
pub(super) enum ReadyResponse {
    /// The service can route tasks.
    #[oai(status = 200)]
    Ready(Json<Ready>),
    /// The service cannot route; `reasons` says why.
    #[oai(status = 503)]
    NotReady(Json<NotReady>),
}

/// The answer of an operation that may refuse a client without a valid key.
type Authed<T> = Result<Json<T>, AuthError>;

/// How long `/status` reuses its dependency probes.
pub(super) const STATUS_CACHE: Duration = Duration::from_secs(1);
/// Upper bound of one dependency probe.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl AppState {
    pub(super) fn metrics_body(&self) -> MetricsBody {
        let c = &self.config;
        let performance = self.metrics.performance(Sizes {
            l1_entries: self.pipeline.stack.caches.l1_entries(),
            clients_tracked: self
                .client_limiter
                .as_ref()
                .map(|l| l.tracked_clients() as u64),
            neurogenesis: self.pipeline.neurogenesis.is_some(),
        });
        MetricsBody {
            service: "orchestrator".into(),
            version: VERSION.into(),
            features: Features {
                autonomous_learning: self.pipeline.learner.enabled(),
                dynamic_agents: c.enable_dynamic_agents,
                cache: c.cache.enabled,
                redis: c.redis_url.is_some(),
                tracing: self.tracing_enabled,
                remote_input_processor: c.input_processor_url.is_some(),
                remote_output_processor: c.output_processor_url.is_some(),
                graph_backend: self.pipeline.graph.backend().into(),
            },
            performance,
        }
    }

    /// Dependency probes for `/status`, bounded and briefly cached.
    pub(super) async fn dependencies(&self) -> (Dependencies, bool) {
        if let Some((at, deps, degraded)) = self.status_cache.lock().unwrap().clone() {
            if at.elapsed() < STATUS_CACHE {
                return (deps, degraded);
            }
        }
        let graph = &self.pipeline.graph;
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
        let agents = agents
            .iter()
            .map(|a| {
                let load = self.pipeline.stack.agent_load(&a.agent.name);
                (a.agent.name.clone(), load.into())
            })
            .collect();
        let redis = match &self.pipeline.stack.caches.store {
            None => RedisDependency {
                status: "not_configured".into(),
                breaker: None,
                errors_total: None,
                short_circuited_total: None,
                recoveries_total: None,
                shared_health: None,
            },
            Some(store) => {
                let answered = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await,
                    Ok(Ok(()))
                );
                let h = store.status();
                RedisDependency {
                    status: if answered { h.status } else { "degraded" }.into(),
                    breaker: Some(h.breaker.into()),
                    errors_total: Some(h.errors_total),
                    short_circuited_total: Some(h.short_circuited_total),
                    recoveries_total: Some(h.recoveries_total),
                    shared_health: self
                        .pipeline
                        .stack
                        .shared_health()
                        .map(|s| s.mode().to_string()),
                }
            }
        };
        let degraded = !graph_ok || redis.status == "degraded";
        let telemetry = if self.tracing_enabled {
            TelemetryDependency {
                status: "exporting".into(),
                protocol: Some(self.config.tracing.protocol.name().into()),
                service_name: Some(self.config.tracing.service_name.clone()),
            }
        } else {
            TelemetryDependency {
                status: "disabled".into(),
                protocol: None,
                service_name: None,
            }
        };
        let deps = Dependencies {
            graph: GraphDependency {
                backend: graph.backend().into(),
                status: if graph_ok { "up" } else { "down" }.into(),
                probe_ms: graph_ms,
            },
            redis,
            telemetry,
            agents,
        };
        *self.status_cache.lock().unwrap() = Some((Instant::now(), deps.clone(), degraded));
        (deps, degraded)
    }
}

#[OpenApi]
impl OpsApi {
    /// Liveness: answers without touching any dependency.
    #[oai(path = "/health", method = "get", tag = "Tag::Operations")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: Liveness::Healthy,
            service: "orchestrator".into(),
            version: VERSION.into(),
        })
    }

    /// Readiness for a load balancer: 200 when tasks can be routed, 503 with reasons if not.
    #[oai(path = "/ready", method = "get", tag = "Tag::Operations")]
    async fn ready(&self, state: State<'_>) -> ReadyResponse {
        let graph = &state.pipeline.graph;
        let mut reasons = Vec::new();
        let mut warnings = Vec::new();
        let agents = match tokio::time::timeout(PROBE_TIMEOUT, graph.agents()).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) | Err(_) => {
                // Routes discovery remembers keep being served while the graph is away: a
                // replica that can still route stays in its load balancer (a graph outage
                // would otherwise take every replica out of it at once).
                let caches = &state.pipeline.stack.caches;
                let known = (caches.discovery.entries_now() as u64).max(caches.routes.len());
                if known > 0 {
                    warnings.push(format!(
                        "the knowledge graph is unavailable; routing from {known} remembered discovery answers"
                    ));
                } else {
                    reasons.push("the knowledge graph is unavailable".to_string());
                }
                Vec::new()
            }
        };
        let routable = agents
            .iter()
            .filter(|a| {
                a.agent.status == "active" && state.breaker(&a.agent.name) != BreakerState::Open
            })
            .count();
        if reasons.is_empty() && warnings.is_empty() && routable == 0 {
            reasons.push("no agent can currently be routed to".to_string());
        }
        if reasons.is_empty() {
            ReadyResponse::Ready(Json(Ready {
                status: Readiness::Ready,
                routable_agents: routable as u32,
                warnings,
            }))
        } else {
            ReadyResponse::NotReady(Json(NotReady {
                error: format!("not ready: {}", reasons.join("; ")),
                code: ErrorCode::NotReady,
                reasons,
            }))
        }
    }

    /// Service status with dependency health (probes bounded to 1 s and cached for 1 s).
    #[oai(path = "/status", method = "get", tag = "Tag::Operations")]
    async fn status(&self, state: State<'_>, auth: ClientAuth) -> Authed<StatusBody> {
        state.authenticate_ops(&auth)?;
        let (dependencies, degraded) = state.dependencies().await;
        Ok(Json(StatusBody {
            service: "orchestrator".into(),
            status: if degraded {
                ServiceStatus::Degraded
            } else {
                ServiceStatus::Running
            },
            version: VERSION.into(),
            uptime_s: state.metrics.uptime().as_secs_f64(),
            dependencies,
            environment: state.config.public_view(),
        }))
    }

    /// Counters and feature flags as JSON (the default, `Accept: */*`), or the Prometheus
    /// text exposition when the client asks for `text/plain` or OpenMetrics, as scrapers do.
    #[oai(path = "/metrics", method = "get", tag = "Tag::Operations")]
    async fn metrics(
        &self,
        state: State<'_>,
        req: &Request,
        auth: ClientAuth,
    ) -> Result<MetricsResponse, AuthError> {
        state.authenticate_ops(&auth)?;
        Ok(if wants_prometheus(req) {
            MetricsResponse::Ok(MetricsContent::Text(PlainText(state.metrics.render())))
        } else {
            MetricsResponse::Ok(MetricsContent::Json(Json(Box::new(state.metrics_body()))))
        })
    }

    /// Alias of `GET /metrics` (JSON), kept for existing clients.
    #[oai(path = "/metrics/json", method = "get", tag = "Tag::Operations")]
    async fn metrics_json(&self, state: State<'_>, auth: ClientAuth) -> Authed<MetricsBody> {
        state.authenticate_ops(&auth)?;
        Ok(Json(state.metrics_body()))
    }
}
