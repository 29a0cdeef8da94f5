//! Rate limits (governor's GCRA): outbound per agent, inbound per client.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
    DefaultDirectRateLimiter, Quota, RateLimiter,
};

/// Outbound limit of one agent; fails fast (the task fails over) rather than queueing.
pub struct AgentLimiter(DefaultDirectRateLimiter);

impl AgentLimiter {
    /// `None` when `per_second` is 0 (off). The burst equals the rate.
    pub fn new(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(AgentLimiter(RateLimiter::direct(Quota::per_second(rate))))
    }

    pub fn allow(&self) -> bool {
        self.0.check().is_ok()
    }
}

type Keyed =
    RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

/// The verdict for one inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed { limit: u32, remaining: u32 },
    Limited { limit: u32, retry_after: Duration },
}

/// Inbound limit per client (API key if present, else IP). Keys are hashed, so neither
/// secrets nor unbounded strings are stored; stale keys are pruned periodically.
pub struct ClientLimiter {
    limiter: Keyed,
    burst: u32,
    clock: DefaultClock,
}

/// Keyed state is pruned this often.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

impl ClientLimiter {
    /// `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        Some(Arc::new(ClientLimiter {
            limiter,
            burst: burst.get(),
            clock: DefaultClock::default(),
        }))
    }

    pub fn check(&self, client: &str) -> Verdict {
        let mut h = DefaultHasher::new();
        client.hash(&mut h);
        match self.limiter.check_key(&h.finish()) {
            Ok(snapshot) => Verdict::Allowed {
                limit: self.burst,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                limit: self.burst,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Drops the state of clients whose limit has fully replenished.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }

    /// Prunes periodically for as long as the limiter lives.
    pub fn spawn_pruner(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(l) => l.prune(),
                    None => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_limited_independently_with_a_retry_after() {
        let l = ClientLimiter::new(1, 2).unwrap();
        assert!(matches!(
            l.check("a"),
            Verdict::Allowed {
                limit: 2,
                remaining: 1
            }
        ));
        assert!(matches!(
            l.check("a"),
            Verdict::Allowed { remaining: 0, .. }
        ));
        let Verdict::Limited { retry_after, .. } = l.check("a") else {
            panic!("third request in the burst was allowed");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        assert!(matches!(l.check("b"), Verdict::Allowed { .. }));
        assert_eq!(l.tracked_clients(), 2);
    }

    #[test]
    fn zero_means_off() {
        assert!(ClientLimiter::new(0, 5).is_none());
        assert!(AgentLimiter::new(0).is_none());
    }
}
