//! Talking to agents: the agent protocol over HTTP, and the built-in demo agents.
//!
//! The pipeline sees [`AgentTransport`] and [`CallError`], never reqwest types.

pub mod demo;
pub mod endpoint;
pub mod http;
pub mod pool;

use std::{borrow::Cow, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{de, Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::failure::FailureCode;
use serde_json::{Map, Value};

/// The body of `POST <agent endpoint>` (unchanged from the original service).
/// What an agent is asked, borrowed from the task it is for (written to the agent's body
/// as is; `args` owned only when something was added to the task's).
#[derive(Debug, Clone, Serialize)]
pub struct AgentRequest<'a> {
    pub task_id: &'a Value,
    pub intent: &'a str,
    pub concept: &'a str,
    pub args: std::borrow::Cow<'a, Value>,
}

/// An answer's `data`: as the agent wrote it (checked, kept as text: it passes through to
/// the client without a tree of it built and written out again), that of an answer the
/// cache keeps (shared with it, not copied), or a value (a 4xx body, a demo agent's).
#[derive(Debug, Clone)]
pub enum Data {
    Raw(Box<RawValue>),
    Kept(Kept),
    Value(Value),
}

impl Default for Data {
    fn default() -> Self {
        Data::Value(Value::Null)
    }
}

impl Data {
    /// The length of its text when it is kept as text (0 for a value).
    pub fn text_len(&self) -> usize {
        self.text().map_or(0, str::len)
    }

    /// Its JSON text, when it is kept as text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Data::Raw(raw) => Some(raw.get()),
            Data::Kept(kept) => kept.0.data.text(),
            Data::Value(_) => None,
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            // Checked when it was read ([`AgentReply::parse`], [`Kept`]'s decoding): it parses.
            Data::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            Data::Kept(kept) => kept.0.data.clone().into_value(),
            Data::Value(v) => v,
        }
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Raw(raw) => raw.serialize(serializer),
            Data::Kept(kept) => kept.0.data.serialize(serializer),
            Data::Value(v) => v.serialize(serializer),
        }
    }
}

/// A 2xx answer whose body is a JSON object: its `data`, and its other fields in `body`.
/// `body["status"]` says whether the agent succeeded; every field passes through into the
/// task result.
#[derive(Debug, Clone)]
pub struct AgentReply {
    pub data: Data,
    pub body: Map<String, Value>,
}

impl AgentReply {
    /// An answer's body, if it is a JSON object: `data` kept as the agent wrote it. `None`
    /// for anything a `serde_json::Value` would not hold either: `data`'s text is read
    /// through once more as a value would be ([`Checked`]: numbers in range, escapes whole
    /// characters), building nothing.
    pub fn parse(body: &[u8]) -> Option<AgentReply> {
        let reply: AgentReply = serde_json::from_slice(body).ok()?;
        reply.checked().ok()?;
        Some(reply)
    }

    /// Its `data`'s text read once more as a `Value` would read it ([`Checked`]). A string
    /// with no escape in it is passed: the first reading already refused what a value
    /// refuses there (bytes that are not UTF-8, control characters); reading a kilobyte of
    /// text again was ~2,200 instructions, 4 % of an uncached request's.
    fn checked(&self) -> Result<(), serde_json::Error> {
        if let Data::Raw(raw) = &self.data {
            let text = raw.get();
            if !text.starts_with('"') || memchr::memchr(b'\\', text.as_bytes()).is_some() {
                serde_json::from_str::<Checked>(text)?;
            }
        }
        Ok(())
    }

    /// An answer held as one JSON object (a 4xx body), `data` taken out of it.
    pub fn from_object(mut body: Map<String, Value>) -> AgentReply {
        let data = Data::Value(body.remove("data").unwrap_or(Value::Null));
        AgentReply { data, body }
    }

    /// This answer as the response cache keeps it.
    pub fn keep(self) -> Kept {
        Kept(Arc::new(self))
    }

    pub fn succeeded(&self) -> bool {
        self.body.get("status").and_then(Value::as_str) == Some("success")
    }

    /// How sure the agent says it is of this answer: its optional `confidence`, a number in
    /// [0, 1]; anything else (absent, out of range, not a number) is no statement.
    pub fn confidence(&self) -> Option<f64> {
        self.body
            .get("confidence")
            .and_then(Value::as_f64)
            .filter(|c| (0.0..=1.0).contains(c))
    }
}

