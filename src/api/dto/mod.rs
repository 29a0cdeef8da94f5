//! Request and response bodies, as declared in the OpenAPI spec.

use std::{borrow::Cow, collections::BTreeMap};

use poem_openapi::{
    registry::{MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
    Object, Union,
};
use serde_json::Value;

use crate::{graph::EdgeStats, pipeline::TaskResult};

#[macro_use]
mod wire;
mod ops;

pub use ops::*;
pub use wire::*;

/// How a discovery went: `success`, or `no_agent_found`.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum DiscoverStatus {
    Success,
    NoAgentFound,
}

// Fields typed by an enum carry no doc comment: one would wrap the `$ref` in an `allOf`,
// which some client generators skip (the enum's schema carries the description).

#[derive(Object, Debug, Clone)]
pub struct ConceptEdge {
    /// Concept name.
    pub name: String,
    /// Learned weight in [0, 1].
    pub weight: f64,
    pub usage_count: u64,
    pub success_count: u64,
    pub failure_count: u64,
    pub success_rate: f64,
}

impl ConceptEdge {
    pub fn new(name: String, s: &EdgeStats) -> Self {
        ConceptEdge {
            name,
            weight: s.weight,
            usage_count: s.usage_count,
            success_count: s.success_count,
            failure_count: s.failure_count,
            success_rate: s.success_rate,
        }
    }
}

/// Circuit breaker state of an agent: `closed` (calls pass), `open` (calls refused),
/// `half_open` (a probe is due or under way).
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

