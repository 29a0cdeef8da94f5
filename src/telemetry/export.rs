//! The way out for spans: a batch processor sized for load, whose every span is counted —
//! exported, failed, or dropped because the queue was full — in `myriad_trace_spans_total`.
//!
//! The SDK's batch processors drop silently when their queue is full (they log once), and
//! the one that runs on tokio wakes its task for every span. This one keeps count of the
//! spans handed over and not yet exported, drops — counted — what would not fit, and wakes
//! its exporting task once a batch.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
    Resource,
};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot, Notify};

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

fn env_number(var: &str) -> Option<u64> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
}

/// The batch processor for `exporter`: spans wait in one buffer, and a task on the tokio
/// runtime this is called on (the exporters' clients need its reactor) sends them every
/// `DELAY`, or as soon as a full batch waits. A span's end only appends to the buffer — the
/// exporting task is woken once a batch, not once a span (the SDK's async-runtime processor
/// sends each span over a channel and wakes its task for each: one thread switch a span).
pub fn processor<E: SpanExporter + 'static>(exporter: E) -> impl SpanProcessor {
    let capacity = env_number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(QUEUE, |n| n as usize);
    let batch = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map_or(BATCH, |n| n as usize);
    let delay = env_number("OTEL_BSP_SCHEDULE_DELAY").map_or(DELAY, Duration::from_millis);
    batched(exporter, capacity, batch, delay)
}

fn batched<E: SpanExporter + 'static>(
    exporter: E,
    capacity: usize,
    batch: usize,
    delay: Duration,
) -> Batched {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::new()),
        full: Notify::new(),
        pending: AtomicUsize::new(0),
        capacity,
        batch: batch.min(capacity),
    });
    let (control, orders) = mpsc::unbounded_channel();
    tokio::spawn(export_loop(exporter, shared.clone(), orders, delay));
    Batched { shared, control }
}

/// What the exporting task is asked besides its rounds.
enum Order {
    /// Export everything buffered now; say how it went.
    Flush(oneshot::Sender<OTelSdkResult>),
    /// Export everything buffered, stop the exporter, end.
    Shutdown(oneshot::Sender<OTelSdkResult>),
    /// What every exported span is a span of (the service), set once by the provider.
    Resource(Resource),
}

struct Shared {
    buffer: Mutex<Vec<SpanData>>,
    /// A full batch waits.
    full: Notify,
    /// Spans handed over and not yet exported (or failed).
    pending: AtomicUsize,
    capacity: usize,
    batch: usize,
}

async fn export_loop<E: SpanExporter>(
    mut exporter: E,
    shared: Arc<Shared>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    delay: Duration,
) {
    loop {
        let order = tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            _ = shared.full.notified() => None,
            order = orders.recv() => Some(order),
        };
        if let Some(Some(Order::Resource(resource))) = &order {
            exporter.set_resource(resource);
            continue;
        }
        let result = export_buffered(&exporter, &shared).await;
        match order {
            None | Some(Some(Order::Resource(_))) => {}
            Some(Some(Order::Flush(done))) => {
                let _ = done.send(result);
            }
            Some(Some(Order::Shutdown(done))) => {
                let _ = done.send(result.and(exporter.shutdown()));
                return;
            }
            // Every handle is gone: nothing more can arrive.
            Some(None) => {
                let _ = exporter.shutdown();
                return;
            }
        }
    }
}

/// Exports what the buffer holds, a batch at a time, counting each span's fate.
async fn export_buffered<E: SpanExporter>(exporter: &E, shared: &Shared) -> OTelSdkResult {
    let mut spans = std::mem::take(&mut *shared.buffer.lock().unwrap_or_else(|e| e.into_inner()));
    let mut result = Ok(());
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(shared.batch));
        let n = spans.len();
        let sent = exporter.export(spans).await;
        let label = if sent.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[label]).inc_by(n as u64);
        shared.pending.fetch_sub(n, Ordering::AcqRel);
        result = result.and(sent);
        spans = rest;
    }
    result
}

/// The span processor: buffers every ended span while fewer than `capacity` wait, drops the
/// rest (counted).
#[derive(Debug)]
struct Batched {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Order>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pending", &self.pending)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Batched {
    /// Sends `order` and waits for its answer (these are called at shutdown, off the
    /// exporting task's thread).
    fn ask(&self, order: impl FnOnce(oneshot::Sender<OTelSdkResult>) -> Order) -> OTelSdkResult {
        let (done, answer) = oneshot::channel();
        if self.control.send(order(done)).is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        futures::executor::block_on(answer).unwrap_or(Err(OTelSdkError::AlreadyShutdown))
    }
}

impl SpanProcessor for Batched {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let shared = &self.shared;
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.capacity {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            SPANS.with_label_values(&["dropped"]).inc();
            return;
        }
        let waiting = {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.push(span);
            buffer.len()
        };
        if waiting == shared.batch {
            shared.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Order::Flush)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.ask(Order::Shutdown)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Order::Resource(resource.clone()));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// Records the size of every batch it is handed.
    #[derive(Debug, Clone, Default)]
    struct Batches(Arc<Mutex<Vec<usize>>>);

    impl SpanExporter for Batches {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_leave_in_batches_and_what_does_not_fit_is_counted_as_dropped() {
        let batches = Batches::default();
        let dropped_before = SPANS.with_label_values(&["dropped"]).get();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batched(batches.clone(), 25, 10, Duration::from_secs(3600)))
            .build();
        let tracer = provider.tracer("test");
        // The exporting task waits an hour between rounds: only a full batch wakes it.
        for _ in 0..10 {
            tracer.in_span("one", |_| {});
        }
        for _ in 0..200 {
            if batches.0.lock().unwrap().iter().sum::<usize>() == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *batches.0.lock().unwrap(),
            vec![10],
            "a full batch is exported at once"
        );
        // 30 more, of which 25 fit while none is exported (the task may take some meanwhile).
        for _ in 0..30 {
            tracer.in_span("more", |_| {});
        }
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .unwrap();
        assert!(flushed.is_ok());
        let sizes = batches.0.lock().unwrap().clone();
        let dropped = SPANS.with_label_values(&["dropped"]).get() - dropped_before;
        assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
        assert_eq!(
            sizes.iter().sum::<usize>() as u64 + dropped,
            40,
            "{sizes:?}, {dropped} dropped"
        );
    }
}
