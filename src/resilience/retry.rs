//! Retries: only when safe, with exponential backoff and full jitter, never past the
//! deadline, and within a per-agent budget so an outage does not multiply load.
//!
//! With Redis (and `RETRY_BUDGET_SCOPE=cluster`, the default) the budget is one for all
//! replicas: each withdrawal is an atomic script over per-second counts in Redis, carrying
//! the first attempts this replica made since its last withdrawal. First attempts stay a
//! local counter bump (no Redis call on the hot path); calls a replica never reported only
//! make the shared budget stricter, never looser. Redis away = the local budget decides.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prometheus::IntCounterVec;
use rand::Rng;
use tokio::time::Instant;

use super::outcome::attempt_outcome;
use crate::{
    agents::{AgentReply, CallError},
    store::SharedStore,
};

/// Window of the retry budget.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed per window, so a quiet agent can still retry a lone failure.
pub const BUDGET_FLOOR: u64 = 3;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, base: Duration) -> Self {
        RetryPolicy {
            max_retries,
            base,
            cap: Duration::from_secs(10),
        }
    }

    /// Full jitter: uniform in [0, min(cap, base·2^(retry−1))] for retry 1, 2, …
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.cap);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }
}

/// Who decided a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// This replica's own budget (no shared store, or `RETRY_BUDGET_SCOPE=replica`).
    Locally,
    /// The cluster-wide budget in the shared store.
    Cluster,
    /// The shared store did not answer: this replica's own budget decided.
    Fallback,
}

/// The cluster-wide side of a budget.
struct Shared {
    store: Arc<dyn SharedStore>,
    key: String,
    /// First attempts not yet reported, by unix second.
    unreported: Mutex<VecDeque<(u64, u64)>>,
}

/// Retries ≤ `BUDGET_FLOOR` + `percent`% of the calls over the last `BUDGET_WINDOW`.
pub struct RetryBudget {
    percent: u64,
    /// One-second buckets: (second, calls, retries).
    buckets: Mutex<VecDeque<(u64, u64, u64)>>,
    origin: Instant,
    shared: Option<Shared>,
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            percent: u64::from(percent),
            buckets: Mutex::new(VecDeque::with_capacity(11)),
            origin: Instant::now(),
            shared: None,
        }
    }

    /// The budget is kept cluster-wide in `store`, under `key`.
    pub fn shared(mut self, store: Arc<dyn SharedStore>, key: String) -> Self {
        self.shared = Some(Shared {
            store,
            key,
            unreported: Mutex::new(VecDeque::with_capacity(11)),
        });
        self
    }

    fn with_bucket<R>(&self, f: impl FnOnce(&mut VecDeque<(u64, u64, u64)>) -> R) -> R {
        let now = self.origin.elapsed().as_secs();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        while b
            .front()
            .is_some_and(|(s, _, _)| now.saturating_sub(*s) >= BUDGET_WINDOW.as_secs())
        {
            b.pop_front();
        }
        if b.back().is_none_or(|(s, _, _)| *s != now) {
            b.push_back((now, 0, 0));
        }
        f(&mut b)
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        self.with_bucket(|b| b.back_mut().unwrap().1 += 1);
        if let Some(shared) = &self.shared {
            let now = unix_second();
            let mut u = shared.unreported.lock().unwrap_or_else(|e| e.into_inner());
            while u
                .front()
                .is_some_and(|(s, _)| now.saturating_sub(*s) >= BUDGET_WINDOW.as_secs())
            {
                u.pop_front();
            }
            match u.back_mut() {
                Some((s, calls)) if *s == now => *calls += 1,
                _ => u.push_back((now, 1)),
            }
        }
    }

    /// Takes one retry from the budget (the cluster's when shared): whether it was
    /// granted, and who decided.
    pub async fn withdraw(&self) -> (bool, Decided) {
        let Some(shared) = &self.shared else {
            return (self.try_withdraw(), Decided::Locally);
        };
        let deposits: Vec<(u64, u64)> = shared
            .unreported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        match shared
            .store
            .retry_budget(
                &shared.key,
                BUDGET_WINDOW,
                BUDGET_FLOOR,
                self.percent,
                &deposits,
            )
            .await
        {
            Ok(granted) => {
                if granted {
                    // The local window keeps counting, for a fallback that stays in step.
                    self.with_bucket(|b| b.back_mut().unwrap().2 += 1);
                }
                (granted, Decided::Cluster)
            }
            Err(_) => {
                let mut u = shared.unreported.lock().unwrap_or_else(|e| e.into_inner());
                for d in deposits.into_iter().rev() {
                    u.push_front(d);
                }
                drop(u);
                (self.try_withdraw(), Decided::Fallback)
            }
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let percent = self.percent;
        self.with_bucket(|b| {
            let (calls, retries) = b
                .iter()
                .fold((0, 0), |(c, r), (_, bc, br)| (c + bc, r + br));
            if retries < BUDGET_FLOOR + calls * percent / 100 {
                b.back_mut().unwrap().2 += 1;
                true
            } else {
                false
            }
        })
    }
}