impl From<crate::resilience::breaker::BreakerState> for Breaker {
    fn from(s: crate::resilience::breaker::BreakerState) -> Self {
        use crate::resilience::breaker::BreakerState;
        match s {
            BreakerState::Closed => Breaker::Closed,
            BreakerState::Open => Breaker::Open,
            BreakerState::HalfOpen => Breaker::HalfOpen,
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct AgentView {
    pub name: String,
    #[oai(rename = "type")]
    pub agent_type: String,
    pub endpoint: String,
    pub status: String,
    pub intents: Vec<String>,
    /// Concepts the agent handles, with the learned weight of each edge.
    pub concepts: Vec<ConceptEdge>,
    pub capabilities: Vec<String>,
    // Undocumented here on purpose: a doc comment would wrap the `$ref` in an `allOf`,
    // which some client generators skip (the Breaker schema carries the description).
    pub breaker: Breaker,
    /// Success share of this replica's recent calls to the agent (5 s window; 1 = healthy).
    pub health: f64,
    /// Moving average of its successful calls' latency (null until one succeeded).
    pub latency_ms: Nullable<f64>,
}

#[derive(Object, Debug)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    pub count: u32,
}

/// A concept name: 1–128 characters, not blank, no control characters.
pub const CONCEPT_PATTERN: &str = r"^[^\x00-\x1F\x7F\u0080-\u009F]*[^\s\x00-\x1F\x7F\u0080-\u009F][^\x00-\x1F\x7F\u0080-\u009F]*$";
/// An intent: 1–64 of a-z, A-Z, 0-9, `_`, `-`.
pub const INTENT_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

#[derive(Object, Debug)]
pub struct DiscoverRequest {
    /// Concept to route (1–128 characters, not blank).
    pub concept: Checked<ConceptRule>,
    /// Intent to route (default `define`).
    pub intent: Option<Nullable<Checked<IntentRule>>>,
}

#[derive(Object, Debug)]
pub struct CandidateView {
    pub name: String,
    pub endpoint: String,
    pub weight: f64,
    pub success_rate: f64,
    pub usage_count: u64,
    pub breaker: Breaker,
    /// Routing score: weight × health² ÷ (1 + latency_ms × (1 + in_flight) ÷ 100).
    pub score: f64,
    /// Success share of recent calls (5 s window; 1 = healthy).
    pub health: f64,
    /// Moving average of successful calls' latency (null until one succeeded).
    pub latency_ms: Nullable<f64>,
    /// Calls to the agent in flight now.
    pub in_flight: u32,
    /// Slow-start factor of its pick weight: 0.1 just after registration or recovery, 1 at
    /// full share.
    pub slow_start: f64,
    /// Share of recent routing decisions (10–20 s) where it came first (null: none yet).
    pub share: Nullable<f64>,
    /// Another replica's breaker for this agent is open: calls are held back here too
    /// (it is tried last), until that replica sees it recover or the hold runs out.
    pub held_by_peer: bool,
    /// The agent's region in the graph (null: none, or `REGION` unset on this replica).
    pub region: Nullable<String>,
    /// In this replica's region (`REGION`): such candidates come first at equal health;
    /// null when `REGION` is unset.
    pub local: Nullable<bool>,
    /// Estimated share of this concept's tasks the agent answers successfully: the mean of
    /// its decayed success posterior, the graph weight its prior (what the `learned`
    /// policy routes on).
    pub estimate: f64,
    /// Standard deviation of that estimate: how unsure it still is.
    pub estimate_sd: f64,
    /// Outcomes behind the estimate beyond its prior (decayed: older ones count less).
    pub evidence: f64,
}

/// A client's word on one task an agent answered.
#[derive(Object, Debug)]
pub struct FeedbackRequest {
    /// The `x-trace-id` header of the answer (32 hexadecimal digits; tracing must be on).
    pub trace_id: String,
    /// The task's `task_id` in that request.
    pub task_id: TaskId,
    /// Whether the answer was right.
    pub success: bool,
    /// How good it was, from 0 (wrong) to 1 (right); default 1 if `success`, else 0.
    #[oai(validator(minimum(value = "0"), maximum(value = "1")))]
    pub score: Option<f64>,
}

#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum FeedbackStatus {
    Accepted,
}

/// The feedback counted: one more outcome of the agent on the concept.
#[derive(Object, Debug)]
pub struct FeedbackAccepted {
    pub status: FeedbackStatus,
    /// The agent that answered the task.
    pub agent: String,
    pub concept: String,
    /// The agent's success estimate on the concept, the feedback in.
    pub estimate: f64,
}

#[derive(Object, Debug)]
pub struct Discovered {
    pub status: DiscoverStatus,
    pub concept: String,
    pub intent: String,
    /// Endpoint of the best candidate.
    pub agent_url: String,
    /// The best candidate.
    pub agent: AgentView,
    /// Every candidate, best first.
    pub candidates: Vec<CandidateView>,
}

#[derive(Object, Debug)]
pub struct NoAgentFound {
    pub status: DiscoverStatus,
    pub concept: String,
    pub intent: String,
    /// Always null.
    pub agent_url: Nullable<String>,
    pub message: String,
    /// Same as `message`.
    pub error: String,
    pub code: super::errors::ErrorCode,
}

#[derive(Object, Debug, Clone)]
pub struct TaskInput {
    /// Unique within the batch; integer or string (at most 128 characters).
    pub task_id: TaskId,
    /// Concept (1–128 characters, not blank).
    pub concept: Checked<ConceptRule>,
    /// Intent (1–64 of a-z, A-Z, 0-9, `_`, `-`).
    pub intent: Checked<IntentRule>,
    /// Passed to the agent as is (a JSON object; null or missing = `{}`).
    pub args: Option<Nullable<JsonObject>>,
}

/// A batch of concept/intent tasks.
#[derive(Object, Debug)]
pub struct BatchRequest {
    /// At least one task (an empty list is a 400); at most MAX_TASKS (default 100, more →
    /// 413); task ids must be unique (a duplicate is a 400). Not declared `minItems` so that
    /// a body with both `query` and an empty `tasks` matches both forms and is refused as
    /// ambiguous rather than read as a query.
    pub tasks: Vec<TaskInput>,
    /// Who asks.
    #[oai(validator(max_length = 128))]
    pub user_id: Option<Nullable<Text>>,
    /// The request's rank under overload: `high`, `normal` or `low` (as `X-Priority`,
    /// which it overrides).
    #[oai(validator(pattern = "^(high|normal|low)$"))]
    pub priority: Option<Nullable<String>>,
}

/// A question in English.
#[derive(Object, Debug)]
pub struct QueryRequest {
    /// The question (1–2000 characters, not blank).
    pub query: Checked<QueryRule>,
    /// Who asks.
    #[oai(validator(max_length = 128))]
    pub user_id: Option<Nullable<Text>>,
    /// The request's rank under overload: `high`, `normal` or `low` (as `X-Priority`,
    /// which it overrides).
    #[oai(validator(pattern = "^(high|normal|low)$"))]
    pub priority: Option<Nullable<String>>,
}

/// Exactly one of: a batch (`tasks`) or a question (`query`).
#[derive(Union, Debug)]
#[oai(one_of)]
pub enum ProcessRequest {
    Batch(BatchRequest),
    Query(QueryRequest),
}

impl ProcessRequest {
    /// The rank the body asks for, if it asks.
    pub fn priority(&self) -> Option<crate::context::Priority> {
        let asked = match self {
            ProcessRequest::Batch(b) => &b.priority,
            ProcessRequest::Query(q) => &q.priority,
        };
        asked
            .as_ref()
            .and_then(|p| p.0.as_deref())
            .and_then(crate::context::Priority::parse)
    }
}

/// What `/process` accepts, with every limit the schema enforces.
pub const PROCESS_SHAPE: &str = "send exactly one of {\"query\": \"a question\"} (1–2000 characters, not blank) \
or {\"tasks\": [{\"task_id\", \"concept\", \"intent\", \"args\"?}]} (at least one task; task_id an integer \
or at most 128 characters; concept 1–128 characters, not blank, no control characters; intent 1–64 of \
a-z A-Z 0-9 _ -; args a JSON object), each with an optional user_id of at most 128 characters \
and an optional priority (high, normal or low)";

/// The `/process` body, with the `ProcessRequest` schema. A body matching neither shape is
/// answered with what is accepted, not with the union's echo of the input.
#[derive(Debug)]
pub struct ProcessBody(pub ProcessRequest);

wrapper_type!(
    impl for ProcessBody,
    raw = Self,
    value = |t| t,
    name = ProcessRequest::name(),
    schema = ProcessRequest::schema_ref(),
    register = |registry| ProcessRequest::register(registry)
);

impl ParseFromJSON for ProcessBody {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        ProcessRequest::parse_from_json(value)
            .map(ProcessBody)
            .map_err(|_| ParseError::custom(PROCESS_SHAPE))
    }
}

