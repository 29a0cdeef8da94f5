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

mod codes;
pub use codes::ErrorCode;

/// The error body of every 4xx/5xx answer.
#[derive(Object, Debug, Clone)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
    // No doc comment here: one would wrap the `$ref` in an `allOf`, which some client
    // generators skip (the ErrorCode schema carries the description).
    pub code: ErrorCode,
    /// Trace of the request, when tracing is on.
    #[oai(skip_serializing_if_is_none)]
    pub trace_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
            code,
            trace_id: None,
        }
    }
}

/// An `ApiResponse` enum whose every variant answers an [`ErrorBody`] with its own status:
/// `/// doc` then `401 => Unauthorized`, one line a status.
macro_rules! error_responses {
    (
        $(#[$m:meta])* $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])* $status:literal => $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(poem_openapi::ApiResponse, Debug)]
        $vis enum $name {
            $(
                $(#[doc = $doc])*
                #[oai(status = $status)]
                $variant(poem_openapi::payload::Json<$crate::api::errors::ErrorBody>),
            )+
        }
    };
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
    /// A dependency (the knowledge graph) is unavailable, or a `low` priority request was
    /// shed under overload (`overloaded`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Seconds after which the request may succeed (a shed request).
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
}

error_responses! {
    /// 401 for a client without a valid API key.
    pub enum AuthError {
        /// API keys are configured and the request has no valid one.
        401 => Unauthorized,
    }
}

impl Default for AuthError {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthError {
    pub fn new() -> Self {
        AuthError::Unauthorized(Json(ErrorBody::new(
            ErrorCode::Unauthorized,
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
    /// The error body, whatever the status.
    pub fn into_body(self) -> Json<ErrorBody> {
        match self {
            ApiError::BadRequest(b)
            | ApiError::Unauthorized(b)
            | ApiError::PayloadTooLarge(b)
            | ApiError::UnsupportedMediaType(b)
            | ApiError::HeadersTooLarge(b)
            | ApiError::TooManyRequests(b, ..)
            | ApiError::BadGateway(b)
            | ApiError::Unavailable(b, _) => b,
        }
    }

    /// The answer for `code`, with the status [`ErrorCode::status`] gives it.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        let body = Json(ErrorBody::new(code, msg));
        match code.status() {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(body),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(body),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(body),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::HeadersTooLarge(body),
            StatusCode::TOO_MANY_REQUESTS => ApiError::TooManyRequests(body, 1, 0, 0),
            StatusCode::BAD_GATEWAY => ApiError::BadGateway(body),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(body, None),
            _ => ApiError::BadRequest(body),
        }
    }
}

/// A JSON error response outside the typed operations.
pub fn error_response(code: ErrorCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": msg.into(), "code": code.as_str()});
    Response::builder()
        .status(code.status())
        .content_type("application/json")
        .body(body.to_string())
}

/// Characters of a parse message kept: enough for the longest of our own, while an echo of
/// a hostile input stays bounded.
const CLIP: usize = 600;

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(CLIP).collect();
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
        (
            ErrorCode::InvalidBody,
            format!("invalid request body: {}", clip(&e.reason)),
        )
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        (
            ErrorCode::InvalidParameter,
            format!("invalid parameter `{}`: {}", e.name, clip(&e.reason)),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        let msg = match e {
            ContentTypeError::NotSupported { .. } => "Content-Type must be application/json",
            ContentTypeError::ExpectContentType => {
                "the request has no Content-Type; send application/json"
            }
        };
        (ErrorCode::UnsupportedMediaType, msg.to_string())
    } else if err.is::<NotFoundError>() || status == StatusCode::NOT_FOUND {
        (
            ErrorCode::NotFound,
            "no such endpoint; see /openapi.json".to_string(),
        )
    } else if err.is::<MethodNotAllowedError>() || status == StatusCode::METHOD_NOT_ALLOWED {
        (
            ErrorCode::MethodNotAllowed,
            "method not allowed on this endpoint".to_string(),
        )
    } else {
        match status {
            StatusCode::UNAUTHORIZED => (
                ErrorCode::Unauthorized,
                "credentials are missing".to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorCode::PayloadTooLarge,
                "request body is too large".to_string(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/json".to_string(),
            ),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                ErrorCode::HeadersTooLarge,
                "request headers are too large".to_string(),
            ),
            s if s.is_client_error() => (
                ErrorCode::BadRequest,
                "the request is not valid".to_string(),
            ),
            _ => {
                tracing::error!(error = %err, status = %status, "internal error");
                return error_response(
                    ErrorCode::InternalError,
                    "internal error; see the service log",
                );
            }
        }
    };
    error_response(code, msg)
}

/// Middleware body: every error becomes the JSON error body; panics are not involved
/// (handlers do not panic), so this is the single exit for errors.
pub async fn normalize<E: Endpoint>(next: &E, req: Request) -> Response {
    match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => framework_error(err),
    }
}

/// What `MAX_HEADER_BYTES` counts of a request: each header's name and value with its
/// separator and line end, and the request target.
pub fn head_bytes(headers: impl Iterator<Item = (usize, usize)>, target: usize) -> usize {
    headers.map(|(name, value)| name + value + 4).sum::<usize>() + target
}

/// The answer to a body that did not arrive within `read_timeout`: a body trickled in too
/// slowly holds a connection and a task, so it is refused and the connection closed.
pub fn late_body(read_timeout: std::time::Duration) -> Response {
    let mut resp = error_response(
        ErrorCode::BodyTimeout,
        format!(
            "the request body did not arrive within {} ms (BODY_READ_TIMEOUT_MS)",
            read_timeout.as_millis()
        ),
    );
    resp.headers_mut().insert(
        poem::http::header::CONNECTION,
        poem::http::HeaderValue::from_static("close"),
    );
    resp
}

/// A body announced at most this many times over the limit is read and discarded before
/// its 413; a larger one is refused without reading it.
const DRAIN_FACTOR: u64 = 4;

/// Why a body was not read whole.
pub enum Limit {
    /// It was longer than the limit.
    Exceeded,
    /// The connection failed under it.
    Broken,
}

/// A body read whole, at most `max` bytes, collected frame by frame (a body that came in one
/// frame is kept as it came, not copied). poem's `into_bytes_limit` copies through a 4 KiB
/// buffer held inside its future, which every future holding it then carries and moves.
pub async fn collect_limited(body: poem::Body, max: usize) -> Result<bytes::Bytes, Limit> {
    let body = http_body_util::Limited::new(http_body_util::combinators::BoxBody::from(body), max);
    match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Limit::Exceeded),
        Err(_) => Err(Limit::Broken),
    }
}

/// Reads the body of a request into memory, refusing more than `max` bytes (413); the
/// request keeps it as its body, and the bytes are returned beside it too.
pub async fn limit_body(
    mut req: Request,
    max: usize,
    read_timeout: std::time::Duration,
) -> Result<(Request, bytes::Bytes), Response> {
    let too_large = || {
        error_response(
            ErrorCode::PayloadTooLarge,
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
            // Read what the client is sending before answering (up to a bound, within the
            // read timeout; nginx's lingering close): a connection closed with its body
            // unread is reset, and the client sees a broken pipe instead of this 413.
            if len <= (max as u64).saturating_mul(DRAIN_FACTOR) {
                // Boxed: the copy's future is kilobytes, and every request's future would
                // carry its room inline.
                let rest = req.take_body().into_async_read();
                let drained = Box::pin(async move {
                    let (mut rest, mut sink) = (rest, tokio::io::sink());
                    tokio::io::copy(&mut rest, &mut sink).await
                });
                let _ = tokio::time::timeout(read_timeout, drained).await;
            }
            let mut resp = too_large();
            resp.headers_mut().insert(
                poem::http::header::CONNECTION,
                poem::http::HeaderValue::from_static("close"),
            );
            return Err(resp);
        }
    }
    let read = collect_limited(req.take_body(), max);
    let Ok(read) = tokio::time::timeout(read_timeout, read).await else {
        return Err(late_body(read_timeout));
    };
    match read {
        Ok(bytes) => {
            req.set_body(bytes.clone());
            Ok((req, bytes))
        }
        Err(Limit::Exceeded) => Err(too_large()),
        Err(_) => Err(error_response(
            ErrorCode::InvalidBody,
            "the request body could not be read",
        )),
    }
}

/// Adds `trace_id` to a JSON error body (bodies are small; read at most 64 KiB).
pub async fn with_trace_id(resp: Response, trace_id: &str) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = collect_limited(body, 64 * 1024).await.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    #[test]
    fn every_code_reads_the_same_in_bodies_and_in_the_spec_and_has_an_error_status() {
        for code in ErrorCode::ALL {
            assert_eq!(code.to_json(), Some(serde_json::json!(code.as_str())));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    #[test]
    fn an_api_error_carries_the_status_of_its_code() {
        let status = |code| {
            poem::IntoResponse::into_response(ApiError::new(code, "x"))
                .status()
                .as_u16()
        };
        assert_eq!(status(ErrorCode::InvalidBody), 400);
        assert_eq!(status(ErrorCode::Unauthorized), 401);
        assert_eq!(status(ErrorCode::TooManyTasks), 413);
        assert_eq!(status(ErrorCode::HeadersTooLarge), 431);
        assert_eq!(status(ErrorCode::InputProcessorInvalid), 502);
        assert_eq!(status(ErrorCode::GraphUnavailable), 503);
    }
}
