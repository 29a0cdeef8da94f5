//! The batch use case every transport shares (JSON and SSE `/process`, `/process_query`,
//! `/ws`, the GraphQL mutation and subscription): validate the body and turn a question
//! into tasks (`AppState::prepare`), run them through `stream::Progress` (which
//! cancels what is left when the client goes away), and build the answer
//! (`AppState::finish`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

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
    pipeline::{overall_status, processors, TaskSpec},
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
            ProcessRequest::Query(QueryRequest { query, user_id }) => {
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
                let parsed = self.processors().parse_query(&query, user_id, step).await;
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
        let answer = self
            .processors()
            .synthesize(&query, user_id.as_deref(), &results, step)
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
