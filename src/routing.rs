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

use std::{
    hash::{Hash, Hasher},
    sync::Mutex,
    time::Duration,
};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

pub use crate::config::{PolicyKind, RoutingSettings};

/// Decayed local attempts at which the peers' counts stop counting in an agent's health.
pub const LOCAL_ENOUGH: f64 = 10.0;

/// Health of an agent from local counts and the peers' (decayed successes and attempts),
/// local first: the peers' counts weigh `1 − local_total ÷ LOCAL_ENOUGH` (nothing once this
/// replica has seen enough), with one imagined success as a prior.
pub fn folded_health(local_ok: f64, local_total: f64, peers_ok: f64, peers_total: f64) -> f64 {
    let w = (1.0 - local_total / LOCAL_ENOUGH).clamp(0.0, 1.0);
    (local_ok + w * peers_ok + 1.0) / (local_total + w * peers_total + 1.0)
}

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
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::BestScore,
        Reason::ScoreShare,
        Reason::Explore,
        Reason::SlowStart,
        Reason::Probe,
        Reason::Failover,
        Reason::BestRanked,
        Reason::LocalRegion,
        Reason::RegionFailover,
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
        }
    }
}

/// Whether a breaker lets a call through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: calls pass.
    Open,
    /// Half-open with a free probe slot: one call may test the agent.
    Probe,
    /// Open, or half-open with its probes taken.
    Refused,
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

    /// Decayed (successes, attempts) of the health window at `now`.
    pub fn counts(&self, now: Instant) -> (f64, f64) {
        let keep = self.keep(now);
        (self.ok * keep, self.total * keep)
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
}

impl Inputs {
    /// `weight × health² ÷ (1 + latency_ms × (1 + in_flight) ÷ 100)`.
    pub fn score(&self) -> f64 {
        let load = self.latency_ms.unwrap_or(0.0).max(0.0) * (1.0 + f64::from(self.in_flight));
        self.weight.max(0.0) * self.health.clamp(0.0, 1.0).powi(2) / (1.0 + load / LATENCY_REF_MS)
    }

    fn pick_weight(&self) -> f64 {
        self.score().powi(PICK_EXPONENT) * self.ramp.clamp(0.0, 1.0)
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
}

/// Two uniform draws in [0, 1): whether to explore, and where the pick lands.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    pub explore: f64,
    pub pick: f64,
}

impl Draws {
    /// Draws derived from `key`: the same task always draws the same.
    pub fn from_key(key: &str) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let bits = h.finish();
        let unit = |x: u64| (x & 0xFFFF_FFFF) as f64 / 4_294_967_296.0;
        Draws {
            explore: unit(bits >> 32),
            pick: unit(bits),
        }
    }
}

/// The admitted candidates of this replica's region within [`REGION_HEALTH_SLACK`] of the
/// healthiest admitted one — `None` unless there are some and some admitted one is elsewhere
/// (then the pick happens among them, and the others are the failover).
pub fn local_tier(candidates: &[Inputs], admitted: &[usize]) -> Option<Vec<usize>> {
    let healthiest = admitted
        .iter()
        .map(|&i| candidates[i].health)
        .fold(0.0, f64::max);
    let (local, elsewhere): (Vec<usize>, Vec<usize>) = admitted
        .iter()
        .partition(|&&i| candidates[i].local == Some(true));
    let tier: Vec<usize> = local
        .into_iter()
        .filter(|&i| candidates[i].health >= healthiest - REGION_HEALTH_SLACK)
        .collect();
    (!tier.is_empty() && !elsewhere.is_empty()).then_some(tier)
}

/// Best first, as `/discover` lists them: admitted before refused, this replica's region's
/// equals (see [`local_tier`]) before the rest, then by score.
pub fn rank(candidates: &[Inputs]) -> Vec<usize> {
    let admitted: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].admission != Admission::Refused)
        .collect();
    let tier = local_tier(candidates, &admitted).unwrap_or_default();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let refused = |i: usize| candidates[i].admission == Admission::Refused;
        refused(a)
            .cmp(&refused(b))
            .then(tier.contains(&b).cmp(&tier.contains(&a)))
            .then(candidates[b].score().total_cmp(&candidates[a].score()))
    });
    order
}

