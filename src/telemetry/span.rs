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
    pub fn traceparent(&self) -> Traceparent {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex_into(&mut b[3..35], self.trace_id);
        b[35] = b'-';
        hex_into(&mut b[36..52], u128::from(self.span_id));
        b[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        Traceparent(b)
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut b = [0u8; 32];
        hex_into(&mut b, self.trace_id);
        // ASCII: always UTF-8.
        std::str::from_utf8(&b).unwrap_or_default().to_string()
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

/// The low `out.len()` (even, at most 32) hex digits of `v`, lower case, zero-padded.
fn hex_into(out: &mut [u8], v: u128) {
    // Two digits a byte from a table (a digit at a time, each a 128-bit shift, cost ~10
    // instructions a digit: ~500 for a `traceparent`).
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    let n = out.len().min(32) / 2;
    let bytes = v.to_be_bytes();
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[16 - n..]) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

/// A `traceparent` header value, on the stack.
#[derive(Clone, Copy)]
pub struct Traceparent([u8; 55]);

impl Traceparent {
    pub fn as_str(&self) -> &str {
        // ASCII: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Traceparent {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An attribute's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attr<'a> {
    Str(&'a str),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl<'a> From<&'a str> for Attr<'a> {
    fn from(v: &'a str) -> Self {
        Attr::Str(v)
    }
}

impl<'a> From<&'a String> for Attr<'a> {
    fn from(v: &'a String) -> Self {
        Attr::Str(v)
    }
}

/// `From` for the values an attribute holds as they are.
macro_rules! attr_from {
    ($($t:ty => $variant:ident),+) => {$(
        impl From<$t> for Attr<'_> {
            fn from(v: $t) -> Self {
                Attr::$variant(v)
            }
        }
    )+};
}
attr_from!(bool => Bool, f64 => F64, i64 => I64);

impl From<u64> for Attr<'_> {
    /// An integer as OTLP carries it (signed); past `i64::MAX` as a float.
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Attr::F64(v as f64), Attr::I64)
    }
}

macro_rules! attr_from_int {
    ($($t:ty),+) => {$(
        impl From<$t> for Attr<'_> {
            fn from(v: $t) -> Self {
                Attr::from(v as u64)
            }
        }
    )+};
}
attr_from_int!(u16, u32, usize);

/// Attributes, kept encoded: each one set is written as its OTLP `KeyValue` (under the
/// field that holds attributes in its message) into one buffer, which a span's encoding
/// copies whole; the keys say where each pair is, so a key set again has its new value.
/// ([`super::otlp`] writes them.)
#[derive(Debug, Clone)]
pub struct Attributes {
    /// The field number of attributes in the message they belong to.
    pub(super) field: u32,
    pub(super) bytes: Vec<u8>,
    /// Each key, with the start and length of its pair in `bytes`.
    pub(super) keys: Vec<(&'static str, u32, u32)>,
    /// A bit for each key's [`Attributes::key_bit`]: a key whose bit is clear is new, and
    /// is set without looking for it among the keys.
    pub(super) seen: u64,
    pub dropped: u32,
}

impl Attributes {
    /// A span's (`Span.attributes` = 9).
    pub const fn of_span() -> Self {
        Self::under(9)
    }

    /// An event's (`Span.Event.attributes` = 3).
    pub const fn of_event() -> Self {
        Self::under(3)
    }

    const fn under(field: u32) -> Self {
        Attributes {
            field,
            bytes: Vec::new(),
            keys: Vec::new(),
            seen: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.keys.clear();
        self.seen = 0;
        self.dropped = 0;
    }

    /// One of 64 bits, the same for equal keys (by their length and last byte).
    pub(super) fn key_bit(key: &str) -> u64 {
        let h =
            key.len().wrapping_mul(7) ^ usize::from(key.as_bytes().last().copied().unwrap_or(0));
        1 << (h & 63)
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
    /// A name's buffer kept from an earlier span of this record (`otel.name`).
    pub spare_name: String,
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
        if let Cow::Owned(old) = std::mem::replace(&mut self.name, name) {
            self.spare_name = old;
        }
        self.kind = Kind::Internal;
        self.start = 0;
        self.end = 0;
        self.attributes.clear();
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
            spare_name: String::new(),
            kind: Kind::Internal,
            start: 0,
            end: 0,
            attributes: Attributes::of_span(),
            status: Status::Unset,
            status_message: None,
            events: Vec::new(),
            dropped_events: 0,
            links: Vec::new(),
            dropped_links: 0,
        }
    }
}
