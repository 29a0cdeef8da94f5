//! The span recorder: what the subscriber ([`super::subscriber`]) keeps of each span for
//! OTLP — ids, parent, name, kind, times, attributes, events, links, status — and, once a
//! sampled span closes, its encoding into the exporter's queue.
//!
//! It takes the place of `tracing-opentelemetry` and the OpenTelemetry SDK's tracer, whose
//! span builder, contexts and attribute values cost a traced request more CPU than the
//! request itself (measured: docs/BENCHMARKS.md). Here a span is one allocation for the
//! record and one for its text: string values are appended to one buffer per span, the
//! keys are the callsite's own `&'static str`, numbers are kept as they are.
//!
//! Special fields, as `tracing-opentelemetry` read them: `otel.name` (the span's name),
//! `otel.kind` (`server`, `client`, `producer`, `consumer`, `internal`), `otel.status_code`
//! (`ERROR`, `OK`) and `otel.status_message`. An ERROR event marks its span an error.

use std::{
    borrow::Cow,
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    field::{Field, Visit},
    span, Event,
};

use super::export::Queue;
pub use super::span::*;
use crate::config::Sampler;

pub(super) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A random id, never zero, from this thread's generator (ids need to be unique, not
/// secret).
fn random_id<T: Default + PartialEq>() -> T
where
    rand::distributions::Standard: rand::distributions::Distribution<T>,
{
    use rand::Rng;
    crate::with_thread_rng(|rng| loop {
        let v: T = rng.gen();
        if v != T::default() {
            return v;
        }
    })
}

impl Sampler {
    /// Whether a span of `trace_id` is recorded, given its parent's decision (`None`: a root).
    pub fn samples(&self, trace_id: u128, parent: Option<bool>, ratio: f64) -> bool {
        let by_ratio = || {
            // The OpenTelemetry rule: the trace id's low 63 bits against the ratio, so every
            // service of a trace decides alike.
            ratio >= 1.0 || ((trace_id as u64) >> 1) < (ratio.max(0.0) * (1u64 << 63) as f64) as u64
        };
        match (self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio, _) => by_ratio(),
            (
                Sampler::ParentBasedAlwaysOn
                | Sampler::ParentBasedAlwaysOff
                | Sampler::ParentBasedTraceIdRatio,
                Some(sampled),
            ) => sampled,
            (Sampler::ParentBasedAlwaysOn, None) => true,
            (Sampler::ParentBasedAlwaysOff, None) => false,
            (Sampler::ParentBasedTraceIdRatio, None) => by_ratio(),
        }
    }
}

/// Bytes of encoded attributes a recorded span starts with room for (a request's spans
/// hold 60–300), so recording them does not grow the buffer value by value.
const ATTRIBUTES_RESERVE: usize = 320;

/// Records a thread keeps for its next spans (each ~1 KB with its buffers' room): a core
/// with 16 requests in flight holds up to 64 spans open, and with 32 kept a record was
/// freed and another allocated and grown again for every other span.
const THREAD_SPARES: usize = 128;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Rec>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The sampler and the exporter's queue. Without a queue spans still get ids (for JSON
/// logs and propagation) and nothing else is recorded.
pub struct Recorder {
    pub(super) sampler: Sampler,
    pub(super) ratio: f64,
    pub(super) queue: Option<Arc<Queue>>,
}

impl Recorder {
    pub fn new(sampler: Sampler, ratio: f64, queue: Option<Arc<Queue>>) -> Self {
        Recorder {
            sampler,
            ratio,
            queue,
        }
    }

    fn recording(&self, sampled: bool) -> bool {
        sampled && self.queue.is_some()
    }
}

/// A visitor handing each field on as its key and an [`Attr`] (a `Debug` value formatted).
struct ByKey<F>(F);

/// A [`ByKey`] of `f` (its closure typed for values of any lifetime).
fn by_key<F: FnMut(&'static str, Attr<'_>)>(f: F) -> ByKey<F> {
    ByKey(f)
}

