//! Input and output processors: built in, or the original service's remote protocols.
//!
//! Remote input: `POST {INPUT_PROCESSOR_URL}/process/basic {"query","user_id"}` answering
//! `{"task_list":{"tasks":[{"task_id","concept","intent","args"}]}}`.
//! Remote output: `POST {OUTPUT_PROCESSOR_URL}/synthesize/basic {"query","user_id","results"}`
//! answering `{"final_answer": …}`.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;

use super::{parser, TaskResult, TaskSpec};
use crate::agents::AgentTransport;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the query names no concept")]
    NothingToDo,
    #[error("the input processor is unavailable")]
    Unavailable,
    #[error("the input processor's answer is not a task list")]
    BadAnswer,
}

/// The input and output processors: built in, or the remote services the configuration
/// names, reached through the agent transport.
#[derive(Clone, Copy)]
pub struct Processors<'a> {
    pub transport: &'a dyn AgentTransport,
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
}

/// The span attribute naming which processor ran.
fn kind(remote: Option<&str>) -> &'static str {
    if remote.is_some() {
        "remote"
    } else {
        "builtin"
    }
}

impl Processors<'_> {
    /// Turns a query into tasks, locally or through the remote input processor.
    pub async fn parse_query(
        &self,
        query: &str,
        user_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<TaskSpec>, InputError> {
        let (transport, remote) = (self.transport, self.input);
        let span = tracing::info_span!("parse_input", processor = kind(remote));
        let parsed = async move {
            let tasks: Vec<TaskSpec> = match remote {
                None => parser::parse(query)
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| TaskSpec {
                        task_id: json!(i + 1),
                        concept: t.concept,
                        intent: t.intent,
                        args: t.args,
                    })
                    .collect(),
                Some(base) => {
                    let body = json!({"query": query, "user_id": user_id});
                    let answer = transport
                        .post_json(&format!("{base}/process/basic"), &body, timeout)
                        .await
                        .map_err(|e| {
                            tracing::warn!(error = %e, "input processor call failed");
                            InputError::Unavailable
                        })?;
                    remote_tasks(&answer).ok_or(InputError::BadAnswer)?
                }
            };
            if tasks.is_empty() {
                return Err(InputError::NothingToDo);
            }
            Ok(tasks)
        }
        .instrument(span.clone())
        .await;
        match &parsed {
            Ok(t) => crate::record!(span, tasks = t.len()),
            Err(_) => crate::record!(span, otel.status_code = "ERROR"),
        };
        parsed
    }

    /// The answer text: built in (the successful tasks' data, in order) or from the remote
    /// output processor, falling back to the built-in one when that fails.
    pub async fn synthesize(
        &self,
        query: &str,
        user_id: Option<&str>,
        results: &[TaskResult],
        timeout: Duration,
    ) -> Value {
        let (transport, remote) = (self.transport, self.output);
        let span = tracing::info_span!("synthesize", processor = kind(remote));
        async move {
            if let Some(base) = remote {
                let by_id: serde_json::Map<String, Value> = results
                    .iter()
                    .map(|r| {
                        (
                            super::task_key(&r.task_id),
                            serde_json::to_value(r).unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                let body = json!({"query": query, "user_id": user_id, "results": by_id});
                match transport
                    .post_json(&format!("{base}/synthesize/basic"), &body, timeout)
                    .await
                {
                    Ok(answer) => {
                        if let Some(a) = answer.get("final_answer") {
                            return a.clone();
                        }
                        tracing::warn!(
                            "output processor answered without final_answer; using built-in synthesis"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "output processor call failed; built-in synthesis used")
                    }
                }
            }
            Value::String(builtin_answer(results))
        }
        .instrument(span)
        .await
    }
}

fn remote_tasks(answer: &Value) -> Option<Vec<TaskSpec>> {
    let list = answer.get("task_list")?.get("tasks")?.as_array()?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            Some(TaskSpec {
                task_id: match t.get("task_id") {
                    Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
                    _ => json!(i + 1),
                },
                concept: crate::graph::normalize_concept(t.get("concept")?.as_str()?),
                intent: t.get("intent")?.as_str()?.trim().to_string(),
                args: t.get("args").cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect()
}

fn builtin_answer(results: &[TaskResult]) -> String {
    let parts: Vec<String> = results
        .iter()
        .filter(|r| r.succeeded())
        .map(|r| match r.data.clone().into_value() {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    if parts.is_empty() {
        let why = results
            .iter()
            .find_map(|r| r.error.clone())
            .unwrap_or_else(|| "no task succeeded".to_string());
        format!("I could not answer that: {why}.")
    } else {
        parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_task_lists_are_read_like_the_original_service() {
        let answer = json!({"task_list": {"tasks": [
            {"task_id": "a", "concept": " Lightbulb ", "intent": "define"},
            {"concept": "lightbulb", "intent": "function", "args": {"x": 1}}
        ]}});
        let tasks = remote_tasks(&answer).unwrap();
        assert_eq!(tasks[0].task_id, json!("a"));
        assert_eq!(tasks[0].concept, "lightbulb");
        assert_eq!(tasks[1].task_id, json!(2));
        assert_eq!(tasks[1].args, json!({"x": 1}));
        assert!(remote_tasks(&json!({"tasks": []})).is_none());
        assert!(remote_tasks(&json!({"task_list": {"tasks": [{"concept": 3}]}})).is_none());
    }
}
