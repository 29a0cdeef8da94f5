//! The batch use case every transport shares (JSON and SSE `/process`, `/process_query`,
//! `/ws`, the GraphQL mutation and subscription): validate the body and turn a question
//! into tasks (`AppState::prepare`), run them in a `Progress`, and build the answer
//! (`AppState::finish`).
//!
//! The work runs inside the `Progress`, not beside it: when the client goes away whatever
//! holds it is dropped, tasks not yet started never start, and agent calls in flight are
//! dropped — counted as `myriad_tasks_total{status="cancelled"}`, and never a failure for
//! the breaker, a retry, a health sample or a learning outcome.
//!
//! Calls in flight are dropped rather than finished in the background: a client that leaves
//! is often one that gave up on a slow agent, and finishing its calls would keep exactly the
//! load that made it leave (bounded only by the agent timeout), for a cache entry or a
//! learning outcome that the next request will produce anyway.

use std::{collections::BTreeMap, sync::Arc};

use futures::{stream::BoxStream, StreamExt};
use serde_json::{json, Value};
use tracing::Instrument;

use super::{
    dto::*,
    errors::{ApiError, ErrorCode},
    validate::{
        validate_concept, validate_intent, validate_new_concept, MAX_ID_CHARS, MAX_QUERY_CHARS,
    },
    AppState,
};
use crate::{
    context::RequestCtx,
    pipeline::{overall_status, processors, TaskResult, TaskSpec},
};

/// The answer to a question that names no concept.
pub(super) fn unparseable() -> ProcessResponse {
    let spec = TaskSpec {
        task_id: json!(1),
        concept: String::new(),
        intent: "define".into(),
        args: json!({}),
    };
    let result = crate::pipeline::TaskResult::failed(
        &spec,
        crate::failure::FailureCode::UnparseableQuery,
        "the question names no concept; try \"What is a lightbulb?\"",
    );
    ProcessResponse {
        status: OverallStatus::Failed,
        result: Some(TaskResultBody(result.clone())),
        answer: Some(json!(
            "I could not find a concept in that question. Try \"What is a lightbulb?\""
        )),
        tasks: Some(Vec::new()),
        results: BTreeMap::from([("1".to_string(), TaskResultBody(result))]),
    }
}

pub(super) fn by_id(results: Vec<crate::pipeline::TaskResult>) -> BTreeMap<String, TaskResultBody> {
    results
        .into_iter()
        .map(|r| (crate::pipeline::task_key(&r.task_id), TaskResultBody(r)))
        .collect()
}

/// A `/process` request, validated: an answer already, or tasks to run.
pub(super) enum Prepared {
    /// Answered without running anything (a question that names no concept).
    Answered(Box<ProcessResponse>),
    /// Tasks to run; `query` (with its user) when they came from a question.
    Run {
        specs: Vec<TaskSpec>,
        query: Option<(String, Option<String>)>,
    },
}

impl AppState {
    /// Validates the body and, for a question, turns it into tasks.
    pub(super) async fn prepare(
        &self,
        req: ProcessRequest,
        ctx: &RequestCtx,
    ) -> Result<Prepared, ApiError> {
        let config = &self.config;
        match req {
            ProcessRequest::Batch(BatchRequest { tasks, .. }) => Ok(Prepared::Run {
                specs: self.task_specs(tasks)?,
                query: None,
            }),
            ProcessRequest::Query(QueryRequest { query, user_id, .. }) => {
                let query = query.trim().to_string();
                let user_id = user_id
                    .as_ref()
                    .and_then(|u| u.0.as_ref())
                    .map(|u| u.0.as_str());
                if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
                    return Err(ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("query must be 1–{MAX_QUERY_CHARS} characters"),
                    ));
                }
                if user_id
                    .as_ref()
                    .is_some_and(|u| u.chars().count() > MAX_ID_CHARS)
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidUserId,
                        format!("user_id must be at most {MAX_ID_CHARS} characters"),
                    ));
                }
                let step = config.agent_timeout.min(ctx.remaining());
                let parsed = Box::pin(self.processors().parse_query(&query, user_id, step)).await;
                let mut specs = match parsed {
                    Ok(specs) => specs,
                    // Not a client error: the question was fine, it just names nothing we
                    // can route. The answer says so, like any task that finds no agent.
                    Err(processors::InputError::NothingToDo) => {
                        return Ok(Prepared::Answered(Box::new(unparseable())));
                    }
                    Err(processors::InputError::Unavailable) => {
                        return Err(ApiError::new(
                            ErrorCode::InputProcessorUnavailable,
                            "the input processor did not answer",
                        ))
                    }
                    Err(processors::InputError::BadAnswer) => {
                        return Err(ApiError::new(
                            ErrorCode::InputProcessorInvalid,
                            "the input processor's answer is not a task list",
                        ))
                    }
                };
                specs.truncate(config.max_tasks);
                for s in &mut specs {
                    s.concept = validate_concept(&s.concept)?;
                    if config.enable_dynamic_agents {
                        validate_new_concept(&s.concept)?;
                    }
                    s.intent = validate_intent(&s.intent)?;
                }
                Ok(Prepared::Run {
                    specs,
                    query: Some((query, user_id.map(str::to_string))),
                })
            }
        }
    }

    /// The body for `results` (in the order of `specs`): for a question, with the
    /// synthesized answer and the tasks it became.
    pub(super) async fn finish(
        &self,
        specs: &[TaskSpec],
        query: Option<(String, Option<String>)>,
        results: Vec<crate::pipeline::TaskResult>,
        ctx: &RequestCtx,
    ) -> ProcessResponse {
        let Some((query, user_id)) = query else {
            return ProcessResponse {
                status: overall_status(&results).into(),
                result: None,
                answer: None,
                tasks: None,
                results: by_id(results),
            };
        };
        let step = self.config.agent_timeout.min(ctx.remaining());
        // Boxed: an HTTP call's future, which a batch's answer (no question) would carry
        // inline otherwise.
        let answer =
            Box::pin(
                self.processors()
                    .synthesize(&query, user_id.as_deref(), &results, step),
            )
            .await;
        let tasks = specs
            .iter()
            .map(|s| ParsedTaskView {
                task_id: match &s.task_id {
                    Value::String(t) => TaskId::Text(Text(t.clone())),
                    v => TaskId::Int(v.as_i64().unwrap_or_default()),
                },
                concept: s.concept.clone(),
                intent: s.intent.clone(),
                args: s.args.clone(),
            })
            .collect();
        ProcessResponse {
            status: overall_status(&results).into(),
            result: results.first().cloned().map(TaskResultBody),
            answer: Some(answer),
            tasks: Some(tasks),
            results: by_id(results),
        }
    }

    fn processors(&self) -> processors::Processors<'_> {
        processors::Processors {
            transport: self.pipeline.stack.transport().as_ref(),
            input: self.config.input_processor_url.as_deref(),
            output: self.config.output_processor_url.as_deref(),
        }
    }
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
            Update::Task(result) => serde_json::to_string(&result).unwrap_or_default(),
            Update::Done(body) => String::from_utf8(body.to_bytes()).unwrap_or_default(),
        }
    }
}

