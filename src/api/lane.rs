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

use std::{fmt, sync::Arc};

use poem::{IntoResponse, Request, Response};
use serde::{
    de::{self, Visitor},
    Deserialize, Deserializer,
};

use super::{
    auth::presented_key,
    batch::Progress,
    dto::{BatchRequest, Checked, ConceptRule, IntentRule, JsonObject, Nullable, Text},
    dto::{ProcessRequest, TaskId, TaskInput},
    errors::ApiError,
    process::use_cache,
    stream::{self, ProcessReply},
    validate::MAX_ID_CHARS,
    AppState, MAX_CLIENT_TIMEOUT_MS,
};
use crate::{
    agents::http::TIMEOUT_HEADER,
    context::{AgentTime, Priority, RequestCtx},
};

/// Whether `req` is one the lane may take, before its body is looked at: `POST /process`
/// (or `/process_query`) with a JSON body, asking for JSON, and no `Authorization` header
/// (a `Bearer` key is read by the operation's security scheme).
pub(super) fn wants(req: &Request) -> bool {
    let path = req.uri().path();
    req.method() == poem::http::Method::POST
        && (path == "/process" || path == "/process_query")
        && req
            .headers()
            .get(poem::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let essence = v.split(';').next().unwrap_or_default().trim();
                essence.eq_ignore_ascii_case("application/json")
            })
        && !req
            .headers()
            .contains_key(poem::http::header::AUTHORIZATION)
        && !stream::wants_events(req)
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
    Ok(match run(state, &req, tasks, timeout, priority).await {
        Ok(reply) => reply.into_response(),
        Err(e) => e.into_response(),
    })
}

async fn run(
    state: &Arc<AppState>,
    req: &Request,
    tasks: Vec<TaskInput>,
    timeout: Option<u64>,
    priority: Priority,
) -> Result<ProcessReply, ApiError> {
    state.authenticate_key(presented_key(req))?;
    // Boxed: a shared limiter's check is a store round trip, a large future to carry inline.
    Box::pin(state.admit(req)).await?;
    let ctx = RequestCtx::new(
        state.request_timeout(timeout),
        use_cache(req),
        req.extensions()
            .get::<Arc<AgentTime>>()
            .cloned()
            .unwrap_or_default(),
    )
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
    let body = Progress::new(state.clone(), prepared, ctx).complete().await;
    super::process::shed(priority, body)
}

/// The client's `X-Priority`: `normal` when absent, `None` for a value the operation must
/// refuse.
fn client_priority(req: &Request) -> Option<Priority> {
    match req.headers().get("x-priority") {
        None => Some(Priority::Normal),
        Some(v) => v.to_str().ok().and_then(Priority::parse),
    }
}

/// The client's `X-Request-Timeout-Ms`, if it sent one the operation accepts (an integer
/// from 1 to [`MAX_CLIENT_TIMEOUT_MS`]); `Err` for one the operation must refuse.
fn client_timeout(req: &Request) -> Result<Option<u64>, ()> {
    let Some(v) = req.headers().get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    v.to_str()
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
