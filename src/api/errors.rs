//! One error body for every 4xx/5xx, framework errors included.
//!
//! Handlers return typed errors ([`ApiError`]); [`normalize`] turns everything else poem can
//! produce (malformed JSON, wrong content type, unknown path, wrong method, body too large)
//! into the same `{"error","code"}` body. Internal error text is logged, never returned.

use poem::{
    error::{MethodNotAllowedError, NotFoundError},
    http::StatusCode,
    Endpoint, IntoResponse, Request, Response,
};
use poem_openapi::{
    error::{ContentTypeError, ParseParamError, ParseRequestPayloadError},
    payload::Json,
    ApiResponse, Object,
};

/// The error body of every 4xx/5xx answer.
#[derive(Object, Debug, Clone)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
    /// Stable machine-readable code (snake_case).
    pub code: String,
    /// Trace of the request, when tracing is on.
    #[oai(skip_serializing_if_is_none)]
    pub trace_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
            code: code.to_string(),
            trace_id: None,
        }
    }
}

/// Errors a client-facing operation can answer with.
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed or fails validation.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// API keys are configured and the request has no valid one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The body or the batch is larger than allowed.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The request headers are larger than allowed (`MAX_HEADER_BYTES`).
    #[oai(status = 431)]
    HeadersTooLarge(Json<ErrorBody>),
    /// The client is over its rate limit; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Seconds until a request will be accepted.
        #[oai(header = "Retry-After")]
        u64,
        /// Requests allowed in a burst.
        #[oai(header = "X-RateLimit-Limit")]
        u32,
        /// Requests left in the current burst.
        #[oai(header = "X-RateLimit-Remaining")]
        u32,
    ),
    /// A processor the request depends on failed.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency (the knowledge graph) is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// 401 for a client without a valid API key.
#[derive(ApiResponse, Debug)]
pub enum AuthError {
    /// API keys are configured and the request has no valid one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
}

impl Default for AuthError {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthError {
    pub fn new() -> Self {
        AuthError::Unauthorized(Json(ErrorBody::new(
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)",
        )))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let AuthError::Unauthorized(b) = e;
        ApiError::Unauthorized(b)
    }
}

impl ApiError {
    pub fn bad_request(code: &str, msg: impl Into<String>) -> Self {
        ApiError::BadRequest(Json(ErrorBody::new(code, msg)))
    }
    pub fn too_large(code: &str, msg: impl Into<String>) -> Self {
        ApiError::PayloadTooLarge(Json(ErrorBody::new(code, msg)))
    }
    pub fn bad_gateway(code: &str, msg: impl Into<String>) -> Self {
        ApiError::BadGateway(Json(ErrorBody::new(code, msg)))
    }
    pub fn unavailable(code: &str, msg: impl Into<String>) -> Self {
        ApiError::Unavailable(Json(ErrorBody::new(code, msg)))
    }
}

/// A JSON error response outside the typed operations.
pub fn error_response(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": msg.into(), "code": code});
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

/// What `/process` accepts, with every limit the schema enforces.
const PROCESS_SHAPE: &str = "send exactly one of {\"query\": \"a question\"} (1–2000 characters, not blank) \
or {\"tasks\": [{\"task_id\", \"concept\", \"intent\", \"args\"?}]} (at least one task; task_id an integer \
or at most 128 characters; concept 1–128 characters, not blank, no control characters; intent 1–64 of \
a-z A-Z 0-9 _ -; args a JSON object), each with an optional user_id of at most 128 characters";

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Maps a poem error that did not come from a typed response to the error body.
pub fn framework_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let (code, msg) = if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        if e.reason
            .starts_with("Expected input type \"ProcessRequest\"")
        {
            // The union's own message only echoes the body; say what is accepted instead.
            ("invalid_body", PROCESS_SHAPE.to_string())
        } else {
            (
                "invalid_body",
                format!("invalid request body: {}", clip(&e.reason)),
            )
        }
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        (
            "invalid_parameter",
            format!("invalid parameter `{}`: {}", e.name, clip(&e.reason)),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        let msg = match e {
            ContentTypeError::NotSupported { .. } => "Content-Type must be application/json",
            ContentTypeError::ExpectContentType => {
                "the request has no Content-Type; send application/json"
            }
        };
        ("unsupported_media_type", msg.to_string())
    } else if err.is::<NotFoundError>() || status == StatusCode::NOT_FOUND {
        (
            "not_found",
            "no such endpoint; see /openapi.json".to_string(),
        )
    } else if err.is::<MethodNotAllowedError>() || status == StatusCode::METHOD_NOT_ALLOWED {
        (
            "method_not_allowed",
            "method not allowed on this endpoint".to_string(),
        )
    } else {
        match status {
            StatusCode::UNAUTHORIZED => ("unauthorized", "credentials are missing".to_string()),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "request body is too large".to_string())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "Content-Type must be application/json".to_string(),
            ),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                "request headers are too large".to_string(),
            ),
            s if s.is_client_error() => ("bad_request", "the request is not valid".to_string()),
            _ => {
                tracing::error!(error = %err, status = %status, "internal error");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error; see the service log",
                );
            }
        }
    };
    error_response(status, code, msg)
}

/// Middleware body: every error becomes the JSON error body; panics are not involved
/// (handlers do not panic), so this is the single exit for errors.
pub async fn normalize<E: Endpoint>(next: &E, req: Request) -> Response {
    match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => framework_error(err),
    }
}

/// Reads the body of a request into memory, refusing more than `max` bytes (413).
pub async fn limit_body(
    mut req: Request,
    max: usize,
    read_timeout: std::time::Duration,
) -> Result<Request, Response> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {max} bytes (MAX_BODY_BYTES)"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large());
        }
    }
    let body = req.take_body();
    let Ok(read) = tokio::time::timeout(read_timeout, body.into_bytes_limit(max)).await else {
        // A body trickled in too slowly holds a connection and a task: refuse it.
        let mut resp = error_response(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms (BODY_READ_TIMEOUT_MS)",
                read_timeout.as_millis()
            ),
        );
        resp.headers_mut().insert(
            poem::http::header::CONNECTION,
            poem::http::HeaderValue::from_static("close"),
        );
        return Err(resp);
    };
    match read {
        Ok(bytes) => {
            req.set_body(bytes);
            Ok(req)
        }
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(too_large()),
        Err(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the request body could not be read",
        )),
    }
}

/// Adds `trace_id` to a JSON error body (bodies are small; read at most 64 KiB).
pub async fn with_trace_id(resp: Response, trace_id: &str) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = body.into_bytes_limit(64 * 1024).await.unwrap_or_default();
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("trace_id".into(), serde_json::Value::from(trace_id));
            serde_json::to_vec(&map).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    let mut resp = Response::from_parts(parts, poem::Body::from(body));
    resp.headers_mut()
        .remove(poem::http::header::CONTENT_LENGTH);
    resp
}
