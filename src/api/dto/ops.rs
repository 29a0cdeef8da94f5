//! Bodies of the operations endpoints: liveness, readiness, status and metrics.

use std::collections::BTreeMap;

use poem_openapi::Object;
use serde_json::Value;

use super::Breaker;

/// Always `healthy` while the process serves.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Liveness {
    Healthy,
}

/// `ready`.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
}

#[derive(Object, Debug)]
pub struct Health {
    pub status: Liveness,
    /// Always `orchestrator`.
    pub service: String,
    /// Crate version.
    pub version: String,
}

#[derive(Object, Debug)]
pub struct Ready {
    pub status: Readiness,
    /// Agents that can currently be routed to (0 while the graph is away: unknown).
    pub routable_agents: u32,
    /// Ready, but degraded: e.g. the graph is away and routes come from what discovery
    /// remembers.
    #[oai(default, skip_serializing_if_is_empty)]
    pub warnings: Vec<String>,
}

#[derive(Object, Debug)]
pub struct NotReady {
    pub error: String,
    pub code: crate::api::errors::ErrorCode,
    /// Every reason the service cannot route.
    pub reasons: Vec<String>,
}

#[derive(Object, Debug)]
pub struct StatusBody {
    /// Always `orchestrator`.
    pub service: String,
    pub status: ServiceStatus,
    pub version: String,
    pub uptime_s: f64,
    pub dependencies: Dependencies,
    /// Non-secret settings.
    pub environment: Value,
}

#[derive(Object, Debug)]
pub struct Features {
    pub autonomous_learning: bool,
    pub dynamic_agents: bool,
    pub cache: bool,
    pub redis: bool,
    pub tracing: bool,
    pub remote_input_processor: bool,
    pub remote_output_processor: bool,
    pub graph_backend: String,
}

#[derive(Object, Debug)]
pub struct MetricsBody {
    /// Always `orchestrator`.
    pub service: String,
    pub version: String,
    pub features: Features,
    pub performance: crate::metrics::document::Performance,
}

/// How the service is: `running`, or `degraded` when a dependency is unhealthy.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ServiceStatus {
    Running,
    Degraded,
}

/// Graph, Redis, telemetry and per-agent breaker state, probed at most once a second.
#[derive(Object, Debug, Clone)]
pub struct Dependencies {
    pub graph: GraphDependency,
    pub redis: RedisDependency,
    pub telemetry: TelemetryDependency,
    /// Every agent the graph lists, by name.
    pub agents: BTreeMap<String, AgentState>,
}

/// The knowledge graph: `up` or `down`, and how long the probe took.
#[derive(Object, Debug, Clone)]
pub struct GraphDependency {
    /// `memory` or `neo4j`.
    pub backend: String,
    /// `up` or `down`.
    pub status: String,
    pub probe_ms: f64,
}

/// The shared store: `not_configured`, `up`, or `degraded` (then the service runs on L1
/// and local limits).
#[derive(Object, Debug, Clone)]
#[oai(skip_serializing_if_is_none)]
pub struct RedisDependency {
    /// `not_configured`, `up` or `degraded`.
    pub status: String,
    pub breaker: Option<Breaker>,
    pub errors_total: Option<u64>,
    pub short_circuited_total: Option<u64>,
    /// Times the background probe saw Redis answer again and closed the breaker.
    pub recoveries_total: Option<u64>,
    /// Agent health between replicas: `shared` (publishing and subscribed) or `alone`
    /// (Redis away: this replica routes on what it sees itself).
    pub shared_health: Option<String>,
}

/// Trace export: `exporting` (with protocol and service name) or `disabled`.
#[derive(Object, Debug, Clone)]
#[oai(skip_serializing_if_is_none)]
pub struct TelemetryDependency {
    /// `exporting` or `disabled`.
    pub status: String,
    pub protocol: Option<String>,
    pub service_name: Option<String>,
}

/// One agent's breaker and load.
#[derive(Object, Debug, Clone)]
pub struct AgentState {
    pub breaker: Breaker,
    pub in_flight: u32,
    /// Calls in flight allowed now: `AGENT_MAX_INFLIGHT`, or with `AGENT_CONCURRENCY=adaptive`
    /// the limit the agent's latency sets.
    pub concurrency_limit: u32,
    /// Share of upstream faults among the last 100 calls.
    pub recent_failure_rate: f64,
    pub calls_total: u64,
    pub breaker_opened_total: u64,
    /// Another replica's breaker for this agent is open, so this one holds calls back.
    pub held_by_peer: bool,
}

impl From<crate::resilience::AgentLoad> for AgentState {
    fn from(l: crate::resilience::AgentLoad) -> Self {
        AgentState {
            breaker: l.breaker.into(),
            in_flight: l.in_flight,
            concurrency_limit: l.concurrency_limit,
            recent_failure_rate: l.recent_failure_rate,
            calls_total: l.calls_total,
            breaker_opened_total: l.breaker_opened_total,
            held_by_peer: l.held_by_peer,
        }
    }
}
