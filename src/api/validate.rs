//! Every limit a client's input is held to, declared once, and the DTO → domain step.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{
    dto::TaskInput,
    errors::{ApiError, ErrorCode},
    AppState,
};
use crate::{
    graph::{normalized_concept, seed::validate_name},
    pipeline::TaskSpec,
};

/// Longest accepted query, user id and task id.
pub(super) const MAX_QUERY_CHARS: usize = 2_000;
pub(super) const MAX_ID_CHARS: usize = 128;
pub(super) const MAX_INTENT_CHARS: usize = 64;

pub(super) fn validate_concept(raw: impl AsRef<str> + Into<String>) -> Result<String, ApiError> {
    let concept = normalized_concept(raw);
    validate_name(&concept)
        .map_err(|why| ApiError::new(ErrorCode::InvalidConcept, format!("concept: {why}")))?;
    Ok(concept)
}

/// With neurogenesis on, any unknown concept may be written to the graph, so names are
/// held to a plain alphabet before anything runs.
pub(super) fn validate_new_concept(concept: &str) -> Result<(), ApiError> {
    let plain = concept
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\''));
    if plain && concept.chars().count() <= 64 {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidConcept,
            "with dynamic agents on, a concept is at most 64 letters, digits, spaces or - _ . '",
        ))
    }
}

pub(super) fn validate_intent(raw: impl AsRef<str> + Into<String>) -> Result<String, ApiError> {
    let text = raw.as_ref();
    // Kept as it is when already trimmed and lowercase (the usual case): nothing copied.
    let intent = if text.trim().len() == text.len() && !text.bytes().any(|b| b.is_ascii_uppercase())
    {
        raw.into()
    } else {
        text.trim().to_ascii_lowercase()
    };
    if intent.is_empty()
        || intent.len() > MAX_INTENT_CHARS
        || !intent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::new(
            ErrorCode::InvalidIntent,
            format!("intent: 1–{MAX_INTENT_CHARS} characters of a-z, 0-9, '_' or '-'"),
        ));
    }
    Ok(intent)
}

/// Nesting depth of a JSON value (a scalar is 0).
pub(super) fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl AppState {
    pub(super) fn task_specs(&self, tasks: Vec<TaskInput>) -> Result<Vec<TaskSpec>, ApiError> {
        if tasks.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "tasks must list at least one task",
            ));
        }
        let max = self.config.max_tasks;
        if tasks.len() > max {
            return Err(ApiError::new(
                ErrorCode::TooManyTasks,
                format!(
                    "a batch holds at most {max} tasks (MAX_TASKS); this one has {}",
                    tasks.len()
                ),
            ));
        }
        // A lone task has no twin to meet: the set (a copy of its key and a hash) only for
        // batches. foldhash, as the name maps: at most MAX_TASKS keys of MAX_ID_CHARS, so
        // colliding keys cannot make the check expensive.
        let batch = tasks.len() > 1;
        let mut seen: HashSet<String, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(
                if batch { tasks.len() } else { 0 },
                Default::default(),
            );
        let mut specs = Vec::with_capacity(tasks.len());
        for t in tasks {
            let task_id = t.task_id.to_value();
            let key = crate::pipeline::task_key(&task_id);
            if key.chars().count() > MAX_ID_CHARS {
                return Err(ApiError::new(
                    ErrorCode::InvalidTaskId,
                    format!("task_id must be at most {MAX_ID_CHARS} characters"),
                ));
            }
            if batch && !seen.insert(key.clone()) {
                return Err(ApiError::new(
                    ErrorCode::DuplicateTaskId,
                    format!("task_id {key:?} appears more than once"),
                ));
            }
            let args = match t.args.and_then(|a| a.0).map(|o| Value::Object(o.0)) {
                None | Some(Value::Null) => json!({}),
                Some(v @ Value::Object(_)) => {
                    let config = &self.config;
                    if json_depth(&v) > config.max_args_depth {
                        return Err(ApiError::new(
                            ErrorCode::ArgsTooDeep,
                            format!(
                                "task {key:?}: args nest deeper than {} levels (MAX_ARGS_DEPTH)",
                                config.max_args_depth
                            ),
                        ));
                    }
                    if serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len())
                        > config.max_args_bytes
                    {
                        return Err(ApiError::new(
                            ErrorCode::ArgsTooLarge,
                            format!(
                                "task {key:?}: args are larger than {} bytes (MAX_ARGS_BYTES)",
                                config.max_args_bytes
                            ),
                        ));
                    }
                    v
                }
                Some(_) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidArgs,
                        format!("task {key:?}: args must be a JSON object"),
                    ))
                }
            };
            let concept = validate_concept(t.concept.0)?;
            if self.config.enable_dynamic_agents {
                validate_new_concept(&concept)?;
            }
            specs.push(TaskSpec {
                task_id,
                concept,
                intent: validate_intent(t.intent.0)?,
                args,
            });
        }
        Ok(specs)
    }
}
