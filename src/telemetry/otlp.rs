//! Spans to OTLP protobuf (`ExportTraceServiceRequest`), written straight from the
//! recorder's spans: no intermediate message structs. A span is encoded when it closes, on
//! its own thread ([`scope_span`]); a batch is those bytes behind one header ([`request`]).
//!
//! Field numbers from opentelemetry-proto `trace/v1/trace.proto`, `common/v1/common.proto`,
//! `resource/v1/resource.proto` and `collector/trace/v1/trace_service.proto`.

use super::span::{Attr, Attributes, SpanRec, Status, MAX_ATTRIBUTES};

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

/// `KeyValue { key = 1, value = 2 (AnyValue) }` under field `field` (below 16). A span's
/// attributes are short: when the pair is under 128 bytes every length is one byte, known
/// before anything is written, and the pair goes out as a few fixed-size stores and two
/// copies (the general path, nested field by nested field, cost ~470 instructions an
/// attribute).
#[inline]
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: Attr<'_>) {
    let value_len = match v {
        Attr::Str(s) => 2 + s.len(),
        Attr::Bool(_) => 2,
        Attr::I64(i) => 1 + varint_len(i as u64),
        Attr::F64(_) => 9,
    };
    let pair_len = 2 + k.len() + 2 + value_len;
    if pair_len >= 0x80 {
        return nested(out, field, |out| {
            bytes(out, 1, k.as_bytes());
            nested(out, 2, |out| any_value(out, v));
        });
    }
    debug_assert!(field < 16);
    out.reserve(2 + pair_len);
    out.extend_from_slice(&[
        (field << 3 | LEN) as u8,
        pair_len as u8,
        1 << 3 | LEN as u8,
        k.len() as u8,
    ]);
    out.extend_from_slice(k.as_bytes());
    match v {
        Attr::Str(s) => {
            out.extend_from_slice(&[
                2 << 3 | LEN as u8,
                value_len as u8,
                1 << 3 | LEN as u8,
                s.len() as u8,
            ]);
            out.extend_from_slice(s.as_bytes());
        }
        Attr::Bool(b) => out.extend_from_slice(&[2 << 3 | LEN as u8, 2, 2 << 3, u8::from(b)]),
        Attr::I64(i) => {
            out.extend_from_slice(&[2 << 3 | LEN as u8, value_len as u8, 3 << 3]);
            varint(out, i as u64);
        }
        Attr::F64(f) => {
            out.extend_from_slice(&[2 << 3 | LEN as u8, 9, 4 << 3 | FIXED64 as u8]);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
    }
}

/// An `AnyValue`'s fields, field by field.
fn any_value(out: &mut Vec<u8>, v: Attr<'_>) {
    match v {
        Attr::Str(s) => bytes(out, 1, s.as_bytes()),
        Attr::Bool(b) => {
            key(out, 2, VARINT);
            out.push(u8::from(b));
        }
        Attr::I64(i) => {
            key(out, 3, VARINT);
            varint(out, i as u64);
        }
        Attr::F64(f) => fixed64(out, 4, f.to_bits()),
    }
}

impl Attributes {
    /// `key = value`, encoded now; a key set again has the new value (the last wins).
    pub fn set(&mut self, key: &'static str, value: Attr<'_>) {
        let at = self.bytes.len();
        let bit = Attributes::key_bit(key);
        let known = self.seen & bit != 0;
        self.seen |= bit;
        let Some(i) = known
            .then(|| self.keys.iter().position(|&(k, ..)| k == key))
            .flatten()
        else {
            if self.keys.len() >= MAX_ATTRIBUTES {
                self.dropped += 1;
                return;
            }
            attribute(&mut self.bytes, self.field, key, value);
            self.keys
                .push((key, at as u32, (self.bytes.len() - at) as u32));
            return;
        };
        attribute(&mut self.bytes, self.field, key, value);
        let (start, len) = (self.keys[i].1 as usize, self.keys[i].2 as usize);
        let new_len = self.bytes.len() - at;
        if new_len == len {
            self.bytes.copy_within(at.., start);
            self.bytes.truncate(at);
        } else {
            self.bytes.drain(start..start + len);
            for k in &mut self.keys {
                if k.1 as usize > start {
                    k.1 -= len as u32;
                }
            }
            self.keys[i] = (key, (at - len) as u32, new_len as u32);
        }
    }

