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
                    .on_thread_park(park_hook())
                    .build()
                    .and_then(|runtime| {
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
