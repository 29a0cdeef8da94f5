//! The learned prior of the `learned` policy: for each agent and concept, a Beta
//! posterior of the share of tasks the agent answers successfully.
//!
//! ```text
//! α = PRIOR_STRENGTH × prior       + Σ successes × discount
//! β = PRIOR_STRENGTH × (1 − prior) + Σ failures  × discount
//! discount = (1 − 1/EVIDENCE_WINDOW)^(outcomes since) × e^(−idle time ÷ ESTIMATE_TAU)
//! ```
//!
//! - `prior` is the edge's graph weight when this replica first routes the pair (clamped to
//!   [`PRIOR_FLOOR`, `1 − PRIOR_FLOOR`]), so an operator's primary (0.9) and backup (0.5)
//!   keep their order while both succeed: the prior's pseudo-failures (0.4 against 2) never
//!   decay, the evidence does. The Hebbian weight itself is untouched (the contract's): it
//!   saturates at 1.0 after twenty successes in a row, at any rate, which is why routing
//!   does not read it after the first sight.
//! - The evidence is discounted per outcome ([`EVIDENCE_WINDOW`]), so the estimate is as
//!   sure at 1 call/s as at 1,000 and follows a drifting agent within a few hundred calls;
//!   and in time while the pair is not called ([`ESTIMATE_TAU`]), so an agent nobody has
//!   called lately drifts back to its prior and its uncertainty, and the Thompson draw of
//!   [`super::policy`] tries it again.
//! - A change is noticed at once: when the last [`RECENT`] outcomes are too unlikely under
//!   the estimate (a binomial tail below [`CHANGE_ALPHA`]), the evidence restarts from the
//!   outcomes after the most likely change point — an agent that starts failing is dropped
//!   after a handful of failures, and one that recovers is believed after a few answers,
//!   not after its failures have faded.
//!
//! The constants come from the routing benchmark (`cargo bench --bench routing`,
//! docs/ROUTING.md), which drives this policy against the anchors' through simulated pools.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Duration,
};

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::Serialize;
use tokio::time::Instant;

/// Pseudo-observations the graph weight is worth: one, so a handful of outcomes outweighs
/// it, and two equal agents that always succeed share the traffic (with pseudo-failures of
/// one or more each, the one drawn first early would keep nearly all of it).
pub const PRIOR_STRENGTH: f64 = 1.0;
/// How much the graph weight counts in a candidate's value as a standing preference:
/// `× (1 + PRIOR_PREFERENCE × (prior − 0.5))`, at most ±5 %. Of two agents that are equally
/// good, the operator's primary stays first (a posterior alone would tell them apart by
/// less than a call in flight weighs); a measured difference in quality or latency larger
/// than that still wins.
pub const PRIOR_PREFERENCE: f64 = 0.1;
/// Outcomes the evidence is worth at most: each new outcome of a pair discounts the older
/// ones by `1 − 1/EVIDENCE_WINDOW`, so the estimate is as precise at 1 call/s as at 1,000,
/// and follows a drifting agent within a few hundred of its calls.
pub const EVIDENCE_WINDOW: f64 = 500.0;
/// Time constant of the evidence's decay while a pair is not called: an agent nobody has
/// called lately drifts back to its prior and its uncertainty, and is tried again.
pub const ESTIMATE_TAU: Duration = Duration::from_secs(300);
/// The last outcomes kept, in order, to notice a change.
pub const RECENT: u32 = 16;
/// How unlikely the recent outcomes must be under the long window's share to make a change
/// (a binomial tail: a 95 % agent needs 5 failures of 16 to trip it, once every ~1,000 s at
/// 50 calls/s by chance).
pub const CHANGE_ALPHA: f64 = 1e-6;
/// The prior stays this far from 0 and 1 (a weight of 1.0 would be a certainty no evidence
/// could move).
pub const PRIOR_FLOOR: f64 = 0.02;
/// (agent, concept) pairs kept at most; beyond, the least recently used pair is forgotten
/// (and starts again from its prior).
pub const MAX_PAIRS: usize = 65_536;
/// Outcomes one peer's report on a pair may carry at most (a report covers one second).
pub const MAX_SHARED_OUTCOMES: f64 = 100_000.0;

