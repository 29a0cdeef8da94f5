//! The per-request context: what every stage of one request's path needs to know, passed
//! as one value instead of one parameter at a time (pingora's `CTX`).

use std::time::Duration;

use tokio::time::Instant;

/// What the client's request decided for every task it holds.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx {
    /// No task of the request runs past this.
    pub deadline: Instant,
    /// False when the client sent `Cache-Control: no-cache` (or `no-store`): the caches are
    /// bypassed.
    pub use_cache: bool,
}

impl RequestCtx {
    pub fn new(timeout: Duration, use_cache: bool) -> Self {
        RequestCtx {
            deadline: Instant::now() + timeout,
            use_cache,
        }
    }

    /// Time left before the deadline, never negative.
    pub fn remaining(&self) -> Duration {
        remaining(self.deadline)
    }
}

/// Time left before `deadline`, never negative.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
