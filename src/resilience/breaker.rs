//! One circuit breaker per agent: failsafe's state machine, with its known gaps closed.
//!
//! - failsafe has no timeout: the per-try timeout lives inside the guarded call (the
//!   transport's), so a hung agent *is* a failure.
//! - A dropped future records nothing in failsafe: [`Permit`] records a failure on drop
//!   unless an outcome was recorded, so a call cut off by the request deadline counts.
//! - Half-open lets every concurrent call through: [`Breaker::try_acquire`] caps probes.
//! - There is no state getter: the state is mirrored through failsafe's `Instrument`.
//! - failsafe's backoff helpers panic below 1 s: the open delay is our own iterator.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use failsafe::{
    failure_policy::{consecutive_failures, success_rate_over_time_window, FailurePolicy, OrElse},
    Config, StateMachine,
};
use rand::Rng;

use crate::{config::BreakerSettings, routing::Admission};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The open delay: `base` on the first trip, doubling on each consecutive trip with up to
/// 20 % jitter, capped. Never panics, whatever `base` is.
#[derive(Debug, Clone)]
pub struct OpenBackoff {
    base: Duration,
    cap: Duration,
    trips: u32,
}

impl OpenBackoff {
    pub fn new(base: Duration) -> Self {
        // A probe costs one failed-over call per interval; recovery detection is worth more
        // than a longer quiet spell, so the growth stops at 4×.
        let cap = (base * 4).min(Duration::from_secs(300)).max(base);
        OpenBackoff {
            base,
            cap,
            trips: 0,
        }
    }
}

impl Iterator for OpenBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let grown = self
            .base
            .saturating_mul(1u32 << self.trips.min(16))
            .min(self.cap);
        let jitter = if self.trips == 0 {
            0.0
        } else {
            rand::thread_rng().gen_range(0.0..0.2)
        };
        self.trips = self.trips.saturating_add(1);
        Some(grown.mul_f64(1.0 + jitter).min(self.cap))
    }
}

/// Mirrors failsafe's transitions into atomics readable by `/status` and `/metrics`.
#[derive(Default)]
pub struct Observed {
    state: AtomicU8,
    pub opened: AtomicU64,
    /// Transitions back to closed (routing restarts its slow start on each).
    pub closed: AtomicU64,
    pub rejected: AtomicU64,
}

impl Observed {
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

#[derive(Clone, Default)]
pub struct Instrument {
    pub agent: Arc<str>,
    pub observed: Arc<Observed>,
    /// Told of every transition (the metrics' gauge, shared agent health).
    pub on_change: Option<OnChange>,
}

/// A hook told of a breaker's transitions: to open, to half-open, to closed.
pub type OnChange = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

impl Instrument {
    fn changed(&self, state: BreakerState) {
        if let Some(f) = &self.on_change {
            f(&self.agent, state);
        }
    }
}

impl failsafe::Instrument for Instrument {
    fn on_call_rejected(&self) {
        self.observed.rejected.fetch_add(1, Ordering::Relaxed);
    }
    fn on_open(&self) {
        self.observed.state.store(1, Ordering::Release);
        self.observed.opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(agent = %self.agent, "circuit breaker opened");
        self.changed(BreakerState::Open);
    }
    fn on_half_open(&self) {
        self.observed.state.store(2, Ordering::Release);
        tracing::info!(agent = %self.agent, "circuit breaker half-open");
        self.changed(BreakerState::HalfOpen);
    }
    fn on_closed(&self) {
        if self.observed.state.swap(0, Ordering::AcqRel) != 0 {
            self.observed.closed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(agent = %self.agent, "circuit breaker closed");
            self.changed(BreakerState::Closed);
        }
    }
}

type Policy = OrElse<
    failsafe::failure_policy::ConsecutiveFailures<OpenBackoff>,
    failsafe::failure_policy::SuccessRateOverTimeWindow<OpenBackoff>,
>;

/// Window over which the failure rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

pub struct Breaker {
    machine: StateMachine<Policy, Instrument>,
    instrument: Instrument,
    probes: Arc<AtomicU32>,
    max_probes: u32,
}

impl Breaker {
    /// A breaker for an agent (or a dependency) named `agent`; `on_change` is told of its
    /// transitions.
    pub fn new(agent: &str, s: &BreakerSettings, on_change: Option<OnChange>) -> Self {
        let backoff = OpenBackoff::new(s.open);
        let policy = consecutive_failures(s.consecutive_failures, backoff.clone()).or_else(
            success_rate_over_time_window(
                (1.0 - s.failure_rate).clamp(0.0, 1.0),
                s.min_calls,
                RATE_WINDOW,
                backoff,
            ),
        );
        let instrument = Instrument {
            agent: Arc::from(agent),
            observed: Arc::new(Observed::default()),
            on_change,
        };
        Breaker {
            machine: Config::new()
                .failure_policy(policy)
                .instrument(instrument.clone())
                .build(),
            instrument,
            probes: Arc::new(AtomicU32::new(0)),
            max_probes: s.half_open_probes,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.instrument.observed.state()
    }

    pub fn observed(&self) -> &Observed {
        &self.instrument.observed
    }

    /// Closes the breaker at once (and restarts its backoff): the dependency was seen
    /// answering by a probe of its own.
    pub fn reset(&self) {
        self.machine.reset();
    }

    /// Makes the transition that is due (open → half-open once the open interval ended)
    /// and returns the state, so a breaker no call has come to since is not shown `open`
    /// forever. [`Breaker::state`] only reads.
    pub fn advance(&self) -> BreakerState {
        self.admission();
        self.state()
    }

    /// Whether a call would be admitted now, without taking a probe slot. An open breaker
    /// whose interval has ended turns half-open here, so a probe is offered as soon as due.
    pub fn admission(&self) -> Admission {
        if self.state() == BreakerState::Closed {
            return Admission::Pass;
        }
        if !self.machine.is_call_permitted() {
            return Admission::Refused;
        }
        match self.state() {
            BreakerState::HalfOpen if self.probes.load(Ordering::Acquire) >= self.max_probes => {
                Admission::Refused
            }
            BreakerState::HalfOpen => Admission::Probe,
            _ => Admission::Pass,
        }
    }

    /// Permission for one call, or `None` when open (or half-open with its probes taken).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if !self.machine.is_call_permitted() {
            return None;
        }
        let probe = if self.state() == BreakerState::HalfOpen {
            if self.probes.fetch_add(1, Ordering::AcqRel) >= self.max_probes {
                self.probes.fetch_sub(1, Ordering::AcqRel);
                self.instrument
                    .observed
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
            true
        } else {
            false
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
            cancelled: None,
        })
    }
}

