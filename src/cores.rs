//! One runtime per core (`RUNTIME=per_core`): N single-threaded tokio runtimes, each on a
//! thread of its own accepting on its own `SO_REUSEPORT` listener of the same address, so a
//! connection's requests, their agent calls (each core keeps its own agent connections) and
//! the answers never change cores and never wake another one. Shared state (graph, caches,
//! breakers, routing signals, limits) is shared by all of them; background work (learning,
//! trace export, Redis subscriptions, probes) runs on the runtime that built the
//! application, off the request cores.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use poem::{Endpoint, Response};
use tokio::sync::{mpsc, watch};

use crate::server::Server;

static ON_PARK: OnceLock<fn()> = OnceLock::new();

/// What every runtime thread runs each time it runs out of work (the binary hands its
/// allocator's collect here; the library has no unsafe code of its own).
pub fn on_park(hook: fn()) {
    let _ = ON_PARK.set(hook);
}

/// The hook for a runtime builder's `on_thread_park`.
pub fn park_hook() -> impl Fn() + Send + Sync + 'static {
    || {
        if let Some(hook) = ON_PARK.get() {
            hook()
        }
    }
}

thread_local! {
    /// On a request core: its agent calls in flight (`None` on any other thread). A core's
    /// tasks never leave it, so a call starts and ends on the same count.
    static OUTBOUND: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// An agent call in flight, counted while it lives when it runs on a request core.
pub struct Outbound(bool);

impl Outbound {
    pub fn start() -> Self {
        Outbound(OUTBOUND.with(|n| n.get().map(|c| n.set(Some(c + 1))).is_some()))
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.0 {
            OUTBOUND.with(|n| n.set(n.get().map(|c| c.saturating_sub(1))));
        }
    }
}

/// A request core out of work, with no agent call of its own in flight, waits only for
/// its clients: it first lets whatever else is runnable on its CPU (the clients, on one
/// machine) run, and sleeps only if its connections are still quiet after. Saturated with
/// cached answers, a core otherwise slept and was woken 0.25 times a request (1.3 µs a
/// request more CPU than work stealing's workers, which seldom sleep); with it 0.07. With
/// agent calls in flight it sleeps at once: their answers come within microseconds, and a
/// yield then delayed them behind the other runnable threads (uncached throughput 5 % lower
/// in the A/B, docs/BENCHMARKS.md). On an idle machine the yield returns at once.
fn yield_if_only_clients_are_awaited() {
    if OUTBOUND.with(|n| n.get()) == Some(0) {
        std::thread::yield_now();
    }
}

/// Request cores for a configured count (`0` = one per available core).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A listener on `addr` the other cores' listeners may share (`SO_REUSEPORT`). An address
/// another process already listens on is refused, as without sharing: a plain socket is
/// bound to it first.
pub fn bind_shared(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    bind(addr, backlog, true)
}

/// A listening socket on `addr` with `backlog`, shareable with other sockets that set
/// `reuse_port` too.
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(addr)?;
    socket.listen(backlog)?.into_std()
}

/// Serves `server` on `cores` runtimes, the first on `first` (bound by [`bind_shared`]), the
/// others on listeners of their own on the same address, until `shutdown` resolves (or a
/// core fails); then every core drains as [`Server::serve`] does.
pub async fn serve<E>(
    server: Server<E>,
    first: std::net::TcpListener,
    cores: usize,
    backlog: u32,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cores.max(1) {
        listeners.push(bind(addr, backlog, true)?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<io::Result<()>>(listeners.len());
    let server = Arc::new(server);
    let mut running = 0;
    for (core, listener) in listeners.into_iter().enumerate() {
        let (server, done, mut stop) = (server.clone(), done_tx.clone(), stop_rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("myriad-core-{core}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park({
                        let hook = park_hook();
                        move || {
                            hook();
                            yield_if_only_clients_are_awaited();
                        }
                    })
                    .build()
                    .and_then(|runtime| {
                        OUTBOUND.with(|n| n.set(Some(0)));
                        runtime.block_on(async {
                            listener.set_nonblocking(true)?;
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            server.serve(listener, stopped).await
                        })
                    });
                let _ = done.blocking_send(result);
            });
        match spawned {
            Ok(_) => running += 1,
            Err(e) => {
                let _ = stop_tx.send(true);
                let _ = drain(&mut done_rx, running).await;
                return Err(e);
            }
        }
    }
    drop(done_tx);
    tracing::info!(cores = running, "serving on one runtime per core");
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => {}
        ended = done_rx.recv() => {
            running -= 1;
            result = ended.unwrap_or(Ok(()));
            if let Err(e) = &result {
                tracing::error!(error = %e, "a request core stopped; stopping the others");
            }
        }
    }
    let _ = stop_tx.send(true);
    let rest = drain(&mut done_rx, running).await;
    result.and(rest)
}

/// Waits for `running` cores to end; the first error, if any.
async fn drain(done: &mut mpsc::Receiver<io::Result<()>>, running: usize) -> io::Result<()> {
    let mut result = Ok(());
    for _ in 0..running {
        match done.recv().await {
            Some(Err(e)) if result.is_ok() => result = Err(e),
            Some(_) => {}
            None => break,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_core_counts_its_agent_calls_in_flight_and_other_threads_do_not() {
        let count = || OUTBOUND.with(|n| n.get());
        assert_eq!(count(), None);
        drop(Outbound::start());
        assert_eq!(count(), None, "not a request core: nothing counted");
        OUTBOUND.with(|n| n.set(Some(0)));
        let (a, b) = (Outbound::start(), Outbound::start());
        assert_eq!(count(), Some(2));
        drop(a);
        assert_eq!(count(), Some(1));
        drop(b);
        assert_eq!(
            count(),
            Some(0),
            "only clients awaited: the core yields before it sleeps"
        );
    }
}