impl ToJSON for ProcessBody {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

/// How a query was split into tasks.
#[derive(Object, Debug, Clone)]
pub struct ParsedTaskView {
    pub task_id: TaskId,
    pub concept: String,
    pub intent: String,
    pub args: Value,
}

/// Schema of a task result (agents' own fields also pass through).
#[derive(Object, Debug)]
#[oai(rename = "TaskResult")]
pub struct TaskResultSchema {
    pub task_id: TaskId,
    /// `success` or `error`.
    pub status: String,
    /// Agent that answered (or was tried last); null when none was tried.
    pub agent_name: Nullable<String>,
    /// The agent's answer.
    pub data: Value,
    pub concept: String,
    pub intent: String,
    /// Cache tier that answered: `l1`, `l2` or null.
    pub cached: Nullable<String>,
    /// True when an expired cached answer was served because the agent failed.
    pub stale: bool,
    /// HTTP attempts made across candidates.
    pub attempts: u32,
    pub latency_ms: f64,
    /// On failure: `no_agent`, `breaker_open`, `rate_limited`, `bulkhead_full`, `timeout`,
    /// `upstream_error`, `agent_rejected`, `agent_error`, `graph_unavailable`.
    pub code: Option<String>,
    /// On failure: what went wrong.
    pub error: Option<String>,
}

/// A task result with the agent's own fields passed through.
#[derive(Debug, Clone)]
pub struct TaskResultBody(pub TaskResult);

wrapper_type!(
    impl for TaskResultBody,
    raw = Self,
    value = |t| t,
    name = TaskResultSchema::name(),
    schema = TaskResultSchema::schema_ref(),
    register = |registry| TaskResultSchema::register(registry)
);

impl ParseFromJSON for TaskResultBody {
    fn parse_from_json(_: Option<Value>) -> ParseResult<Self> {
        Err(ParseError::custom("task results are output only"))
    }
}

impl ToJSON for TaskResultBody {
    fn to_json(&self) -> Option<Value> {
        serde_json::to_value(&self.0).ok()
    }
}

impl ProcessResponse {
    /// The JSON body, written straight into one buffer: no `serde_json::Value` of it in
    /// between, the keys as the constants they are (byte for byte what poem-openapi's
    /// `ToJSON` path writes; the `direct` tests below compare them).
    pub fn to_bytes(&self) -> Vec<u8> {
        use crate::pipeline::put_json as put;
        // Room for a one-task answer up front, and for the agents' `data` as they wrote it:
        // the buffer does not grow by doubling through reallocations and copies.
        let data: usize = self.results.values().map(|r| r.0.data.text_len()).sum();
        let mut out = Vec::with_capacity(512 + data);
        out.push(b'{');
        if let Some(answer) = &self.answer {
            out.extend_from_slice(b"\"answer\":");
            put(&mut out, answer);
            out.push(b',');
        }
        if let Some(result) = &self.result {
            out.extend_from_slice(b"\"result\":");
            result.0.write_json(&mut out);
            out.push(b',');
        }
        out.extend_from_slice(b"\"results\":{");
        for (i, (id, result)) in self.results.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put(&mut out, id);
            out.push(b':');
            result.0.write_json(&mut out);
        }
        out.extend_from_slice(match self.status {
            OverallStatus::Success => b"},\"status\":\"success\"",
            OverallStatus::Partial => b"},\"status\":\"partial\"",
            OverallStatus::Failed => b"},\"status\":\"failed\"",
        });
        if let Some(tasks) = &self.tasks {
            out.extend_from_slice(b",\"tasks\":");
            put(&mut out, &tasks.to_json());
        }
        out.push(b'}');
        out
    }
}

