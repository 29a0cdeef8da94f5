//! The decision: in which order a task's candidates are tried, and why the first is first.

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use rand::{Rng, SeedableRng};

use super::{
    Admission, Estimates, Gates, Inputs, Live, LiveSignals, Plan, PolicyKind, Reason,
    RoutingSettings, Served, REGION_HEALTH_SLACK,
};

/// Two uniform draws in [0, 1): whether to explore, and where the pick lands.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    pub explore: f64,
    pub pick: f64,
}

impl Draws {
    /// Draws derived from `key`: the same key always draws the same.
    pub fn from_key(key: &str) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        Draws::from_bits(h.finish())
    }

    /// A cacheable task's draws: the same task always draws the same, so its repeats go
    /// to the agent whose answer the cache holds. They are [`Draws::from_key`] of
    /// `"{concept}\0{intent}\0{args}"`, its pieces hashed as they are written (no key
    /// text built).
    pub fn of_task(concept: &str, intent: &str, args: &serde_json::Value) -> Self {
        struct Hashing<'a>(&'a mut std::collections::hash_map::DefaultHasher);
        impl std::io::Write for Hashing<'_> {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.write(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for piece in [concept, "\0", intent, "\0"] {
            h.write(piece.as_bytes());
        }
        // Writing into a hasher cannot fail.
        let _ = serde_json::to_writer(Hashing(&mut h), args);
        // How a `str` ends its bytes in a hash (as `key.hash` does).
        h.write_u8(0xff);
        Draws::from_bits(h.finish())
    }

    fn from_bits(bits: u64) -> Self {
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
pub fn local_equals(candidates: &[Inputs], admitted: &[usize]) -> Option<Vec<usize>> {
    if !admitted.iter().any(|&i| candidates[i].local == Some(true)) {
        return None;
    }
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
/// equals (see [`local_equals`]) before the rest, then by score.
pub fn rank(candidates: &[Inputs]) -> Vec<usize> {
    rank_by(candidates, Inputs::score)
}

/// Admitted before refused, this replica's region's equals before the rest, then by
/// `value`, highest first.
fn rank_by(candidates: &[Inputs], value: impl Fn(&Inputs) -> f64) -> Vec<usize> {
    let admitted: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].admission != Admission::Refused)
        .collect();
    let tier = local_equals(candidates, &admitted).unwrap_or_default();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let refused = |i: usize| candidates[i].admission == Admission::Refused;
        refused(a)
            .cmp(&refused(b))
            .then(tier.contains(&b).cmp(&tier.contains(&a)))
            .then(value(&candidates[b]).total_cmp(&value(&candidates[a])))
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
    let tier = local_equals(candidates, &all_admitted);
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

/// Best first under the `learned` policy, as `/discover` lists them: admitted before
/// refused, this replica's region's equals before the rest, then by expected value
/// ([`Inputs::expected`]).
pub fn rank_learned(candidates: &[Inputs]) -> Vec<usize> {
    rank_by(candidates, Inputs::expected)
}

/// Spread (log-normal σ) of the latency drawn for each candidate by the `learned` policy: a
/// measured average is uncertain by about this much when it rests on a few calls, so near-
/// equal latencies share the traffic while a clearly faster agent still wins.
pub const LATENCY_DRAW_SD: f64 = 0.1;
/// How much the spread grows per [`super::LATENCY_TAU`] the latency has gone without a
/// sample, up to [`LATENCY_DRAW_SD_MAX`]: an agent avoided after one slow call (its average
/// is that call, and nothing refreshes it) is drawn again before long, and its next call
/// measures it afresh.
pub const LATENCY_DRAW_SD_GROWTH: f64 = 0.3;
/// The widest latency spread: a stale 80 ms against a fresh 5 ms is still drawn under once
/// in 20,000.
pub const LATENCY_DRAW_SD_MAX: f64 = 0.7;

fn latency_draw_sd(age_s: f64) -> f64 {
    let taus = age_s.max(0.0) / super::LATENCY_TAU.as_secs_f64();
    (LATENCY_DRAW_SD + LATENCY_DRAW_SD_GROWTH * taus).min(LATENCY_DRAW_SD_MAX)
}

/// The `learned` policy on plain data: a probe first if a breaker offers one; else, among
/// the admitted candidates (this replica's region's equals when there are some), the
/// highest of one Thompson draw from each posterior, discounted for latency under load — so
/// a candidate is tried in proportion to the chance that it is the best, and an unsure one
/// in proportion to its uncertainty. A candidate in slow start takes part in a draw with
/// probability `ramp`. The rest follow by expected value.
pub fn plan_learned(candidates: &[Inputs], rng: &mut (impl Rng + ?Sized)) -> Plan {
    let order = rank_learned(candidates);
    let all_admitted: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| candidates[i].admission != Admission::Refused)
        .collect();
    let Some(&best) = all_admitted.first() else {
        return Plan {
            order: (0..candidates.len()).collect(),
            reason: Reason::BestScore,
        };
    };
    let tier = local_equals(candidates, &all_admitted);
    let pool: &[usize] = tier.as_deref().unwrap_or(&all_admitted);
    let (first, reason) = if let Some(&probe) = all_admitted
        .iter()
        .find(|&&i| candidates[i].admission == Admission::Probe)
    {
        (probe, Reason::Probe)
    } else {
        let mut drawn: Option<(usize, f64)> = None;
        for &i in pool {
            let c = &candidates[i];
            // The latency average of an agent called rarely is its last few calls: drawn
            // with its spread too, so a stale unlucky sample does not shut it out.
            let noise = (rng.sample::<f64, _>(rand_distr::StandardNormal)
                * latency_draw_sd(c.latency_age_s))
            .exp();
            let sample =
                c.posterior.sample(rng) * c.posterior.preference() * c.latency_factor_with(noise);
            let ramping = c.ramp < 1.0 && pool.len() > 1;
            if ramping && rng.gen::<f64>() >= c.ramp.clamp(0.0, 1.0) {
                continue;
            }
            if drawn.is_none_or(|(_, s)| sample > s) {
                drawn = Some((i, sample));
            }
        }
        let chosen = drawn.map_or(pool[0], |(i, _)| i);
        let in_region = candidates.iter().any(|c| c.local == Some(true));
        let reason = if tier.is_some() {
            Reason::LocalRegion
        } else if in_region && candidates[chosen].local == Some(false) {
            Reason::RegionFailover
        } else if candidates[chosen].ramp < 1.0 && pool.len() > 1 {
            Reason::SlowStart
        } else if chosen == best {
            Reason::BestScore
        } else {
            Reason::Explore
        };
        (chosen, reason)
    };
    let mut plan = Vec::with_capacity(candidates.len());
    plan.push(first);
    plan.extend(order.into_iter().filter(|&i| i != first));
    Plan {
        order: plan,
        reason,
    }
}

