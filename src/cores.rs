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
    time::{Duration, Instant},
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

/// How a request core has been spending its time, for [`before_waiting`].
#[derive(Clone, Copy)]
struct Rhythm {
    /// When the core last woke from a wait.
    woke: Option<Instant>,
    /// When that wait began (after any yield).
    waited_from: Option<Instant>,
    /// Time it recently worked and waited, in seconds, each older round weighing 7/8 of the
    /// next: their ratio is a share of time, not an average of rounds' shares (at 1,000
    /// req/s a core's rounds alternate between a long wait for a request and an instant one
    /// for its agent's answer, and the rounds' shares averaged ~0.5 where its time was 3 %
    /// work).
    ran: f32,
    waited: f32,
}

impl Rhythm {
    const fn new() -> Self {
        Rhythm {
            woke: None,
            waited_from: None,
            ran: 0.0,
            waited: 0.0,
        }
    }

    /// A wait of `waited` followed by `ran` of work.
    fn worked(&mut self, ran: Duration, waited: Duration) {
        self.ran = self.ran * 7.0 / 8.0 + ran.as_secs_f32();
        self.waited = self.waited * 7.0 / 8.0 + waited.as_secs_f32();
    }

    /// Busy at least half the time: its clients are likely to have sent more by the time
    /// whatever else is runnable on its CPU has run.
    fn saturated(&self) -> bool {
        self.ran > 0.0 && self.ran >= self.waited
    }
}

thread_local! {
    static RHYTHM: std::cell::Cell<Rhythm> = const { std::cell::Cell::new(Rhythm::new()) };
}

/// A request core out of work. With no agent call of its own in flight it waits only for
/// its clients, and if it has been busy at least half the time it first lets whatever else
/// is runnable on its CPU (the clients, on one machine) run, and sleeps only if its
/// connections are still quiet after. Saturated with cached answers, a core otherwise slept
/// and was woken 0.25 times a request (1.3 µs a request more CPU than work stealing's
/// workers, which seldom sleep); with it 0.07. A lightly loaded core does not yield: its
/// clients send nothing more meanwhile, and the yield only cost it a second wake-up to go
/// to sleep (at 1,000 req/s, 2.8 switches a request against 2.1 and ~15 % more CPU a
/// request). With agent calls in flight it sleeps at once: their answers come within
/// microseconds, and a yield then delayed them behind the other runnable threads (uncached
/// throughput 5 % lower in the A/B, docs/BENCHMARKS.md). On an idle CPU the yield returns
/// at once.
fn before_waiting() {
    let now = Instant::now();
    let mut rhythm = RHYTHM.with(|r| r.get());
    if let (Some(woke), Some(from)) = (rhythm.woke, rhythm.waited_from) {
        rhythm.worked(
            now.saturating_duration_since(woke),
            woke.saturating_duration_since(from),
        );
    }
    let clients_only = OUTBOUND.with(|n| n.get()) == Some(0);
    rhythm.waited_from = Some(if clients_only && rhythm.saturated() {
        std::thread::yield_now();
        Instant::now()
    } else {
        now
    });
    RHYTHM.with(|r| r.set(rhythm));
}

/// A request core woke from a wait.
fn after_waiting() {
    RHYTHM.with(|r| {
        let mut rhythm = r.get();
        rhythm.woke = Some(Instant::now());
        r.set(rhythm);
    });
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
                            before_waiting();
                        }
                    })
                    .on_thread_unpark(after_waiting)
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
            "only clients awaited: a busy core yields before it sleeps"
        );
    }

    #[test]
    fn a_core_that_finds_work_as_it_waits_counts_as_busy_and_one_that_sleeps_does_not() {
        let us = Duration::from_micros;
        let mut rhythm = Rhythm::new();
        assert!(!rhythm.saturated(), "nothing known: no yield");
        // Saturated: 100 µs of work, and the next requests there as soon as it waits.
        for _ in 0..16 {
            rhythm.worked(us(100), us(2));
        }
        assert!(rhythm.saturated(), "{} / {}", rhythm.ran, rhythm.waited);
        // 1,000 req/s over two cores: a request every ~2 ms, ~60 µs of work before its agent
        // call and ~40 after the answer, which was there at once.
        let rounds = [(us(60), us(1_900)), (us(40), us(2))];
        for (ran, waited) in rounds.into_iter().cycle().take(32) {
            rhythm.worked(ran, waited);
            assert!(!rhythm.saturated(), "{} / {}", rhythm.ran, rhythm.waited);
        }
        // Saturated again: it counts as busy within a few milliseconds.
        for _ in 0..24 {
            rhythm.worked(us(100), us(2));
        }
        assert!(rhythm.saturated(), "{} / {}", rhythm.ran, rhythm.waited);
    }
}
