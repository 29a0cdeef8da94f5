//! The subscriber: every span's OpenTelemetry ids and record, the current span of each
//! thread, and log lines — one `tracing` subscriber in place of `tracing-subscriber`'s
//! registry with a recording layer and a formatting layer beside it.
//!
//! Why its own: with the registry, every enter, exit and `record` of a span went through
//! the layer stack, each layer's filter looking the span up again in the registry's slab
//! and its extensions (a lock and a type-map lookup per layer), and the formatting layer
//! kept a text copy of every span's fields. Here a span is one slot of an arena
//! ([`super::arena`]) holding its record under the slot's lock; entering it is a push on a
//! per-thread stack; `record` visits the record once; closing it hands the record to the
//! exporter. Measured in
//! docs/BENCHMARKS.md ("The subscriber").
//!
//! What is kept and when:
//! - A span at INFO or above exists when spans are exported, when logs are JSON (their
//!   lines carry `trace_id`/`span_id`) or when `RUST_LOG` lets its level through (text
//!   lines name the spans they were written in); otherwise it is disabled at its callsite.
//! - An event goes to the log when `RUST_LOG` lets it through, and, at WARN or ERROR, into
//!   the span it happened in when that span is recorded.
//! - `RUST_LOG` is a list of `target=level` and `level` directives (`info`,
//!   `warn,myriad=debug`): it governs log lines only, so quiet logs do not silence the
//!   spans traces are made of.

use std::{cell::RefCell, io::Write as _};

use tracing::{
    level_filters::LevelFilter, span, subscriber::Interest, Event, Level, Metadata, Subscriber,
};
use tracing_core::span::Current;
use tracing_subscriber::filter::Targets;

use super::{
    arena::Arena,
    json,
    recorder::{add_link, now_nanos, Attr, Rec, Recorder, SpanContext, SpanRec},
};
use crate::config::LogFormat;

/// One live span (under its slot's lock).
struct Data {
    meta: &'static Metadata<'static>,
    /// Handles to it (its `Span`s and clones); it closes when the last one goes.
    refs: usize,
    /// Its ids and what is recorded of it.
    rec: Rec,
}

thread_local! {
    /// The spans this thread is in, innermost last.
    static CURRENT: RefCell<Vec<span::Id>> = const { RefCell::new(Vec::new()) };
}

/// Where log lines go, and which.
pub struct Logs {
    pub filter: Targets,
    pub format: LogFormat,
}

impl Logs {
    /// `RUST_LOG`, or `info` when unset or not understood (said on stderr).
    pub fn from_env(format: LogFormat) -> Self {
        let filter = match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
                eprintln!("RUST_LOG={v:?} is not a list of target=level directives ({e}); logging at info");
                Targets::new().with_default(Level::INFO)
            }),
            _ => Targets::new().with_default(Level::INFO),
        };
        Logs { filter, format }
    }
}

pub struct Spans {
    spans: Arena<Data>,
    recorder: Recorder,
    logs: Logs,
    /// Spans exist whatever the logs let through (exported, or JSON logs' ids).
    keep_spans: bool,
}

impl Spans {
    pub fn new(recorder: Recorder, logs: Logs) -> Self {
        Spans {
            keep_spans: recorder.exporting() || logs.format == LogFormat::Json,
            spans: Arena::default(),
            recorder,
            logs,
        }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        let logged = self.logs.filter.would_enable(meta.target(), meta.level());
        if meta.is_span() {
            *meta.level() <= Level::INFO && (self.keep_spans || logged)
        } else {
            logged || self.recorder.keeps_event(meta.level())
        }
    }

    /// Runs `f` on the record of span `id`, if it is open.
    pub(super) fn with_rec<T>(
        &self,
        id: &span::Id,
        f: impl FnOnce(&mut SpanRec) -> T,
    ) -> Option<T> {
        let mut data = self.spans.get(id.into_u64())?;
        Some(f(&mut data.rec))
    }

    pub(super) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The innermost span this thread is in.
    pub(super) fn current_id() -> Option<span::Id> {
        CURRENT.with(|c| c.borrow().last().cloned())
    }

