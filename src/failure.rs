//! Why a task failed: the stable codes a task result carries in `code` (and its span in
//! `code`), shared by an agent call's error, a refusal of the resilience stack and the
//! pipeline's own failures. Serialized as today's snake_case strings.

use serde::Serialize;

/// Declares [`FailureCode`] with its wire name for each variant, from one list.
macro_rules! failure_codes {
    ($($(#[$doc:meta])* $code:ident => $name:literal,)*) => {
        /// A task's failure code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub enum FailureCode {
            $($(#[$doc])* #[serde(rename = $name)] $code,)*
        }

        impl FailureCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [FailureCode] = &[$(FailureCode::$code,)*];

            /// The code as it is written in a task result.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureCode::$code => $name,)*
                }
            }
        }
    };
}

failure_codes! {
    /// No answer in time: the per-try timeout, or the request's deadline.
    Timeout => "timeout",
    /// The agent's endpoint is not an allowed host; nothing was sent.
    EndpointNotAllowed => "endpoint_not_allowed",
    /// The agent answered with a 4xx: it refused the task.
    AgentRejected => "agent_rejected",
    /// The agent failed: a 5xx, a broken connection, an answer that is not one.
    UpstreamError => "upstream_error",
    /// The agent answered, and its answer says it failed.
    AgentError => "agent_error",
    /// The agent's breaker is open (or half-open with its probes taken).
    BreakerOpen => "breaker_open",
    /// The agent's outbound rate limit is exhausted.
    RateLimited => "rate_limited",
    /// Too many calls to the agent are already in flight.
    BulkheadFull => "bulkhead_full",
    /// The knowledge graph did not answer, and no route to the concept is remembered.
    GraphUnavailable => "graph_unavailable",
    /// No agent handles the intent for the concept.
    NoAgent => "no_agent",
    /// A question that names no concept.
    UnparseableQuery => "unparseable_query",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_as_its_wire_name() {
        for code in FailureCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }
}
