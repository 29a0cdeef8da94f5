//! The routing policy: which candidate a task tries first, and the order of the rest.
//!
//! The graph ranks candidates by their Hebbian weight — a long-term quality prior that only
//! moves when an agent is called. Routing by weight alone can only ever demote: an agent
//! out-ranked during an outage is never called again, so its weight never recovers. This
//! policy combines that prior with what this replica sees live, per agent:
//!
//! ```text
//! score = weight × health² ÷ (1 + latency_ms × (1 + in_flight) ÷ 100)
//! first = weighted random among admitted candidates, P(i) ∝ score_i⁴ × ramp_i
//!         (with probability ROUTING_EXPLORE_PERCENT: uniform among them instead)
//! rest  = the other admitted candidates by score, then those whose breaker refuses
//! ```
//!
//! - **health**: the success share of upstream attempts over an exponential window of
//!   [`HEALTH_TAU`] (time-decayed counts, so it means the same at 1 and 1000 calls/s), with
//!   one imagined success as a prior so a single failure after a quiet spell is not a verdict.
//! - **latency**: a time-weighted EWMA of *successful* attempts only ([`LATENCY_TAU`]); an
//!   agent never measured counts as instant (slow start tempers that). Multiplied by the calls
//!   in flight + 1 (Finagle's load estimate), so a stalling agent is avoided at once.
//! - **ramp** (slow start): an agent first seen by this replica, or whose breaker just
//!   closed, starts at 10 % of its pick weight and reaches 100 % linearly over
//!   `ROUTING_SLOW_START_S`.
//! - A half-open breaker with a free probe slot goes first (`probe`): recovery is detected by
//!   real traffic, and failover covers a probe that fails. An open breaker is never first.
//! - For a cacheable task with the cache in use, the random draws come from a hash of the
//!   task, so repeats of one task stick to one agent and keep hitting its cached answer.
//!
//! The fourth power makes near-equal candidates share (0.9 vs 1.0 → 40 %/60 %) and
//! clearly worse ones fade (an agent failing 40 % of calls: health² = 0.36 → 1.6 %, plus the
//! exploration floor). `ROUTING_POLICY=weight` keeps the graph's order (weight, success
//! rate, name) exactly.
//!
//! Files: this one the vocabulary (reasons, admission, a candidate's inputs, a plan, the
//! constants); `signals.rs` what one agent's live signals are and how they move; `live.rs`
//! every agent's signals, fed by the resilience stack's outcomes, and what the policy reads
//! of one agent (with the stack's gates and the peers' view); `policy.rs` the decision and
//! the [`Router`] that owns it all.

mod estimate;
mod live;
mod policy;
mod served;
mod signals;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Serialize;

pub use crate::config::{PolicyKind, RoutingSettings};
pub use estimate::{Estimates, Posterior, SharedEvidence, ESTIMATE_TAU, PRIOR_STRENGTH};
pub use live::{Attempt, Gates, Live, LiveSignals, PeerView};
pub use policy::{local_equals, plan, plan_learned, rank, rank_learned, Draws, Router};
pub use served::{Served, ServedTask, FEEDBACK_WINDOW, MAX_SERVED};
pub use signals::{folded_health, Signals, LOCAL_ENOUGH};

/// Time constant of the health window.
pub const HEALTH_TAU: Duration = Duration::from_secs(5);
/// Time constant of the latency EWMA.
pub const LATENCY_TAU: Duration = Duration::from_secs(2);
/// Latency (× load) at which the latency factor halves a score.
pub const LATENCY_REF_MS: f64 = 100.0;
/// Exponent of the score in the pick weight.
pub const PICK_EXPONENT: i32 = 4;
/// Pick weight an agent starts its slow start with.
pub const RAMP_FLOOR: f64 = 0.1;
/// How far below the healthiest admitted candidate one of this replica's region may be and
/// still count as equal (and so come first).
pub const REGION_HEALTH_SLACK: f64 = 0.1;
/// Calls in flight at which the `learned` policy's load estimate doubles an agent's latency.
pub const IN_FLIGHT_REF: f64 = 12.0;
/// Length of each of the two buckets `share` is measured over.
pub const SHARE_WINDOW: Duration = Duration::from_secs(10);

