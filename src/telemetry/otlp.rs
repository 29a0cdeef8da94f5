//! Spans to OTLP protobuf (`ExportTraceServiceRequest`), written straight from the
//! recorder's spans: no intermediate message structs. A span is encoded when it closes, on
//! its own thread ([`scope_span`]); a batch is those bytes behind one header ([`request`]).
//!
//! Field numbers from opentelemetry-proto `trace/v1/trace.proto`, `common/v1/common.proto`,
//! `resource/v1/resource.proto` and `collector/trace/v1/trace_service.proto`.

use super::span::{Attributes, SpanRec, Status, Value};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `v` as a protobuf varint: its bytes and how many there are.
#[inline]
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let (mut b, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        b[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    b[n] = v as u8;
    (b, n + 1)
}

#[inline]
fn varint(out: &mut Vec<u8>, v: u64) {
    // Most are lengths under 128: one byte.
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    let (b, n) = varint_bytes(v);
    out.extend_from_slice(&b[..n]);
}

/// A field's key: one byte for the fields here below 16 (inlined, a constant).
#[inline(always)]
fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    let k = field << 3 | wire;
    if k < 0x80 {
        out.push(k as u8);
    } else {
        varint(out, u64::from(k));
    }
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, VARINT);
        varint(out, v);
    }
}

/// A length-delimited field whose body `f` writes: the body goes after a placeholder and
/// is moved once its length is known (most bodies here are under 128 bytes: no move).
#[inline]
fn nested(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.push(0);
    f(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let (prefix, n) = varint_bytes(len as u64);
        out.splice(at..at + 1, prefix[..n].iter().copied());
    }
}

/// A few bytes gathered on the stack and appended with one copy: a field's key and
/// lengths, each written at an index instead of pushed one by one onto the buffer.
struct Head {
    b: [u8; 24],
    n: usize,
}

impl Head {
    #[inline(always)]
    fn new() -> Self {
        Head { b: [0; 24], n: 0 }
    }

    #[inline(always)]
    fn byte(&mut self, v: u8) {
        self.b[self.n] = v;
        self.n += 1;
    }

    #[inline(always)]
    fn varint(&mut self, v: u64) {
        let (b, n) = varint_bytes(v);
        self.b[self.n..self.n + n].copy_from_slice(&b[..n]);
        self.n += n;
    }

