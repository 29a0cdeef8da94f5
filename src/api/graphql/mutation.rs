//! The two ways to run a batch: the `process` mutation (the whole answer at once) and the
//! `process` subscription (each result as it completes), both through the batch use case of
//! `POST /process`.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, Json, Object, Subscription};
use futures::Stream;
use poem_openapi::types::ParseFromJSON;
use serde_json::{json, Value};

use super::{api_error, app, types::*, ClientId};
use crate::api::batch::Prepared;
use crate::api::batch::{Progress, Update};
use crate::api::dto::{ProcessBody, PROCESS_SHAPE};
use crate::api::errors::ErrorCode;
use crate::api::AppState;
use crate::context::RequestCtx;

/// The `/process` body of a GraphQL `process`, checked by the same rules.
fn process_request(
    tasks: Option<Vec<TaskInput>>,
    query: Option<String>,
    user_id: Option<String>,
) -> async_graphql::Result<crate::api::dto::ProcessRequest> {
    let mut body = serde_json::Map::new();
    if let Some(tasks) = tasks {
        let tasks: Vec<Value> = tasks
            .into_iter()
            .map(|t| {
                let mut task =
                    json!({"task_id": t.task_id.0, "concept": t.concept, "intent": t.intent});
                if let Some(args) = t.args {
                    task["args"] = args.0;
                }
                task
            })
            .collect();
        body.insert("tasks".into(), Value::Array(tasks));
    }
    if let Some(query) = query {
        body.insert("query".into(), Value::String(query));
    }
    if let Some(user) = user_id {
        body.insert("user_id".into(), Value::String(user));
    }
    let request = ProcessBody::parse_from_json(Some(Value::Object(body)))
        .map_err(|_| {
            async_graphql::Error::new(PROCESS_SHAPE)
                .extend_with(|_, e| e.set("code", ErrorCode::InvalidBody.as_str()))
        })?
        .0;
    Ok(request)
}

/// The arguments of `process`: tasks, or a question and its user.
type BatchArgs = (Option<Vec<TaskInput>>, Option<String>, Option<String>);

/// A batch from GraphQL arguments, validated and prepared as `POST /process` does.
async fn prepare(
    app: &AppState,
    (tasks, query, user_id): BatchArgs,
    agent_time: Arc<crate::context::AgentTime>,
) -> async_graphql::Result<(Prepared, RequestCtx)> {
    let request = process_request(tasks, query, user_id)?;
    let rctx = RequestCtx::new(app.config.request_timeout, true, agent_time);
    let prepared = app.prepare(request, &rctx).await.map_err(api_error)?;
    Ok((prepared, rctx))
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Runs a batch of `tasks`, or a `query` (exactly one), like `POST /process`.
    async fn process(
        &self,
        ctx: &Context<'_>,
        tasks: Option<Vec<TaskInput>>,
        query: Option<String>,
        user_id: Option<String>,
    ) -> async_graphql::Result<Processed> {
        let app = app(ctx);
        let agent_time = ctx
            .data_opt::<Arc<crate::context::AgentTime>>()
            .cloned()
            .unwrap_or_default();
        let (prepared, rctx) = prepare(app, (tasks, query, user_id), agent_time).await?;
        let answered = matches!(prepared, Prepared::Answered(_));
        // In the order of the batch, which a GraphQL list promises.
        let (body, results) = Progress::new(app.clone(), prepared, rctx)
            .complete_in_order()
            .await;
        let outcomes = if answered {
            body.results
                .values()
                .map(|r| TaskOutcome::from(r.0.clone()))
                .collect()
        } else {
            results.into_iter().map(TaskOutcome::from).collect()
        };
        let status = body.status.into();
        Ok(Processed {
            status,
            answer: body.answer.map(Json),
            results: outcomes,
        })
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Runs a batch of `tasks` or a `query`, yielding each task's result the moment it
    /// completes, then one `BatchDone`. Unsubscribing (or closing the socket) cancels what
    /// is left.
    async fn process(
        &self,
        ctx: &Context<'_>,
        tasks: Option<Vec<TaskInput>>,
        query: Option<String>,
        user_id: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = BatchEvent>> {
        let app = app(ctx).clone();
        if let Some(client) = ctx.data_opt::<ClientId>() {
            app.admit_client(&client.0).await.map_err(api_error)?;
        }
        let (prepared, rctx) = prepare(&app, (tasks, query, user_id), Arc::default()).await?;
        // One server span per subscription, the task spans under it (as for `/ws`).
        let span = tracing::info_span!(
            "GraphQL /graphql/ws process",
            otel.kind = "server",
            http.route = "/graphql/ws",
        );
        let progress = span.in_scope(|| Progress::new(app, prepared, rctx));
        Ok(futures::stream::unfold(
            Some(progress),
            |progress| async move {
                let mut progress = progress?;
                let (update, more) = progress.next().await;
                let event = match update {
                    Update::Task(result) => BatchEvent::Task(result.into()),
                    Update::Done(body) => BatchEvent::Done(BatchDone {
                        status: body.status.into(),
                        answer: body.answer.map(Json),
                    }),
                };
                Some((event, more.then_some(progress)))
            },
        ))
    }
}