impl<'de> Deserialize<'de> for AgentReply {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> de::Visitor<'de> for Fields {
            type Value = AgentReply;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AgentReply, A::Error> {
                let mut reply = AgentReply {
                    data: Data::default(),
                    body: Map::new(),
                };
                while let Some(Key(key)) = map.next_key()? {
                    if key == "data" {
                        reply.data = Data::Raw(map.next_value()?);
                    } else {
                        reply.body.insert(key.into_owned(), map.next_value()?);
                    }
                }
                Ok(reply)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// An answer as the response cache keeps it: one allocation every hit shares. A hit
/// copies none of it: its `data` goes out from here ([`Data::Kept`]), as the agent wrote
/// it, and only fields that pass into the task result are copied. In the shared tier it is
/// the answer's JSON object, `data` among its fields (keys in order).
#[derive(Debug, Clone)]
pub struct Kept(Arc<AgentReply>);

impl std::ops::Deref for Kept {
    type Target = AgentReply;
    fn deref(&self) -> &AgentReply {
        &self.0
    }
}

impl Serialize for Kept {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.body.len() + 1))?;
        let mut data = Some(&self.data);
        for (k, v) in &self.body {
            if k.as_str() > "data" {
                if let Some(d) = data.take() {
                    map.serialize_entry("data", d)?;
                }
            }
            map.serialize_entry(k, v)?;
        }
        if let Some(d) = data {
            map.serialize_entry("data", d)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Kept {
    /// Read back from the shared tier (another replica may have written it): refused as an
    /// agent's answer would be ([`AgentReply::parse`]).
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let reply = AgentReply::deserialize(deserializer)?;
        reply.checked().map_err(de::Error::custom)?;
        Ok(reply.keep())
    }
}

/// An answer as a call returns it: its own, or one the cache keeps (shared with it).
#[derive(Debug)]
pub enum Reply {
    Own(AgentReply),
    Kept(Kept),
}

impl Reply {
    /// The answer as the cache keeps it.
    pub fn keep(self) -> Kept {
        match self {
            Reply::Own(reply) => reply.keep(),
            Reply::Kept(kept) => kept,
        }
    }
}

impl std::ops::Deref for Reply {
    type Target = AgentReply;
    fn deref(&self) -> &AgentReply {
        match self {
            Reply::Own(reply) => reply,
            Reply::Kept(kept) => kept,
        }
    }
}

/// JSON read the way a `serde_json::Value` is (every number and string parsed, so what a
/// value refuses is refused), keeping nothing: a raw answer's text is what it checks.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> de::Visitor<'de> for Any {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// A key of an answer's object, borrowed from its text when it has no escapes (`data`'s
/// is not copied at all).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> de::Visitor<'de> for Text {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Why one call to an agent did not produce a reply. Knows who failed and whether a retry
/// is safe, so breaker, retry and status mapping read this instead of matching strings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Nothing accepted the connection (refused, unreachable, DNS): the request was never
    /// processed, so retrying is safe.
    #[error("cannot connect to the agent")]
    Connect,
    /// No complete answer within the per-try timeout.
    #[error("the agent did not answer in time")]
    Timeout,
    /// The connection broke mid-exchange; the agent may have acted.
    #[error("the connection to the agent failed")]
    Transport,
    /// A non-2xx status. A 4xx body, when it is a JSON object, passes through.
    #[error("the agent answered HTTP {status}")]
    Status {
        status: u16,
        body: Option<Map<String, Value>>,
    },
    /// A 429: the agent asks to be sent nothing for a while (`Retry-After`, if it said).
    /// Neither a fault of the agent nor an answer; not retried.
    #[error("the agent asked to slow down (HTTP 429)")]
    Throttled {
        retry_after: Option<Duration>,
        body: Option<Map<String, Value>>,
    },
    /// A 2xx whose body is not a valid agent response.
    #[error("the agent's answer is not a valid agent response")]
    InvalidBody,
    /// The endpoint's host is not in AGENT_ALLOWED_HOSTS; nothing was sent.
    #[error("the agent's endpoint is not an allowed host")]
    Blocked,
}

impl CallError {
    /// Upstream faults open breakers; an agent's 4xx never does.
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            CallError::Status { status, .. } => *status >= 500,
            CallError::Blocked | CallError::Throttled { .. } => false,
            _ => true,
        }
    }

    /// Safe to send again: the agent never saw it, or said so (502/503/504).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Connect => true,
            CallError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// Stable code reported in the task result.
    pub fn code(&self) -> FailureCode {
        match self {
            CallError::Timeout => FailureCode::Timeout,
            CallError::Blocked => FailureCode::EndpointNotAllowed,
            CallError::Throttled { .. } => FailureCode::RateLimited,
            CallError::Status { status, .. } if *status < 500 => FailureCode::AgentRejected,
            _ => FailureCode::UpstreamError,
        }
    }
}