/// Why the candidate that answered was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The highest score among admitted candidates.
    BestScore,
    /// A near-equal candidate, by its share of the weighted pick.
    ScoreShare,
    /// The exploration floor.
    Explore,
    /// Picked while ramping up after registration or recovery.
    SlowStart,
    /// The half-open breaker's probe.
    Probe,
    /// Not the first choice: an earlier candidate failed.
    Failover,
    /// `ROUTING_POLICY=weight`: the graph's best-ranked candidate.
    BestRanked,
    /// In this replica's region (`REGION`), and about as healthy as the best elsewhere.
    LocalRegion,
    /// In another region: none of this replica's region could take the task.
    RegionFailover,
    /// The floor under ejection: every candidate was refused (breakers, peers' holds), and
    /// this one got its bounded trickle (`ROUTING_PANIC_INTERVAL_MS`).
    Panic,
    /// A hedge: asked because the first choice was slow (`HEDGE_INTENTS`), it answered first.
    Hedge,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::BestScore,
        Reason::ScoreShare,
        Reason::Explore,
        Reason::SlowStart,
        Reason::Probe,
        Reason::Failover,
        Reason::BestRanked,
        Reason::LocalRegion,
        Reason::RegionFailover,
        Reason::Panic,
        Reason::Hedge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BestScore => "best_score",
            Reason::ScoreShare => "score_share",
            Reason::Explore => "explore",
            Reason::SlowStart => "slow_start",
            Reason::Probe => "probe",
            Reason::Failover => "failover",
            Reason::BestRanked => "best_ranked",
            Reason::LocalRegion => "local_region",
            Reason::RegionFailover => "region_failover",
            Reason::Panic => "panic",
            Reason::Hedge => "hedge",
        }
    }
}

/// Whether a breaker lets a call through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: calls pass.
    Pass,
    /// Half-open with a free probe slot: one call may test the agent.
    Probe,
    /// Open, or half-open with its probes taken.
    Refused,
}

/// What the policy knows of one candidate at decision time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// The Hebbian weight of the agent→concept edge.
    pub weight: f64,
    pub health: f64,
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    pub admission: Admission,
    /// Slow-start factor (0.1..=1).
    pub ramp: f64,
    /// In this replica's region; `None` when `REGION` is unset.
    pub local: Option<bool>,
    /// The learned estimate of its success share on the task's concept (`learned` policy).
    pub posterior: Posterior,
    /// Seconds since its latency average last took a sample (0 when it has none).
    pub latency_age_s: f64,
}

impl Inputs {
    /// `weight × health² ÷ (1 + latency_ms × (1 + in_flight) ÷ 100)`.
    pub fn score(&self) -> f64 {
        self.weight.max(0.0) * self.health.clamp(0.0, 1.0).powi(2) * self.load_factor()
    }

    fn pick_weight(&self) -> f64 {
        self.score().powi(PICK_EXPONENT) * self.ramp.clamp(0.0, 1.0)
    }

    /// The score policy's discount for latency under load:
    /// `1 ÷ (1 + latency_ms × (1 + in_flight) ÷ LATENCY_REF_MS)`.
    pub fn load_factor(&self) -> f64 {
        let load = self.latency_ms.unwrap_or(0.0).max(0.0) * (1.0 + f64::from(self.in_flight));
        1.0 / (1.0 + load / LATENCY_REF_MS)
    }

    /// The `learned` policy's discount for latency under load:
    /// `1 ÷ (1 + latency_ms × (1 + in_flight ÷ IN_FLIGHT_REF) ÷ LATENCY_REF_MS)` — gentler
    /// than the score policy's, so calls in flight spread a burst without pulling a steady
    /// load away from the better agent (which has more in flight because it is chosen).
    pub fn latency_factor(&self) -> f64 {
        self.latency_factor_with(1.0)
    }

    /// [`Inputs::latency_factor`] with the latency scaled by `noise` (a draw of how far the
    /// measured average may be from the agent's true latency).
    pub fn latency_factor_with(&self, noise: f64) -> f64 {
        let load = self.latency_ms.unwrap_or(0.0).max(0.0)
            * noise
            * (1.0 + f64::from(self.in_flight) / IN_FLIGHT_REF);
        1.0 / (1.0 + load / LATENCY_REF_MS)
    }

    /// The `learned` policy's expected value of a candidate: its posterior mean, discounted
    /// for latency under load.
    pub fn expected(&self) -> f64 {
        self.posterior.mean() * self.posterior.preference() * self.latency_factor()
    }
}

/// The order in which to try candidates, and why the first one is first.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Indexes into the candidates, first choice first.
    pub order: Vec<usize>,
    pub reason: Reason,
}

impl Plan {
    /// `ROUTING_POLICY=weight`: `len` candidates in the graph's order.
    pub fn graph_order(len: usize) -> Plan {
        Plan {
            order: (0..len).collect(),
            reason: Reason::BestRanked,
        }
    }

    /// Why the candidate at `position` of the order answered: the plan's reason for the
    /// first; for a later one a failover, across regions when the first was of this
    /// replica's region and it is not (`local` of a candidate index, `None` with no region).
    pub fn reason_at(&self, position: usize, local: impl Fn(usize) -> Option<bool>) -> Reason {
        if position == 0 {
            return self.reason;
        }
        let first = self.order[0];
        let here = self.order[position];
        if local(first) == Some(true) && local(here) == Some(false) {
            Reason::RegionFailover
        } else {
            Reason::Failover
        }
    }
}
