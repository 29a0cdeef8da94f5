//! Live progress of a batch over Server-Sent Events: `POST /process` with
//! `Accept: text/event-stream` answers with one `task` event per result the moment it
//! completes, then one `done` event with the body the JSON form returns.
//!
//! The batch runs in a `batch::Progress`, as on every transport; a client that
//! leaves the stream cancels what is left.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use poem::{web::sse::Event, IntoResponse, Response};
use poem_openapi::{
    registry::{MetaMediaType, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::Type,
    ApiResponse,
};

use super::{
    batch::{Prepared, Progress, Update},
    dto::{ProcessResponse, TaskResultBody},
    AppState,
};
use crate::context::RequestCtx;

/// A comment line goes out after this long without an event, so that proxies and clients
/// see a slow batch is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// The reconnection delay suggested to clients (`retry:`), in ms.
const RETRY_MS: u64 = 2_000;

/// True when the client asked for an event stream (`Accept: text/event-stream`).
pub(super) fn wants_events<R: super::Asked + ?Sized>(req: &R) -> bool {
    req.values("accept")
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The answer of `/process`: the JSON body, or the event stream.
pub(super) enum ProcessReply {
    Body(Box<poem_openapi::payload::Json<ProcessResponse>>),
    Events(poem::web::sse::SSE),
}

impl IntoResponse for ProcessReply {
    fn into_response(self) -> Response {
        match self {
            ProcessReply::Body(body) => Response::builder()
                .header(
                    poem::http::header::CONTENT_TYPE,
                    poem::http::HeaderValue::from_static("application/json; charset=utf-8"),
                )
                .body(body.0.to_bytes()),
            ProcessReply::Events(events) => events.into_response(),
        }
    }
}

impl ApiResponse for ProcessReply {
    fn meta() -> MetaResponses {
        let mut meta = <poem_openapi::payload::Json<ProcessResponse> as ApiResponse>::meta();
        for response in meta.responses.iter_mut().filter(|r| r.status == Some(200)) {
            response.description = "Every task's result. With `Accept: text/event-stream`: \
                one `task` event per result (a `TaskResult`) as it completes, then one `done` \
                event with this same body; event ids count from 1.";
            response.content.push(MetaMediaType {
                content_type: "text/event-stream",
                schema: MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some(
                        "`event: task` with a TaskResult, then `event: done` with a \
                         ProcessResponse; a `:` comment line while tasks are slow.",
                    ),
                    ..MetaSchema::new_with_format("string", "event-stream")
                })),
            });
        }
        meta
    }

    fn register(registry: &mut Registry) {
        ProcessResponse::register(registry);
        TaskResultBody::register(registry);
    }
}

/// The event stream of a prepared request. Its tasks run as the client reads, under the
/// request's span and deadline.
pub(super) fn events(app: Arc<AppState>, prepared: Prepared, ctx: RequestCtx) -> ProcessReply {
    let progress = Progress::new(app, prepared, ctx);
    let events = futures::stream::once(async { Event::retry(RETRY_MS) }).chain(
        futures::stream::unfold(Some(progress), |progress| async move {
            let mut progress = progress?;
            let (update, more) = progress.next().await;
            let id = progress.sent.to_string();
            let kind = match update {
                Update::Task(_) => "task",
                Update::Done(_) => "done",
            };
            let event = Event::message(update.json()).event_type(kind);
            Some((event.id(id), more.then_some(progress)))
        }),
    );
    ProcessReply::Events(poem::web::sse::SSE::new(events).keep_alive(HEARTBEAT))
}