/// How a request went: `success` (every task succeeded), `partial` or `failed`.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum OverallStatus {
    Success,
    Partial,
    Failed,
}

impl From<crate::pipeline::Overall> for OverallStatus {
    fn from(o: crate::pipeline::Overall) -> Self {
        use crate::pipeline::Overall;
        match o {
            Overall::Success => OverallStatus::Success,
            Overall::Partial => OverallStatus::Partial,
            Overall::Failed => OverallStatus::Failed,
        }
    }
}

// Serialized straight to bytes by `ProcessResponse::to_bytes`, in the key order (and so byte
// for byte) of poem-openapi's `ToJSON` path through a `serde_json::Value`. (A doc comment here
// would become the schema's description.)
#[derive(Object, Debug)]
pub struct ProcessResponse {
    // Undocumented: a doc comment would wrap the `$ref` in an `allOf` (see `OverallStatus`).
    pub status: OverallStatus,
    /// Single query: the primary task's result.
    #[oai(skip_serializing_if_is_none)]
    pub result: Option<TaskResultBody>,
    /// Single query: the synthesized answer.
    #[oai(skip_serializing_if_is_none)]
    pub answer: Option<Value>,
    /// Single query: the tasks the query became.
    #[oai(skip_serializing_if_is_none)]
    pub tasks: Option<Vec<ParsedTaskView>>,
    /// Every task's result, by task id.
    pub results: BTreeMap<String, TaskResultBody>,
}

#[derive(Object, Debug)]
#[oai(deny_unknown_fields)]
pub struct ConceptWeight {
    /// Concept the agent handles (created when unknown).
    pub name: Text,
    /// Initial weight in [0, 1] (default 0.5); an existing edge keeps its learned weight.
    pub weight: Option<f64>,
}

/// Unknown fields are refused, as in the seed format (a typo must not pass silently).
#[derive(Object, Debug)]
#[oai(deny_unknown_fields)]
pub struct AgentRegistration {
    /// Unique agent name (1–128 characters).
    pub name: Text,
    /// Agent type (default `static`).
    #[oai(rename = "type")]
    pub agent_type: Option<Text>,
    /// `http(s)` URL the agent protocol is POSTed to.
    pub endpoint: Text,
    /// Intents it serves.
    pub intents: Vec<Text>,
    pub capabilities: Option<Vec<Text>>,
    /// Concepts it handles.
    pub concepts: Vec<ConceptWeight>,
}

#[derive(Object, Debug)]
pub struct Registered {
    /// `registered` or `updated`.
    pub status: String,
    pub agent: AgentView,
}

#[derive(Object, Debug)]
pub struct Removed {
    /// `removed`.
    pub status: String,
    pub name: String,
    /// Concepts it handled.
    pub concepts: Vec<String>,
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON values, nested.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            prop_oneof![
                Just("query"),
                Just("tasks"),
                Just("task_id"),
                Just("concept"),
                Just("intent"),
                Just("args")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("query".to_string()),
                        Just("tasks".to_string()),
                        Just("task_id".to_string()),
                        Just("concept".to_string()),
                        Just("intent".to_string()),
                        Just("args".to_string()),
                        Just("user_id".to_string()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn request_decoding_never_panics(v in json()) {
            let _ = ProcessRequest::parse_from_json(Some(v.clone()));
            let _ = DiscoverRequest::parse_from_json(Some(v));
        }

        #[test]
        fn decoding_raw_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let _ = ProcessRequest::parse_from_json(Some(v));
            }
        }

        #[test]
        fn the_query_parser_never_panics(q in "\\PC{0,200}") {
            let tasks = crate::pipeline::parser::parse(&q);
            for t in tasks {
                prop_assert!(!t.concept.is_empty());
                prop_assert!(!t.intent.is_empty());
            }
        }

