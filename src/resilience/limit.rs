//! Rate limits (governor's GCRA): outbound per agent, inbound per client.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use crate::store::{GcraVerdict, SharedStore};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
    DefaultDirectRateLimiter, Quota, RateLimiter,
};

/// The cluster-wide side of a limit: an atomic GCRA in the shared store. When the store
/// is unavailable the local governor limiter decides instead (fail-open to local, counted).
#[derive(Clone)]
pub struct Global {
    pub store: Arc<dyn SharedStore>,
    pub fallbacks: prometheus::IntCounter,
}

impl Global {
    async fn check(&self, key: &str, per_second: u32, burst: u32) -> Option<GcraVerdict> {
        let interval = Duration::from_secs(1) / per_second.max(1);
        match self.store.gcra(key, interval, burst).await {
            Ok(v) => Some(v),
            Err(_) => {
                self.fallbacks.inc();
                None
            }
        }
    }
}

pub(crate) fn hashed(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Outbound limit of one agent; fails fast (the task fails over) rather than queueing.
pub struct AgentLimiter {
    local: DefaultDirectRateLimiter,
    global: Option<(Global, String)>,
    per_second: u32,
}

impl AgentLimiter {
    /// `None` when `per_second` is 0 (off). The burst equals the rate.
    pub fn new(agent: &str, per_second: u32, global: Option<Global>) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(AgentLimiter {
            local: RateLimiter::direct(Quota::per_second(rate)),
            global: global.map(|g| (g, format!("myriad:v1:rl:agent:{:016x}", hashed(agent)))),
            per_second,
        })
    }

    pub async fn allow(&self) -> bool {
        if let Some((global, key)) = &self.global {
            match global.check(key, self.per_second, self.per_second).await {
                Some(GcraVerdict::Allowed { .. }) => return true,
                Some(GcraVerdict::Limited { .. }) => return false,
                None => {}
            }
        }
        self.local.check().is_ok()
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
    per_second: u32,
    burst: u32,
    clock: DefaultClock,
    global: Option<Global>,
}

/// Keyed state is pruned this often.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

impl ClientLimiter {
    /// `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32, global: Option<Global>) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        Some(Arc::new(ClientLimiter {
            limiter,
            per_second,
            burst: burst.get(),
            clock: DefaultClock::default(),
            global,
        }))
    }

    pub async fn check(&self, client: &str) -> Verdict {
        let key = hashed(client);
        if let Some(global) = &self.global {
            let redis_key = format!("myriad:v1:rl:client:{key:016x}");
            match global.check(&redis_key, self.per_second, self.burst).await {
                Some(GcraVerdict::Allowed { remaining }) => {
                    return Verdict::Allowed {
                        limit: self.burst,
                        remaining,
                    }
                }
                Some(GcraVerdict::Limited { retry_after }) => {
                    return Verdict::Limited {
                        limit: self.burst,
                        retry_after,
                    }
                }
                None => {}
            }
        }
        match self.limiter.check_key(&key) {
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

    #[tokio::test]
    async fn clients_are_limited_independently_with_a_retry_after() {
        let l = ClientLimiter::new(1, 2, None).unwrap();
        assert!(matches!(
            l.check("a").await,
            Verdict::Allowed {
                limit: 2,
                remaining: 1
            }
        ));
        assert!(matches!(
            l.check("a").await,
            Verdict::Allowed { remaining: 0, .. }
        ));
        let Verdict::Limited { retry_after, .. } = l.check("a").await else {
            panic!("third request in the burst was allowed");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        assert!(matches!(l.check("b").await, Verdict::Allowed { .. }));
        assert_eq!(l.tracked_clients(), 2);
    }

    #[test]
    fn zero_means_off() {
        assert!(ClientLimiter::new(0, 5, None).is_none());
        assert!(AgentLimiter::new("a", 0, None).is_none());
    }
}
