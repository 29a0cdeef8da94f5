//! The code table: every error code a client can see, and the status each one answers with.

use poem::http::StatusCode;
use poem_openapi::Enum;

/// Declares [`ErrorCode`] and [`ErrorCode::ALL`] from one list, so the list cannot miss a
/// variant.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $code:ident,)*) => {
        /// Every stable machine-readable code an error body can carry — and the one place each
        /// maps to its HTTP status. The spec lists them, so clients can match on them.
        #[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
        #[oai(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[$doc])* $code,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code,)*];
        }
    };
}

error_codes! {
    /// The body is not one of the accepted shapes, or breaks a rule of its schema.
    InvalidBody,
    /// A path or query parameter is not valid.
    InvalidParameter,
    /// A concept name breaks the naming rules.
    InvalidConcept,
    /// An intent is not 1–64 of a-z, 0-9, `_`, `-`.
    InvalidIntent,
    /// The question is blank or too long.
    InvalidQuery,
    /// The user id is too long.
    InvalidUserId,
    /// A task id is too long.
    InvalidTaskId,
    /// Two tasks of a batch share an id.
    DuplicateTaskId,
    /// A task's `args` is not a JSON object.
    InvalidArgs,
    /// A task's `args` nest deeper than MAX_ARGS_DEPTH.
    ArgsTooDeep,
    /// An agent name breaks the naming rules.
    InvalidName,
    /// An agent endpoint is not an http(s) URL with a host.
    InvalidEndpoint,
    /// An agent endpoint carries credentials or unsafe characters, or its host is not allowed.
    EndpointNotAllowed,
    /// A registration lists no intents or too many.
    InvalidIntents,
    /// A registration lists no concepts or too many.
    InvalidConcepts,
    /// A registration's capabilities break their limits.
    InvalidCapabilities,
    /// A registration's agent type is blank or too long.
    InvalidType,
    /// A weight is outside [0, 1].
    InvalidWeight,
    /// Any other malformed request.
    BadRequest,
    /// A valid API key (or admin key) is required.
    Unauthorized,
    /// The admin key is not valid.
    Forbidden,
    /// The admin API is disabled (`ADMIN_API_KEY` unset).
    AdminDisabled,
    /// No such endpoint.
    NotFound,
    /// No agent of that name.
    AgentNotFound,
    /// `/feedback`: no task of that trace and id was answered by an agent within the
    /// feedback window, or it already had its feedback.
    TaskNotFound,
    /// The endpoint does not take this method.
    MethodNotAllowed,
    /// The body did not arrive within BODY_READ_TIMEOUT_MS.
    BodyTimeout,
    /// The body is larger than MAX_BODY_BYTES.
    PayloadTooLarge,
    /// The batch is larger than MAX_TASKS.
    TooManyTasks,
    /// A task's `args` are larger than MAX_ARGS_BYTES.
    ArgsTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// Over the inbound rate limit; retry after `Retry-After`.
    RateLimited,
    /// The request line and headers exceed MAX_HEADER_BYTES.
    HeadersTooLarge,
    /// An internal error; the detail is in the service log.
    InternalError,
    /// The remote input processor did not answer.
    InputProcessorUnavailable,
    /// The remote input processor's answer is not a task list.
    InputProcessorInvalid,
    /// The knowledge graph is unavailable.
    GraphUnavailable,
    /// `/ready`: the service cannot route tasks now.
    NotReady,
    /// `/discover`: no agent handles the concept and intent.
    NoAgentFound,
    /// `/ws`: a message whose `type` is not `auth`, `process` or `cancel`.
    UnknownMessage,
    /// `/ws`: a batch `id` already running on this socket.
    DuplicateBatchId,
    /// `/ws`: more batches in flight on one socket than it allows.
    TooManyBatches,
    /// A `low` priority request shed under overload; retry after `Retry-After`.
    Overloaded,
}

impl ErrorCode {
    /// The status every answer with this code has.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidBody | InvalidParameter | InvalidConcept | InvalidIntent | InvalidQuery
            | InvalidUserId | InvalidTaskId | DuplicateTaskId | InvalidArgs | ArgsTooDeep
            | InvalidName | InvalidEndpoint | EndpointNotAllowed | InvalidIntents
            | InvalidConcepts | InvalidCapabilities | InvalidType | InvalidWeight | BadRequest => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | AdminDisabled => StatusCode::FORBIDDEN,
            NotFound | AgentNotFound | TaskNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            PayloadTooLarge | TooManyTasks | ArgsTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            InputProcessorUnavailable | InputProcessorInvalid => StatusCode::BAD_GATEWAY,
            GraphUnavailable | NotReady | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            NoAgentFound => StatusCode::NOT_FOUND,
            UnknownMessage | DuplicateBatchId => StatusCode::BAD_REQUEST,
            TooManyBatches => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidBody => "invalid_body",
            InvalidParameter => "invalid_parameter",
            InvalidConcept => "invalid_concept",
            InvalidIntent => "invalid_intent",
            InvalidQuery => "invalid_query",
            InvalidUserId => "invalid_user_id",
            InvalidTaskId => "invalid_task_id",
            DuplicateTaskId => "duplicate_task_id",
            InvalidArgs => "invalid_args",
            ArgsTooDeep => "args_too_deep",
            InvalidName => "invalid_name",
            InvalidEndpoint => "invalid_endpoint",
            EndpointNotAllowed => "endpoint_not_allowed",
            InvalidIntents => "invalid_intents",
            InvalidConcepts => "invalid_concepts",
            InvalidCapabilities => "invalid_capabilities",
            InvalidType => "invalid_type",
            InvalidWeight => "invalid_weight",
            BadRequest => "bad_request",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            AdminDisabled => "admin_disabled",
            NotFound => "not_found",
            AgentNotFound => "agent_not_found",
            TaskNotFound => "task_not_found",
            MethodNotAllowed => "method_not_allowed",
            BodyTimeout => "body_timeout",
            PayloadTooLarge => "payload_too_large",
            TooManyTasks => "too_many_tasks",
            ArgsTooLarge => "args_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            HeadersTooLarge => "headers_too_large",
            InternalError => "internal_error",
            InputProcessorUnavailable => "input_processor_unavailable",
            InputProcessorInvalid => "input_processor_invalid",
            GraphUnavailable => "graph_unavailable",
            Overloaded => "overloaded",
            NotReady => "not_ready",
            NoAgentFound => "no_agent_found",
            UnknownMessage => "unknown_message",
            DuplicateBatchId => "duplicate_batch_id",
            TooManyBatches => "too_many_batches",
        }
    }
}
