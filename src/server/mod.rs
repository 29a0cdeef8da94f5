//! The listening socket: how connections are accepted, bounded, timed out and drained.
//!
//! poem's own `Server` sets no header-read timeout, caps nothing, and retries a failing
//! `accept()` at once (at the file-descriptor limit that is a core at 100 %). This loop
//! serves the same poem endpoint through hyper, with:
//!
//! - **a header-read timeout** (`HEADER_READ_TIMEOUT_MS`): a request's headers must arrive
//!   within it, counted from when the connection starts waiting for them — so a connection
//!   that never sends a request, one that trickles its headers (slowloris) and an idle
//!   keep-alive connection are all closed by it;
//! - **an idle timeout** (`IDLE_TIMEOUT_S`): no byte either way for that long closes any
//!   connection, HTTP/2 included;
//! - **a connection cap** (`MAX_CONNECTIONS`, and never above the file-descriptor limit less
//!   a reserve): at the cap, the connection idle the longest (≥ 1 s) is closed to make room,
//!   else the new one is closed at once — so a flood of idle sockets cannot lock real
//!   clients out;
//! - **accept errors** backed off (50 ms), never retried in a loop;
//! - **graceful drain**: at shutdown no new connection is accepted, every connection
//!   finishes its in-flight request, and whatever is left after the drain is dropped.
//!
//! The body-read timeout (408) lives with the body limit in `api::errors::limit_body`.
//!
//! A connection begins on the server's own HTTP/1.1 path ([`h1`]) when a [`Shortcut`] is
//! set: the requests it answers itself never meet hyper or the endpoint; the first other
//! one takes the connection to them.

pub mod h1;

pub use h1::{Head, Reply, Shortcut};

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use crate::metrics::Metrics;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use poem::{
    web::{LocalAddr, RemoteAddr},
    Addr, Endpoint, Response,
};
use prometheus::{IntCounter, IntGauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
    time::Instant,
};

/// File descriptors kept free of connections (logs, the agent pool, Redis, the graph).
pub const FD_RESERVE: u64 = 256;
/// At shutdown, how long a connection that has not begun a request gets for its first.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(250);
/// A connection must have been quiet this long to be closed for a newcomer at the cap.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// The accept loop's series (`myriad_connections_*`), resolved once.
#[derive(Clone)]
pub struct ConnectionStats {
    open: IntGauge,
    accepted: IntCounter,
    /// Closed at once: at the cap with no idle connection to make room.
    refused: IntCounter,
    /// Closed to make room at the cap.
    evicted: IntCounter,
    /// Closed by the idle timeout.
    idle_closed: IntCounter,
    accept_errors: IntCounter,
}

impl ConnectionStats {
    pub fn new(m: &Metrics) -> Self {
        let event = |e: &str| m.connections.with_label_values(&[e]);
        ConnectionStats {
            open: m.connections_open.clone(),
            accepted: event("accepted"),
            refused: event("refused"),
            evicted: event("evicted"),
            idle_closed: event("idle_closed"),
            accept_errors: event("accept_error"),
        }
    }
}

/// Raises the soft file-descriptor limit to the hard one; returns the limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file-descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The connection cap in force: `MAX_CONNECTIONS`, but never past the descriptor limit.
pub fn effective_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => configured.min(limit.saturating_sub(FD_RESERVE).max(16) as usize),
        None => configured,
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Milliseconds since the registry's epoch of the last byte read or written.
    last_activity: AtomicU64,
    /// Whether any byte was read (hyper's header timer starts only after the first one,
    /// which tells HTTP/1 from HTTP/2).
    spoke: std::sync::atomic::AtomicBool,
    /// Requests begun on it.
    requests: AtomicU64,
    close: Notify,
}

/// How a connection got its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// Below the cap.
    Free,
    /// At the cap, in place of the connection quiet the longest.
    Evicting,
}

struct Registry {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    emptied: Notify,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    fn add(&self) -> (u64, Arc<Conn>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        self.insert(&mut conns)
    }