    fn write_log(&self, event: &Event<'_>, span: Option<&span::Id>) {
        use tracing_log::NormalizeEvent;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let line = match self.logs.format {
            LogFormat::Json => {
                let span = span.and_then(|id| {
                    let data = self.spans.get(id.into_u64())?;
                    Some((data.meta.name(), Some(data.rec.context)))
                });
                json::line(event, meta, span)
            }
            LogFormat::Text => {
                // The spans it was written in, outermost first.
                let mut scope = String::new();
                if event.is_contextual() {
                    CURRENT.with(|c| {
                        for id in c.borrow().iter() {
                            if let Some(data) = self.spans.get(id.into_u64()) {
                                scope.push_str(data.meta.name());
                                scope.push(':');
                            }
                        }
                    });
                } else if let Some(data) = span.and_then(|id| self.spans.get(id.into_u64())) {
                    scope.push_str(data.meta.name());
                    scope.push(':');
                }
                json::text_line(event, meta, &scope)
            }
        };
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

impl Subscriber for Spans {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.wants(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let logs = (&self.logs.filter)
            .into_iter()
            .map(|(_, level)| level)
            .chain(self.logs.filter.default_level())
            .max()
            .unwrap_or(LevelFilter::OFF);
        let spans = if self.keep_spans {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        };
        Some(logs.max(spans))
    }

    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        let parent = if attrs.is_contextual() {
            Self::current_id()
        } else {
            attrs.parent().cloned()
        };
        let parent = parent.and_then(|p| self.with_rec(&p, |r| r.context));
        let rec = self.recorder.open(attrs, parent);
        let data = Data {
            meta: attrs.metadata(),
            refs: 1,
            rec,
        };
        // An arena that cannot grow (billions of open spans) gives an id that names nothing.
        span::Id::from_u64(self.spans.insert(data).unwrap_or(u64::MAX))
    }

    fn record(&self, id: &span::Id, values: &span::Record<'_>) {
        self.with_rec(id, |rec| self.recorder.record(rec, values));
    }

    fn record_follows_from(&self, id: &span::Id, follows: &span::Id) {
        if let Some(other) = self.with_rec(follows, |r| r.context) {
            self.with_rec(id, |rec| add_link(rec, other));
        }
    }

    fn event(&self, event: &Event<'_>) {
        let span = if event.is_contextual() {
            Self::current_id()
        } else {
            event.parent().cloned()
        };
        let meta = event.metadata();
        if self.recorder.keeps_event(meta.level()) {
            if let Some(id) = &span {
                self.with_rec(id, |rec| self.recorder.event(rec, event));
            }
        }
        if self.logs.filter.would_enable(meta.target(), meta.level()) {
            self.write_log(event, span.as_ref());
        }
    }

    fn enter(&self, id: &span::Id) {
        CURRENT.with(|c| c.borrow_mut().push(id.clone()));
    }

    fn exit(&self, id: &span::Id) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            // Spans are left in the order they were entered, but for rare exceptions.
            if c.last() == Some(id) {
                c.pop();
            } else if let Some(i) = c.iter().rposition(|x| x == id) {
                c.remove(i);
            }
        });
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        if let Some(mut data) = self.spans.get(id.into_u64()) {
            data.refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: span::Id) -> bool {
        let closed = self.spans.remove_if(id.into_u64(), |data| {
            data.refs -= 1;
            data.refs == 0
        });
        match closed {
            Some(data) => {
                self.recorder.close(data.rec);
                true
            }
            None => false,
        }
    }

    fn current_span(&self) -> Current {
        Self::current_id()
            .and_then(|id| {
                let meta = self.spans.get(id.into_u64())?.meta;
                Some(Current::new(id, meta))
            })
            .unwrap_or_else(Current::none)
    }
}

/// The subscriber installed (the global one, or a test's), if it is this one.
pub(super) fn with_spans<T>(f: impl FnOnce(&Spans) -> Option<T>) -> Option<T> {
    let mut f = Some(f);
    tracing::dispatcher::get_default(|d| d.downcast_ref::<Spans>().and_then(f.take()?))
}

/// The ids of the innermost span this thread is in.
pub fn current_context() -> Option<SpanContext> {
    let id = Spans::current_id()?;
    with_spans(|s| s.with_rec(&id, |r| r.context))
}