/// A Beta posterior of a success share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Posterior {
    pub alpha: f64,
    pub beta: f64,
    /// The graph weight it started from (clamped).
    pub prior: f64,
}

impl Posterior {
    /// The prior alone, for a graph weight.
    pub fn prior(weight: f64) -> Self {
        let p = if weight.is_finite() { weight } else { 0.5 }.clamp(PRIOR_FLOOR, 1.0 - PRIOR_FLOOR);
        Posterior {
            alpha: PRIOR_STRENGTH * p,
            beta: PRIOR_STRENGTH * (1.0 - p),
            prior: p,
        }
    }

    /// The standing preference of the graph weight ([`PRIOR_PREFERENCE`]).
    pub fn preference(&self) -> f64 {
        1.0 + PRIOR_PREFERENCE * (self.prior - 0.5)
    }

    /// The expected success share.
    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    /// Its standard deviation: how unsure the estimate is.
    pub fn sd(&self) -> f64 {
        let n = self.alpha + self.beta;
        (self.alpha * self.beta / (n * n * (n + 1.0))).sqrt()
    }

    /// Observations behind it beyond the prior (decayed).
    pub fn evidence(&self) -> f64 {
        (self.alpha + self.beta - PRIOR_STRENGTH).max(0.0)
    }

    /// One draw of the success share (Thompson sampling).
    pub fn sample(&self, rng: &mut (impl Rng + ?Sized)) -> f64 {
        match Beta::new(self.alpha.max(1e-3), self.beta.max(1e-3)) {
            Ok(b) => b.sample(rng),
            Err(_) => self.mean(),
        }
    }
}

/// Decayed (successes, failures).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    ok: f64,
    failed: f64,
}

impl Counts {
    fn scale(&mut self, keep: f64) {
        self.ok *= keep;
        self.failed *= keep;
    }

    /// One outcome worth `grade` of a success (1: a success, 0: a failure, between: an
    /// answer its agent was only that sure of).
    fn add(&mut self, grade: f64) {
        self.ok += grade;
        self.failed += 1.0 - grade;
    }
}

/// One pair's evidence: the decayed counts the estimate is made of, and the last
/// [`RECENT`] outcomes in order, to notice a change.
#[derive(Debug, Clone)]
struct Evidence {
    prior: f64,
    long: Counts,
    /// Bit i: the outcome i calls ago succeeded.
    recent: u32,
    recent_len: u32,
    at: Instant,
    /// When the evidence began (the pair's first sight, or the agent's last recovery).
    epoch: Instant,
}

impl Evidence {
    fn new(prior: f64, now: Instant) -> Self {
        Evidence {
            prior,
            long: Counts::default(),
            recent: 0,
            recent_len: 0,
            at: now,
            epoch: now,
        }
    }

