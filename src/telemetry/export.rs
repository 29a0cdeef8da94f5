//! The way out for spans: a bounded queue and one exporting task that sends OTLP batches
//! over HTTP/protobuf or gRPC, every span counted — exported, failed, or dropped because
//! the queue was full — in `myriad_trace_spans_total`.
//!
//! A span's end only appends it to the queue; the exporting task is woken once a batch,
//! encodes it (`otlp`) and sends it, off the request's path.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    otlp::{self, Resource},
    span::Rec,
};
use crate::config::OtlpProtocol;

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
/// Exported records kept for new spans to reuse (~1 MB at most, their buffers included);
/// never more than the last round exported. Records are freed on the exporting thread,
/// and memory freed off the thread that took it returns to the system only once that
/// thread allocates again: a stock of 4,096 left ~5 MB in an idle process after a burst.
const SPARE_RECORDS: usize = 1_024;

fn env_number(var: &str) -> Option<u64> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
}

/// Where batches go: OTLP over HTTP/protobuf or over gRPC.
pub struct Destination {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub timeout: Duration,
    pub resource: Resource,
}

/// Sends one encoded batch; `Err` says why it did not arrive.
trait Transport: Send + 'static {
    fn send(
        &mut self,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// OTLP/HTTP: `POST <endpoint>/v1/traces`, `application/x-protobuf`.
struct Http {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Transport for Http {
    async fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
        let resp = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to the end: the connection goes back to the pool.
        let _ = resp.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the trace backend answered {status}"))
        }
    }
}

/// OTLP/gRPC: the unary `TraceService/Export` call over one HTTP/2 connection, opened again
/// after a failure.
struct Grpc {
    authority: String,
    uri: http::Uri,
    timeout: Duration,
    sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
}

impl Grpc {
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

    fn new(endpoint: &str, timeout: Duration) -> Result<Self, String> {
        let base: http::Uri = endpoint.parse().map_err(|e| format!("{endpoint}: {e}"))?;
        if base.scheme_str() != Some("http") {
            return Err(format!(
                "{endpoint}: OTLP over gRPC is sent to an http:// endpoint"
            ));
        }
        let authority = base
            .authority()
            .ok_or_else(|| format!("{endpoint}: no host"))?
            .to_string();
        let uri = format!("http://{authority}{}", Self::PATH)
            .parse()
            .map_err(|e| format!("{endpoint}: {e}"))?;
        Ok(Grpc {
            authority,
            uri,
            timeout,
            sender: None,
        })
    }

    async fn call(&mut self, body: Bytes) -> Result<(), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("{}: {e}", self.authority))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("the trace backend answered {}", resp.status()));
        }
        let head = resp.headers().clone();
        let done = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailers = done.trailers().cloned().unwrap_or_default();
        let status = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match status(&trailers).or_else(|| status(&head)).as_deref() {
            Some("0") => Ok(()),
            Some(code) => {
                let message = trailers
                    .get("grpc-message")
                    .or_else(|| head.get("grpc-message"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Err(format!(
                    "the trace backend answered gRPC status {code} {message}"
                ))
            }
            None => Err("the trace backend's answer had no gRPC status".into()),
        }
    }
}

impl Transport for Grpc {
    async fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
        // A gRPC message: not compressed (0), its length (4 bytes, big-endian), itself.
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.call(Bytes::from(framed))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }
}

/// Starts exporting to `to` from a task on the tokio runtime this is called on, and
/// returns the queue the recorder hands closed spans to. Spans wait in one buffer; the task
/// sends them every `DELAY`, or as soon as a full batch waits — a span's end only appends
/// it, the task is woken once a batch, not once a span.
pub fn start(to: Destination) -> Result<Arc<Queue>, String> {
    let capacity = env_number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(QUEUE, |n| n as usize);
    let batch = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map_or(BATCH, |n| n as usize);
    let delay = env_number("OTEL_BSP_SCHEDULE_DELAY").map_or(DELAY, Duration::from_millis);
    let queue = Queue::new(capacity, batch);
    let orders = queue.take_orders();
    match to.protocol {
        OtlpProtocol::HttpProtobuf => {
            let client = reqwest::Client::builder()
                .timeout(to.timeout)
                .build()
                .map_err(|e| e.to_string())?;
            let url = format!("{}/v1/traces", to.endpoint.trim_end_matches('/'));
            let http = Http {
                client,
                url,
                timeout: to.timeout,
            };
            tokio::spawn(export_loop(http, to.resource, queue.clone(), orders, delay));
        }
        OtlpProtocol::Grpc => {
            let grpc = Grpc::new(&to.endpoint, to.timeout)?;
            tokio::spawn(export_loop(grpc, to.resource, queue.clone(), orders, delay));
        }
    }
    Ok(queue)
}

