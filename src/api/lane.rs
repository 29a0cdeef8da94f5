//! The purpose-built lane of `POST /process`: a batch body parsed straight from its bytes
//! into the typed tasks (no `serde_json::Value` tree, no second pass through poem-openapi's
//! extractors and union matching), then the same use case as the operation — same
//! authentication, inbound limit, validation, run and body.
//!
//! The lane takes only what it can answer exactly as the operation would: a JSON batch
//! whose every field is one the schema declares, each value of the declared type and within
//! its rule. Anything else — a question, an unknown or duplicated member, a value the
//! schema refuses, a `Bearer` key, a request for events — goes to the operation, which
//! gives the answer or the error the contract defines. So the lane changes speed, never an
//! answer; `lane_and_operation_answer_alike` checks it.
//!
//! It is taken in two places. On the server's own path ([`Lane`], a
//! [`crate::server::Shortcut`]): the request is read and answered without hyper or a poem
//! request, the edge's passage (span, metrics, `Server-Timing`) kept; a request it hands
//! back goes to the general server, whose edge tries the lane again (and counts it declined).
//! And at the edge, for requests the general server read (a connection it took over).

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use poem::{http::Method, IntoResponse, Request, Response};
use serde::{
    de::{self, Visitor},
    Deserialize, Deserializer,
};

use super::{
    auth::presented_key,
    batch::Progress,
    dto::{BatchRequest, Checked, ConceptRule, IntentRule, JsonObject, Nullable, Text},
    dto::{ProcessRequest, ProcessResponse, TaskId, TaskInput},
    errors::ApiError,
    passage::Passage,
    process::use_cache,
    stream::{self, ProcessReply},
    validate::MAX_ID_CHARS,
    AppState, Asked, MAX_CLIENT_TIMEOUT_MS,
};
use crate::{
    agents::http::TIMEOUT_HEADER,
    context::{AgentTime, Priority, RequestCtx},
    server::{Head, Reply},
};

/// Whether a request may be the lane's, before its body is looked at: `POST /process`
/// (or `/process_query`) with a JSON body, asking for JSON, and no `Authorization` header
/// (a `Bearer` key is read by the operation's security scheme).
fn wants_request<R: Asked + ?Sized>(method: &str, path: &str, req: &R) -> bool {
    method == "POST"
        && (path == "/process" || path == "/process_query")
        && req.header("content-type").is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        })
        && req.raw_values("authorization").next().is_none()
        && !stream::wants_events(req)
}

/// [`wants_request`] for a request the general server read.
pub(super) fn wants(req: &Request) -> bool {
    wants_request(req.method().as_str(), req.uri().path(), req)
}

/// Serves `req` (its body already read into memory) when the lane can; otherwise hands it
/// back untouched for the operation.
pub(super) async fn serve(
    state: &Arc<AppState>,
    req: Request,
    body: &[u8],
) -> Result<Response, Request> {
    let [served, declined] = &state.metrics.process_lane;
    let (Some((tasks, asked)), Ok(timeout), Some(header)) =
        (parse(body), client_timeout(&req), client_priority(&req))
    else {
        declined.inc();
        return Err(req);
    };
    let priority = asked.unwrap_or(header);
    served.inc();
    let agent_time = req
        .extensions()
        .get::<Arc<AgentTime>>()
        .cloned()
        .unwrap_or_default();
    Ok(
        match run(state, &req, agent_time, tasks, timeout, priority).await {
            Ok(body) => {
                ProcessReply::Body(Box::new(poem_openapi::payload::Json(body))).into_response()
            }
            Err(e) => e.into_response(),
        },
    )
}

/// The lane on the server's own path.
pub struct Lane {
    state: Arc<AppState>,
}

impl Lane {
    pub fn new(state: Arc<AppState>) -> Self {
        Lane { state }
    }
}

impl crate::server::Shortcut for Lane {
    fn takes(&self, head: &Head<'_>) -> bool {
        // Past the header limit: the edge's 431.
        let header_bytes = super::errors::head_bytes(
            head.headers.iter().map(|h| (h.name.len(), h.value.len())),
            head.target.len(),
        );
        header_bytes <= self.state.config.max_header_bytes
            && wants_request(head.method, head.path(), head)
    }

    fn max_body(&self) -> usize {
        self.state.config.max_body_bytes
    }

    fn body_timeout(&self) -> Duration {
        self.state.config.body_read_timeout
    }

    fn answer<'a>(
        &'a self,
        head: &'a Head<'a>,
        body: Option<&'a [u8]>,
        reply: &'a mut Reply,
    ) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(answer(&self.state, head, body, reply))
    }
}

async fn answer(
    state: &Arc<AppState>,
    head: &Head<'_>,
    body: Option<&[u8]>,
    reply: &mut Reply,
) -> bool {
    let passage = || Passage::open(Method::POST, head.path(), head.header("traceparent"));
    let Some(body) = body else {
        let passage = passage();
        let late = super::errors::late_body(state.config.body_read_timeout);
        write(reply, passage.finish(state, late).await).await;
        return true;
    };
    let (Some((tasks, asked)), Ok(timeout), Some(header)) =
        (parse(body), client_timeout(head), client_priority(head))
    else {
        return false;
    };
    let passage = passage();
    state.metrics.process_lane[0].inc();
    let priority = asked.unwrap_or(header);
    let ran = crate::telemetry::in_span(
        &passage.span,
        run(
            state,
            head,
            passage.agent_time.clone(),
            tasks,
            timeout,
            priority,
        ),
    );
    let ran = Box::pin(ran).await;
    match ran {
        Ok(body) => {
            let bytes = body.to_bytes();
            let closed = passage.close(state, 200);
            reply.status(poem::http::StatusCode::OK);
            reply.header("content-type", b"application/json; charset=utf-8");
            if let Some(id) = &closed.trace_id {
                reply.header("x-trace-id", id.as_bytes());
            }
            reply.header("server-timing", closed.timing.as_bytes());
            reply.body(&bytes);
        }
        Err(e) => write(reply, passage.finish(state, e.into_response()).await).await,
    }
    true
}