    /// The agent recovered (its breaker closed after a probe, or a peer saw it recover) at
    /// `since`: what it did before stops counting, its prior and uncertainty are back, and
    /// the Thompson draw tries it again — an agent another one outshone while it was down
    /// is not left unmeasured.
    fn restart_from(&mut self, since: Instant) {
        if since > self.epoch {
            *self = Evidence::new(self.prior, since);
        }
    }

    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.long.scale((-dt / ESTIMATE_TAU.as_secs_f64()).exp());
        self.at = now;
    }

    /// One outcome. When the recent outcomes are too unlikely under the long window's share
    /// ([`CHANGE_ALPHA`]), the agent has changed: the long window restarts from the recent
    /// outcomes after the most likely change point, so what it did before stops counting at
    /// once — an agent that recovers is believed after a few answers, not after its
    /// failures have decayed.
    fn observe(&mut self, now: Instant, grade: f64) {
        self.decay(now);
        self.long.scale(1.0 - 1.0 / EVIDENCE_WINDOW);
        self.long.add(grade);
        // The change test reads outcomes as passed or not (a steady agent at any grade
        // never trips it: its worst case, 16 of a 50 % agent alike, is a tail of 1.5e-5).
        self.recent = (self.recent << 1) | u32::from(grade >= 0.5);
        self.recent_len = (self.recent_len + 1).min(RECENT);
        let n = self.recent_len;
        let ok = (self.recent & mask(n)).count_ones();
        // The share before the recent outcomes (they are in the long counts too, nearly
        // undiscounted): a change is judged against what the agent did before it.
        let before_ok = (self.long.ok - f64::from(ok)).max(0.0);
        let before_failed = (self.long.failed - f64::from(n - ok)).max(0.0);
        let p = (before_ok + 1.0) / (before_ok + before_failed + 2.0);
        if binomial_tail(n, ok, p) < CHANGE_ALPHA {
            let m = change_point(self.recent, n);
            let kept = (self.recent & mask(m)).count_ones();
            self.long = Counts {
                ok: f64::from(kept),
                failed: f64::from(m - kept),
            };
            self.recent_len = m;
        }
    }

    /// Outcomes a peer saw (decayed like local ones; the change test reads local outcomes
    /// only, so a peer's burst never erases what this replica saw).
    fn absorb(&mut self, now: Instant, ok: f64, failed: f64) {
        self.decay(now);
        self.long
            .scale((1.0 - 1.0 / EVIDENCE_WINDOW).powf(ok + failed));
        self.long.ok += ok;
        self.long.failed += failed;
    }

    fn posterior(&self, now: Instant) -> Posterior {
        let mut e = self.clone();
        e.decay(now);
        e.posterior_as_of_now()
    }

    /// The posterior as of the last outcome or decay (no time passed since).
    fn posterior_as_of_now(&self) -> Posterior {
        let prior = Posterior::prior(self.prior);
        Posterior {
            alpha: prior.alpha + self.long.ok,
            beta: prior.beta + self.long.failed,
            prior: prior.prior,
        }
    }
}

/// The low `n` bits.
fn mask(n: u32) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1 << n) - 1
    }
}

/// The chance of a count of successes in `n` calls at least as far from `n × p` as `ok`,
/// on its side (the smaller of the two tails of Binomial(n, p)).
fn binomial_tail(n: u32, ok: u32, p: f64) -> f64 {
    // From the term at `ok` outwards, each term from its neighbour (one ratio a step): the
    // terms are summed in O(n), not O(n²) with two powers each (~3,500 instructions an
    // outcome, the most of any step of a served request's bookkeeping).
    // Away from 0 and 1 (the ratios divide by both); an estimate's share never reaches
    // either (its counts start from a prior of one each way).
    let p = p.clamp(f64::EPSILON, 1.0 - f64::EPSILON);
    let q = 1.0 - p;
    let mut at_ok = p.powi(ok as i32) * q.powi((n - ok) as i32);
    for i in 0..ok {
        at_ok *= f64::from(n - i) / f64::from(i + 1);
    }
    let (mut below, mut term) = (at_ok, at_ok);
    for k in (0..ok).rev() {
        // pmf(k) = pmf(k + 1) · (k + 1) / (n − k) · q / p
        term *= f64::from(k + 1) / f64::from(n - k) * q / p;
        below += term;
    }
    let (mut above, mut term) = (at_ok, at_ok);
    for k in ok + 1..=n {
        // pmf(k) = pmf(k − 1) · (n − k + 1) / k · p / q
        term *= f64::from(n - k + 1) / f64::from(k) * p / q;
        above += term;
    }
    below.min(above)
}