/// One admitted call. Record its outcome with `success`/`failure`; dropping it unrecorded
/// (the caller gave up, e.g. at the request deadline) counts as a failure — unless the
/// client went away (`cancelled_by`), which says nothing about the agent.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
    cancelled: Option<Arc<AtomicBool>>,
}

impl Permit<'_> {
    /// Dropped unrecorded while `flag` is raised, the call counts neither way.
    pub fn cancelled_by(&mut self, flag: Arc<AtomicBool>) {
        self.cancelled = Some(flag);
    }
    pub fn success(mut self) {
        self.recorded = true;
        self.breaker.machine.on_success();
    }
    pub fn failure(mut self) {
        self.recorded = true;
        self.breaker.machine.on_error();
    }
    /// The call says nothing of the agent's health (it asked for time: a 429).
    pub fn neutral(mut self) {
        self.recorded = true;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let cancelled = self
            .cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Acquire));
        if !self.recorded && !cancelled {
            self.breaker.machine.on_error();
        }
        if self.probe {
            self.breaker.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(open_ms: u64) -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_calls: 100,
            open: Duration::from_millis(open_ms),
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_sub_second_delays_do_not_panic() {
        let b = Breaker::new("a", &settings(50), None);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
    }

    #[test]
    fn half_open_admits_only_the_configured_probes_then_closes_on_success() {
        let b = Breaker::new("a", &settings(20), None);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.try_acquire().expect("one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_none(), "a second probe was admitted");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn admission_offers_the_probe_once_the_open_interval_ended() {
        let b = Breaker::new("a", &settings(20), None);
        assert_eq!(b.admission(), Admission::Pass);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.admission(), Admission::Refused);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admission(), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the probe");
        assert_eq!(b.admission(), Admission::Refused, "probe slot taken");
        probe.success();
        assert_eq!(b.admission(), Admission::Pass);
        assert_eq!(b.observed().closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_dropped_call_counts_as_a_failure() {
        let b = Breaker::new("a", &settings(1_000), None);
        for _ in 0..3 {
            drop(b.try_acquire().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let b = Breaker::new("a", &settings(1_000), None);
        for _ in 0..10 {
            b.try_acquire().unwrap().failure();
            b.try_acquire().unwrap().failure();
            b.try_acquire().unwrap().success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_delay_grows_with_jitter_and_is_capped() {
        let mut b = OpenBackoff::new(Duration::from_millis(100));
        let d: Vec<Duration> = (0..10).map(|_| b.next().unwrap()).collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(200) && d[1] <= Duration::from_millis(240));
        assert!(d.iter().all(|x| *x <= Duration::from_millis(400)));
        assert_eq!(d[9], Duration::from_millis(400), "capped at 4×");
        let mut zero = OpenBackoff::new(Duration::ZERO);
        assert_eq!(zero.next(), Some(Duration::ZERO));
    }
}
