//! The schema's types: what the graph and the routing state read as, and a batch's
//! tasks, results and events.

use async_graphql::{Enum, InputObject, Json, SimpleObject, Union};
use serde_json::Value;

use crate::pipeline::TaskResult;

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
    /// Estimated success share on this concept (the mean of the decayed success posterior
    /// the `learned` policy routes on; the graph weight its prior).
    pub estimate: f64,
    /// Standard deviation of the estimate.
    pub estimate_sd: f64,
    /// Outcomes behind the estimate beyond its prior (decayed).
    pub evidence: f64,
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

impl From<crate::api::dto::OverallStatus> for OverallStatus {
    fn from(s: crate::api::dto::OverallStatus) -> Self {
        match s {
            crate::api::dto::OverallStatus::Success => OverallStatus::Success,
            crate::api::dto::OverallStatus::Partial => OverallStatus::Partial,
            crate::api::dto::OverallStatus::Failed => OverallStatus::Failed,
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
            data: Json(r.data.into_value()),
            concept: r.concept,
            intent: r.intent,
            cached: r.cached.map(str::to_string),
            stale: r.stale,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            code: r.code.map(|c| c.as_str().to_string()),
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