/// Writes a poem answer (one of the lane's errors: a small body in memory) into `reply`.
async fn write(reply: &mut Reply, resp: Response) {
    use poem::http::header;
    let (parts, body) = resp.into_parts();
    let body = body.into_bytes().await.unwrap_or_default();
    reply.status(parts.status);
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
            if value.as_bytes().eq_ignore_ascii_case(b"close") {
                reply.close();
            }
        } else if name != header::CONTENT_LENGTH
            && name != header::DATE
            && name != header::TRANSFER_ENCODING
        {
            reply.header(name.as_str(), value.as_bytes());
        }
    }
    reply.body(&body);
}

async fn run<R: Asked + Sync + ?Sized>(
    state: &Arc<AppState>,
    req: &R,
    agent_time: Arc<AgentTime>,
    tasks: Vec<TaskInput>,
    timeout: Option<u64>,
    priority: Priority,
) -> Result<ProcessResponse, ApiError> {
    state.authenticate_key(presented_key(req))?;
    // Boxed: a shared limiter's check is a store round trip, a large future to carry inline.
    Box::pin(state.admit(req)).await?;
    let ctx = RequestCtx::new(state.request_timeout(timeout), use_cache(req), agent_time)
        .with_priority(priority);
    let prepared = state
        .prepare(
            ProcessRequest::Batch(BatchRequest {
                tasks,
                user_id: None,
                priority: None,
            }),
            &ctx,
        )
        .await?;
    let body = Progress::polled_in_span(state.clone(), prepared, ctx)
        .complete()
        .await;
    super::process::shed(priority, body)
}

/// The client's `X-Priority`: `normal` when absent, `None` for a value the operation must
/// refuse.
fn client_priority<R: Asked + ?Sized>(req: &R) -> Option<Priority> {
    match req.raw_values("x-priority").next() {
        None => Some(Priority::Normal),
        Some(v) => std::str::from_utf8(v).ok().and_then(Priority::parse),
    }
}

/// The client's `X-Request-Timeout-Ms`, if it sent one the operation accepts (an integer
/// from 1 to [`MAX_CLIENT_TIMEOUT_MS`]); `Err` for one the operation must refuse.
fn client_timeout<R: Asked + ?Sized>(req: &R) -> Result<Option<u64>, ()> {
    let Some(v) = req.raw_values(TIMEOUT_HEADER).next() else {
        return Ok(None);
    };
    std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| (1..=MAX_CLIENT_TIMEOUT_MS).contains(ms))
        .map(Some)
        .ok_or(())
}

/// The tasks of a batch body the schema accepts, or `None` for anything the operation
/// should judge (see the module's notes).
pub(super) fn parse(body: &[u8]) -> Option<(Vec<TaskInput>, Option<Priority>)> {
    let batch: WireBatch = serde_json::from_slice(body).ok()?;
    if let Some(user) = &batch.user_id {
        if user.chars().count() > MAX_ID_CHARS {
            return None;
        }
    }
    let priority = match batch.priority.as_deref() {
        None => None,
        Some(p) => Some(Priority::parse(p)?),
    };
    let tasks = batch
        .tasks
        .into_iter()
        .map(|t| {
            Some(TaskInput {
                task_id: t.task_id.0,
                concept: Checked::<ConceptRule>::check(t.concept)?,
                intent: Checked::<IntentRule>::check(t.intent)?,
                args: match t.args {
                    Absent::Missing => None,
                    Absent::Present(args) => Some(Nullable(args.map(JsonObject))),
                },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((tasks, priority))
}

/// A batch body, as the schema declares it (any other member: not the lane's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBatch {
    tasks: Vec<WireTask>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    priority: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTask {
    task_id: WireId,
    concept: String,
    intent: String,
    #[serde(default)]
    args: Absent<Option<serde_json::Map<String, serde_json::Value>>>,
}

/// A member that may be missing (`Missing`) or present, `null` included.
#[derive(Default)]
enum Absent<T> {
    #[default]
    Missing,
    Present(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Absent<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Absent::Present)
    }
}

/// A task id as the schema takes it: an integer that fits `i64`, or a string.
struct WireId(TaskId);

impl<'de> Deserialize<'de> for WireId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl Visitor<'_> for Id {
            type Value = WireId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireId, E> {
                Ok(WireId(TaskId::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireId, E> {
                i64::try_from(v)
                    .map(|v| WireId(TaskId::Int(v)))
                    .map_err(|_| E::custom("out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireId, E> {
                Ok(WireId(TaskId::Text(Text(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<WireId, E> {
                Ok(WireId(TaskId::Text(Text(v))))
            }
        }
        d.deserialize_any(Id)
    }
}
