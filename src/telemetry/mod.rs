//! Logs, traces and trace-context propagation.
//!
//! - Logs: human-readable by default, JSON lines with `LOG_FORMAT=json`; `RUST_LOG` filters.
//!   Inside a request, JSON lines carry its `trace_id` and `span_id`.
//! - Traces: `tracing` spans exported over OTLP (gRPC or HTTP/protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, sampled per `OTEL_TRACES_SAMPLER`.
//! - Propagation: W3C `traceparent` is read from clients and written to agents.

pub mod export;
mod json;

/// An INFO span opened with some fields and declaring the ones its stages record later:
/// `later_span!("task", [task_id = %id], [status, otel.status_code])`.
#[macro_export]
macro_rules! later_span {
    ($name:literal, [], [$($($later:ident).+),+ $(,)?]) => {
        tracing::info_span!($name, $($($later).+ = tracing::field::Empty),+)
    };
    ($name:literal, [$($given:tt)+], [$($($later:ident).+),+ $(,)?]) => {
        tracing::info_span!($name, $($given)+, $($($later).+ = tracing::field::Empty),+)
    };
}

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
    Context, KeyValue,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
    Resource,
};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter, fmt, prelude::*, EnvFilter, Layer};

use crate::config::{self, LogFormat, OtlpProtocol, TraceSettings};

/// Keeps the trace pipeline alive; `shutdown` flushes spans still buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (call once, at shutdown).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                eprintln!("flushing traces failed: {e}");
            }
            let _ = p.shutdown();
        }
    }
}

fn sampler(t: &TraceSettings) -> Sampler {
    let ratio = t.sampler_ratio;
    match t.sampler {
        config::Sampler::AlwaysOn => Sampler::AlwaysOn,
        config::Sampler::AlwaysOff => Sampler::AlwaysOff,
        config::Sampler::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        config::Sampler::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        config::Sampler::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        config::Sampler::ParentBasedTraceIdRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

fn provider(t: &TraceSettings) -> Option<SdkTracerProvider> {
    let endpoint = t.endpoint.as_deref()?;
    let exporter = match t.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(t.export_timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(
                // The exporter's own timeout does not reach a client it is handed: a backend
                // that takes connections and never answers would hold the queue forever.
                reqwest::Client::builder()
                    .timeout(t.export_timeout)
                    .build()
                    .unwrap_or_default(),
            )
            .with_timeout(t.export_timeout)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build(),
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("trace export disabled: {e}");
            return None;
        }
    };
    let resource = Resource::builder()
        .with_service_name(t.service_name.clone())
        .with_attribute(KeyValue::new("service.version", crate::VERSION))
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_span_processor(export::processor(exporter))
            .with_sampler(sampler(t))
            .with_resource(resource)
            .build(),
    )
}

/// Installs logging and, when configured, trace export. Call once, inside the runtime.
pub fn init(format: LogFormat, traces: &TraceSettings) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = provider(traces);
    // With JSON logs, spans carry trace ids even when nothing is exported.
    let otel = match (&provider, format) {
        (Some(p), _) => Some(p.tracer("myriad-orchestrator")),
        (None, LogFormat::Json) => Some(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOff)
                .build()
                .tracer("myriad-orchestrator"),
        ),
        (None, LogFormat::Text) => None,
    };
    // Each layer filters for itself: RUST_LOG governs log lines only, so quiet logs do
    // not silence the spans that traces are made of.
    // A span carries what it was opened with and what its stages recorded. Not per span:
    // source locations, thread ids, busy/idle timers (two clock reads per poll), and events
    // below WARN (they go to the log): each costs more than the decision it would record.
    let otel_layer = otel.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter::filter_fn(|meta| {
                meta.is_span() && *meta.level() <= Level::INFO
                    || meta.is_event() && *meta.level() <= Level::WARN
            }))
    });
    let fmt_layer = match format {
        LogFormat::Json => fmt::layer()
            .event_format(json::JsonWithTrace)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt::layer().with_target(false).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer)
        .try_init();
    if let Some(p) = &provider {
        global::set_tracer_provider(p.clone());
    }
    Telemetry { provider }
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

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context a client sent (`traceparent`), if any.
pub fn extract(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's context (`traceparent`) into outgoing headers.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
    }
}

/// The current trace id (hex), when the current span belongs to a trace.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
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
