//! One agent's live signals — health, latency, slow start, share of first picks — fed by
//! every upstream attempt, and the health folded with the peers'.

use std::time::Duration;

use tokio::time::Instant;

use super::{HEALTH_TAU, LATENCY_TAU, RAMP_FLOOR, SHARE_WINDOW};

/// Decayed local attempts at which the peers' counts stop counting in an agent's health.
pub const LOCAL_ENOUGH: f64 = 10.0;

/// Health of an agent from local counts and the peers' (decayed successes and attempts),
/// local first: the peers' counts weigh `1 − local_total ÷ LOCAL_ENOUGH` (nothing once this
/// replica has seen enough), with one imagined success as a prior.
pub fn folded_health(local_ok: f64, local_total: f64, peers_ok: f64, peers_total: f64) -> f64 {
    let w = (1.0 - local_total / LOCAL_ENOUGH).clamp(0.0, 1.0);
    (local_ok + w * peers_ok + 1.0) / (local_total + w * peers_total + 1.0)
}

/// Live signals of one agent, fed by every upstream attempt.
#[derive(Debug, Clone)]
pub struct Signals {
    ok: f64,
    total: f64,
    counted_at: Instant,
    latency_ms: Option<f64>,
    latency_at: Instant,
    /// When slow start last began (first seen, or the breaker closed); None: never.
    ready_since: Option<Instant>,
    window: ShareWindow,
}

impl Signals {
    /// Signals of an agent first seen at `now`; `slow_start` false when it is not new
    /// (known since the replica started).
    pub fn new(now: Instant, slow_start: bool) -> Self {
        Signals {
            ok: 0.0,
            total: 0.0,
            counted_at: now,
            latency_ms: None,
            latency_at: now,
            ready_since: slow_start.then_some(now),
            window: ShareWindow::new(now),
        }
    }

    /// How much of the counts is left at `now` (exponential decay over [`HEALTH_TAU`]).
    fn keep(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.counted_at).as_secs_f64();
        (-dt / HEALTH_TAU.as_secs_f64()).exp()
    }

    fn decay_counts(&mut self, now: Instant) {
        let keep = self.keep(now);
        self.ok *= keep;
        self.total *= keep;
        self.counted_at = now;
    }

    /// One upstream attempt: `fault` when the agent failed it (5xx, timeout, broken
    /// connection…); `latency` counts only for attempts that were not faults.
    pub fn observe(&mut self, now: Instant, fault: bool, latency: Duration) {
        self.decay_counts(now);
        self.total += 1.0;
        if !fault {
            self.ok += 1.0;
            let sample = latency.as_secs_f64() * 1000.0;
            self.latency_ms = Some(match self.latency_ms {
                None => sample,
                Some(old) => {
                    let dt = now.saturating_duration_since(self.latency_at).as_secs_f64();
                    let alpha = 1.0 - (-dt / LATENCY_TAU.as_secs_f64()).exp();
                    old + alpha * (sample - old)
                }
            });
            self.latency_at = now;
        }
    }

    /// Success share over the health window, with one imagined success as a prior (this
    /// replica's counts alone; the stack folds the peers' in the same way).
    pub fn health(&self, now: Instant) -> f64 {
        let (ok, total) = self.counts(now);
        folded_health(ok, total, 0.0, 0.0)
    }

    pub fn latency_ms(&self) -> Option<f64> {
        self.latency_ms
    }

    /// Time since the latency average last took a sample (zero when it has none).
    pub fn latency_age(&self, now: Instant) -> Duration {
        if self.latency_ms.is_some() {
            now.saturating_duration_since(self.latency_at)
        } else {
            Duration::ZERO
        }
    }

    /// Decayed (successes, attempts) of the health window at `now`.
    pub fn counts(&self, now: Instant) -> (f64, f64) {
        let keep = self.keep(now);
        (self.ok * keep, self.total * keep)
    }

    /// When slow start last began (the agent's registration or recovery), if it did.
    pub fn ready_since(&self) -> Option<Instant> {
        self.ready_since
    }

    /// Slow start begins again (the breaker closed).
    pub fn restart_ramp(&mut self, now: Instant) {
        self.ready_since = Some(now);
    }

    /// Pick-weight factor of slow start: 0.1 → 1 over `window`.
    pub fn ramp(&self, now: Instant, window: Duration) -> f64 {
        let Some(since) = self.ready_since.filter(|_| !window.is_zero()) else {
            return 1.0;
        };
        let t = now.saturating_duration_since(since).as_secs_f64() / window.as_secs_f64();
        (RAMP_FLOOR + (1.0 - RAMP_FLOOR) * t).min(1.0)
    }

    /// This agent took part in a routing decision, and was (or was not) the first choice.
    pub fn offered(&mut self, now: Instant, picked: bool) {
        self.window.add(now, picked);
    }

    /// Share of the routing decisions it took part in (last 10–20 s) where it came first.
    pub fn share(&self, now: Instant) -> Option<f64> {
        self.window.share(now)
    }
}

/// Two rotating buckets of (picked, offered).
#[derive(Debug, Clone)]
struct ShareWindow {
    started: Instant,
    current: (u64, u64),
    previous: (u64, u64),
}

impl ShareWindow {
    fn new(now: Instant) -> Self {
        ShareWindow {
            started: now,
            current: (0, 0),
            previous: (0, 0),
        }
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= SHARE_WINDOW * 2 {
            self.previous = (0, 0);
            self.current = (0, 0);
            self.started = now;
        } else if age >= SHARE_WINDOW {
            self.previous = self.current;
            self.current = (0, 0);
            self.started += SHARE_WINDOW;
        }
    }

    fn add(&mut self, now: Instant, picked: bool) {
        self.rotate(now);
        self.current.0 += u64::from(picked);
        self.current.1 += 1;
    }

    fn share(&self, now: Instant) -> Option<f64> {
        let mut w = self.clone();
        w.rotate(now);
        let picked = w.current.0 + w.previous.0;
        let offered = w.current.1 + w.previous.1;
        (offered > 0).then(|| picked as f64 / offered as f64)
    }
}