/// How many of the last `n` outcomes (bit i: i calls ago) came after the most likely change:
/// the split of the window into an older and a newer run that fits each its own share best.
fn change_point(recent: u32, n: u32) -> u32 {
    let ll = |ok: u32, len: u32| {
        if len == 0 {
            return 0.0;
        }
        let (k, l) = (f64::from(ok), f64::from(len));
        let term = |x: f64| if x > 0.0 { x * (x / l).ln() } else { 0.0 };
        term(k) + term(l - k)
    };
    (1..n)
        .map(|m| {
            let newer = (recent & mask(m)).count_ones();
            let older = (recent & mask(n)).count_ones() - newer;
            (m, ll(newer, m) + ll(older, n - m))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(n, |(m, _)| m)
}

/// Outcomes of one pair, shared between replicas: what one saw since it last told the
/// others.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEvidence {
    pub agent: String,
    pub concept: String,
    /// The graph weight the sender's estimate started from (the prior if the pair is new
    /// here).
    pub prior: f64,
    pub ok: f64,
    pub failed: f64,
}

impl SharedEvidence {
    /// Finite, non-negative, at most [`MAX_SHARED_OUTCOMES`], a prior in [0, 1], and names
    /// a pair key can hold.
    pub fn is_valid(&self) -> bool {
        let count = |x: f64| x.is_finite() && (0.0..=MAX_SHARED_OUTCOMES).contains(&x);
        count(self.ok)
            && count(self.failed)
            && self.prior.is_finite()
            && (0.0..=1.0).contains(&self.prior)
            && !self.concept.is_empty()
            && self.concept.len() <= 256
            && !self.agent.is_empty()
            && !self.concept.contains('\0')
            && !self.agent.contains('\0')
    }
}

/// Outcomes gathered for the peers, by pair.
#[derive(Debug, Clone, Copy)]
struct Pending {
    prior: f64,
    ok: f64,
    failed: f64,
}

/// Every (agent, concept) estimate this replica has routed.
#[derive(Default)]
pub struct Estimates {
    by_pair: crate::NameMap<String, Mutex<Evidence>>,
    /// With peers: outcomes not yet told to them.
    pending: crate::NameMap<String, Pending>,
    sharing: AtomicBool,
}

impl Estimates {
    /// The posterior of `agent` on `concept` now; `weight` (the edge's graph weight) is its
    /// prior the first time the pair is seen.
    pub fn posterior(&self, agent: &str, concept: &str, weight: f64) -> Posterior {
        self.posterior_since(agent, concept, weight, None, None)
    }

    /// [`Estimates::posterior`], forgetting the evidence from before `since` (when the
    /// agent last recovered, if it did); a pair this replica has not seen yet starts from
    /// `persisted`, the evidence stored on its edge (ignored unless finite, non-negative and
    /// within the window).
    pub fn posterior_since(
        &self,
        agent: &str,
        concept: &str,
        weight: f64,
        since: Option<Instant>,
        persisted: Option<[f64; 2]>,
    ) -> Posterior {
        let now = Instant::now();
        let seen = with_key(agent, concept, |k| {
            let e = self.by_pair.get(k)?;
            let mut e = e.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(since) = since {
                e.restart_from(since);
            }
            Some(e.posterior(now))
        });
        if let Some(posterior) = seen {
            return posterior;
        }
        let k = key(agent, concept);
        self.insert(agent, concept, weight, now);
        let valid = |x: &f64| x.is_finite() && (0.0..=EVIDENCE_WINDOW).contains(x);
        match (
            persisted.filter(|p| p.iter().all(valid)),
            self.by_pair.get(&k),
        ) {
            (Some([ok, failed]), Some(e)) => {
                let mut e = e.lock().unwrap_or_else(|e| e.into_inner());
                e.long = Counts { ok, failed };
                e.posterior(now)
            }
            _ => Posterior::prior(weight),
        }
    }

    /// One task's outcome with `agent` on `concept` (`weight`: the prior if it is new); the
    /// estimate with it.
    pub fn observe(&self, agent: &str, concept: &str, weight: f64, success: bool) -> Posterior {
        self.observe_graded(agent, concept, weight, if success { 1.0 } else { 0.0 })
    }

    /// One answer worth `grade` of a success: an agent's own `confidence` in an answer it
    /// gave (clamped to [0, 1]; a value that is not a finite number is a full success). The
    /// estimate with it, read under the same lock (a trace records it: a second look-up
    /// of the pair cost a traced task ~0.1 µs).
    pub fn observe_graded(&self, agent: &str, concept: &str, weight: f64, grade: f64) -> Posterior {
        let grade = if grade.is_finite() {
            grade.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let now = Instant::now();
        let observed = |k: &str| {
            let e = self.by_pair.get(k)?;
            let mut e = e.lock().unwrap_or_else(|e| e.into_inner());
            e.observe(now, grade);
            Some(e.posterior_as_of_now())
        };
        let posterior = match with_key(agent, concept, observed) {
            Some(p) => p,
            None => {
                self.insert(agent, concept, weight, now);
                with_key(agent, concept, observed).unwrap_or_else(|| Posterior::prior(weight))
            }
        };
        if self.sharing.load(Ordering::Relaxed)
            && (self.pending.len() < MAX_PAIRS
                || with_key(agent, concept, |k| self.pending.contains_key(k)))
        {
            let mut p = self.pending.entry(key(agent, concept)).or_insert(Pending {
                prior: weight,
                ok: 0.0,
                failed: 0.0,
            });
            p.ok += grade;
            p.failed += 1.0 - grade;
        }
        posterior
    }

    /// The pair's decayed evidence now (successes, failures), to persist with the weight.
    pub fn evidence(&self, agent: &str, concept: &str) -> Option<[f64; 2]> {
        let mut e = with_key(agent, concept, |k| {
            let e = self.by_pair.get(k)?;
            let e = e.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Some(e)
        })?;
        e.decay(Instant::now());
        Some([e.long.ok, e.long.failed])
    }

    /// From now on, gathers outcomes for the peers ([`Estimates::drain_shared`]).
    pub fn share(&self) {
        self.sharing.store(true, Ordering::Relaxed);
    }

    /// At most `max` pairs' outcomes gathered since the last call, for the peers.
    pub fn drain_shared(&self, max: usize) -> Vec<SharedEvidence> {
        let keys: Vec<String> = self
            .pending
            .iter()
            .take(max)
            .map(|e| e.key().clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let (k, p) = self.pending.remove(&k)?;
                let (agent, concept) = k.split_once('\0')?;
                Some(SharedEvidence {
                    agent: agent.to_string(),
                    concept: concept.to_string(),
                    prior: p.prior,
                    ok: p.ok,
                    failed: p.failed,
                })
            })
            .collect()
    }

    /// Outcomes a peer saw, counted like this replica's own (the agent is the same agent
    /// whoever called it); invalid ones are ignored.
    pub fn absorb(&self, e: &SharedEvidence) {
        if !e.is_valid() {
            return;
        }
        let now = Instant::now();
        let k = key(&e.agent, &e.concept);
        if !self.by_pair.contains_key(&k) {
            self.insert(&e.agent, &e.concept, e.prior, now);
        }
        if let Some(ev) = self.by_pair.get(&k) {
            ev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .absorb(now, e.ok, e.failed);
        }
    }

    fn insert(&self, agent: &str, concept: &str, weight: f64, now: Instant) {
        if self.by_pair.len() >= MAX_PAIRS {
            // The pair touched longest ago makes room (linear, and only at the cap).
            let oldest = self
                .by_pair
                .iter()
                .min_by_key(|e| e.value().lock().map(|e| e.at).unwrap_or(now))
                .map(|e| e.key().clone());
            if let Some(k) = oldest {
                self.by_pair.remove(&k);
            }
        }
        self.by_pair
            .entry(key(agent, concept))
            .or_insert_with(|| Mutex::new(Evidence::new(weight, now)));
    }

    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }
}