/// Runs `f` on `span`'s record, if the span is open and this subscriber keeps it.
fn with_record<T>(span: &tracing::Span, f: impl FnOnce(&mut SpanRec, &Recorder) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let spans = dispatch.downcast_ref::<Spans>()?;
        spans.with_rec(id, |rec| f(rec, spans.recorder()))
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

/// Sets `values` on `span` by key, in one look-up of its record; the span's ids, if it
/// has any.
pub fn set(span: &tracing::Span, values: &[(&'static str, Attr<'_>)]) -> Option<SpanContext> {
    with_record(span, |rec, recorder| {
        recorder.set(rec, values);
        rec.context
    })
}

/// Links `span` to another span (e.g. the tasks whose outcomes a batch applied).
pub fn link(span: &tracing::Span, to: SpanContext) {
    with_record(span, |rec, _| add_link(rec, to));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sampler;
    use crate::telemetry::span::{Attr, Kind, Status};

    fn recorded(sampler: Sampler, f: impl FnOnce()) -> Vec<SpanRec> {
        let queue = std::sync::Arc::new(super::super::export::Queue::keeping());
        let subscriber = Spans::new(
            Recorder::new(sampler, 1.0, Some(queue.clone())),
            Logs {
                filter: "off".parse().unwrap(),
                format: crate::config::LogFormat::Text,
            },
        );
        tracing::subscriber::with_default(subscriber, f);
        queue.kept()
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
            Some(Attr::I64(504)),
            "the last value recorded wins"
        );
        assert_eq!(root.attributes.get("route"), Some(Attr::Str("/process")));
        assert!(root.start > 0 && root.end >= root.start);
        let task = by_name("task");
        assert_eq!(task.parent_id, root.context.span_id);
        assert_eq!(task.context.trace_id, remote.trace_id);
        assert_eq!(task.kind, Kind::Internal);
        assert_eq!(task.attributes.get("task_id"), Some(Attr::I64(7)));
        assert_eq!(task.attributes.get("ok"), Some(Attr::Bool(true)));
        assert_eq!(task.attributes.get("share"), Some(Attr::F64(0.5)));
        assert_eq!(task.attributes.get("agent"), Some(Attr::Str("Good_AI")));
        assert_eq!(task.status, Status::Error, "an ERROR event marks its span");
        assert_eq!(task.events.len(), 1);
        assert_eq!(task.events[0].name, "the agent did not answer");
        let e = &task.events[0].attributes;
        assert_eq!(e.get("code"), Some(Attr::Str("timeout")));
        let learn = by_name("learn");
        assert_eq!(learn.parent_id, 0);
        assert_ne!(learn.context.trace_id, remote.trace_id);
        assert_eq!(learn.links, vec![task.context]);
    }

    #[test]
    fn attributes_set_by_key_need_no_declared_field_and_the_last_value_wins() {
        let spans = recorded(Sampler::AlwaysOn, || {
            let span = tracing::info_span!("agent_call", agent = "Good_AI");
            let label = String::from("success");
            crate::record!(
                span,
                outcome = "timeout",
                breaker.state = "closed",
                attempts = 2u32,
                big = u64::MAX,
                share = 0.5,
                stale = false,
            );
            crate::record!(span, outcome = &label, otel.status_code = "ERROR");
            crate::record!(tracing::Span::none(), outcome = "nowhere");
        });
        assert_eq!(spans.len(), 1);
        let a = &spans[0].attributes;
        let text = |k: &str| a.get(k);
        assert_eq!(text("agent"), Some(Attr::Str("Good_AI")));
        assert_eq!(text("outcome"), Some(Attr::Str("success")));
        assert_eq!(text("breaker.state"), Some(Attr::Str("closed")));
        assert_eq!(a.get("attempts"), Some(Attr::I64(2)));
        assert_eq!(a.get("big"), Some(Attr::F64(u64::MAX as f64)));
        assert_eq!(a.get("share"), Some(Attr::F64(0.5)));
        assert_eq!(a.get("stale"), Some(Attr::Bool(false)));
        assert_eq!(a.len(), 7, "{a:?}");
        assert_eq!(spans[0].status, Status::Error);
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

    #[test]
    fn quiet_logs_keep_the_spans_and_their_warnings_and_nothing_below_info() {
        let spans = recorded(Sampler::AlwaysOn, || {
            let kept = tracing::info_span!("kept");
            kept.in_scope(|| {
                tracing::warn!(n = 1, "noticed");
                tracing::info!("not an event of the span");
                drop(tracing::debug_span!("below info"));
            });
        });
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].name, "kept");
        assert_eq!(spans[0].events.len(), 1);
        assert_eq!(spans[0].events[0].name, "noticed");
    }

    #[test]
    fn a_span_closes_with_its_last_handle_and_the_current_one_is_per_thread() {
        let spans = recorded(Sampler::AlwaysOn, || {
            let outer = tracing::info_span!("outer");
            let copy = outer.clone();
            let _in = outer.enter();
            let inner = tracing::info_span!("inner");
            assert_eq!(
                context_of(&inner).unwrap().trace_id,
                current_context().unwrap().trace_id
            );
            std::thread::scope(|s| {
                s.spawn(|| assert!(Spans::current_id().is_none()));
            });
            drop(inner);
            drop(copy);
        });
        let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["inner", "outer"]);
    }
}