/// The score policy on plain data: pure, so it can be tested with synthetic signals.
pub fn plan(candidates: &[Inputs], explore: f64, draws: Draws) -> Plan {
    let all_admitted: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].admission != Admission::Refused)
        .collect();
    let by_score = |ids: &mut Vec<usize>| {
        ids.sort_by(|&a, &b| candidates[b].score().total_cmp(&candidates[a].score()));
    };
    // With a local tier, the pick happens there; the rest of the admitted are the failover.
    let tier = local_tier(candidates, &all_admitted);
    let admitted = tier.clone().unwrap_or_else(|| all_admitted.clone());
    let mut ranked = admitted.clone();
    by_score(&mut ranked);
    let mut elsewhere: Vec<usize> = all_admitted
        .iter()
        .copied()
        .filter(|i| !admitted.contains(i))
        .collect();
    by_score(&mut elsewhere);
    let refused = (0..candidates.len()).filter(|&i| candidates[i].admission == Admission::Refused);
    let mut probes = all_admitted.clone();
    by_score(&mut probes);
    let Some(&best) = ranked.first() else {
        // Every breaker refuses: keep the graph's order; the calls fail fast.
        return Plan {
            order: (0..candidates.len()).collect(),
            reason: Reason::BestScore,
        };
    };
    let (first, reason) = if let Some(&probe) = probes
        .iter()
        .find(|&&i| candidates[i].admission == Admission::Probe)
    {
        (probe, Reason::Probe)
    } else if admitted.len() > 1 && draws.explore < explore {
        let i = ((draws.pick * admitted.len() as f64) as usize).min(admitted.len() - 1);
        (admitted[i], Reason::Explore)
    } else {
        let weights: Vec<f64> = ranked
            .iter()
            .map(|&i| candidates[i].pick_weight())
            .collect();
        let total: f64 = weights.iter().sum();
        let chosen = if total > 0.0 && total.is_finite() {
            let mut target = draws.pick * total;
            let mut chosen = *ranked.last().expect("not empty");
            for (&i, w) in ranked.iter().zip(&weights) {
                if target < *w {
                    chosen = i;
                    break;
                }
                target -= w;
            }
            chosen
        } else {
            best
        };
        let in_region = candidates.iter().any(|c| c.local == Some(true));
        let reason = if tier.is_some() {
            Reason::LocalRegion
        } else if in_region && candidates[chosen].local == Some(false) {
            Reason::RegionFailover
        } else if candidates[chosen].ramp < 1.0 && admitted.len() > 1 {
            Reason::SlowStart
        } else if candidates[chosen].score() >= candidates[best].score() {
            Reason::BestScore
        } else {
            Reason::ScoreShare
        };
        (chosen, reason)
    };
    let mut order = Vec::with_capacity(candidates.len());
    order.push(first);
    order.extend(ranked.into_iter().filter(|&i| i != first));
    order.extend(elsewhere.into_iter().filter(|&i| i != first));
    order.extend(refused);
    Plan { order, reason }
}

/// The policy with its settings and its source of randomness.
pub struct Router {
    pub settings: RoutingSettings,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Router {
    pub fn new(settings: RoutingSettings) -> Self {
        let rng = match settings.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_entropy(),
        };
        Router {
            settings,
            rng: Mutex::new(rng),
        }
    }

    pub fn policy(&self) -> PolicyKind {
        self.settings.policy
    }

    /// Fresh random draws (seeded by `ROUTING_SEED` when set).
    pub fn draws(&self) -> Draws {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Draws {
            explore: rng.gen(),
            pick: rng.gen(),
        }
    }