        #[test]
        fn the_query_parser_never_panics_on_any_string(q in ".{0,300}") {
            let _ = crate::pipeline::parser::parse(&q);
        }
    }
}

#[cfg(test)]
mod direct {
    use super::*;
    use crate::{failure::FailureCode, pipeline::TaskSpec};
    use proptest::prelude::*;

    fn result(
        extra: Vec<(String, String)>,
        data: String,
        failed: bool,
        latency_ms: f64,
        form: u8,
    ) -> crate::pipeline::TaskResult {
        let spec = TaskSpec {
            task_id: Value::from(7),
            concept: "lightbulb".into(),
            intent: "define".into(),
            args: serde_json::json!({}),
        };
        let mut r = crate::pipeline::TaskResult::failed(&spec, FailureCode::Timeout, "slow");
        if !failed {
            r.code = None;
            r.error = None;
            r.status = crate::pipeline::TaskStatus::Success;
            r.agent_name = Some("Definition_AI".into());
            r.cached = Some("l1");
        }
        // `data` as a value, as an agent's text, or as the text of an answer the cache keeps.
        let answer = || {
            let text = format!(
                r#"{{"status":"success","data":{{"d": [{}, 1.50]}}}}"#,
                Value::from(data.as_str())
            );
            crate::agents::AgentReply::parse(text.as_bytes()).unwrap()
        };
        r.data = match form % 3 {
            0 => crate::agents::Data::Value(Value::from(data)),
            1 => answer().data,
            _ => crate::agents::Data::Kept(answer().keep()),
        };
        r.latency_ms = latency_ms;
        for (k, v) in extra {
            if !crate::pipeline::RESERVED.contains(&k.as_str()) {
                r.extra.insert(k, Value::from(v));
            }
        }
        r
    }

    proptest! {
        /// The direct serialization is byte for byte what poem-openapi's `ToJSON` path
        /// writes, whatever fields an agent passed through and whichever are set.
        #[test]
        fn to_bytes_is_the_to_json_body_byte_for_byte(
            extra in proptest::collection::vec(("[a-z_]{1,11}", ".{0,8}"), 0..8),
            data in ".{0,20}",
            failed in any::<bool>(),
            single in any::<bool>(),
            latency_ms in 0.0f64..10_000.0,
            form in any::<u8>(),
            partial in any::<bool>(),
        ) {
            let r = result(extra, data, failed, latency_ms, form);
            let body = ProcessResponse {
                status: match (failed, partial) {
                    (true, _) => OverallStatus::Failed,
                    (false, true) => OverallStatus::Partial,
                    (false, false) => OverallStatus::Success,
                },
                result: single.then(|| TaskResultBody(r.clone())),
                answer: single.then(|| Value::from("an answer")),
                tasks: single.then(|| vec![ParsedTaskView {
                    task_id: TaskId::Int(7),
                    concept: "lightbulb".into(),
                    intent: "define".into(),
                    args: serde_json::json!({"a": 1}),
                }]),
                results: BTreeMap::from([("7".to_string(), TaskResultBody(r))]),
            };
            let bytes = body.to_bytes();
            if let crate::agents::Data::Value(_) = body.results["7"].0.data {
                prop_assert_eq!(String::from_utf8(bytes).unwrap(), body.to_json_string());
            } else {
                // An agent's text goes out as it is: the same JSON as the `ToJSON` path's
                // (which goes through a value), its text as the agent wrote it.
                let value: Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(&value, &serde_json::from_str::<Value>(&body.to_json_string()).unwrap());
                let text = String::from_utf8(bytes).unwrap();
                prop_assert!(text.contains(", 1.50]}"), "{}", text);
            }
            // A result's own writer is its `Serialize`, byte for byte.
            let mut written = Vec::new();
            body.results["7"].0.write_json(&mut written);
            prop_assert_eq!(written, serde_json::to_vec(&body.results["7"].0).unwrap());
        }
    }
}

/// A request's rank under overload (`X-Priority`): `low` requests are shed first (503 with
/// `Retry-After`) and get at most a quarter of an agent's in-flight limit.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum PriorityParam {
    High,
    Normal,
    Low,
}

impl From<PriorityParam> for crate::context::Priority {
    fn from(p: PriorityParam) -> Self {
        match p {
            PriorityParam::High => crate::context::Priority::High,
            PriorityParam::Normal => crate::context::Priority::Normal,
            PriorityParam::Low => crate::context::Priority::Low,
        }
    }
}
