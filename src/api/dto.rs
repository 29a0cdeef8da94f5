//! Request and response bodies, as declared in the OpenAPI spec.

use std::{borrow::Cow, collections::BTreeMap};

use poem_openapi::{
    registry::{MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
    Object, Union,
};
use serde_json::Value;

use crate::{graph::EdgeStats, pipeline::TaskResult};

#[derive(Object, Debug)]
pub struct Health {
    /// Always `healthy` while the process serves.
    pub status: String,
    /// Always `orchestrator`.
    pub service: String,
    /// Crate version.
    pub version: String,
}

#[derive(Object, Debug)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// Agents that can currently be routed to.
    pub routable_agents: u32,
}

#[derive(Object, Debug)]
pub struct NotReady {
    pub error: String,
    /// `not_ready`.
    pub code: String,
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
    /// Graph, Redis, telemetry and per-agent breaker state.
    pub dependencies: Value,
    /// Non-secret settings.
    pub environment: Value,
}

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
}

#[derive(Object, Debug)]
pub struct Discovered {
    /// `success`.
    pub status: String,
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
    /// `no_agent_found`.
    pub status: String,
    pub concept: String,
    pub intent: String,
    /// Always null.
    pub agent_url: Nullable<String>,
    pub message: String,
    /// Same as `message`.
    pub error: String,
    /// `no_agent_found`.
    pub code: String,
}

/// The parts of poem-openapi's `Type` every hand-written wrapper here shares: required,
/// one raw value (`value`), and its name and schema (and what it registers, if anything).
macro_rules! wrapper_type {
    (
        impl$(<$g:ident: $bound:path>)? for $ty:ty,
        raw = $raw:ty,
        value = |$s:ident| $value:expr,
        name = $name:expr,
        schema = $schema:expr
        $(, register = |$r:ident| $register:expr)?
    ) => {
        impl$(<$g: $bound>)? Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = $raw;
            type RawElementValueType = $raw;

            fn name() -> Cow<'static, str> {
                $name
            }
            fn schema_ref() -> MetaSchemaRef {
                $schema
            }
            $(fn register($r: &mut Registry) {
                $register
            })?
            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                let $s = self;
                Some($value)
            }
            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                let $s = self;
                Box::new(std::iter::once($value))
            }
        }
    };
}

/// A JSON string, strictly: unlike poem-openapi's `String`, a number or a boolean is a 400,
/// not silently turned into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

wrapper_type!(
    impl for Text,
    raw = String,
    value = |t| &t.0,
    name = String::name(),
    schema = String::schema_ref()
);

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Text(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A string rule: the pattern and length declared in the spec, checked with a regex
/// compiled once (poem-openapi's `pattern` validator compiles its regex on every check).
pub trait Rule: Send + Sync + 'static {
    const NAME: &'static str;
    const PATTERN: &'static str;
    const MAX_LENGTH: usize;
    fn regex() -> &'static regex::Regex;
}

macro_rules! rule {
    ($ty:ident, $name:literal, $pattern:literal, $max:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty;
        impl Rule for $ty {
            const NAME: &'static str = $name;
            const PATTERN: &'static str = $pattern;
            const MAX_LENGTH: usize = $max;
            fn regex() -> &'static regex::Regex {
                static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
                    regex::Regex::new($pattern).expect("valid pattern")
                });
                &RE
            }
        }
    };
}

rule!(
    ConceptRule,
    "concept",
    r"^[^\x00-\x1F\x7F\u0080-\u009F]*[^\s\x00-\x1F\x7F\u0080-\u009F][^\x00-\x1F\x7F\u0080-\u009F]*$",
    128
);
rule!(IntentRule, "intent", r"^[A-Za-z0-9_-]{1,64}$", 64);
rule!(QueryRule, "query", r"\S", 2000);

/// A string that satisfies `R` (else the body is a 400 naming the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<R: Rule>(pub String, std::marker::PhantomData<R>);

impl<R: Rule> std::ops::Deref for Checked<R> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

wrapper_type!(
    impl<R: Rule> for Checked<R>,
    raw = String,
    value = |c| &c.0,
    name = R::NAME.into(),
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
        max_length: Some(R::MAX_LENGTH),
        pattern: Some(R::PATTERN.to_string()),
        ..poem_openapi::registry::MetaSchema::new("string")
    }))
);