impl<F: FnMut(&'static str, Attr<'_>)> Visit for ByKey<F> {
    fn record_str(&mut self, field: &Field, value: &str) {
        (self.0)(field.name(), Attr::Str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        (self.0)(field.name(), Attr::Str(&format!("{value:?}")));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        (self.0)(field.name(), Attr::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        (self.0)(field.name(), Attr::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        (self.0)(field.name(), Attr::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        (self.0)(field.name(), Attr::Bool(value));
    }
}

/// `key = value` on a span's record: the `otel.*` fields as `tracing-opentelemetry` read
/// them, anything else an attribute (the last value recorded wins).
fn set(rec: &mut SpanRec, key: &'static str, value: Attr<'_>) {
    match value {
        Attr::Str(s) => set_str(rec, key, s),
        _ => rec.attributes.set(key, value),
    }
}

fn set_str(rec: &mut SpanRec, key: &'static str, value: &str) {
    if !key.starts_with("otel.") {
        return rec.attributes.set(key, Attr::Str(value));
    }
    match key {
        "otel.name" => {
            // In the buffer an earlier span of this record named itself in.
            let mut name = std::mem::take(&mut rec.spare_name);
            name.clear();
            name.push_str(value);
            rec.name = Cow::Owned(name);
        }
        "otel.kind" => {
            rec.kind = match value {
                "server" => Kind::Server,
                "client" => Kind::Client,
                "producer" => Kind::Producer,
                "consumer" => Kind::Consumer,
                _ => Kind::Internal,
            }
        }
        "otel.status_code" => {
            rec.status = match value {
                "ERROR" | "error" => Status::Error,
                "OK" | "ok" => Status::Ok,
                _ => Status::Unset,
            }
        }
        "otel.status_message" => rec.status_message = Some(value.to_string()),
        _ => rec.attributes.set(key, Attr::Str(value)),
    }
}

impl Recorder {
    /// Spans are exported.
    pub fn exporting(&self) -> bool {
        self.queue.is_some()
    }

    /// Whether an event of `level` is kept in its span (WARN and ERROR, when exporting).
    pub fn keeps_event(&self, level: &tracing::Level) -> bool {
        self.queue.is_some() && *level <= tracing::Level::WARN
    }

    /// The record of a span opened with `attrs` under a parent of context `parent` (`None`:
    /// a root): its ids, the sampler's decision and, when recorded, its fields.
    pub fn open(&self, attrs: &span::Attributes<'_>, parent: Option<SpanContext>) -> Rec {
        let trace_id = parent.map_or_else(random_id::<u128>, |p| p.trace_id);
        let sampled = self
            .sampler
            .samples(trace_id, parent.map(|p| p.sampled), self.ratio);
        let context = SpanContext {
            trace_id,
            span_id: random_id::<u64>(),
            sampled,
        };
        let parent_id = parent.map_or(0, |p| p.span_id);
        let name = Cow::Borrowed(attrs.metadata().name());
        let mut rec = match self.reused() {
            Some(mut rec) => {
                rec.reset(context, parent_id, name);
                rec
            }
            None => Box::new(SpanRec::new(context, parent_id, name)),
        };
        if self.recording(sampled) {
            rec.start = now_nanos();
            rec.attributes.keys.reserve(attrs.metadata().fields().len());
            rec.attributes.bytes.reserve(ATTRIBUTES_RESERVE);
            attrs.record(&mut by_key(|key, value| set(&mut rec, key, value)));
        }
        rec
    }

    /// A record from this thread's spares: in steady state a span allocates nothing.
    fn reused(&self) -> Option<Rec> {
        SPARES.with(|spares| spares.borrow_mut().pop())
    }

    /// Values recorded on an open span.
    pub fn record(&self, rec: &mut SpanRec, values: &span::Record<'_>) {
        if self.recording(rec.context.sampled) {
            values.record(&mut by_key(|key, value| set(rec, key, value)));
        }
    }

    /// Values set on an open span by key, without a callsite's fields.
    pub fn set(&self, rec: &mut SpanRec, values: &[(&'static str, Attr<'_>)]) {
        if self.recording(rec.context.sampled) {
            for &(key, value) in values {
                set(rec, key, value);
            }
        }
    }

    /// An event (WARN or ERROR) in the span of `rec`.
    pub fn event(&self, rec: &mut SpanRec, event: &Event<'_>) {
        if !self.recording(rec.context.sampled) {
            return;
        }
        let meta = event.metadata();
        if *meta.level() == tracing::Level::ERROR && rec.status == Status::Unset {
            rec.status = Status::Error;
        }
        if rec.events.len() >= MAX_EVENTS {
            rec.dropped_events += 1;
            return;
        }
        let mut e = EventRec {
            time: now_nanos(),
            name: String::new(),
            attributes: Attributes::of_event(),
        };
        e.attributes.set("level", Attr::Str(meta.level().as_str()));
        e.attributes.set("target", Attr::Str(meta.target()));
        // `message` names it, the rest are its attributes.
        event.record(&mut by_key(|key, value| match (key, value) {
            ("message", Attr::Str(message)) => e.name = message.to_string(),
            _ => e.attributes.set(key, value),
        }));
        rec.events.push(e);
    }

    /// A span closed: a sampled one is encoded for the exporter; the record is kept for
    /// the next span of this thread.
    pub fn close(&self, mut rec: Rec) {
        if let Some(queue) = self.queue.as_ref().filter(|_| rec.context.sampled) {
            rec.end = now_nanos();
            queue.push(&rec);
        }
        SPARES.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < THREAD_SPARES {
                spares.push(rec);
            }
        });
    }
}

pub(super) fn add_link(rec: &mut SpanRec, link: SpanContext) {
    if rec.links.len() < MAX_LINKS {
        rec.links.push(link);
    } else {
        rec.dropped_links += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_the_specification_rejects() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = SpanContext::parse(tp).unwrap();
        assert_eq!(cx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(cx.span_id, 0x00f067aa0ba902b7);
        assert!(cx.sampled);
        assert_eq!(cx.traceparent(), tp);
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled = SpanContext {
            trace_id: 1,
            span_id: 2,
            sampled: false,
        };
        assert_eq!(
            unsampled.traceparent(),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert!(
            !SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        // A later version may add fields after the flags.
        assert!(
            SpanContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(SpanContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_ratio_sampler_decides_by_the_trace_id_and_parents_decide_for_their_children() {
        let s = Sampler::TraceIdRatio;
        assert!(s.samples(0, None, 0.5));
        assert!(!s.samples(u64::MAX as u128, None, 0.5));
        assert!(!s.samples(0, None, 0.0));
        assert!(s.samples(u64::MAX as u128, None, 1.0));
        let sampled = (0..10_000u128)
            .filter(|i| {
                s.samples(
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834),
                    None,
                    0.25,
                )
            })
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
        assert!(Sampler::ParentBasedAlwaysOff.samples(1, Some(true), 1.0));
        assert!(!Sampler::ParentBasedAlwaysOn.samples(1, Some(false), 1.0));
        assert!(Sampler::ParentBasedAlwaysOn.samples(1, None, 1.0));
        assert!(Sampler::AlwaysOn.samples(1, Some(false), 1.0));
    }
}
