//! The way out for spans: a batch processor sized for load, whose every span is counted —
//! exported, failed, or dropped because the queue was full — in `myriad_trace_spans_total`.
//!
//! The SDK's batch processor drops silently when its queue is full (it logs once). A gate in
//! front of it keeps count of the spans handed over and not yet exported, and drops — counted
//! — what would not fit, so the processor's own queue never overflows.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, LazyLock,
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{
        span_processor_with_async_runtime::BatchSpanProcessor, BatchConfigBuilder, Span, SpanData,
        SpanExporter, SpanProcessor,
    },
    Resource,
};
use prometheus::IntCounterVec;

/// Spans by how they left: `exported`, `failed` (the backend refused or was unreachable),
/// `dropped` (the queue was full). Process-wide: one trace pipeline per process.
pub static SPANS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "trace_spans_total",
            "Spans handed to the trace exporter, by how they left: exported, failed, dropped.",
        ),
        &["result"],
    )
    .expect("valid metric");
    for r in ["exported", "failed", "dropped"] {
        c.with_label_values(&[r]);
    }
    c
});

/// Spans waiting at most (`OTEL_BSP_MAX_QUEUE_SIZE` overrides).
const QUEUE: usize = 16_384;
/// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` overrides).
const BATCH: usize = 2_048;
/// Longest wait before a partial batch goes out (`OTEL_BSP_SCHEDULE_DELAY` overrides).
const DELAY: Duration = Duration::from_millis(500);

fn unset(var: &str) -> bool {
    std::env::var_os(var).is_none()
}

/// The batch processor for `exporter`, on the tokio runtime (the exporters' clients need its
/// reactor), behind the counting gate.
pub fn processor<E: SpanExporter + 'static>(exporter: E) -> impl SpanProcessor {
    let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(QUEUE);
    let mut config = BatchConfigBuilder::default().with_max_queue_size(capacity);
    if unset("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        config = config.with_max_export_batch_size(BATCH);
    }
    if unset("OTEL_BSP_SCHEDULE_DELAY") {
        config = config.with_scheduled_delay(DELAY);
    }
    let config = config.build();
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = Counted {
        inner: exporter,
        pending: pending.clone(),
    };
    Gate {
        inner: BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(config)
            .build(),
        pending,
        capacity,
    }
}

/// Counts what the exporter sent and what it could not.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        let label = if result.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[label]).inc_by(n as u64);
        self.pending.fetch_sub(n, Ordering::AcqRel);
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Hands a span to the processor only while fewer than `capacity` wait to be exported.
#[derive(Debug)]
struct Gate<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for Gate<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            SPANS.with_label_values(&["dropped"]).inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
