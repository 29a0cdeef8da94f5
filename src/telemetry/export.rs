//! The way out for spans: a bounded queue and one exporting task that sends OTLP batches
//! over HTTP/protobuf or gRPC, every span counted — exported, failed, or dropped because
//! the queue was full — in `myriad_trace_spans_total`.
//!
//! A span is encoded (`otlp`) when it closes, into its thread's outbox; full outboxes are
//! handed over whole, and the exporting task, woken once a batch, puts them behind one
//! header and sends them, off the request's path.

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
    span::SpanRec,
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
/// returns the queue the recorder hands closed spans to. The task sends what waits every
/// `DELAY` (threads' outboxes included), or as soon as a full batch is handed over — the
/// task is woken once a batch, not once a span.
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

/// Spans closed on one thread, encoded (OTLP `ScopeSpans.spans` entries), until handed over.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    spans: usize,
}

/// Bytes a thread's outbox holds at most before it is handed to the exporter (spans hand
/// over at [`Queue::batch`] spans too, whichever comes first).
const OUTBOX_BYTES: usize = 64 * 1024;
/// Emptied buffers kept for threads' next outboxes.
const SPARE_BUFFERS: usize = 8;

/// Queues get ids, so a thread's outbox is found for its own queue (tests make several).
static QUEUE_IDS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's outbox and the id of the queue it belongs to.
    static OUTBOX: std::cell::RefCell<Option<(usize, Arc<Mutex<Outbox>>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Closed spans waiting to leave, bounded. A span is encoded when it closes, into an
/// outbox of its thread's own (a lock no other thread takes but the exporter's rounds); a
/// full outbox is handed over whole. Nothing is shared span by span between threads, and a
/// span's record stays on its thread for the next span.
pub struct Queue {
    id: usize,
    /// Every thread's outbox, for the exporter's rounds to empty.
    outboxes: Mutex<Vec<Arc<Mutex<Outbox>>>>,
    /// Outboxes handed over full, waiting for the exporter, and how many spans they hold.
    ready: Mutex<(Vec<Outbox>, usize)>,
    /// Buffers the exporter emptied, for threads' next outboxes.
    spare: Mutex<Vec<Vec<u8>>>,
    /// A full batch waits.
    full: Notify,
    /// Spans handed over and not yet exported (or failed).
    pending: AtomicUsize,
    capacity: usize,
    batch: usize,
    control: mpsc::UnboundedSender<Order>,
    orders: Mutex<Option<mpsc::UnboundedReceiver<Order>>>,
    /// Spans as recorded, kept instead of encoded (the subscriber's tests read them).
    #[cfg(test)]
    kept: Option<Mutex<Vec<SpanRec>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub(super) fn new(capacity: usize, batch: usize) -> Arc<Self> {
        let (control, orders) = mpsc::unbounded_channel();
        Arc::new(Queue {
            id: QUEUE_IDS.fetch_add(1, Ordering::Relaxed),
            outboxes: Mutex::new(Vec::new()),
            ready: Mutex::new((Vec::new(), 0)),
            spare: Mutex::new(Vec::new()),
            full: Notify::new(),
            pending: AtomicUsize::new(0),
            capacity,
            batch: batch.clamp(1, capacity.max(1)),
            control,
            orders: Mutex::new(Some(orders)),
            #[cfg(test)]
            kept: None,
        })
    }

    /// A queue that keeps spans as recorded (tests of what the subscriber records).
    #[cfg(test)]
    pub(super) fn keeping() -> Self {
        let mut queue = Arc::into_inner(Queue::new(1, 1)).expect("not shared yet");
        queue.kept = Some(Mutex::new(Vec::new()));
        queue
    }

    /// What a [`Queue::keeping`] kept, taken out.
    #[cfg(test)]
    pub(super) fn kept(&self) -> Vec<SpanRec> {
        std::mem::take(&mut *locked(self.kept.as_ref().expect("a keeping queue")))
    }

    fn take_orders(&self) -> mpsc::UnboundedReceiver<Order> {
        locked(&self.orders)
            .take()
            .expect("one exporting task per queue")
    }

    /// Encodes a closed span into this thread's outbox; hands the outbox over once full.
    pub fn push(&self, span: &SpanRec) {
        #[cfg(test)]
        if let Some(kept) = &self.kept {
            locked(kept).push(span.clone());
            return;
        }
        OUTBOX.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                let outbox = Arc::new(Mutex::new(Outbox::default()));
                locked(&self.outboxes).push(outbox.clone());
                *slot = Some((self.id, outbox));
            }
            let Some((_, outbox)) = slot.as_ref() else {
                return;
            };
            let mut outbox = locked(outbox);
            if outbox.bytes.capacity() == 0 {
                outbox.bytes = locked(&self.spare)
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(OUTBOX_BYTES + 1024));
            }
            otlp::scope_span(&mut outbox.bytes, span);
            outbox.spans += 1;
            if outbox.spans >= self.batch || outbox.bytes.len() >= OUTBOX_BYTES {
                let full = std::mem::take(&mut *outbox);
                drop(outbox);
                self.hand_over(full);
            }
        });
    }

    /// Queues a full outbox while its spans fit under `capacity`; drops them (counted)
    /// otherwise.
    fn hand_over(&self, outbox: Outbox) {
        let n = outbox.spans;
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            SPANS.with_label_values(&["dropped"]).inc_by(n as u64);
            self.recycle(outbox.bytes);
            return;
        }
        let waiting = {
            let mut ready = locked(&self.ready);
            ready.0.push(outbox);
            ready.1 += n;
            ready.1
        };
        if waiting >= self.batch && waiting - n < self.batch {
            self.full.notify_one();
        }
    }

    fn recycle(&self, mut bytes: Vec<u8>) {
        bytes.clear();
        let mut spare = locked(&self.spare);
        if spare.len() < SPARE_BUFFERS && bytes.capacity() <= 2 * OUTBOX_BYTES {
            spare.push(bytes);
        }
    }

    /// Everything waiting, taken out: the outboxes handed over and what every thread's
    /// outbox holds now (outboxes of threads that ended are forgotten once emptied).
    fn take(&self) -> Vec<Outbox> {
        let (mut taken, _) = std::mem::take(&mut *locked(&self.ready));
        let mut outboxes = locked(&self.outboxes);
        for outbox in outboxes.iter() {
            let mut outbox = locked(outbox);
            if outbox.spans > 0 {
                self.pending.fetch_add(outbox.spans, Ordering::AcqRel);
                taken.push(std::mem::take(&mut *outbox));
            }
        }
        outboxes.retain(|o| Arc::strong_count(o) > 1);
        taken
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

/// Exports what waits, a batch (at most `batch` spans) a request, counting each span's fate.
async fn export_buffered<T: Transport>(
    transport: &mut T,
    resource: &Resource,
    queue: &Queue,
) -> Result<(), String> {
    let outboxes = queue.take();
    let mut result = Ok(());
    let mut from = 0;
    while from < outboxes.len() {
        // Whole outboxes (each at most a batch) while the batch has room.
        let mut to = from + 1;
        let mut n = outboxes[from].spans;
        while to < outboxes.len() && n + outboxes[to].spans <= queue.batch {
            n += outboxes[to].spans;
            to += 1;
        }
        let parts: Vec<&[u8]> = outboxes[from..to].iter().map(|o| &o.bytes[..]).collect();
        let sent = transport.send(otlp::request(resource, &parts)).await;
        let label = if sent.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[label]).inc_by(n as u64);
        if let Err(e) = &sent {
            if let Some(held) = FAILED.ready() {
                tracing::warn!(spans = n, held_back = held, error = %e, "trace export failed");
            }
        }
        queue.pending.fetch_sub(n, Ordering::AcqRel);
        result = result.and(sent);
        from = to;
    }
    for outbox in outboxes {
        queue.recycle(outbox.bytes);
    }
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

    fn span(n: u64) -> SpanRec {
        let context = SpanContext {
            trace_id: 1,
            span_id: n,
            sampled: true,
        };
        SpanRec {
            start: 1,
            end: 2,
            ..SpanRec::new(context, 0, Cow::Borrowed("one"))
        }
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
            queue.push(&span(n));
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
            queue.push(&span(n));
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
    async fn a_round_takes_what_every_thread_holds_and_forgets_threads_that_ended() {
        let queue = Queue::new(100, 10);
        let resource = Resource {
            service_name: "test".into(),
            service_version: "0",
        };
        let mut batches = Batches::default();
        // Under a batch on each of two threads, the second of which ends: nothing handed over.
        for n in 1..=3 {
            queue.push(&span(n));
        }
        let q = queue.clone();
        std::thread::spawn(move || (4..=7).for_each(|n| q.push(&span(n))))
            .join()
            .unwrap();
        assert_eq!(locked(&queue.outboxes).len(), 2);
        assert_eq!(locked(&queue.ready).1, 0);
        export_buffered(&mut batches, &resource, &queue)
            .await
            .unwrap();
        assert_eq!(*batches.0.lock().unwrap(), vec![7]);
        assert_eq!(
            locked(&queue.outboxes).len(),
            1,
            "the ended thread's outbox is let go"
        );
        assert_eq!(queue.pending.load(Ordering::Acquire), 0);
        // 25 on this thread: two outboxes handed over full, five held; sent 10, 10, 5.
        for n in 8..=32 {
            queue.push(&span(n));
        }
        assert_eq!(locked(&queue.ready).1, 20);
        export_buffered(&mut batches, &resource, &queue)
            .await
            .unwrap();
        assert_eq!(*batches.0.lock().unwrap(), vec![7, 10, 10, 5]);
        assert!(
            !locked(&queue.spare).is_empty(),
            "emptied buffers are kept for the next outboxes"
        );
    }
}
