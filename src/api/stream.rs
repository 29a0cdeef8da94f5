//! Live progress of a batch over Server-Sent Events: `POST /process` with
//! `Accept: text/event-stream` answers with one `task` event per result the moment it
//! completes, then one `done` event with the body the JSON form returns.
//!
//! [`Progress`] is how every transport runs a batch — JSON `/process`, SSE, `/ws` and
//! GraphQL's mutation and subscription. The work runs inside it, not beside it: when the
//! client goes away whatever holds it is dropped, tasks not yet started never start, and
//! agent calls in flight are dropped — counted as `myriad_tasks_total{status="cancelled"}`,
//! and never a failure for the breaker, a retry, a health sample or a learning outcome.
//!
//! Calls in flight are dropped rather than finished in the background: a client that leaves
//! is often one that gave up on a slow agent, and finishing its calls would keep exactly the
//! load that made it leave (bounded only by the agent timeout), for a cache entry or a
//! learning outcome that the next request will produce anyway.

use std::{sync::Arc, time::Duration};

use futures::{stream::BoxStream, StreamExt};
use poem::{web::sse::Event, IntoResponse, Request, Response};
use poem_openapi::{
    registry::{MetaMediaType, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
    ApiResponse,
};
use tracing::Instrument;

use super::{
    batch::Prepared,
    dto::{ProcessResponse, TaskResultBody},
    AppState,
};
use crate::{
    context::RequestCtx,
    pipeline::{TaskResult, TaskSpec},
};

/// A comment line goes out after this long without an event, so that proxies and clients
/// see a slow batch is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// The reconnection delay suggested to clients (`retry:`), in ms.
const RETRY_MS: u64 = 2_000;

/// True when the client asked for an event stream (`Accept: text/event-stream`).
pub(super) fn wants_events(req: &Request) -> bool {
    req.headers()
        .get_all(poem::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
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
            ProcessReply::Body(body) => (*body).into_response(),
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

/// What a batch in progress has to say next: one task's result, or the whole body (last).
#[allow(clippy::large_enum_variant)] // one at a time, moved once to its writer
pub(super) enum Update {
    Task(TaskResult),
    Done(Box<ProcessResponse>),
}

impl Update {
    /// Its JSON: a task result, or the body `/process` answers with.
    pub(super) fn json(self) -> String {
        match self {
            Update::Task(result) => TaskResultBody(result).to_json_string(),
            Update::Done(body) => body.to_json_string(),
        }
    }
}

/// One batch in progress: results as they come, what is left, and how to finish. Dropped
/// with tasks left, it cancels them.
pub(super) struct Progress {
    runs: Option<BoxStream<'static, (usize, TaskResult)>>,
    results: Vec<Option<TaskResult>>,
    /// Tasks not yet completed.
    left: usize,
    specs: Arc<[TaskSpec]>,
    query: Option<(String, Option<String>)>,
    /// The body, when no task had to run.
    answered: Option<ProcessResponse>,
    app: Arc<AppState>,
    ctx: RequestCtx,
    /// Events sent so far (the id of the next is one more).
    sent: u64,
}

impl Progress {
    /// The batch of `prepared`, run under the current span (the request's) and `ctx`.
    pub(super) fn new(app: Arc<AppState>, prepared: Prepared, ctx: RequestCtx) -> Self {
        let (specs, query, answered) = match prepared {
            Prepared::Answered(body) => (Vec::new(), None, Some(*body)),
            Prepared::Run { specs, query } => (specs, query, None),
        };
        let specs: Arc<[TaskSpec]> = specs.into();
        let span = tracing::Span::current();
        let runs = futures::stream::iter(0..specs.len())
            .map({
                let (app, specs, ctx) = (app.clone(), specs.clone(), ctx.clone());
                move |i| {
                    let (app, specs, ctx) = (app.clone(), specs.clone(), ctx.clone());
                    async move { (i, app.pipeline.run_task(&specs[i], &ctx).await) }
                        .instrument(span.clone())
                }
            })
            .buffer_unordered(app.pipeline.task_concurrency)
            .boxed();
        Progress {
            results: vec![None; specs.len()],
            left: specs.len(),
            runs: Some(runs),
            specs,
            query,
            answered,
            app,
            ctx,
            sent: 0,
        }
    }

    /// The next update, and whether another follows.
    pub(super) async fn next(&mut self) -> (Update, bool) {
        self.sent += 1;
        if let Some(runs) = &mut self.runs {
            if let Some((i, result)) = runs.next().await {
                self.left -= 1;
                self.results[i] = Some(result.clone());
                return (Update::Task(result), true);
            }
            self.runs = None;
        }
        let results = std::mem::take(&mut self.results)
            .into_iter()
            .flatten()
            .collect();
        (Update::Done(Box::new(self.body(results).await)), false)
    }

    /// Runs every task, then answers with the body `/process` returns.
    pub(super) async fn complete(mut self) -> ProcessResponse {
        let results = self.run_all().await;
        self.body(results).await
    }

    /// Runs every task, then answers with the body and the results in the batch's order.
    pub(super) async fn complete_in_order(mut self) -> (ProcessResponse, Vec<TaskResult>) {
        let results = self.run_all().await;
        (self.body(results.clone()).await, results)
    }

    /// Every task's result, in the batch's order.
    async fn run_all(&mut self) -> Vec<TaskResult> {
        if let Some(runs) = &mut self.runs {
            while let Some((i, result)) = runs.next().await {
                self.left -= 1;
                self.results[i] = Some(result);
            }
            self.runs = None;
        }
        std::mem::take(&mut self.results)
            .into_iter()
            .flatten()
            .collect()
    }

    /// The body `/process` answers with, from every task's result.
    async fn body(&mut self, results: Vec<TaskResult>) -> ProcessResponse {
        match self.answered.take() {
            Some(body) => body,
            None => {
                let query = self.query.take();
                self.app
                    .finish(&self.specs, query, results, &self.ctx)
                    .await
            }
        }
    }
}

impl Drop for Progress {
    /// The client went away with tasks left: they are cancelled, not failed. The flag is
    /// raised before the runs (a field) are dropped, so their breaker permits see it.
    fn drop(&mut self) {
        if self.left > 0 && self.runs.is_some() {
            self.ctx.cancel();
            self.app
                .metrics
                .tasks
                .with_label_values(&["cancelled"])
                .inc_by(self.left as u64);
            tracing::info!(tasks = self.left, "client went away; tasks cancelled");
        }
    }
}
