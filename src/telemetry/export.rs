//! The way out for spans: a batch exporter sized for load, whose every span is counted —
//! exported, failed, or dropped because the queue was full — in `myriad_trace_spans_total`.
//!
//! The SDK's batch processors hand each ending span to their worker over a channel, which
//! wakes the worker once per span: at full sampling that is several cross-thread wake-ups per
//! request. Here a span ending is a push onto a bounded queue under a lock; the exporter task
//! wakes when a batch is full or the delay has passed, never per span. What does not fit is
//! dropped and counted, never silently.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::OTelSdkResult,
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
/// Longest wait before a partial batch goes out (`OTEL_BSP_SCHEDULE_DELAY` overrides, in ms).
const DELAY: Duration = Duration::from_millis(500);

fn env_number(var: &str) -> Option<usize> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
}

/// What the span processor (any thread) and the exporter task share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Vec<SpanData>>,
    /// Spans queued or being exported.
    pending: AtomicUsize,
    capacity: usize,
    batch: usize,
    /// A batch is full, or the processor stops.
    wake: Notify,
    stopping: AtomicBool,
}

impl Shared {
    /// Up to one batch from the queue, leaving room for the next.
    fn take(&self) -> Vec<SpanData> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() <= self.batch {
            std::mem::replace(&mut *queue, Vec::with_capacity(self.batch))
        } else {
            queue.drain(..self.batch).collect()
        }
    }
}

/// Waits, from async code, until every span ended so far has left (or `timeout` passes).
#[derive(Clone, Debug)]
pub struct Flush(mpsc::Sender<oneshot::Sender<()>>);

impl Flush {
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.0.send(done).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

/// The span processor for `exporter` (whose resource is set here), with its exporter task on
/// the current tokio runtime (the exporters' clients need its reactor).
pub fn processor<E: SpanExporter + 'static>(
    mut exporter: E,
    resource: &Resource,
) -> (impl SpanProcessor, Flush) {
    exporter.set_resource(resource);
    let capacity = env_number("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(QUEUE);
    let batch = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        .unwrap_or(BATCH)
        .min(capacity);
    let delay = env_number("OTEL_BSP_SCHEDULE_DELAY")
        .map_or(DELAY, |ms| Duration::from_millis(ms as u64));
    let shared = Arc::new(Shared {
        queue: Mutex::new(Vec::with_capacity(batch)),
        pending: AtomicUsize::new(0),
        capacity,
        batch,
        wake: Notify::new(),
        stopping: AtomicBool::new(false),
    });
    let (flush, flushes) = mpsc::channel(4);
    tokio::spawn(run(exporter, shared.clone(), delay, flushes));
    (Batcher { shared }, Flush(flush))
}

/// The exporter task: a batch when one is full, when `delay` has passed, on a flush, and
/// whatever is left when the processor stops.
async fn run<E: SpanExporter>(
    mut exporter: E,
    shared: Arc<Shared>,
    delay: Duration,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut open = true;
    loop {
        let flush = tokio::select! {
            () = shared.wake.notified() => None,
            () = tokio::time::sleep(delay) => None,
            f = flushes.recv(), if open => {
                open = f.is_some();
                f
            }
        };
        loop {
            let batch = shared.take();
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let label = if exporter.export(batch).await.is_ok() {
                "exported"
            } else {
                "failed"
            };
            SPANS.with_label_values(&[label]).inc_by(n as u64);
            shared.pending.fetch_sub(n, Ordering::AcqRel);
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
        if shared.stopping.load(Ordering::Acquire) {
            let _ = exporter.shutdown();
            return;
        }
    }
}

/// Queues ended, sampled spans while fewer than the capacity wait; counts the rest as dropped.
#[derive(Debug)]
struct Batcher {
    shared: Arc<Shared>,
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let shared = &self.shared;
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.capacity {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            SPANS.with_label_values(&["dropped"]).inc();
            return;
        }
        let queued = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(span);
            queue.len()
        };
        if queued == shared.batch {
            shared.wake.notify_one();
        }
    }

    /// Asks for an export now; [`Flush::flush`] is the way to wait for it.
    fn force_flush(&self) -> OTelSdkResult {
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Exports what is queued and stops the task (without waiting: flush first to wait).
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        Ok(())
    }
}