    /// The order to try `candidates` in. `sticky` (a cacheable task's key) makes the draws
    /// depend on the task only.
    pub fn plan(&self, candidates: &[Inputs], sticky: Option<&str>) -> Plan {
        match self.settings.policy {
            PolicyKind::Weight => Plan::graph_order(candidates.len()),
            PolicyKind::Score => {
                let draws = sticky.map_or_else(|| self.draws(), Draws::from_key);
                plan(candidates, self.settings.explore, draws)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(weight: f64) -> Inputs {
        Inputs {
            weight,
            health: 1.0,
            latency_ms: Some(1.0),
            in_flight: 0,
            admission: Admission::Open,
            ramp: 1.0,
            local: None,
        }
    }

    /// First-choice counts over `n` seeded picks.
    fn shares(candidates: &[Inputs], explore: f64, n: usize) -> Vec<f64> {
        let router = Router::new(RoutingSettings {
            explore,
            seed: Some(7),
            ..Default::default()
        });
        let mut counts = vec![0usize; candidates.len()];
        for _ in 0..n {
            counts[router.plan(candidates, None).order[0]] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn local_evidence_outweighs_the_peers() {
        // Nothing seen here: the peers' verdict (0 of 20) stands.
        assert!(folded_health(0.0, 0.0, 0.0, 20.0) < 0.1);
        // Half the evidence needed: half the weight.
        let h = folded_health(5.0, 5.0, 0.0, 20.0);
        assert!((0.3..0.4).contains(&h), "{h}");
        // Enough of its own: the local view alone.
        assert_eq!(folded_health(10.0, 10.0, 0.0, 20.0), 1.0);
    }

    #[test]
    fn equal_agents_split_the_traffic() {
        let s = shares(&[healthy(0.7), healthy(0.7)], 0.05, 10_000);
        assert!((0.45..=0.55).contains(&s[0]), "{s:?}");
    }

    #[test]
    fn a_clearly_better_agent_takes_most_and_a_near_equal_one_shares() {
        let s = shares(&[healthy(1.0), healthy(0.5)], 0.0, 10_000);
        assert!(s[0] > 0.9, "{s:?}");
        let s = shares(&[healthy(1.0), healthy(0.9)], 0.0, 10_000);
        assert!((0.3..0.5).contains(&s[1]), "{s:?}");
    }

    #[test]
    fn the_exploration_floor_holds_over_ten_thousand_picks() {
        // A candidate whose score is a thousandth of the best still gets its floor.
        let mut weak = healthy(1.0);
        weak.health = 0.03;
        let s = shares(&[healthy(1.0), weak, healthy(0.001)], 0.06, 10_000);
        for share in &s[1..] {
            assert!(*share >= 0.015, "{s:?}");
        }
        assert!(s[0] > 0.9, "{s:?}");
        // With the floor off, the weak ones vanish.
        let s = shares(&[healthy(1.0), weak, healthy(0.001)], 0.0, 10_000);
        assert!(s[1] + s[2] < 0.001, "{s:?}");
    }

    #[test]
    fn a_sick_agent_loses_its_first_pick_even_with_the_higher_weight() {
        let t0 = Instant::now();
        let mut sig = Signals::new(t0, true);
        // 40 % failures at 50 calls/s for 5 s.
        for i in 0..250u64 {
            sig.observe(at(t0, i * 20), i % 5 < 2, Duration::from_millis(1));
        }
        let now = at(t0, 5_000);
        let h = sig.health(now);
        assert!((0.55..0.65).contains(&h), "health {h}");
        let sick = Inputs {
            health: h,
            ..healthy(1.0)
        };
        let s = shares(&[sick, healthy(0.9)], 0.05, 10_000);
        assert!(s[0] < 0.1, "{s:?}");
    }

    #[test]
    fn health_means_the_same_at_one_and_a_thousand_calls_per_second() {
        let t0 = Instant::now();
        let (mut slow, mut fast) = (Signals::new(t0, true), Signals::new(t0, true));
        for i in 0..60u64 {
            slow.observe(at(t0, i * 1_000), i % 4 == 0, Duration::ZERO);
        }
        for i in 0..60_000u64 {
            fast.observe(at(t0, i), i % 4 == 0, Duration::ZERO);
        }
        let now = at(t0, 60_000);
        let (hs, hf) = (slow.health(now), fast.health(now));
        assert!((hf - 0.75).abs() < 0.01, "{hf}");
        // At 1/s the window holds about five calls, and the prior's one success shows.
        assert!((hs - hf).abs() < 0.12, "1/s {hs} vs 1000/s {hf}");
    }

    #[test]
    fn health_recovers_with_time_and_one_failure_is_not_a_verdict() {
        let t0 = Instant::now();
        let mut sig = Signals::new(t0, true);
        sig.observe(t0, true, Duration::ZERO);
        assert_eq!(sig.health(t0), 0.5);
        for i in 0..100u64 {
            sig.observe(at(t0, i * 10), true, Duration::ZERO);
        }
        assert!(sig.health(at(t0, 1_000)) < 0.05);
        assert!(
            sig.health(at(t0, 30_000)) > 0.7,
            "mostly forgotten after 6 τ"
        );
        assert!(sig.health(at(t0, 60_000)) > 0.99, "forgotten after 12 τ");
    }

    #[test]
    fn a_fast_failure_does_not_make_an_agent_look_fast() {
        let t0 = Instant::now();
        let mut sig = Signals::new(t0, true);
        sig.observe(t0, false, Duration::from_millis(300));
        for i in 1..50u64 {
            sig.observe(at(t0, i * 10), true, Duration::from_micros(50));
        }
        assert_eq!(sig.latency_ms(), Some(300.0));
    }

    #[test]
    fn a_slow_or_loaded_agent_loses_to_a_fast_one() {
        let slow = Inputs {
            latency_ms: Some(300.0),
            in_flight: 1,
            ..healthy(1.0)
        };
        let s = shares(&[slow, healthy(0.9)], 0.05, 10_000);
        assert!(s[0] < 0.05, "{s:?}");
        let busy = Inputs {
            latency_ms: Some(20.0),
            in_flight: 20,
            ..healthy(1.0)
        };
        assert!(busy.score() < 0.2 * healthy(1.0).score());
    }

    #[test]
    fn slow_start_ramps_the_share_of_a_returning_agent() {
        let t0 = Instant::now();
        let mut sig = Signals::new(t0, true);
        let window = Duration::from_secs(10);
        assert!((sig.ramp(t0, window) - 0.1).abs() < 1e-9);
        assert!((sig.ramp(at(t0, 5_000), window) - 0.55).abs() < 1e-9);
        assert_eq!(sig.ramp(at(t0, 10_000), window), 1.0);
        sig.restart_ramp(at(t0, 20_000));
        assert!((sig.ramp(at(t0, 20_000), window) - 0.1).abs() < 1e-9);
        assert_eq!(sig.ramp(t0, Duration::ZERO), 1.0);
        assert_eq!(
            Signals::new(t0, false).ramp(t0, window),
            1.0,
            "known at start-up"
        );

        let mut shares_over_time = Vec::new();
        for ramp in [0.1, 0.55, 1.0] {
            let returning = Inputs {
                ramp,
                ..healthy(1.0)
            };
            shares_over_time.push(shares(&[returning, healthy(1.0)], 0.0, 10_000)[0]);
        }
        assert!(shares_over_time[0] < 0.12, "{shares_over_time:?}");
        assert!(shares_over_time[0] < shares_over_time[1]);
        assert!(shares_over_time[1] < shares_over_time[2]);
        assert!((0.45..0.55).contains(&shares_over_time[2]));
        let plan = plan(
            &[
                Inputs {
                    ramp: 0.5,
                    ..healthy(1.0)
                },
                healthy(0.0),
            ],
            0.0,
            Draws {
                explore: 1.0,
                pick: 0.0,
            },
        );
        assert_eq!(plan.reason, Reason::SlowStart);
    }

    #[test]
    fn an_open_breaker_is_never_first_and_a_probe_is() {
        let open = Inputs {
            admission: Admission::Refused,
            ..healthy(1.0)
        };
        for e in [0.0, 0.5] {
            let s = shares(&[open, healthy(0.1)], e, 2_000);
            assert_eq!(s[0], 0.0);
        }
        let p = plan(
            &[open, healthy(0.1)],
            0.05,
            Draws {
                explore: 0.9,
                pick: 0.1,
            },
        );
        assert_eq!(p.order, vec![1, 0], "the open one is tried last");
        let probe = Inputs {
            admission: Admission::Probe,
            ..healthy(0.2)
        };
        let p = plan(
            &[healthy(1.0), probe],
            0.05,
            Draws {
                explore: 0.9,
                pick: 0.1,
            },
        );
        assert_eq!((p.order.clone(), p.reason), (vec![1, 0], Reason::Probe));
        let p = plan(
            &[open, open],
            0.05,
            Draws {
                explore: 0.0,
                pick: 0.0,
            },
        );
        assert_eq!(p.order, vec![0, 1]);
    }

    #[test]
    fn failover_follows_the_score_and_a_seed_pins_every_choice() {
        let c = [healthy(0.3), healthy(0.9), healthy(0.6)];
        let p = plan(
            &c,
            0.0,
            Draws {
                explore: 1.0,
                pick: 0.0,
            },
        );
        assert_eq!((p.order, p.reason), (vec![1, 2, 0], Reason::BestScore));
        let run = || {
            let r = Router::new(RoutingSettings {
                seed: Some(42),
                ..Default::default()
            });
            (0..100).map(|_| r.plan(&c, None).order).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        let sticky = Router::new(RoutingSettings::default());
        let first = sticky.plan(&c, Some("lamp|define|{}")).order;
        for _ in 0..20 {
            assert_eq!(sticky.plan(&c, Some("lamp|define|{}")).order, first);
        }
    }

    #[test]
    fn the_weight_policy_keeps_the_graph_order() {
        let r = Router::new(RoutingSettings {
            policy: PolicyKind::Weight,
            ..Default::default()
        });
        let open = Inputs {
            admission: Admission::Refused,
            ..healthy(1.0)
        };
        let p = r.plan(&[open, healthy(0.1)], None);
        assert_eq!((p.order, p.reason), (vec![0, 1], Reason::BestRanked));
    }

    #[test]
    fn this_regions_agents_come_first_at_equal_health_and_the_others_are_the_failover() {
        let here = |health: f64, weight: f64| Inputs {
            health,
            local: Some(true),
            ..healthy(weight)
        };
        let there = |health: f64, weight: f64| Inputs {
            health,
            local: Some(false),
            ..healthy(weight)
        };
        let draws = Draws {
            explore: 0.5,
            pick: 0.5,
        };
        // Local and a little less healthy, lighter, still first on every draw.
        for pick in [0.0, 0.5, 0.99] {
            let p = plan(
                &[there(1.0, 1.0), here(0.95, 0.5)],
                0.0,
                Draws { explore: 0.5, pick },
            );
            assert_eq!((p.order, p.reason), (vec![1, 0], Reason::LocalRegion));
        }
        // Local but clearly sicker: the other region serves.
        let p = plan(&[there(1.0, 1.0), here(0.6, 1.0)], 0.0, draws);
        assert_eq!((p.order[0], p.reason), (0, Reason::RegionFailover));
        // Local breaker open: the other region serves; the local one is tried last.
        let open = Inputs {
            admission: Admission::Refused,
            ..here(1.0, 1.0)
        };
        let p = plan(&[open, there(1.0, 0.2)], 0.0, draws);
        assert_eq!((p.order, p.reason), (vec![1, 0], Reason::RegionFailover));
        // Exploration stays inside the region.
        let p = plan(
            &[there(1.0, 1.0), here(1.0, 1.0), here(1.0, 1.0)],
            1.0,
            Draws {
                explore: 0.0,
                pick: 0.0,
            },
        );
        assert_eq!((p.order[0], p.reason), (1, Reason::Explore));
        assert_eq!(p.order[2], 0, "elsewhere comes after the region");
        // Without REGION nothing changes.
        let p = plan(&[healthy(1.0), healthy(0.5)], 0.0, draws);
        assert_eq!((p.order, p.reason), (vec![0, 1], Reason::BestScore));
        assert_eq!(rank(&[there(1.0, 1.0), here(0.95, 0.5)]), vec![1, 0]);
    }

    #[test]
    fn share_counts_first_picks_over_the_window() {
        let t0 = Instant::now();
        let mut sig = Signals::new(t0, true);
        assert_eq!(sig.share(t0), None);
        for i in 0..10u64 {
            sig.offered(at(t0, i * 100), i % 2 == 0);
        }
        assert_eq!(sig.share(at(t0, 1_000)), Some(0.5));
        assert_eq!(
            sig.share(at(t0, 15_000)),
            Some(0.5),
            "previous bucket still counts"
        );
        assert_eq!(
            sig.share(at(t0, 25_000)),
            None,
            "forgotten after two windows"
        );
    }
}