thread_local! {
    /// The key being looked up, built in place: a lookup allocates nothing.
    static LOOKUP: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// `f` with the key of (`agent`, `concept`) as [`key`] spells it, built in a buffer of
/// this thread's (for lookups; an insert owns its key).
fn with_key<R>(agent: &str, concept: &str, f: impl FnOnce(&str) -> R) -> R {
    LOOKUP.with(|k| {
        let mut k = k.borrow_mut();
        k.clear();
        k.push_str(agent);
        k.push('\0');
        k.push_str(concept);
        f(&k)
    })
}

/// `agent` NUL `concept` (neither holds a NUL: names and concepts are validated).
fn key(agent: &str, concept: &str) -> String {
    let mut k = String::with_capacity(agent.len() + concept.len() + 1);
    k.push_str(agent);
    k.push('\0');
    k.push_str(concept);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_prior_keeps_a_primary_ahead_of_its_backup_while_both_succeed() {
        let e = Estimates::default();
        for _ in 0..10_000 {
            e.observe("primary", "c", 0.9, true);
            e.observe("backup", "c", 0.5, true);
        }
        let (p, b) = (
            e.posterior("primary", "c", 0.9),
            e.posterior("backup", "c", 0.5),
        );
        assert!(p.mean() > b.mean(), "{p:?} {b:?}");
        // Thompson draws alone: the primary wins most of them…
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let wins = (0..10_000)
            .filter(|_| p.sample(&mut rng) > b.sample(&mut rng))
            .count();
        assert!(wins > 8_000, "{wins}");
        // …and with the seed's standing preference, all but a few.
        let wins = (0..10_000)
            .filter(|_| p.sample(&mut rng) * p.preference() > b.sample(&mut rng) * b.preference())
            .count();
        assert!(wins > 9_900, "{wins}");
    }

    #[tokio::test(start_paused = true)]
    async fn evidence_decays_back_to_the_prior() {
        let e = Estimates::default();
        for _ in 0..100 {
            e.observe("a", "c", 0.5, false);
        }
        assert!(e.posterior("a", "c", 0.5).mean() < 0.1);
        tokio::time::advance(ESTIMATE_TAU * 10).await;
        let p = e.posterior("a", "c", 0.5);
        assert!((p.mean() - 0.5).abs() < 0.01, "{p:?}");
        assert!(p.evidence() < 0.01);
    }

    #[test]
    fn an_agent_that_recovers_is_believed_after_a_few_answers() {
        let e = Estimates::default();
        for _ in 0..300 {
            e.observe("a", "c", 0.5, false);
        }
        assert!(e.posterior("a", "c", 0.5).mean() < 0.02);
        for _ in 0..5 {
            e.observe("a", "c", 0.5, true);
        }
        let p = e.posterior("a", "c", 0.5);
        assert!(p.mean() > 0.6, "{p:?}");
        // And one that starts failing is dropped after a handful of failures.
        for _ in 0..500 {
            e.observe("b", "c", 0.5, true);
        }
        for _ in 0..6 {
            e.observe("b", "c", 0.5, false);
        }
        let p = e.posterior("b", "c", 0.5);
        assert!(p.mean() < 0.5, "{p:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovery_restarts_the_evidence_once() {
        let e = Estimates::default();
        for _ in 0..100 {
            e.observe("a", "c", 0.9, false);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let recovered = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let p = e.posterior_since("a", "c", 0.9, Some(recovered), None);
        assert_eq!(p, Posterior::prior(0.9));
        // What comes after the recovery counts, and the same recovery does not erase it.
        e.observe("a", "c", 0.9, true);
        let p = e.posterior_since("a", "c", 0.9, Some(recovered), None);
        assert_eq!(p.evidence(), 1.0);
    }

    #[test]
    fn a_steady_agent_keeps_its_evidence() {
        // 95 %: one failure in twenty, for 5,000 calls; the change test never trips.
        let e = Estimates::default();
        for i in 0..5_000 {
            e.observe("a", "c", 0.5, i % 20 != 7);
        }
        let p = e.posterior("a", "c", 0.5);
        assert!(p.evidence() > 0.9 * EVIDENCE_WINDOW, "{p:?}");
        assert!((p.mean() - 0.95).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn an_agents_confidence_grades_its_answers() {
        let e = Estimates::default();
        for _ in 0..2_000 {
            e.observe_graded("unsure", "c", 0.5, 0.3);
            e.observe_graded("sure", "c", 0.5, 0.95);
            e.observe_graded("odd", "c", 0.5, f64::NAN);
            e.observe_graded("over", "c", 0.5, 7.0);
        }
        let mean = |a: &str| e.posterior(a, "c", 0.5).mean();
        assert!((mean("unsure") - 0.3).abs() < 0.01, "{}", mean("unsure"));
        assert!((mean("sure") - 0.95).abs() < 0.01, "{}", mean("sure"));
        // Not a number in [0, 1]: an answer like any other, never beyond certainty.
        assert!(mean("odd") > 0.99 && mean("over") > 0.99 && mean("over") < 1.0);
        // A steady grade never reads as a change: the evidence is the whole window.
        assert!(e.posterior("unsure", "c", 0.5).evidence() > 0.9 * EVIDENCE_WINDOW);
    }

    #[test]
    fn what_one_replica_saw_counts_at_another() {
        let (a, b) = (Estimates::default(), Estimates::default());
        a.share();
        for i in 0..100 {
            a.observe("agent", "c", 0.5, i % 10 == 0);
        }
        let shared = a.drain_shared(256);
        assert_eq!(shared.len(), 1);
        assert_eq!((shared[0].ok, shared[0].failed), (10.0, 90.0));
        assert!(a.drain_shared(256).is_empty(), "drained once");
        for e in &shared {
            b.absorb(e);
        }
        let p = b.posterior("agent", "c", 0.5);
        assert!((p.mean() - 0.1).abs() < 0.02, "{p:?}");
        // Hostile reports change nothing.
        let mut bad = shared[0].clone();
        for (ok, failed, prior) in [
            (f64::NAN, 1.0, 0.5),
            (-1.0, 1.0, 0.5),
            (1e9, 0.0, 0.5),
            (1.0, 1.0, 2.0),
        ] {
            (bad.ok, bad.failed, bad.prior) = (ok, failed, prior);
            b.absorb(&bad);
        }
        assert!((b.posterior("agent", "c", 0.5).mean() - p.mean()).abs() < 1e-6);
        // Without sharing nothing is gathered.
        b.observe("agent", "c", 0.5, true);
        assert!(b.drain_shared(256).is_empty());
    }

    #[test]
    fn persisted_evidence_starts_a_pair_not_seen_yet() {
        let (a, b) = (Estimates::default(), Estimates::default());
        for i in 0..50 {
            a.observe("x", "c", 0.9, i % 5 == 0);
        }
        let saved = a.evidence("x", "c").unwrap();
        let pb = b.posterior_since("x", "c", 0.9, None, Some(saved));
        let pa = a.posterior("x", "c", 0.9);
        assert!((pa.mean() - pb.mean()).abs() < 1e-3, "{pa:?} {pb:?}");
        // A pair already seen keeps its own; hostile evidence is ignored.
        let again = b.posterior_since("x", "c", 0.9, None, Some([1e9, 0.0]));
        assert!((again.mean() - pb.mean()).abs() < 1e-3);
        let hostile = b.posterior_since("y", "c", 0.9, None, Some([f64::NAN, 1.0]));
        assert_eq!(hostile, Posterior::prior(0.9));
    }

    #[test]
    fn binomial_tails() {
        assert!((binomial_tail(16, 8, 0.5) - 0.598).abs() < 0.001);
        assert!(binomial_tail(16, 0, 0.95) < 1e-20);
        assert!(binomial_tail(16, 16, 0.01) < 1e-30);
        // The same as the sum of each term's own formula, at every count and share.
        let by_terms = |n: u32, ok: u32, p: f64| {
            let pmf = |k: u32| {
                let c: f64 = (0..k)
                    .map(|i| f64::from(n - i) / f64::from(i + 1))
                    .product();
                c * p.powi(k as i32) * (1.0 - p).powi((n - k) as i32)
            };
            let below: f64 = (0..=ok).map(pmf).sum();
            let above: f64 = (ok..=n).map(pmf).sum();
            below.min(above)
        };
        for n in 1..=RECENT {
            for ok in 0..=n {
                for p in [0.001, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999_999] {
                    let (fast, slow) = (binomial_tail(n, ok, p), by_terms(n, ok, p));
                    assert!(
                        (fast - slow).abs() <= 1e-12 * slow.max(1e-300),
                        "n {n} ok {ok} p {p}: {fast} vs {slow}"
                    );
                }
            }
        }
        // The change point of "old failures, new successes" is where they meet.
        assert_eq!(change_point(0b111, 16), 3);
        assert_eq!(change_point(!0b11 & mask(16), 16), 2);
    }

    #[test]
    fn a_weight_of_one_is_not_a_certainty() {
        let p = Posterior::prior(1.0);
        assert!(p.beta > 0.0 && p.mean() < 1.0);
        let p = Posterior::prior(f64::NAN);
        assert_eq!(p.mean(), 0.5);
    }

    #[test]
    fn pairs_are_bounded() {
        let e = Estimates::default();
        for i in 0..MAX_PAIRS + 10 {
            e.observe(&format!("a{i}"), "c", 0.5, true);
        }
        assert_eq!(e.len(), MAX_PAIRS);
    }
}