/// What the exporting task is asked besides its rounds.
enum Order {
    /// Export everything buffered now; say how it went.
    Flush(oneshot::Sender<Result<(), String>>),
    /// Export everything buffered, then end.
    Shutdown(oneshot::Sender<Result<(), String>>),
}

/// Closed spans waiting to leave, bounded.
pub struct Queue {
    buffer: Mutex<Vec<Rec>>,
    /// The buffer exported last, emptied, to take the next spans (no growing a new one
    /// span by span).
    spare: Mutex<Vec<Rec>>,
    /// Records exported, for new spans to reuse (at most [`SPARE_RECORDS`], and no more
    /// than the last round exported).
    spent: Mutex<Vec<Rec>>,
    /// A full batch waits.
    full: Notify,
    /// Spans handed over and not yet exported (or failed).
    pending: AtomicUsize,
    capacity: usize,
    batch: usize,
    control: mpsc::UnboundedSender<Order>,
    orders: Mutex<Option<mpsc::UnboundedReceiver<Order>>>,
}

impl Queue {
    pub(super) fn new(capacity: usize, batch: usize) -> Arc<Self> {
        let (control, orders) = mpsc::unbounded_channel();
        Arc::new(Queue {
            buffer: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            spent: Mutex::new(Vec::new()),
            full: Notify::new(),
            pending: AtomicUsize::new(0),
            capacity,
            batch: batch.clamp(1, capacity.max(1)),
            control,
            orders: Mutex::new(Some(orders)),
        })
    }

    fn take_orders(&self) -> mpsc::UnboundedReceiver<Order> {
        self.orders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("one exporting task per queue")
    }

    /// What waits, taken out (tests).
    #[cfg(test)]
    pub(super) fn drain(&self) -> Vec<super::span::SpanRec> {
        let spans = std::mem::take(&mut *self.buffer.lock().unwrap());
        self.pending.fetch_sub(spans.len(), Ordering::AcqRel);
        spans.into_iter().map(|b| *b).collect()
    }

    /// Moves up to `n` exported records into `to`, for new spans.
    pub fn spares(&self, to: &mut Vec<Rec>, n: usize) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let from = spent.len().saturating_sub(n);
        to.extend(spent.drain(from..));
    }

    /// Buffers a closed span while fewer than `capacity` wait; drops it (counted) otherwise.
    pub fn push(&self, span: Rec) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            SPANS.with_label_values(&["dropped"]).inc();
            return;
        }
        let waiting = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.push(span);
            buffer.len()
        };
        if waiting == self.batch {
            self.full.notify_one();
        }
    }

    /// Sends `order` and waits for its answer (called at shutdown, off the exporting
    /// task's thread).
    fn ask(
        &self,
        order: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Order,
    ) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        if self.control.send(order(done)).is_err() {
            return Err("the trace exporter has stopped".into());
        }
        futures::executor::block_on(answer)
            .unwrap_or_else(|_| Err("the trace exporter has stopped".into()))
    }

    /// Exports everything buffered now.
    pub fn flush(&self) -> Result<(), String> {
        self.ask(Order::Flush)
    }

    /// Exports everything buffered and stops the exporting task.
    pub fn shutdown(&self) -> Result<(), String> {
        self.ask(Order::Shutdown)
    }
}

async fn export_loop<T: Transport>(
    mut transport: T,
    resource: Resource,
    queue: Arc<Queue>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    delay: Duration,
) {
    loop {
        let order = tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            _ = queue.full.notified() => None,
            order = orders.recv() => Some(order),
        };
        let result = export_buffered(&mut transport, &resource, &queue).await;
        match order {
            None => {}
            Some(Some(Order::Flush(done))) => {
                let _ = done.send(result);
            }
            Some(Some(Order::Shutdown(done))) => {
                let _ = done.send(result);
                return;
            }
            // Unreachable while the queue (which holds the sender) lives.
            Some(None) => return,
        }
    }
}