/// Whether waiting `backoff` still leaves time before `deadline` for another attempt.
pub fn fits(deadline: Instant, backoff: Duration) -> bool {
    Instant::now() + backoff < deadline
}

/// The retry loop: `attempt(n)` (from 1) until it answers, or its error is not worth
/// retrying, or the policy's retries, the time before `deadline` or the `budget` run out.
/// Each retry is counted in `retries` (`sent`, `denied_by_budget`, `budget_fallback`) and
/// named on the failed attempt's span (`retry_reason`). Returns the last result and the
/// number of attempts.
pub async fn attempts<F, Fut>(
    policy: &RetryPolicy,
    budget: &RetryBudget,
    retries: &IntCounterVec,
    deadline: Instant,
    mut attempt: F,
) -> (Result<AgentReply, CallError>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = (Result<AgentReply, CallError>, tracing::Span)>,
{
    let mut n = 0;
    loop {
        n += 1;
        let (result, span) = attempt(n).await;
        let err = match result {
            Ok(reply) => return (Ok(reply), n),
            Err(e) => e,
        };
        if n <= policy.max_retries && err.is_retryable() {
            let wait = policy.backoff(n);
            if fits(deadline, wait) {
                let (granted, decided) = budget.withdraw().await;
                if decided == Decided::Fallback {
                    retries.with_label_values(&["budget_fallback"]).inc();
                }
                if granted {
                    retries.with_label_values(&["sent"]).inc();
                    crate::record!(span, retry_reason = attempt_outcome(&err));
                    tracing::debug!(attempt = n, code = err.code().as_str(), ?wait, "retrying");
                    drop(span);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                retries.with_label_values(&["denied_by_budget"]).inc();
            }
        }
        return (Err(err), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let p = RetryPolicy::new(3, Duration::from_millis(100));
        for retry in 1..=5 {
            let ceiling = Duration::from_millis(100 * (1 << (retry - 1)));
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling);
            }
        }
        assert_eq!(
            RetryPolicy::new(3, Duration::ZERO).backoff(2),
            Duration::ZERO
        );
        assert!(p.backoff(40) <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_floor_plus_a_share_of_calls_and_refills_with_time() {
        let budget = RetryBudget::new(20);
        for _ in 0..50 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count() as u64;
        assert_eq!(granted, BUDGET_FLOOR + 10);
        tokio::time::advance(BUDGET_WINDOW + Duration::from_secs(1)).await;
        let granted = (0..100).filter(|_| budget.try_withdraw()).count() as u64;
        assert_eq!(
            granted, BUDGET_FLOOR,
            "old calls and retries left the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_waits_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(fits(deadline, Duration::from_millis(50)));
        assert!(!fits(deadline, Duration::from_millis(150)));
    }
}