impl<R: Rule> ParseFromJSON for Checked<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s))
                if s.chars().count() <= R::MAX_LENGTH && R::regex().is_match(&s) =>
            {
                Ok(Checked(s, std::marker::PhantomData))
            }
            Some(Value::String(_)) => Err(ParseError::custom(format!(
                "{} must be at most {} characters matching {}",
                R::NAME,
                R::MAX_LENGTH,
                R::PATTERN
            ))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: Rule> ToJSON for Checked<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A value that may be JSON `null`, declared `nullable` in the spec (OpenAPI 3.0), and
/// always present when serialized (`"agent_url": null` is part of the contract).
#[derive(Debug, Clone, PartialEq)]
pub struct Nullable<T>(pub Option<T>);

impl<T: Type> Type for Nullable<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("nullable<{}>", T::name()).into()
    }
    fn schema_ref() -> MetaSchemaRef {
        use poem_openapi::registry::MetaSchema;
        match T::schema_ref() {
            MetaSchemaRef::Inline(schema) => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                ..*schema
            })),
            reference => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                all_of: vec![reference],
                ..MetaSchema::ANY
            })),
        }
    }
    fn register(registry: &mut Registry) {
        T::register(registry)
    }
    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(|t| t.as_raw_value())
    }
    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(t) => t.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Nullable<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None | Some(Value::Null) => Ok(Nullable(None)),
            v => T::parse_from_json(v)
                .map(|t| Nullable(Some(t)))
                .map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Nullable<T> {
    fn to_json(&self) -> Option<Value> {
        Some(
            self.0
                .as_ref()
                .and_then(ToJSON::to_json)
                .unwrap_or(Value::Null),
        )
    }
}

/// A JSON object (any members), declared `type: object`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonObject(pub serde_json::Map<String, Value>);

wrapper_type!(
    impl for JsonObject,
    raw = Self,
    value = |o| o,
    name = "object".into(),
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema::new("object")))
);

impl ParseFromJSON for JsonObject {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Object(map)) => Ok(JsonObject(map)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for JsonObject {
    fn to_json(&self) -> Option<Value> {
        Some(Value::Object(self.0.clone()))
    }
}

/// A task id: an integer or a string. (Hand-written schema: poem-openapi's `Union` marks
/// unions `type: object`, which an integer or a string is not.)
#[derive(Debug, Clone)]
pub enum TaskId {
    Int(i64),
    Text(Text),
}

wrapper_type!(
    impl for TaskId,
    raw = Self,
    value = |t| t,
    name = "TaskId".into(),
    // Inline: generators cannot wrap a reference to a non-object schema in allOf.
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
        description: Some("A task id: an integer or a string (at most 128 characters)."),
        one_of: vec![
            i64::schema_ref(),
            MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
                max_length: Some(128),
                ..poem_openapi::registry::MetaSchema::new("string")
            })),
        ],
        ..poem_openapi::registry::MetaSchema::ANY
    }))
);

impl ParseFromJSON for TaskId {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(n)) if n.is_i64() => Ok(TaskId::Int(n.as_i64().unwrap_or_default())),
            Some(Value::String(s)) => Ok(TaskId::Text(Text(s))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for TaskId {
    fn to_json(&self) -> Option<Value> {
        Some(self.to_value())
    }
}

impl TaskId {
    pub fn to_value(&self) -> Value {
        match self {
            TaskId::Int(i) => Value::from(*i),
            TaskId::Text(s) => Value::from(s.0.clone()),
        }
    }
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
}

/// A question in English.
#[derive(Object, Debug)]
pub struct QueryRequest {
    /// The question (1–2000 characters, not blank).
    pub query: Checked<QueryRule>,
    /// Who asks.
    #[oai(validator(max_length = 128))]
    pub user_id: Option<Nullable<Text>>,
}

/// Exactly one of: a batch (`tasks`) or a question (`query`).
#[derive(Union, Debug)]
#[oai(one_of)]
pub enum ProcessRequest {
    Batch(BatchRequest),
    Query(QueryRequest),
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

/// How the service is: `running`, or `degraded` when a dependency is unhealthy.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ServiceStatus {
    Running,
    Degraded,
}

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
