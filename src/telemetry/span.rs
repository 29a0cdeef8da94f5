//! What a recorded span is: the data the recorder keeps and OTLP carries.

use std::borrow::Cow;

/// At most this many attributes, events and links a span keeps; the rest are counted as
/// dropped in what is exported (the OpenTelemetry SDK's default limits).
pub const MAX_ATTRIBUTES: usize = 128;
pub const MAX_EVENTS: usize = 128;
pub const MAX_LINKS: usize = 128;

/// A trace id and a span id, as W3C `traceparent` carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl SpanContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex(&mut s, self.trace_id, 32);
        s.push('-');
        hex(&mut s, u128::from(self.span_id), 16);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        hex(&mut s, self.trace_id, 32);
        s
    }

    /// A W3C `traceparent` header (version 00 and later versions' first four fields);
    /// `None` for anything malformed or the all-zero ids the specification forbids.
    pub fn parse(header: &str) -> Option<SpanContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            (s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then_some(())
        };
        hex(version, 2)?;
        hex(trace, 32)?;
        hex(span, 16)?;
        hex(flags, 2)?;
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Appends the low `digits` hex digits of `v`, lower case, zero-padded (`format!` with a
/// width is the slow path of `fmt`).
/// The low `digits` (at most 32) hex digits of `v`, gathered on the stack and appended at
/// once (a `char` pushed at a time cost ~20 instructions a digit).
fn hex(s: &mut String, v: u128, digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let digits = digits.min(32);
    for (i, b) in buf[..digits].iter_mut().enumerate() {
        *b = DIGITS[((v >> ((digits - 1 - i) * 4)) & 0xf) as usize];
    }
    // ASCII digits: always UTF-8.
    s.push_str(std::str::from_utf8(&buf[..digits]).unwrap_or_default());
}

/// One attribute's value; strings are ranges of the span's text buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Str(u32, u32),
    I64(i64),
    F64(f64),
    Bool(bool),
}

/// Attributes: keys from the callsites, string values in one buffer.
#[derive(Debug, Default, Clone)]
pub struct Attributes {
    pub text: String,
    pub list: Vec<(&'static str, Value)>,
    pub dropped: u32,
}

impl Attributes {
    pub fn str(&self, v: Value) -> Option<&str> {
        match v {
            Value::Str(a, b) => self.text.get(a as usize..b as usize),
            _ => None,
        }
    }

    /// The value of `key`, if recorded (tests and logs).
    pub fn get(&self, key: &str) -> Option<Value> {
        self.list.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub(super) fn set(&mut self, key: &'static str, value: Value) {
        if let Some(slot) = self.list.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if self.list.len() < MAX_ATTRIBUTES {
            self.list.push((key, value));
        } else {
            self.dropped += 1;
        }
    }

    pub(super) fn text(&mut self, f: impl FnOnce(&mut String)) -> Value {
        let start = self.text.len();
        f(&mut self.text);
        Value::Str(start as u32, self.text.len() as u32)
    }
}

#[derive(Debug, Clone)]
pub struct EventRec {
    pub time: u64,
    pub name: String,
    pub attributes: Attributes,
}

/// Span kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// Span status, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// Everything a span carries to the backend.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub context: SpanContext,
    /// 0: a root.
    pub parent_id: u64,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    pub status: Status,
    pub status_message: Option<String>,
    pub events: Vec<EventRec>,
    pub dropped_events: u32,
    pub links: Vec<SpanContext>,
    pub dropped_links: u32,
}

/// A span's record, boxed: it moves between the span and its thread's spares as a pointer,
/// and its buffers are kept from one span to the next.
pub type Rec = Box<SpanRec>;

impl SpanRec {
    /// Made a record of a new span (as [`SpanRec::new`]), keeping the buffers' room.
    pub fn reset(&mut self, context: SpanContext, parent_id: u64, name: Cow<'static, str>) {
        self.context = context;
        self.parent_id = parent_id;
        self.name = name;
        self.kind = Kind::Internal;
        self.start = 0;
        self.end = 0;
        self.attributes.text.clear();
        self.attributes.list.clear();
        self.attributes.dropped = 0;
        self.status = Status::Unset;
        self.status_message = None;
        self.events.clear();
        self.dropped_events = 0;
        self.links.clear();
        self.dropped_links = 0;
    }

    /// A span of `context` under `parent_id` (0: a root), nothing recorded yet.
    pub fn new(context: SpanContext, parent_id: u64, name: Cow<'static, str>) -> Self {
        SpanRec {
            context,
            parent_id,
            name,
            kind: Kind::Internal,
            start: 0,
            end: 0,
            attributes: Attributes::default(),
            status: Status::Unset,
            status_message: None,
            events: Vec::new(),
            dropped_events: 0,
            links: Vec::new(),
            dropped_links: 0,
        }
    }
}