#[async_trait]
pub trait AgentTransport: Send + Sync + 'static {
    /// One attempt: POST `req` to `endpoint`, answer within `timeout`.
    async fn call(
        &self,
        endpoint: &str,
        req: &AgentRequest<'_>,
        timeout: Duration,
    ) -> Result<AgentReply, CallError>;

    /// POST an arbitrary JSON body (remote input/output processors, collaboration).
    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_data_is_kept_as_written_and_checked_like_a_value() {
        let parse = |text: &str| AgentReply::parse(text.as_bytes());
        let text = r#"{"status":"success","data": {"b": [1, 2.50, 1e300], "a": "\u00e9"} ,"x":1}"#;
        let reply = parse(text).expect("an object");
        // Byte for byte, key order, spacing and number spelling included.
        let Data::Raw(raw) = &reply.data else {
            panic!("kept as text")
        };
        assert_eq!(raw.get(), r#"{"b": [1, 2.50, 1e300], "a": "\u00e9"}"#);
        assert_eq!(
            serde_json::to_string(&reply.data).unwrap(),
            r#"{"b": [1, 2.50, 1e300], "a": "\u00e9"}"#
        );
        assert_eq!(reply.body.get("status"), Some(&Value::from("success")));
        assert_eq!(reply.body.get("x"), Some(&Value::from(1)));
        assert!(!reply.body.contains_key("data"));
        // No `data`: null, as before.
        let bare = parse(r#"{"status":"success"}"#).unwrap();
        assert_eq!(bare.data.into_value(), Value::Null);
        // A key written with escapes is still the same key.
        let escaped = parse(r#"{"st\u0061tus":"success","d\u0061ta":"ok"}"#).unwrap();
        assert!(escaped.body.contains_key("status"));
        assert_eq!(escaped.data.into_value(), Value::from("ok"));
        // What a `serde_json::Value` refuses is refused: not an object, broken JSON, text
        // after the object, a raw control character, a lone surrogate, a number out of
        // range, a bad escape, deep nesting.
        for bad in [
            "[1]",
            "\"x\"",
            r#"{"status":"success","data":}"#,
            r#"{"status":"success","data":1} 2"#,
            "{\"status\":\"success\",\"data\":\"a\u{1}b\"}",
            r#"{"status":"success","data":"\ud800"}"#,
            r#"{"status":"success","data":["\udc00x"]}"#,
            r#"{"status":"success","data":{"n":1e400}}"#,
            r#"{"status":"success","data":"\q"}"#,
            &format!(
                r#"{{"status":"success","data":{}1{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
            assert!(
                serde_json::from_str::<Value>(bad).map_or(true, |v| !v.is_object()),
                "{bad}"
            );
        }
        // A string without an escape is not read twice; what the first reading refuses
        // there still is (bytes that are not UTF-8; a control character, above).
        assert!(AgentReply::parse(b"{\"status\":\"success\",\"data\":\"a\xffb\"}").is_none());
        let plain = parse(r#"{"status":"success","data":"plain text, é"}"#).unwrap();
        assert_eq!(plain.data.into_value(), Value::from("plain text, é"));
        // A surrogate pair is a character.
        let pair = parse(r#"{"status":"success","data":"\ud83d\ude00"}"#).unwrap();
        assert_eq!(pair.data.into_value(), Value::from("😀"));
        // Through the shared tier and back: one object, `data` among its fields in key
        // order and as the agent wrote it; read back, it is checked as an answer is.
        let kept = parse(r#"{"z":1,"status":"success","data": [1, 2.50],"a":"b"}"#)
            .unwrap()
            .keep();
        let wire = serde_json::to_string(&kept).unwrap();
        assert_eq!(
            wire,
            r#"{"a":"b","data":[1, 2.50],"status":"success","z":1}"#
        );
        let again: Kept = serde_json::from_str(&wire).unwrap();
        assert_eq!(again.body, kept.body);
        assert_eq!(
            serde_json::to_string(&Data::Kept(again)).unwrap(),
            "[1, 2.50]"
        );
        let last = parse(r#"{"agent_name":"A","data":null}"#).unwrap().keep();
        assert_eq!(
            serde_json::to_string(&last).unwrap(),
            r#"{"agent_name":"A","data":null}"#
        );
        for bad in [r#"{"data":"\ud800"}"#, r#"{"data":1e400}"#, "[]"] {
            assert!(serde_json::from_str::<Kept>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_upstream_faults_count_and_only_safe_failures_retry() {
        let s = |status| CallError::Status { status, body: None };
        assert!(!s(400).is_upstream_fault() && !s(400).is_retryable());
        assert!(s(500).is_upstream_fault() && !s(500).is_retryable());
        assert!(s(503).is_upstream_fault() && s(503).is_retryable());
        assert!(CallError::Connect.is_retryable());
        assert!(CallError::Timeout.is_upstream_fault() && !CallError::Timeout.is_retryable());
        assert!(!CallError::Transport.is_retryable());
        assert_eq!(s(404).code().as_str(), "agent_rejected");
        assert_eq!(CallError::Timeout.code().as_str(), "timeout");
        let throttled = CallError::Throttled {
            retry_after: None,
            body: None,
        };
        assert!(!throttled.is_upstream_fault() && !throttled.is_retryable());
        assert_eq!(throttled.code().as_str(), "rate_limited");
    }
}
