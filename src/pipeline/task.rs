//! One task and its result: what a batch is made of, and what the client gets back.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    agents::{Data, Reply},
    failure::FailureCode,
};

/// One unit of work: ask the agent for `concept` to perform `intent`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSpec {
    /// As the client sent it: an integer or a string.
    pub task_id: Value,
    pub concept: String,
    pub intent: String,
    pub args: Value,
}

impl TaskSpec {
    /// The task id as a key of `results`.
    pub fn key(&self) -> String {
        task_key(&self.task_id)
    }
}

pub fn task_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        // The usual id, a whole number, without `fmt` (~500 instructions a key through it).
        Value::Number(n) if n.is_u64() || n.is_i64() => {
            let mut b = itoa::Buffer::new();
            match n.as_u64() {
                Some(u) => b.format(u).to_string(),
                None => b.format(n.as_i64().unwrap_or_default()).to_string(),
            }
        }
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Success,
    Error,
}

/// What one task produced. Agent fields outside the protocol pass through in `extra`.
/// Serialized with its keys in order, `extra`'s among the gateway's own (the order a
/// `serde_json::Value` of it would have), straight to bytes.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task_id: Value,
    pub status: TaskStatus,
    pub agent_name: Option<String>,
    pub data: Data,
    pub concept: String,
    pub intent: String,
    /// Cache tier that answered ("l1", "l2") or null.
    pub cached: Option<&'static str>,
    pub stale: bool,
    pub attempts: u32,
    pub latency_ms: f64,
    pub code: Option<FailureCode>,
    pub error: Option<String>,
    pub extra: Map<String, Value>,
}

/// The gateway's fields in key order; `extra` never holds one of them (RESERVED).
const OWN: [&str; 12] = [
    "agent_name",
    "attempts",
    "cached",
    "code",
    "concept",
    "data",
    "error",
    "intent",
    "latency_ms",
    "stale",
    "status",
    "task_id",
];

impl Serialize for TaskResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut extra = self.extra.iter().peekable();
        for own in OWN {
            while let Some((k, v)) = extra.next_if(|(k, _)| k.as_str() < own) {
                map.serialize_entry(k, v)?;
            }
            match own {
                "agent_name" => map.serialize_entry(own, &self.agent_name)?,
                "attempts" => map.serialize_entry(own, &self.attempts)?,
                "cached" => map.serialize_entry(own, &self.cached)?,
                "code" => {
                    if let Some(code) = &self.code {
                        map.serialize_entry(own, code)?
                    }
                }
                "concept" => map.serialize_entry(own, &self.concept)?,
                "data" => map.serialize_entry(own, &self.data)?,
                "error" => {
                    if let Some(error) = &self.error {
                        map.serialize_entry(own, error)?
                    }
                }
                "intent" => map.serialize_entry(own, &self.intent)?,
                "latency_ms" => map.serialize_entry(own, &self.latency_ms)?,
                "stale" => map.serialize_entry(own, &self.stale)?,
                "status" => map.serialize_entry(own, &self.status)?,
                _ => map.serialize_entry(own, &self.task_id)?,
            }
        }
        for (k, v) in extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `v`'s JSON appended to `out` (into memory, a value or a string key: nothing to fail).
pub fn put_json(out: &mut Vec<u8>, v: &(impl Serialize + ?Sized)) {
    let _ = serde_json::to_writer(&mut *out, v);
}

