//! What a call through the stack ends with: the reply, or the stage that refused it.

use crate::{
    agents::{AgentReply, CallError, Reply},
    cache::Tier,
    failure::FailureCode,
};

/// What one attempt ended with, for spans: `http_503`, `timeout`, `connect`, …
pub(super) fn attempt_outcome(err: &CallError) -> &'static str {
    match err {
        CallError::Connect => "connect_error",
        CallError::Timeout => "timeout",
        CallError::Transport => "connection_broken",
        CallError::InvalidBody => "invalid_body",
        CallError::Blocked => "blocked",
        CallError::Throttled { .. } => "http_429",
        CallError::Status { status, .. } => match status {
            400 => "http_400",
            404 => "http_404",
            429 => "http_429",
            500 => "http_500",
            502 => "http_502",
            503 => "http_503",
            504 => "http_504",
            s if *s < 500 => "http_4xx",
            _ => "http_5xx",
        },
    }
}

/// Why a call through the stack produced no reply.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The agent was called and failed (after any retries).
    Call(CallError),
    /// The agent's breaker is open (or half-open with its probes taken).
    BreakerOpen,
    /// The agent's outbound rate limit is exhausted.
    RateLimited,
    /// Too many calls to the agent are already in flight.
    BulkheadFull,
    /// The request deadline left no time for a call.
    Deadline,
    /// The agent answered 429 lately and its `Retry-After` has not passed.
    Throttled,
}

impl Failure {
    pub fn code(&self) -> FailureCode {
        match self {
            Failure::Call(e) => e.code(),
            Failure::BreakerOpen => FailureCode::BreakerOpen,
            Failure::RateLimited => FailureCode::RateLimited,
            Failure::BulkheadFull => FailureCode::BulkheadFull,
            Failure::Deadline => FailureCode::Timeout,
            Failure::Throttled => FailureCode::RateLimited,
        }
    }

    pub fn message(&self, agent: &str) -> String {
        match self {
            Failure::Call(e) => format!("agent {agent}: {e}"),
            Failure::BreakerOpen => {
                format!("agent {agent} is failing; its circuit breaker is open")
            }
            Failure::RateLimited => format!("agent {agent} is over its rate limit"),
            Failure::BulkheadFull => format!("agent {agent} has too many calls in flight"),
            Failure::Deadline => "the request deadline passed before an agent answered".to_string(),
            Failure::Throttled => {
                format!("agent {agent} asked to be sent nothing for a while (HTTP 429)")
            }
        }
    }

    /// True when the agent itself was called and its outcome says something about it (a
    /// 429 does not: the agent only asked for time).
    pub fn reached_agent(&self) -> bool {
        matches!(self, Failure::Call(e) if !matches!(e, CallError::Throttled { .. }))
    }
}

/// The result of one trip through the stack, how many HTTP attempts it took, and which
/// cache tier answered.
#[derive(Debug)]
pub struct CallOutcome {
    pub result: Result<Reply, Failure>,
    pub attempts: u32,
    pub cached: Option<Tier>,
    pub stale: bool,
}

impl CallOutcome {
    pub(super) fn upstream(result: Result<AgentReply, Failure>, attempts: u32) -> Self {
        CallOutcome {
            result: result.map(Reply::Own),
            attempts,
            cached: None,
            stale: false,
        }
    }
}