/// One batch in progress: results as they come, what is left, and how to finish. Dropped
/// with tasks left, it cancels them.
pub(super) struct Progress {
    runs: Option<BoxStream<'static, (usize, TaskResult)>>,
    /// A batch of one task runs it here, not through `runs` (a stream's task slots move a
    /// task's future and its result around): still to run. A field, as `runs` is, so a
    /// client that leaves raises the cancel flag before it is dropped.
    single: Option<futures::future::BoxFuture<'static, TaskResult>>,
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
    pub(super) sent: u64,
}

impl Progress {
    /// The batch of `prepared`, run under the current span (the request's) and `ctx`,
    /// wherever it is polled (a stream's events are polled by the server, outside the span).
    pub(super) fn new(app: Arc<AppState>, prepared: Prepared, ctx: RequestCtx) -> Self {
        Self::under(app, prepared, ctx, tracing::Span::current())
    }

    /// The batch of `prepared`, polled to its end inside the request's span (its tasks'
    /// spans are children of the span current when they start).
    pub(super) fn polled_in_span(app: Arc<AppState>, prepared: Prepared, ctx: RequestCtx) -> Self {
        Self::under(app, prepared, ctx, tracing::Span::none())
    }

    fn under(app: Arc<AppState>, prepared: Prepared, ctx: RequestCtx, span: tracing::Span) -> Self {
        let (specs, query, answered) = match prepared {
            Prepared::Answered(body) => (Vec::new(), None, Some(*body)),
            Prepared::Run { specs, query } => (specs, query, None),
        };
        let specs: Arc<[TaskSpec]> = specs.into();
        let (runs, single) = if specs.len() == 1 {
            let run = {
                let (app, specs, ctx) = (app.clone(), specs.clone(), ctx.clone());
                async move { app.pipeline.run_task(&specs[0], &ctx).await }
            };
            let single: futures::future::BoxFuture<'static, TaskResult> =
                Box::pin(run.instrument(span));
            (None, Some(single))
        } else {
            let runs = futures::stream::iter(0..specs.len())
                .map({
                    let (app, specs, ctx) = (app.clone(), specs.clone(), ctx.clone());
                    move |i| {
                        let (app, specs, ctx) = (app.clone(), specs.clone(), ctx.clone());
                        // Boxed where it begins: the stream moves what it holds, and a
                        // task's future is kilobytes.
                        Box::pin(
                            async move { (i, app.pipeline.run_task(&specs[i], &ctx).await) }
                                .instrument(span.clone()),
                        )
                    }
                })
                .buffer_unordered(app.pipeline.task_concurrency)
                .boxed();
            (Some(runs), None)
        };
        Progress {
            results: vec![None; specs.len()],
            left: specs.len(),
            runs,
            single,
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
        if let Some(result) = self.run_single().await {
            self.results[0] = Some(result.clone());
            return (Update::Task(result), true);
        }
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
    ///
    /// An `async` block, not an `async fn`: an `async fn` taking `self` by value held it
    /// twice (the argument and the local it moves into at the first poll, 488 bytes each,
    /// copied), and so did every future awaiting it.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn complete(mut self) -> impl std::future::Future<Output = ProcessResponse> {
        async move {
            let results = self.run_all().await;
            self.body(results).await
        }
    }

    /// Runs every task, then answers with the body and the results in the batch's order (an
    /// `async` block for the reason [`Progress::complete`] is one).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn complete_in_order(
        mut self,
    ) -> impl std::future::Future<Output = (ProcessResponse, Vec<TaskResult>)> {
        async move {
            let results = self.run_all().await;
            (self.body(results.clone()).await, results)
        }
    }

    /// Every task's result, in the batch's order.
    async fn run_all(&mut self) -> Vec<TaskResult> {
        if let Some(result) = self.run_single().await {
            self.results[0] = Some(result);
        }
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

    /// The one task of a batch of one, if it is still to run.
    async fn run_single(&mut self) -> Option<TaskResult> {
        let result = self.single.as_mut()?.await;
        self.single = None;
        self.left = 0;
        Some(result)
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
        if self.left > 0 && (self.runs.is_some() || self.single.is_some()) {
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