/// The policy with its settings, its source of randomness and the live signals it reads.
pub struct Router {
    pub settings: RoutingSettings,
    /// `Some` when `ROUTING_SEED` is set: one sequence, shared (reproducible); otherwise
    /// each thread draws from its own generator (no lock, no line shared between cores).
    rng: Option<Mutex<rand::rngs::StdRng>>,
    signals: Arc<LiveSignals>,
    estimates: Estimates,
    served: Served,
}

impl Router {
    pub fn new(settings: RoutingSettings) -> Self {
        let rng = settings
            .seed
            .map(|seed| Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        Router {
            signals: Arc::new(LiveSignals::new(settings.slow_start)),
            settings,
            rng,
            estimates: Estimates::default(),
            served: Served::default(),
        }
    }

    /// The tasks answered lately, for clients' feedback.
    pub fn served(&self) -> &Served {
        &self.served
    }

    pub fn policy(&self) -> PolicyKind {
        self.settings.policy
    }

    /// The live signals, which the resilience stack feeds with every attempt's outcome.
    pub fn signals(&self) -> &Arc<LiveSignals> {
        &self.signals
    }

    /// The learned estimates, which the pipeline feeds with every task's outcome.
    pub fn estimates(&self) -> &Estimates {
        &self.estimates
    }

    /// What the policy knows of one candidate for a task on `concept` now: the edge's
    /// `weight` and the estimate's evidence `persisted` on it (what the fleet learned before
    /// this replica saw the pair), whether it is in this replica's region, the stack's
    /// `gates`, the live signals and the learned estimate.
    pub fn assess(
        &self,
        agent: &str,
        concept: &str,
        (weight, persisted): (f64, Option<[f64; 2]>),
        local: Option<bool>,
        gates: Gates,
    ) -> (Inputs, Live) {
        let live = self.signals.live(agent, gates);
        let posterior = self
            .estimates
            .posterior_since(agent, concept, weight, live.since, persisted);
        let inputs = Inputs {
            weight,
            health: live.health,
            latency_ms: live.latency_ms,
            in_flight: live.in_flight,
            admission: live.admission,
            ramp: live.ramp,
            local,
            posterior,
            latency_age_s: live.latency_age_s,
        };
        (inputs, live)
    }

    /// The order candidates are shown in (`/discover` and GraphQL `candidates` alike): by
    /// score under the score policy ([`rank`]), in the graph's order under the weight
    /// policy. A task's own order ([`Router::choose`]) adds only what belongs to one request
    /// (stickiness, exploration).
    pub fn listing(&self, candidates: &[Inputs]) -> Vec<usize> {
        match self.settings.policy {
            PolicyKind::Score => rank(candidates),
            PolicyKind::Learned => rank_learned(candidates),
            PolicyKind::Weight => (0..candidates.len()).collect(),
        }
    }

    /// Fresh random draws (seeded by `ROUTING_SEED` when set).
    pub fn draws(&self) -> Draws {
        self.with_rng(|rng| Draws {
            explore: rng.gen(),
            pick: rng.gen(),
        })
    }

    /// Runs `f` with the seeded sequence (the same one as ever for a seed), or this thread's
    /// own generator.
    fn with_rng<T>(&self, f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
        match &self.rng {
            Some(shared) => f(&mut *shared.lock().unwrap_or_else(|e| e.into_inner())),
            None => crate::with_thread_rng(|rng| f(rng)),
        }
    }

    /// The order to try `candidates` in. `sticky` (a cacheable task's draws,
    /// [`Draws::of_task`]) makes the order depend on the task only.
    pub fn plan(&self, candidates: &[Inputs], sticky: Option<Draws>) -> Plan {
        match self.settings.policy {
            PolicyKind::Weight => Plan::graph_order(candidates.len()),
            PolicyKind::Score => {
                let draws = sticky.unwrap_or_else(|| self.draws());
                plan(candidates, self.settings.explore, draws)
            }
            PolicyKind::Learned => match sticky {
                Some(draws) => {
                    let seed = (draws.pick * 4_294_967_296.0) as u64;
                    plan_learned(candidates, &mut rand::rngs::SmallRng::seed_from_u64(seed))
                }
                None => self.with_rng(|rng| plan_learned(candidates, rng)),
            },
        }
    }

    /// One task's plan among the candidates named `agents`, whose inputs `assess` gives
    /// (asked only when the policy reads them), recorded in the agents' share windows.
    pub fn choose(
        &self,
        agents: &[&str],
        assess: impl FnOnce() -> Vec<Inputs>,
        sticky: Option<Draws>,
    ) -> Plan {
        if self.settings.policy == PolicyKind::Weight {
            return Plan::graph_order(agents.len());
        }
        let plan = self.plan(&assess(), sticky);
        if agents.len() > 1 {
            self.signals
                .offered(agents.iter().copied(), agents[plan.order[0]]);
        }
        plan
    }
}