/// Export failures are logged at most once a second.
static FAILED: LazyLock<super::Throttle> = LazyLock::new(super::Throttle::default);

/// Exports what the buffer holds, a batch at a time, counting each span's fate.
async fn export_buffered<T: Transport>(
    transport: &mut T,
    resource: &Resource,
    queue: &Queue,
) -> Result<(), String> {
    let spare = std::mem::take(&mut *queue.spare.lock().unwrap_or_else(|e| e.into_inner()));
    let mut spans = std::mem::replace(
        &mut *queue.buffer.lock().unwrap_or_else(|e| e.into_inner()),
        spare,
    );
    let mut result = Ok(());
    for batch in spans.chunks(queue.batch) {
        let n = batch.len();
        let sent = transport.send(otlp::request(resource, batch)).await;
        let label = if sent.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[label]).inc_by(n as u64);
        if let Err(e) = &sent {
            if let Some(held) = FAILED.ready() {
                tracing::warn!(spans = n, held_back = held, error = %e, "trace export failed");
            }
        }
        queue.pending.fetch_sub(n, Ordering::AcqRel);
        result = result.and(sent);
    }
    // The stock follows the load: no more records than this round exported (what the
    // next round's spans will want), so after a burst it goes back to the allocator rather
    // than stay in the process's memory.
    let keep = spans.len().min(SPARE_RECORDS);
    let mut spent = queue.spent.lock().unwrap_or_else(|e| e.into_inner());
    if spent.len() > keep {
        spent.truncate(keep);
        spent.shrink_to(keep);
    }
    let room = keep - spent.len();
    spent.extend(spans.drain(..).take(room));
    drop(spent);
    spans.clear();
    *queue.spare.lock().unwrap_or_else(|e| e.into_inner()) = spans;
    result
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::telemetry::span::{SpanContext, SpanRec};

    /// Records the size of every batch it is handed.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Vec<usize>>>);

    impl Transport for Batches {
        async fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
            // Each span is a field 2 of the scope: count them by their span id field.
            let spans = body.windows(2).filter(|w| w == &[0x12, 0x08]).count();
            self.0.lock().unwrap().push(spans);
            Ok(())
        }
    }

    fn span(n: u64) -> Rec {
        let context = SpanContext {
            trace_id: 1,
            span_id: n,
            sampled: true,
        };
        Box::new(SpanRec {
            start: 1,
            end: 2,
            ..SpanRec::new(context, 0, Cow::Borrowed("one"))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_leave_in_batches_and_what_does_not_fit_is_counted_as_dropped() {
        let batches = Batches::default();
        let dropped_before = SPANS.with_label_values(&["dropped"]).get();
        let queue = Queue::new(25, 10);
        let orders = queue.take_orders();
        let resource = Resource {
            service_name: "test".into(),
            service_version: "0",
        };
        // The exporting task waits an hour between rounds: only a full batch wakes it.
        tokio::spawn(export_loop(
            batches.clone(),
            resource,
            queue.clone(),
            orders,
            Duration::from_secs(3600),
        ));
        for n in 1..=10 {
            queue.push(span(n));
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
        for n in 11..=40 {
            queue.push(span(n));
        }
        let q = queue.clone();
        let flushed = tokio::task::spawn_blocking(move || q.flush())
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

    #[tokio::test]
    async fn exported_records_are_kept_for_new_spans_as_many_as_the_last_round_sent() {
        let queue = Queue::new(100, 10);
        let resource = Resource {
            service_name: "test".into(),
            service_version: "0",
        };
        let mut batches = Batches::default();
        for n in 1..=15 {
            queue.push(span(n));
        }
        export_buffered(&mut batches, &resource, &queue)
            .await
            .unwrap();
        assert_eq!(*batches.0.lock().unwrap(), vec![10, 5]);
        let mut reused = Vec::new();
        queue.spares(&mut reused, 4);
        assert_eq!(reused.len(), 4, "exported records are handed out again");
        assert_eq!(queue.spent.lock().unwrap().len(), 11);
        export_buffered(&mut batches, &resource, &queue)
            .await
            .unwrap();
        assert!(
            queue.spent.lock().unwrap().is_empty(),
            "a round with nothing to send gives the stock back"
        );
    }
}
