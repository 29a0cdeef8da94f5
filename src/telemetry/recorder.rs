//! The span recorder: a `tracing` layer that keeps, for each span, what OTLP will carry —
//! ids, parent, name, kind, times, attributes, events, links, status — and hands every
//! sampled span, once closed, to the exporter's queue.
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
    fmt::{self, Write as _},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    field::{Field, Visit},
    span, Event, Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer, Registry};

use super::export::Queue;
pub use super::span::*;
use crate::config::Sampler;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn nonzero<T: Default + PartialEq>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
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

/// The layer. Without a queue it still gives spans ids (for JSON logs and propagation) and
/// records nothing else.
pub struct Recorder {
    sampler: Sampler,
    ratio: f64,
    queue: Option<Arc<Queue>>,
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

/// Writes a span's fields into its record.
struct Fields<'a> {
    rec: &'a mut SpanRec,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let rec = &mut *self.rec;
        match field.name() {
            "otel.name" => rec.name = Cow::Owned(value.to_string()),
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
            _ => rec.attributes.record_str(field, value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().starts_with("otel.") {
            self.record_str(field, &format!("{value:?}"));
        } else {
            self.rec.attributes.record_debug(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rec.attributes.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rec.attributes.record_u64(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.rec.attributes.record_f64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rec.attributes.record_bool(field, value);
    }
}

/// Plain attributes: strings into the text buffer, numbers as they are.
impl Visit for Attributes {
    fn record_str(&mut self, field: &Field, value: &str) {
        let v = self.text(|t| t.push_str(value));
        self.set(field.name(), v);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = self.text(|t| {
            let _ = write!(t, "{value:?}");
        });
        self.set(field.name(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let v = i64::try_from(value).map_or(Value::F64(value as f64), Value::I64);
        self.set(field.name(), v);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }
}

/// An event's fields: `message` names it, the rest are its attributes.
struct EventFields<'a>(&'a mut EventRec);

impl Visit for EventFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.name = value.to_string();
        } else {
            self.0.attributes.record_str(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0.name = format!("{value:?}");
        } else {
            self.0.attributes.record_debug(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.attributes.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.attributes.record_u64(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.attributes.record_f64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.attributes.record_bool(field, value);
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanRec>().map(|r| r.context));
        let trace_id = parent.map_or_else(|| nonzero(rand::random::<u128>), |p| p.trace_id);
        let sampled = self
            .sampler
            .samples(trace_id, parent.map(|p| p.sampled), self.ratio);
        let context = SpanContext {
            trace_id,
            span_id: nonzero(rand::random::<u64>),
            sampled,
        };
        let parent_id = parent.map_or(0, |p| p.span_id);
        let mut rec = SpanRec::new(context, parent_id, Cow::Borrowed(attrs.metadata().name()));
        if self.recording(sampled) {
            rec.start = now_nanos();
            rec.attributes.list.reserve(attrs.metadata().fields().len());
            attrs.record(&mut Fields { rec: &mut rec });
        }
        span.extensions_mut().insert(rec);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(rec) = ext.get_mut::<SpanRec>() {
            if self.recording(rec.context.sampled) {
                values.record(&mut Fields { rec });
            }
        }
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        let Some(other) = ctx
            .span(follows)
            .and_then(|s| s.extensions().get::<SpanRec>().map(|r| r.context))
        else {
            return;
        };
        if let Some(span) = ctx.span(id) {
            if let Some(rec) = span.extensions_mut().get_mut::<SpanRec>() {
                add_link(rec, other);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut ext = span.extensions_mut();
        let Some(rec) = ext.get_mut::<SpanRec>() else {
            return;
        };
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
            attributes: Attributes::default(),
        };
        let level = e.attributes.text(|t| t.push_str(meta.level().as_str()));
        e.attributes.set("level", level);
        let target = e.attributes.text(|t| t.push_str(meta.target()));
        e.attributes.set("target", target);
        event.record(&mut EventFields(&mut e));
        rec.events.push(e);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(queue) = &self.queue else { return };
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut rec) = span.extensions_mut().remove::<SpanRec>() else {
            return;
        };
        if rec.context.sampled {
            rec.end = now_nanos();
            queue.push(rec);
        }
    }
}

fn add_link(rec: &mut SpanRec, link: SpanContext) {
    if rec.links.len() < MAX_LINKS {
        rec.links.push(link);
    } else {
        rec.dropped_links += 1;
    }
}

/// Runs `f` on `span`'s record, if the recorder is installed and the span enabled.
fn with_record<T>(span: &tracing::Span, f: impl FnOnce(&mut SpanRec, &Recorder) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let recorder = dispatch.downcast_ref::<Recorder>()?;
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut ext = data.extensions_mut();
        let rec = ext.get_mut::<SpanRec>()?;
        Some(f(rec, recorder))
    })
    .flatten()
}

/// The ids of `span`, if it has any.
pub fn context_of(span: &tracing::Span) -> Option<SpanContext> {
    with_record(span, |rec, _| rec.context)
}

/// Makes `span` — just opened, no child yet — continue the trace of a remote caller: its
/// trace id and parent are the caller's, and whether it is recorded is decided again with
/// the caller's decision as its parent's.
pub fn set_remote_parent(span: &tracing::Span, remote: SpanContext) {
    with_record(span, |rec, recorder| {
        rec.context.trace_id = remote.trace_id;
        rec.parent_id = remote.span_id;
        let sampled =
            recorder
                .sampler
                .samples(remote.trace_id, Some(remote.sampled), recorder.ratio);
        if sampled && !rec.context.sampled && recorder.queue.is_some() {
            // Its fields were not kept; its times and what comes next are.
            rec.start = now_nanos();
        }
        rec.context.sampled = sampled;
    });
}

/// Links `span` to another span (e.g. the tasks whose outcomes a batch applied).
pub fn link(span: &tracing::Span, to: SpanContext) {
    with_record(span, |rec, _| add_link(rec, to));
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

    fn recorded(sampler: Sampler, f: impl FnOnce()) -> Vec<SpanRec> {
        use tracing_subscriber::prelude::*;
        let queue = super::super::export::Queue::new(100, 100);
        let subscriber =
            tracing_subscriber::registry().with(Recorder::new(sampler, 1.0, Some(queue.clone())));
        tracing::subscriber::with_default(subscriber, f);
        queue.drain()
    }

    #[test]
    fn a_span_carries_its_fields_kind_status_events_parent_and_links() {
        let remote =
            SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut learned = None;
        let spans = recorded(Sampler::ParentBasedAlwaysOn, || {
            let root = tracing::info_span!(
                "request",
                otel.name = "POST /process",
                otel.kind = "server",
                route = "/process",
                status = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            set_remote_parent(&root, remote);
            root.in_scope(|| {
                let task = tracing::info_span!("task", task_id = 7u64, ok = true, share = 0.5, agent = %"Good_AI");
                task.in_scope(|| tracing::error!(code = "timeout", "the agent did not answer"));
                learned = context_of(&task);
            });
            root.record("status", 503);
            root.record("status", 504);
            root.record("otel.status_code", "ERROR");
            let learn = tracing::info_span!(parent: None, "learn");
            link(&learn, learned.unwrap());
        });
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let root = by_name("POST /process");
        assert_eq!(root.kind, Kind::Server);
        assert_eq!(root.context.trace_id, remote.trace_id);
        assert_eq!(root.parent_id, remote.span_id);
        assert_eq!(root.status, Status::Error);
        assert_eq!(
            root.attributes.get("status"),
            Some(Value::I64(504)),
            "the last value recorded wins"
        );
        assert_eq!(
            root.attributes.str(root.attributes.get("route").unwrap()),
            Some("/process")
        );
        assert!(root.start > 0 && root.end >= root.start);
        let task = by_name("task");
        assert_eq!(task.parent_id, root.context.span_id);
        assert_eq!(task.context.trace_id, remote.trace_id);
        assert_eq!(task.kind, Kind::Internal);
        assert_eq!(task.attributes.get("task_id"), Some(Value::I64(7)));
        assert_eq!(task.attributes.get("ok"), Some(Value::Bool(true)));
        assert_eq!(task.attributes.get("share"), Some(Value::F64(0.5)));
        assert_eq!(
            task.attributes.str(task.attributes.get("agent").unwrap()),
            Some("Good_AI")
        );
        assert_eq!(task.status, Status::Error, "an ERROR event marks its span");
        assert_eq!(task.events.len(), 1);
        assert_eq!(task.events[0].name, "the agent did not answer");
        let e = &task.events[0].attributes;
        assert_eq!(e.str(e.get("code").unwrap()), Some("timeout"));
        let learn = by_name("learn");
        assert_eq!(learn.parent_id, 0);
        assert_ne!(learn.context.trace_id, remote.trace_id);
        assert_eq!(learn.links, vec![task.context]);
    }

    #[test]
    fn a_caller_that_did_not_sample_is_followed_and_nothing_is_kept() {
        let remote =
            SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let mut child = None;
        let spans = recorded(Sampler::ParentBasedAlwaysOn, || {
            let root = tracing::info_span!("request");
            set_remote_parent(&root, remote);
            root.in_scope(|| child = context_of(&tracing::info_span!("task")));
        });
        assert!(spans.is_empty());
        let child = child.unwrap();
        assert_eq!(child.trace_id, remote.trace_id, "ids still travel");
        assert!(!child.sampled);
        assert!(recorded(Sampler::AlwaysOff, || drop(tracing::info_span!("x"))).is_empty());
    }
}
