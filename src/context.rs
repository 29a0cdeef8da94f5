//! The per-request context: what every stage of one request's path needs to know, passed
//! as one value instead of one parameter at a time (pingora's `CTX`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

/// How a request ranks under overload (`X-Priority`): `low` is shed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// `high`, `normal` or `low`.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// What the client's request decided for every task it holds.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// No task of the request runs past this.
    pub deadline: Instant,
    /// False when the client sent `Cache-Control: no-cache` (or `no-store`): the caches are
    /// bypassed.
    pub use_cache: bool,
    /// Time spent waiting on agents, for `Server-Timing` and the overhead histogram.
    pub agent_time: Arc<AgentTime>,
    /// Raised when the client went away: work dropped from here on is a cancel, not a
    /// failure.
    pub cancelled: Arc<AtomicBool>,
    /// Its rank under overload.
    pub priority: Priority,
}

impl RequestCtx {
    pub fn new(timeout: Duration, use_cache: bool, agent_time: Arc<AgentTime>) -> Self {
        RequestCtx {
            deadline: Instant::now() + timeout,
            use_cache,
            agent_time,
            cancelled: Arc::default(),
            priority: Priority::Normal,
        }
    }

    /// The same request, ranked `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The client went away: what is dropped from now on was cancelled.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Time left before the deadline, never negative.
    pub fn remaining(&self) -> Duration {
        remaining(self.deadline)
    }

    /// The same request with a cancel flag of its own, for a call that may be dropped
    /// while the request goes on (a hedged call that lost): dropped after
    /// [`RequestCtx::cancel`], it is a cancel, not a failure. [`Forward`] passes a cancel of
    /// the whole request on to it.
    pub fn child(&self) -> RequestCtx {
        RequestCtx {
            cancelled: Arc::default(),
            ..self.clone()
        }
    }
}

/// Dropped, raises the children's cancel flags if the parent's is raised: hold it after
/// the children's calls (locals drop in reverse order), so a request the client left
/// cancels them before they drop.
pub struct Forward<'a> {
    pub parent: &'a RequestCtx,
    pub children: [&'a RequestCtx; 2],
}

impl Drop for Forward<'_> {
    fn drop(&mut self) {
        if self.parent.cancelled.load(Ordering::Acquire) {
            for c in self.children {
                c.cancel();
            }
        }
    }
}

/// Time left before `deadline`, never negative.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The wall-clock time during which at least one agent call of a request was in flight:
/// concurrent calls of a batch count once, so `total − agent time` is what the gateway
/// itself spent.
#[derive(Debug, Default)]
pub struct AgentTime(Mutex<Waiting>);

#[derive(Debug, Default)]
struct Waiting {
    in_flight: u32,
    since: Option<Instant>,
    done: Duration,
    calls: u32,
}

impl AgentTime {
    /// Marks one agent call as started; the call ends when the guard drops.
    pub fn start(self: &Arc<Self>) -> AgentCall {
        let mut w = self.lock();
        if w.in_flight == 0 {
            w.since = Some(Instant::now());
        }
        w.in_flight += 1;
        w.calls += 1;
        AgentCall(self.clone())
    }

    /// Time with at least one call in flight so far, and how many calls were made.
    pub fn total(&self) -> (Duration, u32) {
        let w = self.lock();
        let open = match (w.in_flight, w.since) {
            (0, _) | (_, None) => Duration::ZERO,
            (_, Some(since)) => since.elapsed(),
        };
        (w.done + open, w.calls)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One agent call in flight (see [`AgentTime::start`]).
pub struct AgentCall(Arc<AgentTime>);

impl Drop for AgentCall {
    fn drop(&mut self) {
        let mut w = self.0.lock();
        w.in_flight = w.in_flight.saturating_sub(1);
        if w.in_flight == 0 {
            if let Some(since) = w.since.take() {
                w.done += since.elapsed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn overlapping_calls_count_once() {
        let t = Arc::new(AgentTime::default());
        let a = t.start();
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = t.start();
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(a);
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(b);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(t.total(), (Duration::from_millis(30), 2));
    }
}