impl TaskResult {
    /// Its JSON written straight into `out`: what its `Serialize` writes, byte for byte,
    /// with the gateway's keys written as the constants they are, and an agent's `data`
    /// kept as text copied whole.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut extra = self.extra.iter().peekable();
        out.push(b'{');
        let mut after_first = false;
        let mut key = |out: &mut Vec<u8>, quoted: &dyn Fn(&mut Vec<u8>)| {
            if std::mem::replace(&mut after_first, true) {
                out.push(b',');
            }
            quoted(out);
            out.push(b':');
        };
        for own in OWN {
            while let Some((k, v)) = extra.next_if(|(k, _)| k.as_str() < own) {
                key(out, &|out| put_json(out, k));
                put_json(out, v);
            }
            let skip = match own {
                "code" => self.code.is_none(),
                "error" => self.error.is_none(),
                _ => false,
            };
            if skip {
                continue;
            }
            key(out, &|out| {
                out.push(b'"');
                out.extend_from_slice(own.as_bytes());
                out.push(b'"');
            });
            match own {
                "agent_name" => put_json(out, &self.agent_name),
                "attempts" => {
                    out.extend_from_slice(itoa::Buffer::new().format(self.attempts).as_bytes())
                }
                "cached" => put_json(out, &self.cached),
                "code" => put_json(out, &self.code),
                "concept" => put_json(out, &self.concept),
                "data" => match self.data.text() {
                    Some(text) => out.extend_from_slice(text.as_bytes()),
                    None => put_json(out, &self.data),
                },
                "error" => put_json(out, &self.error),
                "intent" => put_json(out, &self.intent),
                "latency_ms" => put_json(out, &self.latency_ms),
                "stale" => out.extend_from_slice(if self.stale { b"true" } else { b"false" }),
                "status" => put_json(out, &self.status),
                _ => put_json(out, &self.task_id),
            }
        }
        for (k, v) in extra {
            key(out, &|out| put_json(out, k));
            put_json(out, v);
        }
        out.push(b'}');
    }
}

/// Fields the gateway owns; an agent cannot overwrite them.
pub const RESERVED: [&str; 13] = [
    "task_id",
    "status",
    "agent_name",
    "data",
    "concept",
    "intent",
    "cached",
    "stale",
    "attempts",
    "latency_ms",
    "code",
    "error",
    "candidates",
];

impl TaskResult {
    pub(super) fn new(task: &TaskSpec, status: TaskStatus) -> Self {
        TaskResult {
            task_id: task.task_id.clone(),
            status,
            agent_name: None,
            data: Data::default(),
            concept: task.concept.clone(),
            intent: task.intent.clone(),
            cached: None,
            stale: false,
            attempts: 0,
            latency_ms: 0.0,
            code: None,
            error: None,
            extra: Map::new(),
        }
    }

    pub fn failed(task: &TaskSpec, code: FailureCode, message: impl Into<String>) -> Self {
        let mut r = TaskResult::new(task, TaskStatus::Error);
        r.code = Some(code);
        r.error = Some(message.into());
        r
    }

    pub fn succeeded(&self) -> bool {
        self.status == TaskStatus::Success
    }

    /// Copies an agent's answer in: `data`, then every non-reserved field. An answer the
    /// cache keeps is shared, not copied: its `data` goes out from it, and of its other
    /// fields only those that pass into the result are copied (for most answers, none).
    pub(super) fn absorb(&mut self, reply: Reply) {
        let body = &reply.body;
        // The agent's own name field only matters when it disagrees with the graph.
        if let Some(Value::String(name)) = body.get("agent_name") {
            if self.agent_name.as_deref() != Some(name.as_str()) {
                self.extra
                    .insert("agent_reported_name".into(), Value::String(name.clone()));
            }
        }
        for (k, v) in body {
            if !RESERVED.contains(&k.as_str()) {
                self.extra.insert(k.clone(), v.clone());
            }
        }
        // An `agent_reported_name` of the agent's own is dropped the same way.
        if !self.extra.is_empty()
            && self
                .extra
                .get("agent_reported_name")
                .and_then(Value::as_str)
                == self.agent_name.as_deref()
        {
            self.extra.remove("agent_reported_name");
        }
        self.data = match reply {
            Reply::Own(reply) => reply.data,
            Reply::Kept(kept) => Data::Kept(kept),
        };
    }
}

/// How a whole request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every task succeeded.
    Success,
    /// Some did.
    Partial,
    /// None did (or there was none).
    Failed,
}

/// `Success` when every task succeeded, `Failed` when none did, else `Partial`.
pub fn overall_status<'a>(results: impl IntoIterator<Item = &'a TaskResult>) -> Overall {
    let (mut ok, mut total) = (0usize, 0usize);
    for r in results {
        total += 1;
        ok += usize::from(r.succeeded());
    }
    match (ok, total) {
        (_, 0) => Overall::Failed,
        (ok, total) if ok == total => Overall::Success,
        (0, _) => Overall::Failed,
        _ => Overall::Partial,
    }
}