    fn insert(&self, conns: &mut HashMap<u64, Arc<Conn>>) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            last_activity: AtomicU64::new(self.now_ms()),
            spoke: std::sync::atomic::AtomicBool::new(false),
            requests: AtomicU64::new(0),
            close: Notify::new(),
        });
        conns.insert(id, conn.clone());
        (id, conn)
    }

    /// A new connection, within `max`: below it, added; at it, added in place of the
    /// connection quiet the longest (told to close), if one has been quiet long enough;
    /// otherwise refused (`None`). The count, the choice and the insert happen under one
    /// lock: the cores accept at once, and a check apart from the insert let two of them
    /// each take the last place (501 open under a cap of 500, seen in the flood test).
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>, Admitted)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let admitted = if conns.len() < max {
            Admitted::Free
        } else if self.evict_idlest_of(&conns) {
            Admitted::Evicting
        } else {
            return None;
        };
        let (id, conn) = self.insert(&mut conns);
        Some((id, conn, admitted))
    }

    fn remove(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.remove(&id);
        if conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Closes the connection quiet the longest, if it has been quiet ≥ [`EVICTABLE_AFTER`].
    #[cfg(test)]
    fn evict_idlest(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        self.evict_idlest_of(&conns)
    }

    fn evict_idlest_of(&self, conns: &HashMap<u64, Arc<Conn>>) -> bool {
        let now = self.now_ms();
        let idlest = conns
            .values()
            .min_by_key(|c| c.last_activity.load(Ordering::Relaxed));
        match idlest {
            Some(c)
                if now.saturating_sub(c.last_activity.load(Ordering::Relaxed))
                    >= EVICTABLE_AFTER.as_millis() as u64 =>
            {
                // Pushed back so the same one is not picked twice while it closes.
                c.last_activity.store(now, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            _ => false,
        }
    }
}

/// A socket that notes when a byte last went either way.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    /// Bytes read from the socket that are read again first (what the server's own path read
    /// of a connection it hands to the general server).
    unread: Vec<u8>,
    at: usize,
}

impl Tracked {
    fn touch(&self) {
        self.conn
            .last_activity
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.unread.len() {
            let n = (self.unread.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.unread[at..at + n]);
            self.at += n;
            if self.at == self.unread.len() {
                self.unread = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
            self.conn.spoke.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `ep` on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve<E>(
    listener: TcpListener,
    ep: E,
    limits: crate::config::ConnectionLimits,
    stats: ConnectionStats,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    Server::new(ep, limits, stats, drain)
        .serve(listener, shutdown)
        .await
}

/// One endpoint served on any number of listeners (one per core), with one connection cap
/// and one registry of open connections for all of them.
pub struct Server<E> {
    ep: Arc<E>,
    shortcut: Option<Arc<dyn Shortcut>>,
    registry: Arc<Registry>,
    limits: crate::config::ConnectionLimits,
    stats: ConnectionStats,
    drain: Duration,
}

impl<E> Clone for Server<E> {
    fn clone(&self) -> Self {
        Server {
            ep: self.ep.clone(),
            shortcut: self.shortcut.clone(),
            registry: self.registry.clone(),
            limits: self.limits.clone(),
            stats: self.stats.clone(),
            drain: self.drain,
        }
    }
}

impl<E> Server<E>
where
    E: Endpoint<Output = Response> + 'static,
{
    pub fn new(
        ep: E,
        limits: crate::config::ConnectionLimits,
        stats: ConnectionStats,
        drain: Duration,
    ) -> Self {
        Server {
            ep: Arc::new(ep),
            shortcut: None,
            registry: Arc::new(Registry {
                epoch: Instant::now(),
                conns: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
                emptied: Notify::new(),
            }),
            limits,
            stats,
            drain,
        }
    }

    /// Requests `shortcut` takes are answered by it on the server's own path (see [`h1`]).
    pub fn with_shortcut(mut self, shortcut: Arc<dyn Shortcut>) -> Self {
        self.shortcut = Some(shortcut);
        self
    }

    /// Accepts on `listener` (its connections served by the runtime this runs on) until
    /// `shutdown` resolves; then takes what waits in its accept queue, lets its connections
    /// finish their requests, and waits until every connection of the server is closed or
    /// the drain ran out.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let Server {
            ep,
            shortcut,
            registry,
            limits,
            stats,
            drain,
        } = self;
        let drain = *drain;
        let local = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let take = |socket: TcpStream, remote: SocketAddr| {
            let Some((id, conn, admitted)) = registry.admit(limits.max_connections) else {
                stats.refused.inc();
                drop(socket);
                return;
            };
            if admitted == Admitted::Evicting {
                stats.evicted.inc();
            }
            let _ = socket.set_nodelay(true);
            stats.accepted.inc();
            let (ep, shortcut, registry, stats, limits, stop) = (
                ep.clone(),
                shortcut.clone(),
                registry.clone(),
                stats.clone(),
                limits.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                stats.open.inc();
                let io = Tracked {
                    inner: socket,
                    conn: conn.clone(),
                    registry: registry.clone(),
                    unread: Vec::new(),
                    at: 0,
                };
                serve_connection(
                    io, ep, shortcut, local, remote, &limits, &conn, &registry, &stats, stop,
                )
                .await;
                stats.open.dec();
                registry.remove(id);
            });
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // Once the stop is signalled, nothing more is taken through the reactor.
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, remote)) => take(socket, remote),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning on the error.
                        stats.accept_errors.inc();
                        if stats.accept_errors.get() % 100 == 1 {
                            tracing::warn!(error = %e, "accepting a connection failed; backing off");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        // Connections the kernel has already completed wait in the accept queue, their clients
        // possibly done sending a request: closing the listener would reset them. Take them
        // first (a direct non-blocking accept, not the reactor's possibly stale readiness).
        let listener = listener.into_std()?;
        listener.set_nonblocking(true)?;
        while let Ok((socket, remote)) = listener.accept() {
            // An accepted socket does not inherit the listener's non-blocking mode, and tokio
            // refuses (panics on) a blocking one.
            match socket
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(socket))
            {
                Ok(socket) => take(socket, remote),
                Err(_) => stats.accept_errors.inc(),
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let emptied = registry.emptied.notified();
        if registry.len() > 0 && tokio::time::timeout(drain, emptied).await.is_err() {
            tracing::warn!(
                open = registry.len(),
                "drain ended with connections still open"
            );
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<E>(
    mut io: Tracked,
    ep: Arc<E>,
    shortcut: Option<Arc<dyn Shortcut>>,
    local: SocketAddr,
    remote: SocketAddr,
    limits: &crate::config::ConnectionLimits,
    conn: &Conn,
    registry: &Registry,
    stats: &ConnectionStats,
    mut stop: watch::Receiver<bool>,
) where
    E: Endpoint<Output = Response> + 'static,
{
    let work = async {
        let read = match &shortcut {
            Some(shortcut) => {
                let served = h1::serve(
                    &mut io,
                    &**shortcut,
                    remote,
                    limits.header_read_timeout,
                    conn,
                    &mut stop,
                );
                match Box::pin(served).await {
                    h1::Next::Close => return,
                    h1::Next::Silent => {
                        stats.idle_closed.inc();
                        return;
                    }
                    h1::Next::Hand(read) => read,
                }
            }
            None => Vec::new(),
        };
        let begun = io.conn.clone();
        io.unread = read;
        general(io, ep, local, remote, limits, begun, stop).await;
    };
    let idle = limits.idle_timeout;
    let idle_watch = async {
        loop {
            let last = conn.last_activity.load(Ordering::Relaxed);
            let quiet = Duration::from_millis(registry.now_ms().saturating_sub(last));
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    // A connection that never sends a byte gets the header-read timeout too.
    let silent_watch = async {
        tokio::time::sleep(limits.header_read_timeout).await;
        if conn.spoke.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = silent_watch => stats.idle_closed.inc(),
        _ = idle_watch => stats.idle_closed.inc(),
        _ = conn.close.notified() => {}
    }
}

/// The general server: hyper (HTTP/1.1 and HTTP/2) and the endpoint, with a graceful end at
/// the stop.
async fn general<E, I>(
    io: I,
    ep: Arc<E>,
    local: SocketAddr,
    remote: SocketAddr,
    limits: &crate::config::ConnectionLimits,
    conn: Arc<Conn>,
    mut stop: watch::Receiver<bool>,
) where
    E: Endpoint<Output = Response> + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let begun = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ep = ep.clone();
        begun.requests.fetch_add(1, Ordering::Relaxed);
        async move {
            let req: poem::Request = (
                req,
                LocalAddr(Addr::SocketAddr(local)),
                RemoteAddr(Addr::SocketAddr(remote)),
                poem::http::uri::Scheme::HTTP,
            )
                .into();
            // Boxed: hyper moves the future it is handed into its slot, so it should be
            // small; the endpoint's is kilobytes.
            let resp = Box::pin(ep.get_response(req)).await;
            Ok::<_, Infallible>(hyper::Response::from(resp))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    // Shutting down. A connection that has not begun a request yet may be carrying one
    // its client already sent: give it a moment to be read before closing.
    if conn.requests.load(Ordering::Relaxed) == 0 {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
        }
    }
    // Finish the request in flight, take no new one.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_under_the_descriptor_limit() {
        assert_eq!(effective_cap(10_000, Some(1_024)), 768);
        assert_eq!(effective_cap(500, Some(1_024)), 500);
        assert_eq!(effective_cap(500, None), 500);
        assert_eq!(effective_cap(500, Some(10)), 16);
    }

    #[tokio::test]
    async fn requests_waiting_in_the_accept_queue_at_the_stop_are_served() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Complete connections, requests sent, none accepted yet.
        let clients: Vec<std::net::TcpStream> = (0..3)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                c
            })
            .collect();
        let ep = poem::EndpointExt::map_to_response(poem::endpoint::make_sync(|_| "served"));
        let limits = crate::config::ConnectionLimits::default();
        let stats = ConnectionStats::new(&Metrics::default());
        // Stopped before anything was accepted: the queue is taken by the drain.
        let server = tokio::spawn(serve(
            listener,
            ep,
            limits,
            stats,
            std::future::ready(()),
            Duration::from_secs(5),
        ));
        let read = tokio::task::spawn_blocking(move || {
            clients
                .into_iter()
                .map(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut answer = String::new();
                    let _ = c.read_to_string(&mut answer);
                    answer
                })
                .collect::<Vec<_>>()
        });
        server.await.expect("the drain does not panic").unwrap();
        for answer in read.await.unwrap() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            assert!(answer.ends_with("served"), "{answer:?}");
        }
    }

    #[test]
    fn cores_accepting_at_once_never_take_more_places_than_the_cap() {
        let registry = Arc::new(Registry {
            epoch: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            emptied: Notify::new(),
        });
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let admitted: usize = (0..8)
            .map(|_| {
                let (registry, barrier) = (registry.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..50).filter(|_| registry.admit(100).is_some()).count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        // Nothing was quiet for a second: no place was made by closing one.
        assert_eq!(admitted, 100);
        assert_eq!(registry.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_quiet_the_longest_makes_room_and_a_busy_one_never_does() {
        let registry = Registry {
            epoch: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            emptied: Notify::new(),
        };
        let (_, old) = registry.add();
        tokio::time::advance(Duration::from_millis(500)).await;
        let (_, young) = registry.add();
        assert!(!registry.evict_idlest(), "nothing quiet for 1 s yet");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(registry.evict_idlest());
        // The old one was told to close; the young one was not.
        tokio::time::timeout(Duration::from_millis(1), old.close.notified())
            .await
            .expect("the idlest was closed");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), young.close.notified())
                .await
                .is_err()
        );
    }
}
