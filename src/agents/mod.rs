//! Talking to agents: the agent protocol over HTTP, and the built-in demo agents.
//!
//! The pipeline sees [`AgentTransport`] and [`CallError`], never reqwest types.

pub mod demo;
pub mod endpoint;
pub mod http;
pub mod pool;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::failure::FailureCode;
use serde_json::{Map, Value};

/// The body of `POST <agent endpoint>` (unchanged from the original service).
#[derive(Debug, Clone, Serialize)]
pub struct AgentRequest {
    pub task_id: Value,
    pub intent: String,
    pub concept: String,
    pub args: Value,
}

/// A 2xx answer whose body is a JSON object. `body["status"]` says whether the agent
/// succeeded; every field passes through into the task result.
#[derive(Debug, Clone)]
pub struct AgentReply {
    pub body: Map<String, Value>,
}

impl AgentReply {
    pub fn succeeded(&self) -> bool {
        self.body.get("status").and_then(Value::as_str) == Some("success")
    }

    /// How sure the agent says it is of this answer: its optional `confidence`, a number in
    /// [0, 1]; anything else (absent, out of range, not a number) is no statement.
    pub fn confidence(&self) -> Option<f64> {
        self.body
            .get("confidence")
            .and_then(Value::as_f64)
            .filter(|c| (0.0..=1.0).contains(c))
    }
}

/// Why one call to an agent did not produce a reply. Knows who failed and whether a retry
/// is safe, so breaker, retry and status mapping read this instead of matching strings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Nothing accepted the connection (refused, unreachable, DNS): the request was never
    /// processed, so retrying is safe.
    #[error("cannot connect to the agent")]
    Connect,
    /// No complete answer within the per-try timeout.
    #[error("the agent did not answer in time")]
    Timeout,
    /// The connection broke mid-exchange; the agent may have acted.
    #[error("the connection to the agent failed")]
    Transport,
    /// A non-2xx status. A 4xx body, when it is a JSON object, passes through.
    #[error("the agent answered HTTP {status}")]
    Status {
        status: u16,
        body: Option<Map<String, Value>>,
    },
    /// A 429: the agent asks to be sent nothing for a while (`Retry-After`, if it said).
    /// Neither a fault of the agent nor an answer; not retried.
    #[error("the agent asked to slow down (HTTP 429)")]
    Throttled {
        retry_after: Option<Duration>,
        body: Option<Map<String, Value>>,
    },
    /// A 2xx whose body is not a valid agent response.
    #[error("the agent's answer is not a valid agent response")]
    InvalidBody,
    /// The endpoint's host is not in AGENT_ALLOWED_HOSTS; nothing was sent.
    #[error("the agent's endpoint is not an allowed host")]
    Blocked,
}

impl CallError {
    /// Upstream faults open breakers; an agent's 4xx never does.
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            CallError::Status { status, .. } => *status >= 500,
            CallError::Blocked | CallError::Throttled { .. } => false,
            _ => true,
        }
    }

    /// Safe to send again: the agent never saw it, or said so (502/503/504).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Connect => true,
            CallError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// Stable code reported in the task result.
    pub fn code(&self) -> FailureCode {
        match self {
            CallError::Timeout => FailureCode::Timeout,
            CallError::Blocked => FailureCode::EndpointNotAllowed,
            CallError::Throttled { .. } => FailureCode::RateLimited,
            CallError::Status { status, .. } if *status < 500 => FailureCode::AgentRejected,
            _ => FailureCode::UpstreamError,
        }
    }
}

#[async_trait]
pub trait AgentTransport: Send + Sync + 'static {
    /// One attempt: POST `req` to `endpoint`, answer within `timeout`.
    async fn call(
        &self,
        endpoint: &str,
        req: &AgentRequest,
        timeout: Duration,
    ) -> Result<AgentReply, CallError>;

    /// POST an arbitrary JSON body (remote input/output processors, collaboration).
    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upstream_faults_count_and_only_safe_failures_retry() {
        let s = |status| CallError::Status { status, body: None };
        assert!(!s(400).is_upstream_fault() && !s(400).is_retryable());
        assert!(s(500).is_upstream_fault() && !s(500).is_retryable());
        assert!(s(503).is_upstream_fault() && s(503).is_retryable());
        assert!(CallError::Connect.is_retryable());
        assert!(CallError::Timeout.is_upstream_fault() && !CallError::Timeout.is_retryable());
        assert!(!CallError::Transport.is_retryable());
        assert_eq!(s(404).code().as_str(), "agent_rejected");
        assert_eq!(CallError::Timeout.code().as_str(), "timeout");
        let throttled = CallError::Throttled {
            retry_after: None,
            body: None,
        };
        assert!(!throttled.is_upstream_fault() && !throttled.is_retryable());
        assert_eq!(throttled.code().as_str(), "rate_limited");
    }
}