    /// The key of field `field` (below 16: one byte) and wire type `wire`.
    #[inline(always)]
    fn key(&mut self, field: u32, wire: u32) {
        debug_assert!(field < 16);
        self.byte((field << 3 | wire) as u8);
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

/// `KeyValue { key = 1, value = 2 (AnyValue) }` under field `field` (below 16), its
/// lengths computed before it is written, in four copies: the heads, the key, the value's
/// heads, the value.
#[inline]
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: AnyValue<'_>) {
    // A field of `n` bytes under a one-byte key.
    let field_len = |n: usize| 1 + varint_len(n as u64) + n;
    let value_len = match v {
        AnyValue::Str(s) => field_len(s.len()),
        AnyValue::Bool(_) => 2,
        AnyValue::I64(i) => 1 + varint_len(i as u64),
        AnyValue::F64(_) => 9,
    };
    let pair_len = field_len(k.len()) + field_len(value_len);
    out.reserve(field_len(pair_len));
    let mut h = Head::new();
    h.key(field, LEN);
    h.varint(pair_len as u64);
    h.key(1, LEN);
    h.varint(k.len() as u64);
    out.extend_from_slice(h.bytes());
    out.extend_from_slice(k.as_bytes());
    let mut h = Head::new();
    h.key(2, LEN);
    h.varint(value_len as u64);
    match v {
        AnyValue::Str(s) => {
            h.key(1, LEN);
            h.varint(s.len() as u64);
            out.extend_from_slice(h.bytes());
            out.extend_from_slice(s.as_bytes());
        }
        AnyValue::Bool(b) => {
            h.key(2, VARINT);
            h.byte(u8::from(b));
            out.extend_from_slice(h.bytes());
        }
        AnyValue::I64(i) => {
            h.key(3, VARINT);
            h.varint(i as u64);
            out.extend_from_slice(h.bytes());
        }
        AnyValue::F64(f) => {
            h.key(4, FIXED64);
            out.extend_from_slice(h.bytes());
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
    }
}

/// An `AnyValue`'s fields, field by field (the reference [`attribute`] is held to).
#[cfg(test)]
fn any_value(out: &mut Vec<u8>, v: AnyValue<'_>) {
    match v {
        AnyValue::Str(s) => bytes(out, 1, s.as_bytes()),
        AnyValue::Bool(b) => {
            key(out, 2, VARINT);
            out.push(u8::from(b));
        }
        AnyValue::I64(i) => {
            key(out, 3, VARINT);
            varint(out, i as u64);
        }
        AnyValue::F64(f) => fixed64(out, 4, f.to_bits()),
    }
}

#[derive(Clone, Copy)]
enum AnyValue<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    F64(f64),
}

fn attributes(out: &mut Vec<u8>, field: u32, a: &Attributes) {
    for &(k, v) in &a.list {
        let v = match v {
            Value::Str(..) => AnyValue::Str(a.str(v).unwrap_or("")),
            Value::I64(i) => AnyValue::I64(i),
            Value::F64(f) => AnyValue::F64(f),
            Value::Bool(b) => AnyValue::Bool(b),
        };
        attribute(out, field, k, v);
    }
}

fn span(out: &mut Vec<u8>, s: &SpanRec) {
    bytes(out, 1, &s.context.trace_id.to_be_bytes());
    bytes(out, 2, &s.context.span_id.to_be_bytes());
    if s.parent_id != 0 {
        bytes(out, 4, &s.parent_id.to_be_bytes());
    }
    bytes(out, 5, s.name.as_bytes());
    uint(out, 6, s.kind as u64);
    fixed64(out, 7, s.start);
    fixed64(out, 8, s.end);
    attributes(out, 9, &s.attributes);
    uint(out, 10, u64::from(s.attributes.dropped));
    for e in &s.events {
        nested(out, 11, |out| {
            fixed64(out, 1, e.time);
            bytes(out, 2, e.name.as_bytes());
            attributes(out, 3, &e.attributes);
            uint(out, 4, u64::from(e.attributes.dropped));
        });
    }
    uint(out, 12, u64::from(s.dropped_events));
    for l in &s.links {
        nested(out, 13, |out| {
            bytes(out, 1, &l.trace_id.to_be_bytes());
            bytes(out, 2, &l.span_id.to_be_bytes());
            key(out, 6, FIXED32);
            out.extend_from_slice(&u32::from(l.sampled).to_le_bytes());
        });
    }
    uint(out, 14, u64::from(s.dropped_links));
    if s.status != Status::Unset || s.status_message.is_some() {
        nested(out, 15, |out| {
            if let Some(m) = &s.status_message {
                bytes(out, 2, m.as_bytes());
            }
            uint(out, 3, s.status as u64);
        });
    }
    // W3C trace flags (sampled) in the low byte.
    key(out, 16, FIXED32);
    out.extend_from_slice(&u32::from(s.context.sampled).to_le_bytes());
}

/// What every exported span is a span of.
#[derive(Debug, Clone)]
pub struct Resource {
    pub service_name: String,
    pub service_version: &'static str,
}

/// The scope every span is recorded under.
pub const SCOPE: &str = "myriad-orchestrator";

thread_local! {
    /// The span being encoded, before its length is known (a span is longer than 127
    /// bytes: behind a one-byte placeholder its body would move to make room for the
    /// length).
    static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `span` as one `ScopeSpans.spans` entry, appended to `out` (a thread's encoded spans).
pub fn scope_span(out: &mut Vec<u8>, s: &SpanRec) {
    BODY.with(|body| {
        let mut body = body.borrow_mut();
        body.clear();
        span(&mut body, s);
        key(out, 2, LEN);
        varint(out, body.len() as u64);
        out.extend_from_slice(&body);
    });
}

/// An `ExportTraceServiceRequest` holding the spans encoded in `parts` (each a run of
/// [`scope_span`]s), all of `resource`.
pub fn request(resource: &Resource, parts: &[&[u8]]) -> Vec<u8> {
    let mut about = Vec::with_capacity(128);
    attribute(
        &mut about,
        1,
        "service.name",
        AnyValue::Str(&resource.service_name),
    );
    attribute(
        &mut about,
        1,
        "service.version",
        AnyValue::Str(resource.service_version),
    );
    attribute(
        &mut about,
        1,
        "telemetry.sdk.language",
        AnyValue::Str("rust"),
    );
    let mut scope = Vec::with_capacity(48);
    bytes(&mut scope, 1, SCOPE.as_bytes());
    bytes(&mut scope, 2, crate::VERSION.as_bytes());
    // The lengths are known before the spans are copied: each byte of them is written once.
    let field = |len: usize| 1 + varint_len(len as u64) + len;
    let spans: usize = parts.iter().map(|p| p.len()).sum();
    let scope_spans = field(scope.len()) + spans;
    let resource_spans = field(about.len()) + field(scope_spans);
    let mut out = Vec::with_capacity(field(resource_spans));
    key(&mut out, 1, LEN);
    varint(&mut out, resource_spans as u64);
    bytes(&mut out, 1, &about);
    key(&mut out, 2, LEN);
    varint(&mut out, scope_spans as u64);
    bytes(&mut out, 1, &scope);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_lengths_are_protobufs() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        // A body of 200 bytes needs a two-byte length: the placeholder grows.
        let mut out = vec![0xff];
        nested(&mut out, 3, |out| out.extend(std::iter::repeat_n(7u8, 200)));
        assert_eq!(&out[..4], &[0xff, 3 << 3 | 2, 0xc8, 0x01]);
        assert_eq!(out.len(), 4 + 200);
        let mut small = Vec::new();
        nested(&mut small, 1, |out| out.extend([1, 2, 3]));
        assert_eq!(small, [0x0a, 3, 1, 2, 3]);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
    }

    #[test]
    fn an_attribute_written_with_its_lengths_first_is_the_nested_message() {
        let long = "v".repeat(300);
        let values = [
            AnyValue::Str("short"),
            AnyValue::Str(&long),
            AnyValue::Bool(true),
            AnyValue::I64(-1),
            AnyValue::I64(5),
            AnyValue::F64(0.25),
        ];
        for (i, v) in values.into_iter().enumerate() {
            let k = if i == 1 {
                "k".repeat(130)
            } else {
                "key".into()
            };
            let reference = {
                let mut out = vec![0xee];
                nested(&mut out, 9, |out| {
                    bytes(out, 1, k.as_bytes());
                    nested(out, 2, |out| any_value(out, v));
                });
                out
            };
            let mut out = vec![0xee];
            attribute(&mut out, 9, &k, v);
            assert_eq!(out, reference, "value {i}");
        }
    }

    #[test]
    fn a_request_is_its_spans_encoded_apart_behind_one_header() {
        use super::super::span::SpanContext;
        let resource = Resource {
            service_name: "svc".into(),
            service_version: "1.2.3",
        };
        let spans: Vec<SpanRec> = (1..=40)
            .map(|n| {
                let mut s = SpanRec::new(
                    SpanContext {
                        trace_id: n,
                        span_id: n as u64,
                        sampled: true,
                    },
                    0,
                    std::borrow::Cow::Borrowed("a span with a name long enough to matter"),
                );
                (s.start, s.end) = (1, 2);
                s
            })
            .collect();
        // Encoded on two threads' buffers, joined in one request ...
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, s) in spans.iter().enumerate() {
            scope_span(if i % 2 == 0 { &mut a } else { &mut b }, s);
        }
        let got = request(&resource, &[&a, &b]);
        // ... is the message written in one go, nested field by nested field.
        let mut want = Vec::new();
        nested(&mut want, 1, |out| {
            nested(out, 1, |out| {
                attribute(out, 1, "service.name", AnyValue::Str("svc"));
                attribute(out, 1, "service.version", AnyValue::Str("1.2.3"));
                attribute(out, 1, "telemetry.sdk.language", AnyValue::Str("rust"));
            });
            nested(out, 2, |out| {
                nested(out, 1, |out| {
                    bytes(out, 1, SCOPE.as_bytes());
                    bytes(out, 2, crate::VERSION.as_bytes());
                });
                for s in spans
                    .iter()
                    .step_by(2)
                    .chain(spans.iter().skip(1).step_by(2))
                {
                    nested(out, 2, |out| span(out, s));
                }
            });
        });
        assert!(
            want.len() > 2_000,
            "lengths of two bytes and more are exercised"
        );
        assert_eq!(got, want);
    }
}