    /// The value of `key`, read back from its encoding.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<Attr<'_>> {
        let &(_, start, len) = self.keys.iter().find(|(k, ..)| *k == key)?;
        let pair = &self.bytes[start as usize..(start + len) as usize];
        // Tag and length of the pair, then the key's.
        let mut fields = Fields(pair);
        fields.0 = fields.len_delimited()?;
        assert_eq!(fields.len_delimited()?, key.as_bytes());
        let mut value = Fields(fields.len_delimited()?);
        Some(match value.0.first()? >> 3 {
            1 => Attr::Str(std::str::from_utf8(value.len_delimited()?).ok()?),
            2 => Attr::Bool(value.varint_field()? != 0),
            3 => Attr::I64(value.varint_field()? as i64),
            4 => Attr::F64(f64::from_le_bytes(value.0.get(1..9)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// A protobuf message read field by field (tests read attributes back).
#[cfg(test)]
struct Fields<'a>(&'a [u8]);

#[cfg(test)]
impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
            shift += 7;
        }
    }

    /// The next field, length-delimited: its bytes.
    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        self.varint()?;
        let n = self.varint()? as usize;
        let (field, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(field)
    }

    /// The next field, a varint: its value.
    fn varint_field(&mut self) -> Option<u64> {
        self.varint()?;
        self.varint()
    }
}

fn span(out: &mut Vec<u8>, s: &SpanRec) {
    // The ids, kind and times: fixed sizes, gathered on the stack and appended in two
    // copies around the name (a field at a time cost ~900 instructions a span).
    let mut ids = [0u8; 38];
    ids[..2].copy_from_slice(&[1 << 3 | LEN as u8, 16]);
    ids[2..18].copy_from_slice(&s.context.trace_id.to_be_bytes());
    ids[18..20].copy_from_slice(&[2 << 3 | LEN as u8, 8]);
    ids[20..28].copy_from_slice(&s.context.span_id.to_be_bytes());
    ids[28..30].copy_from_slice(&[4 << 3 | LEN as u8, 8]);
    ids[30..].copy_from_slice(&s.parent_id.to_be_bytes());
    out.extend_from_slice(if s.parent_id != 0 { &ids } else { &ids[..28] });
    bytes(out, 5, s.name.as_bytes());
    let mut times = [0u8; 20];
    times[..2].copy_from_slice(&[6 << 3 | VARINT as u8, s.kind as u8]);
    times[2] = 7 << 3 | FIXED64 as u8;
    times[3..11].copy_from_slice(&s.start.to_le_bytes());
    times[11] = 8 << 3 | FIXED64 as u8;
    times[12..].copy_from_slice(&s.end.to_le_bytes());
    out.extend_from_slice(&times);
    out.extend_from_slice(&s.attributes.bytes);
    uint(out, 10, u64::from(s.attributes.dropped));
    for e in &s.events {
        nested(out, 11, |out| {
            fixed64(out, 1, e.time);
            bytes(out, 2, e.name.as_bytes());
            out.extend_from_slice(&e.attributes.bytes);
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

/// `span` as one `ScopeSpans.spans` entry, appended to `out` (a thread's encoded spans).
/// Its length goes before it and is known after it: two bytes are set aside (a span is
/// 128 to 16,383 bytes long) and the body moves only when it is not.
pub fn scope_span(out: &mut Vec<u8>, s: &SpanRec) {
    key(out, 2, LEN);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    span(out, s);
    let len = out.len() - at - 2;
    if (0x80..0x4000).contains(&len) {
        out[at..at + 2].copy_from_slice(&[len as u8 | 0x80, (len >> 7) as u8]);
    } else {
        let (prefix, n) = varint_bytes(len as u64);
        out.splice(at..at + 2, prefix[..n].iter().copied());
    }
}

/// An `ExportTraceServiceRequest` holding the spans encoded in `parts` (each a run of
/// [`scope_span`]s), all of `resource`.
pub fn request(resource: &Resource, parts: &[&[u8]]) -> Vec<u8> {
    let mut about = Vec::with_capacity(128);
    attribute(
        &mut about,
        1,
        "service.name",
        Attr::Str(&resource.service_name),
    );
    attribute(
        &mut about,
        1,
        "service.version",
        Attr::Str(resource.service_version),
    );
    attribute(&mut about, 1, "telemetry.sdk.language", Attr::Str("rust"));
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
            Attr::Str("short"),
            Attr::Str(""),
            Attr::Str(&long),
            Attr::Bool(true),
            Attr::I64(-1),
            Attr::I64(5),
            Attr::F64(0.25),
        ];
        // Keys from 0 to 130 bytes: pairs on both sides of the one-byte lengths' limit.
        for (i, v) in values.into_iter().enumerate() {
            for klen in 0..=130 {
                let k = "k".repeat(klen);
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
                assert_eq!(out, reference, "value {i}, key of {klen} bytes");
            }
        }
    }

    #[test]
    fn a_key_set_again_keeps_only_its_last_value_and_the_rest_are_counted() {
        let mut a = Attributes::of_span();
        a.set("a", Attr::Str("one"));
        a.set("b", Attr::I64(5));
        a.set("c", Attr::Bool(true));
        // As long as before: in place; longer: moved to the end.
        a.set("a", Attr::Str("two"));
        a.set("b", Attr::Str("longer"));
        a.set("c", Attr::Bool(false));
        assert_eq!(a.len(), 3);
        assert_eq!(a.get("a"), Some(Attr::Str("two")));
        assert_eq!(a.get("b"), Some(Attr::Str("longer")));
        assert_eq!(a.get("c"), Some(Attr::Bool(false)));
        let mut want = Vec::new();
        attribute(&mut want, 9, "a", Attr::Str("two"));
        attribute(&mut want, 9, "c", Attr::Bool(false));
        attribute(&mut want, 9, "b", Attr::Str("longer"));
        assert_eq!(a.bytes, want);
        let mut event = Attributes::of_event();
        event.set("f", Attr::F64(0.5));
        assert_eq!(event.bytes[0], 3 << 3 | LEN as u8);
        assert_eq!(event.get("f"), Some(Attr::F64(0.5)));
        for i in 0..MAX_ATTRIBUTES {
            a.set(
                Box::leak(format!("k{i}").into_boxed_str()),
                Attr::I64(i as i64),
            );
        }
        assert_eq!((a.len(), a.dropped), (MAX_ATTRIBUTES, 3));
        assert_eq!(a.get("k124"), Some(Attr::I64(124)));
        assert_eq!(a.get("k125"), None);
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
                // Spans under 128 bytes, over and over 16 KB: lengths of one, two and three
                // bytes.
                if n % 2 == 0 {
                    let len = if n == 40 { 20_000 } else { n as usize * 4 };
                    s.attributes.set("key", Attr::Str(&"v".repeat(len)));
                }
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
                attribute(out, 1, "service.name", Attr::Str("svc"));
                attribute(out, 1, "service.version", Attr::Str("1.2.3"));
                attribute(out, 1, "telemetry.sdk.language", Attr::Str("rust"));
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
