//! Logs, traces and trace-context propagation.
//!
//! - Logs: human-readable by default, JSON lines with `LOG_FORMAT=json`; `RUST_LOG` filters.
//!   Inside a request, JSON lines carry its `trace_id` and `span_id`.
//! - Traces: `tracing` spans exported over OTLP (gRPC or HTTP/protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, sampled per `OTEL_TRACES_SAMPLER`.
//! - Propagation: W3C `traceparent` is read from clients and written to agents.

mod arena;
pub mod export;
mod json;
mod otlp;
pub mod recorder;
mod span;
pub mod subscriber;

/// Sets attributes on a span in one look-up of its record: `record!(span, outcome = label,
/// breaker.state = "closed")`, and gives the span's ids (`Option<SpanContext>`). Any key
/// may be set: a span declares only the fields it opens with. (tracing's `Span::record`
/// finds each field by name among the callsite's and visits it through the dispatcher:
/// ~500 instructions a field, the most of a traced request's recording.)
#[macro_export]
macro_rules! record {
    ($span:expr, $($($key:ident).+ = $value:expr),+ $(,)?) => {
        $crate::telemetry::subscriber::set(
            &$span,
            &[$((stringify!($($key).+), $crate::telemetry::Attr::from($value))),+],
        )
    };
}

use std::sync::Arc;

pub use recorder::Attr;
pub use span::SpanContext;

use crate::config::{LogFormat, Sampler, TraceSettings};

/// Keeps the trace pipeline alive; `shutdown` flushes spans still buffered.
#[derive(Default)]
pub struct Telemetry {
    queue: Option<Arc<export::Queue>>,
}

impl Telemetry {
    pub fn tracing_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Flushes and stops the exporter (call once, at shutdown).
    pub fn shutdown(&self) {
        if let Some(q) = &self.queue {
            if let Err(e) = q.shutdown() {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }
}

fn exporter(t: &TraceSettings) -> Option<Arc<export::Queue>> {
    let endpoint = t.endpoint.as_deref()?;
    let to = export::Destination {
        endpoint: endpoint.to_string(),
        protocol: t.protocol,
        timeout: t.export_timeout,
        resource: otlp::Resource {
            service_name: t.service_name.clone(),
            service_version: crate::VERSION,
        },
    };
    match export::start(to) {
        Ok(q) => Some(q),
        Err(e) => {
            eprintln!("trace export disabled: {e}");
            None
        }
    }
}

/// Installs logging and, when configured, trace export. Call once, inside the runtime.
pub fn init(format: LogFormat, traces: &TraceSettings) -> Telemetry {
    let queue = exporter(traces);
    // Without export spans still get ids (JSON logs carry them), and nothing is recorded.
    let recorder = match &queue {
        Some(q) => recorder::Recorder::new(traces.sampler, traces.sampler_ratio, Some(q.clone())),
        None => recorder::Recorder::new(Sampler::AlwaysOff, 0.0, None),
    };
    let spans = subscriber::Spans::new(recorder, subscriber::Logs::from_env(format));
    if tracing::subscriber::set_global_default(spans).is_ok() {
        // Libraries that log through `log` are heard too.
        let _ = tracing_log::LogTracer::init();
    }
    Telemetry { queue }
}

/// A repeated warning, let through at most once per [`Throttle::EVERY`]: `ready` says when
/// to log, with how many were held back since the last one.
#[derive(Debug, Default)]
pub struct Throttle(std::sync::Mutex<(Option<std::time::Instant>, u64)>);

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// `Some(held back since the last one)` when this occurrence should be logged.
    pub fn ready(&self) -> Option<u64> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match t.0 {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                t.1 += 1;
                None
            }
            _ => {
                t.0 = Some(now);
                Some(std::mem::take(&mut t.1))
            }
        }
    }
}

/// Logging only (for subcommands that serve nothing).
pub fn init_logs(format: LogFormat) {
    let _ = init(
        format,
        &TraceSettings {
            endpoint: None,
            ..TraceSettings::default()
        },
    );
}

/// The trace context a client sent (W3C `traceparent`), if any and well-formed.
pub fn extract(headers: &http::HeaderMap) -> Option<SpanContext> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(SpanContext::parse)
}

/// Makes `span` (just opened) continue the trace a client sent in `headers`, if it sent one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    continue_trace_from(
        span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
}

/// `fut` polled inside `span`, which it borrows (`Instrument::instrument` owns its span: a
/// clone for each level, a look-up of the span when made and again when dropped).
/// A future dropped unfinished (its client left) is dropped outside the span.
///
/// A future type, not an `async fn`: an `async fn` taking `fut` held it twice (the argument,
/// and the pinned local it was moved into at the first poll, a copy of the whole future):
/// 4,008 bytes around discovery's 1,984, and a request's futures wrap several levels.
pub fn in_span<F: std::future::Future>(span: &tracing::Span, fut: F) -> InSpan<'_, F> {
    InSpan { span, fut }
}

pin_project_lite::pin_project! {
    /// See [`in_span`].
    pub struct InSpan<'a, F> {
        span: &'a tracing::Span,
        #[pin]
        fut: F,
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        this.fut.poll(cx)
    }
}

/// Makes `span` (just opened) continue the trace of a `traceparent` value, if one was sent
/// and is valid.
pub fn continue_trace_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(remote) = traceparent.and_then(SpanContext::parse) {
        subscriber::set_remote_parent(span, remote);
    }
}

/// Writes the current span's context (`traceparent`) into outgoing headers.
pub fn inject_current(headers: &mut http::HeaderMap) {
    static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if let Some(tp) = current_traceparent() {
        if let Ok(v) = http::HeaderValue::from_str(tp.as_str()) {
            headers.insert(TRACEPARENT.clone(), v);
        }
    }
}

/// The current span's context as a `traceparent` header value.
pub fn current_traceparent() -> Option<span::Traceparent> {
    subscriber::current_context().map(|cx| cx.traceparent())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_throttled_warning_counts_what_it_held_back() {
        let t = super::Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.0.lock().unwrap().0 = Some(std::time::Instant::now() - super::Throttle::EVERY);
        assert_eq!(t.ready(), Some(2));
    }
}
