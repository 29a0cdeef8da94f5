//! The routing benchmark: the gateway's routing policies (the real `Router`) and the
//! anchors' (round robin, least request, P2C over peak-EWMA latency, the original weight
//! ranking) driven through simulated agent pools in simulated time, deterministic under a
//! seed. See docs/ROUTING.md for what is measured and why.
//!
//! `cargo bench --bench routing` runs every scenario in full and rewrites the table in
//! docs/ROUTING.md; run as a test (`cargo test --benches`, part of the test command) it runs
//! a short version of each scenario and checks the simulator's own invariants.

use std::{cmp::Reverse, collections::BinaryHeap, fmt::Write as _, time::Duration};

use myriad::{
    resilience::breaker::BreakerState,
    routing::{
        Admission, Attempt, Gates, PeerView, PolicyKind, Router, RoutingSettings, LATENCY_REF_MS,
    },
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

/// Regret per 1,000 tasks within which two policies tie: under one pick in 2,000 to an agent
/// worth 1 less (the first few picks, before any latency is measured, are a coin toss).
const TIE: f64 = 0.5;
/// How long a task may take in all (its failovers included).
const DEADLINE_S: f64 = 2.0;

/// One simulated agent.
#[derive(Clone)]
struct AgentModel {
    name: &'static str,
    /// The edge's graph weight at the start.
    seed: f64,
    /// Its true success share at time t (s).
    quality: fn(f64) -> f64,
    /// Median latency, ms.
    median_ms: f64,
    /// Spread of the log-normal latency (0.3: p99 ≈ 2× the median).
    sigma: f64,
    /// Calls it serves at full speed; beyond, each call slows by in_flight ÷ capacity.
    capacity: f64,
}

/// Offered load: tasks per second at time t.
type Rate = fn(f64) -> f64;

struct Scenario {
    name: &'static str,
    what: &'static str,
    agents: Vec<AgentModel>,
    rate: Rate,
    /// Peak of `rate` (for the arrival process).
    peak: f64,
    seconds: f64,
    /// Moments the best agent changes, for the time-to-shift figure.
    changes: Vec<f64>,
    /// (agent, least, most): the learned policy's share of first picks for that agent must
    /// lie in [least, most].
    keeps: Option<(usize, f64, f64)>,
}

fn agent(name: &'static str, seed: f64, quality: fn(f64) -> f64, median_ms: f64) -> AgentModel {
    AgentModel {
        name,
        seed,
        quality,
        median_ms,
        sigma: 0.3,
        capacity: 1e9,
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "two-quality",
            what: "two fast agents succeeding 80 % (A) and 95 % (B) of calls, seeded alike (0.5), 50 req/s",
            agents: vec![agent("A", 0.5, |_| 0.80, 10.0), agent("B", 0.5, |_| 0.95, 10.0)],
            rate: |_| 50.0,
            peak: 50.0,
            seconds: 120.0,
            changes: vec![],
            keeps: Some((1, 0.85, 1.0)),
        },
        Scenario {
            name: "five-agents",
            what: "five agents: success 99/97/90/80/60 %, median latency 40/10/5/20/2 ms, seeded alike, 100 req/s",
            agents: vec![
                agent("A", 0.5, |_| 0.99, 40.0),
                agent("B", 0.5, |_| 0.97, 10.0),
                agent("C", 0.5, |_| 0.90, 5.0),
                agent("D", 0.5, |_| 0.80, 20.0),
                agent("E", 0.5, |_| 0.60, 2.0),
            ],
            rate: |_| 100.0,
            peak: 100.0,
            seconds: 120.0,
            changes: vec![],
            keeps: None,
        },
        Scenario {
            name: "slow-degrade",
            what: "A (98 %) degrades linearly to 60 % between 60 s and 300 s, B holds 90 %, 50 req/s; the change counted from when A is 5 points below B (142 s)",
            agents: vec![
                agent("A", 0.5, |t| 0.98 - 0.38 * ((t - 60.0) / 240.0).clamp(0.0, 1.0), 10.0),
                agent("B", 0.5, |_| 0.90, 10.0),
            ],
            rate: |_| 50.0,
            peak: 50.0,
            seconds: 360.0,
            changes: vec![60.0 + 0.13 / 0.38 * 240.0],
            keeps: None,
        },
        Scenario {
            name: "fail-recover",
            what: "A (98 %) fails every call from 60 s to 120 s, then recovers; B holds 90 %, 50 req/s",
            agents: vec![
                agent("A", 0.5, |t| if (60.0..120.0).contains(&t) { 0.0 } else { 0.98 }, 10.0),
                agent("B", 0.5, |_| 0.90, 10.0),
            ],
            rate: |_| 50.0,
            peak: 50.0,
            seconds: 180.0,
            changes: vec![60.0, 120.0],
            keeps: None,
        },
        Scenario {
            name: "best-is-slowest",
            what: "A succeeds 99 % in 80 ms, B 90 % in 5 ms, 50 req/s",
            agents: vec![agent("A", 0.5, |_| 0.99, 80.0), agent("B", 0.5, |_| 0.90, 5.0)],
            rate: |_| 50.0,
            peak: 50.0,
            seconds: 120.0,
            changes: vec![],
            keeps: None,
        },
        Scenario {
            name: "bursts",
            what: "three equal agents (95 %, 10 ms, 8 calls at full speed each), 50 req/s with a 1 s burst of 1,000 req/s every 10 s",
            agents: ["A", "B", "C"]
                .into_iter()
                .map(|n| AgentModel {
                    capacity: 8.0,
                    ..agent(n, 0.5, |_| 0.95, 10.0)
                })
                .collect(),
            rate: |t| if t % 10.0 < 1.0 { 1000.0 } else { 50.0 },
            peak: 1000.0,
            seconds: 60.0,
            changes: vec![],
            keeps: None,
        },
        Scenario {
            name: "slow-rate",
            what: "two-quality at 1 req/s",
            agents: vec![agent("A", 0.5, |_| 0.80, 10.0), agent("B", 0.5, |_| 0.95, 10.0)],
            rate: |_| 1.0,
            peak: 1.0,
            seconds: 1800.0,
            changes: vec![],
            keeps: Some((1, 0.85, 1.0)),
        },
        Scenario {
            name: "fast-rate",
            what: "two-quality at 1,000 req/s",
            agents: vec![agent("A", 0.5, |_| 0.80, 10.0), agent("B", 0.5, |_| 0.95, 10.0)],
            rate: |_| 1000.0,
            peak: 1000.0,
            seconds: 30.0,
            changes: vec![],
            keeps: Some((1, 0.85, 1.0)),
        },
        Scenario {
            name: "primary-backup",
            what: "a primary seeded 0.9 and its backup seeded 0.5, both always succeeding, learning on, 200 req/s for a minute",
            agents: vec![agent("A", 0.9, |_| 1.0, 10.0), agent("B", 0.5, |_| 1.0, 10.0)],
            rate: |_| 200.0,
            peak: 200.0,
            seconds: 60.0,
            changes: vec![],
            keeps: Some((0, 0.70, 1.0)),
        },
        Scenario {
            name: "twins",
            what: "two equal agents seeded alike (0.7), both always succeeding, 50 req/s: they share",
            agents: vec![agent("A", 0.7, |_| 1.0, 10.0), agent("B", 0.7, |_| 1.0, 10.0)],
            rate: |_| 50.0,
            peak: 50.0,
            seconds: 120.0,
            changes: vec![],
            keeps: Some((0, 0.35, 0.65)),
        },
    ]
}

/// What a task sent first to `agent` at `t` is worth, as the oracle sees it: the agent's
/// true success share, discounted for its median latency the way the gateway's policies
/// discount measured latency (halved at `LATENCY_REF_MS`).
fn value(agent: &AgentModel, t: f64) -> f64 {
    (agent.quality)(t) / (1.0 + agent.median_ms / LATENCY_REF_MS)
}

/// What every policy sees of the pool when it decides.
struct View<'a> {
    in_flight: &'a [u32],
    /// The Hebbian weights (the graph's), as the original rule moves them.
    weights: &'a [f64],
    success_rate: &'a [f64],
}

trait Policy {
    fn order(&mut self, view: &View, rng: &mut StdRng) -> Vec<usize>;
    /// One attempt's outcome (`fault`: the call failed) and latency.
    fn observe(&mut self, _agent: usize, _success: bool, _latency_ms: f64, _now: f64) {}
}

struct RoundRobin(usize);

impl Policy for RoundRobin {
    fn order(&mut self, view: &View, _: &mut StdRng) -> Vec<usize> {
        let n = view.in_flight.len();
        self.0 += 1;
        (0..n).map(|k| (self.0 + k) % n).collect()
    }
}

/// The original service's routing: by Hebbian weight, then success rate (then name).
struct WeightRanking;

impl Policy for WeightRanking {
    fn order(&mut self, view: &View, _: &mut StdRng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..view.weights.len()).collect();
        order.sort_by(|&a, &b| {
            view.weights[b]
                .total_cmp(&view.weights[a])
                .then(view.success_rate[b].total_cmp(&view.success_rate[a]))
                .then(a.cmp(&b))
        });
        order
    }
}

/// Fewest calls in flight first (ties at random): Envoy's and NGINX's least request.
struct LeastRequest;

impl Policy for LeastRequest {
    fn order(&mut self, view: &View, rng: &mut StdRng) -> Vec<usize> {
        let mut order: Vec<(u32, u64, usize)> = view
            .in_flight
            .iter()
            .enumerate()
            .map(|(i, &f)| (f, rng.gen(), i))
            .collect();
        order.sort();
        order.into_iter().map(|(_, _, i)| i).collect()
    }
}

/// Power of two choices over peak-EWMA latency × (in flight + 1), decay 10 s (Linkerd,
/// Finagle). The rest follow by the same cost.
struct P2cPeakEwma {
    cost_ms: Vec<f64>,
    at: Vec<f64>,
}

impl Policy for P2cPeakEwma {
    fn order(&mut self, view: &View, rng: &mut StdRng) -> Vec<usize> {
        let n = view.in_flight.len();
        let load = |i: usize| self.cost_ms[i] * (f64::from(view.in_flight[i]) + 1.0);
        let mut rest: Vec<usize> = (0..n).collect();
        rest.sort_by(|&a, &b| load(a).total_cmp(&load(b)));
        if n < 2 {
            return rest;
        }
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let first = if load(b) < load(a) { b } else { a };
        let mut order = vec![first];
        order.extend(rest.into_iter().filter(|&i| i != first));
        order
    }

    fn observe(&mut self, agent: usize, _: bool, latency_ms: f64, now: f64) {
        let (cost, at) = (&mut self.cost_ms[agent], &mut self.at[agent]);
        if latency_ms > *cost {
            *cost = latency_ms;
        } else {
            let w = (-(now - *at) / 10.0).exp();
            *cost = *cost * w + latency_ms * (1.0 - w);
        }
        *at = now;
    }
}

/// One of the gateway's own policies: the real `Router`, fed as the pipeline feeds it.
struct Gateway {
    router: Router,
    names: Vec<&'static str>,
}

impl Gateway {
    fn new(policy: PolicyKind, names: Vec<&'static str>, seed: u64) -> Self {
        Gateway {
            router: Router::new(RoutingSettings {
                policy,
                seed: Some(seed),
                slow_start: Duration::ZERO,
                ..Default::default()
            }),
            names,
        }
    }
}

const CONCEPT: &str = "bench";

impl Policy for Gateway {
    fn order(&mut self, view: &View, _: &mut StdRng) -> Vec<usize> {
        let inputs: Vec<_> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let gates = Gates {
                    admission: Admission::Pass,
                    breaker: BreakerState::Closed,
                    in_flight: view.in_flight[i],
                    closes: 0,
                    peers: PeerView::default(),
                };
                self.router
                    .assess(name, CONCEPT, (view.weights[i], None), None, gates)
                    .0
            })
            .collect();
        self.router.choose(&self.names, || inputs, None).order
    }

    fn observe(&mut self, agent: usize, success: bool, latency_ms: f64, _: f64) {
        let name = self.names[agent];
        let attempt = if success {
            Attempt::Answered
        } else {
            Attempt::Fault
        };
        let latency = Duration::from_secs_f64(latency_ms / 1000.0);
        self.router.signals().observe(name, attempt, latency);
        if self.router.policy() == PolicyKind::Learned {
            // The prior is the weight at first sight, already recorded by `assess`.
            self.router.estimates().observe(name, CONCEPT, 0.5, success);
        }
    }
}

const POLICIES: [&str; 6] = [
    "round-robin",
    "weight (original)",
    "least-request",
    "p2c-peak-ewma",
    "score (today)",
    "learned",
];

fn policy(name: &str, agents: &[AgentModel], seed: u64) -> Box<dyn Policy> {
    let names = agents.iter().map(|a| a.name).collect();
    match name {
        "round-robin" => Box::new(RoundRobin(0)),
        "weight (original)" => Box::new(WeightRanking),
        "least-request" => Box::new(LeastRequest),
        "p2c-peak-ewma" => Box::new(P2cPeakEwma {
            cost_ms: vec![0.0; agents.len()],
            at: vec![0.0; agents.len()],
        }),
        "score (today)" => Box::new(Gateway::new(PolicyKind::Score, names, seed)),
        "learned" => Box::new(Gateway::new(PolicyKind::Learned, names, seed)),
        other => unreachable!("{other}"),
    }
}

/// What one policy did in one scenario.
#[derive(Debug, Default)]
struct Report {
    tasks: u64,
    succeeded: u64,
    latencies_ms: Vec<f64>,
    /// Σ over tasks of (best true success share − the first pick's), at the moment of the pick.
    regret: f64,
    /// First picks that were not the oracle's best agent.
    off_best: u64,
    /// First picks per agent.
    first: Vec<u64>,
    /// Seconds from each change until the new best agent took most first picks (worst of
    /// them), `None` without changes, `inf` if it never did.
    shift_s: Option<f64>,
    attempts: u64,
}

impl Report {
    fn success(&self) -> f64 {
        self.succeeded as f64 / self.tasks.max(1) as f64
    }
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }
    /// Regret per 1,000 tasks.
    fn regret_k(&self) -> f64 {
        self.regret * 1000.0 / self.tasks.max(1) as f64
    }
    fn share(&self, agent: usize) -> f64 {
        self.first[agent] as f64 / self.tasks.max(1) as f64
    }
}

struct At(f64);
impl PartialEq for At {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for At {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

struct Task {
    arrived: f64,
    order: Vec<usize>,
    next: usize,
}

/// Runs `policy_name` through `sc` for `seconds`, in simulated time (the tokio clock is
/// paused and moved from event to event, so the `Router`'s own clock reads the same time).
async fn run(sc: &Scenario, policy_name: &str, seconds: f64, seed: u64) -> Report {
    let n = sc.agents.len();
    // The policy's own draws; arrivals have a stream of their own (the same for every policy).
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut arrival_rng = StdRng::seed_from_u64(seed);
    let arrivals = rand_distr::Exp::new(sc.peak).expect("a positive rate");
    let mut policy = policy(policy_name, &sc.agents, seed);
    let mut weights: Vec<f64> = sc.agents.iter().map(|a| a.seed).collect();
    let mut counts = vec![(0u64, 0u64); n];
    let mut in_flight = vec![0u32; n];
    let mut report = Report {
        first: vec![0; n],
        ..Default::default()
    };
    let buckets = seconds.ceil() as usize + 1;
    let mut picks = vec![vec![0u64; n]; buckets];
    let mut tasks: Vec<Task> = Vec::new();
    // (time, seq, task, agent, success, started)
    #[allow(clippy::type_complexity)]
    let mut done: BinaryHeap<Reverse<(At, u64, usize, usize, bool, At)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut now = 0.0f64;
    let mut next_arrival = 0.0f64;
    let latency: Vec<LogNormal<f64>> = sc
        .agents
        .iter()
        .map(|a| LogNormal::new(a.median_ms.ln(), a.sigma).expect("valid"))
        .collect();
    let value = |i: usize, t: f64| value(&sc.agents[i], t);
    let best_at = |t: f64| -> (usize, f64) {
        (0..n)
            .map(|i| (i, value(i, t)))
            .fold((0, f64::MIN), |b, (i, q)| if q > b.1 { (i, q) } else { b })
    };
    loop {
        let completion = done.peek().map(|Reverse((At(t), ..))| *t);
        let arrival = (next_arrival < seconds).then_some(next_arrival);
        let t = match (arrival, completion) {
            (None, None) => break,
            (Some(a), Some(c)) => a.min(c),
            (Some(a), None) => a,
            (None, Some(c)) => c,
        };
        if t > now {
            tokio::time::advance(Duration::from_secs_f64(t - now)).await;
            now = t;
        }
        // Common random numbers: what agent `agent` does with task `task` (its latency and
        // whether it succeeds) is drawn from the pair alone, so every policy meets the same
        // luck and the figures differ only by the choices made.
        let start = |task: usize,
                     agent: usize,
                     in_flight: &mut Vec<u32>,
                     done: &mut BinaryHeap<_>,
                     seq: &mut u64| {
            let a = &sc.agents[agent];
            let mut luck = StdRng::seed_from_u64(
                seed ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((agent as u64) << 56),
            );
            in_flight[agent] += 1;
            let slow = (f64::from(in_flight[agent]) / a.capacity).max(1.0);
            let ms = latency[agent].sample(&mut luck) * slow;
            let ok = luck.gen::<f64>() < (a.quality)(now);
            *seq += 1;
            done.push(Reverse((
                At(now + ms / 1000.0),
                *seq,
                task,
                agent,
                ok,
                At(now),
            )));
        };
        if Some(t) == arrival {
            // Thinned Poisson arrivals at rate(t) under `peak`.
            next_arrival = now + arrivals.sample(&mut arrival_rng);
            if arrival_rng.gen::<f64>() * sc.peak > (sc.rate)(now) {
                continue;
            }
            let success_rate: Vec<f64> = counts
                .iter()
                .map(|&(ok, all)| {
                    if all == 0 {
                        0.0
                    } else {
                        ok as f64 / all as f64
                    }
                })
                .collect();
            let order = policy.order(
                &View {
                    in_flight: &in_flight,
                    weights: &weights,
                    success_rate: &success_rate,
                },
                &mut rng,
            );
            let first = order[0];
            let (_, q) = best_at(now);
            report.regret += q - value(first, now);
            report.off_best += u64::from(value(first, now) < q);
            report.first[first] += 1;
            picks[(now as usize).min(buckets - 1)][first] += 1;
            report.tasks += 1;
            tasks.push(Task {
                arrived: now,
                order,
                next: 1,
            });
            report.attempts += 1;
            start(tasks.len() - 1, first, &mut in_flight, &mut done, &mut seq);
            continue;
        }
        let Reverse((_, _, task, agent, ok, At(started))) = done.pop().expect("a completion");
        in_flight[agent] -= 1;
        let elapsed_ms = (now - tasks[task].arrived) * 1000.0;
        policy.observe(agent, ok, (now - started) * 1000.0, now);
        // The original rule, applied to the graph's weight on every outcome.
        let w = &mut weights[agent];
        *w = if ok {
            (*w + 0.05).min(1.0)
        } else {
            (*w - 0.02).max(0.0)
        };
        counts[agent].1 += 1;
        counts[agent].0 += u64::from(ok);
        let t = &mut tasks[task];
        if ok {
            report.succeeded += 1;
            report.latencies_ms.push(elapsed_ms);
        } else if t.next < t.order.len() && now - t.arrived < DEADLINE_S {
            let next = t.order[t.next];
            t.next += 1;
            report.attempts += 1;
            start(task, next, &mut in_flight, &mut done, &mut seq);
        } else {
            report.latencies_ms.push(elapsed_ms);
        }
    }
    if sc.changes.iter().any(|&c| c < seconds) {
        let mut worst = 0.0f64;
        for &c in sc.changes.iter().filter(|&&c| c < seconds) {
            let (best, _) = best_at(c + 1e-6);
            let from = c.floor() as usize;
            let shifted = (from..buckets).find(|&b| {
                let all: u64 = picks[b].iter().sum();
                all > 0 && picks[b][best] * 2 > all && b as f64 + 1.0 > c
            });
            worst = worst.max(shifted.map_or(f64::INFINITY, |b| b as f64 + 1.0 - c));
        }
        report.shift_s = Some(worst);
    }
    report
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs this without it: the smoke version.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    // A name given picks the scenarios whose name holds it (the table is then not written).
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    // `--seed=N` reruns everything under another seed (the table is then not written).
    let seed: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--seed=")?.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut doc = String::new();
    let mut broken = Vec::new();
    let mut verdicts = String::from(
        "\n### Targets\n\n| scenario | regret lowest | ≤ ½ weight (original)'s | success ≥ every other's | p99 ≤ 1.1 × best other's | shift ≤ 10 s | first picks |\n|---|---|---|---|---|---|---|\n",
    );
    let mut missed = Vec::new();
    for sc in scenarios()
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.name.contains(o.as_str())))
    {
        let seconds = if full {
            sc.seconds
        } else {
            sc.seconds.min(20.0)
        };
        let _ = writeln!(doc, "\n### {}\n\n{}.\n", sc.name, sc.what);
        let _ = writeln!(
            doc,
            "| policy | success | p50 ms | p99 ms | regret / 1k tasks | off-best picks | worst shift s | first picks of A | calls / task |\n|---|---|---|---|---|---|---|---|---|"
        );
        let mut reports = Vec::new();
        for name in POLICIES {
            let r = runtime.block_on(run(&sc, name, seconds, seed));
            if r.tasks == 0 || r.first.iter().sum::<u64>() != r.tasks {
                broken.push(format!("{} / {name}: {} tasks", sc.name, r.tasks));
            }
            let _ = writeln!(
                doc,
                "| {name} | {:.2} % | {:.1} | {:.1} | {:.1} | {:.1} % | {} | {:.1} % | {:.2} |",
                r.success() * 100.0,
                r.quantile(0.5),
                r.quantile(0.99),
                r.regret_k(),
                r.off_best as f64 * 100.0 / r.tasks.max(1) as f64,
                r.shift_s.map_or("—".into(), |s| format!("{s:.0}")),
                r.share(0) * 100.0,
                r.attempts as f64 / r.tasks.max(1) as f64,
            );
            reports.push((name, r));
        }
        // With common random numbers and failover to every candidate, a task's success does
        // not depend on the order it was tried in (short of the deadline): the same for all.
        let success: Vec<u64> = reports.iter().map(|(_, r)| r.succeeded).collect();
        if success.iter().any(|&s| s != success[0]) {
            broken.push(format!(
                "{}: successes differ across policies: {success:?}",
                sc.name
            ));
        }
        let (ours, others) = reports.split_last().expect("policies");
        let ours = &ours.1;
        let weight = &others
            .iter()
            .find(|(n, _)| *n == "weight (original)")
            .expect("weight")
            .1;
        // Regret within TIE of another's counts as a tie.
        let checks = [
            others
                .iter()
                .all(|(_, r)| ours.regret_k() <= r.regret_k() + TIE),
            ours.regret_k() <= weight.regret_k() / 2.0 + TIE,
            others.iter().all(|(_, r)| ours.success() >= r.success()),
            ours.quantile(0.99)
                <= 1.1
                    * others
                        .iter()
                        .map(|(_, r)| r.quantile(0.99))
                        .fold(f64::MAX, f64::min),
            ours.shift_s.is_none_or(|s| s <= 10.0),
            sc.keeps
                .is_none_or(|(a, least, most)| (least..=most).contains(&ours.share(a))),
        ];
        let mark = |ok: bool| if ok { "yes" } else { "**no**" };
        let keeps = sc.keeps.map_or("—".to_string(), |(a, least, most)| {
            format!(
                "{} {:.1} % of {}, in {:.0}–{:.0} %",
                mark(checks[5]),
                ours.share(a) * 100.0,
                sc.agents[a].name,
                least * 100.0,
                most * 100.0
            )
        });
        let _ = writeln!(
            verdicts,
            "| {} | {} | {} | {} | {} | {} | {keeps} |",
            sc.name,
            mark(checks[0]),
            mark(checks[1]),
            mark(checks[2]),
            mark(checks[3]),
            mark(checks[4]),
        );
        if checks.contains(&false) {
            missed.push(sc.name);
        }
    }
    doc.push_str(&verdicts);
    // The full run (or `--e2e`) also runs one scenario through the real service and real
    // agent servers, beside the simulation of the same.
    if (full && only.is_empty()) || args.iter().any(|a| a == "--e2e") {
        let simulated = runtime.block_on(run(&e2e_scenario(), "learned", E2E_SECONDS, seed));
        doc.push_str(&end_to_end(&simulated, seed));
    }
    print!("{doc}");
    assert!(broken.is_empty(), "the simulation is broken: {broken:?}");
    if full {
        if only.is_empty() && seed == 7 {
            write_doc(&doc);
        }
        assert!(missed.is_empty(), "targets missed in {missed:?}");
    }
}

/// Replaces the generated part of docs/ROUTING.md (between its two markers).
fn write_doc(table: &str) {
    const BEGIN: &str = "<!-- routing-bench:begin -->";
    const END: &str = "<!-- routing-bench:end -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ROUTING.md");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("{path} not found; table not written");
        return;
    };
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("{path} has no markers; table not written");
        return;
    };
    let updated = format!("{}{BEGIN}\n{table}\n{}", &text[..b], &text[e..]);
    std::fs::write(path, updated).expect("write docs/ROUTING.md");
    eprintln!("wrote {path}");
}

/// Seconds the end-to-end scenario runs (in real time).
const E2E_SECONDS: f64 = 20.0;
/// Its offered load.
const E2E_RATE: f64 = 200.0;

/// The end-to-end scenario: the simulation's `primary-backup` (a primary seeded 0.9 and its
/// backup seeded 0.5, both always answering in a log-normal 10 ms, σ 0.3, learning on, 200
/// req/s), for [`E2E_SECONDS`].
fn e2e_scenario() -> Scenario {
    let base = scenarios()
        .into_iter()
        .find(|s| s.name == "primary-backup")
        .expect("the primary-backup scenario");
    assert_eq!(
        base.peak, E2E_RATE,
        "the end-to-end driver sends at E2E_RATE"
    );
    Scenario {
        name: "primary-backup (end to end)",
        what: "",
        seconds: E2E_SECONDS,
        keeps: None,
        ..base
    }
}

/// One real agent: answers every task after a log-normal delay (median 10 ms, σ 0.3).
async fn real_agent(name: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use poem::{handler, listener::TcpListener, post, web::Data, EndpointExt, Route, Server};
    use std::sync::{atomic::AtomicU64, Arc};
    #[handler]
    async fn query(
        Data(state): Data<&(&'static str, Arc<AtomicU64>)>,
    ) -> poem::web::Json<serde_json::Value> {
        let n = state.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ms = LogNormal::new(10f64.ln(), 0.3)
            .expect("valid")
            .sample(&mut StdRng::seed_from_u64(n ^ state.0.len() as u64));
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        poem::web::Json(
            serde_json::json!({"agent_name": state.0, "status": "success", "data": "ok"}),
        )
    }
    let calls = Arc::new(AtomicU64::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    let app = Route::new()
        .at("/query", post(query))
        .data((name, calls.clone()));
    tokio::spawn(Server::new(TcpListener::bind(format!("127.0.0.1:{port}"))).run(app));
    tokio::time::sleep(Duration::from_millis(100)).await;
    (format!("http://127.0.0.1:{port}/query"), calls)
}

/// Runs [`e2e_scenario`] through the orchestrator (built from the library, as the binary
/// does) in front of two real agent servers, and returns its figures beside `simulated`.
fn end_to_end(simulated: &Report, seed: u64) -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (first_a, tasks, p50, p99, failed) = runtime.block_on(async move {
        let (a_url, _) = real_agent("A").await;
        let (b_url, _) = real_agent("B").await;
        let graph = serde_json::json!({
            "concepts": [{"name": "lamp", "primary_definition": "a test concept"}],
            "agents": [
                {"name": "A", "type": "static", "endpoint": a_url, "intents": ["define"], "capabilities": []},
                {"name": "B", "type": "static", "endpoint": b_url, "intents": ["define"], "capabilities": []}
            ],
            "handles": [
                {"agent": "A", "concept": "lamp", "weight": 0.9},
                {"agent": "B", "concept": "lamp", "weight": 0.5}
            ]
        });
        let seed_path = std::env::temp_dir().join(format!("routing-e2e-{}.json", std::process::id()));
        std::fs::write(&seed_path, graph.to_string()).expect("write the seed");
        let raw = myriad::config::RawSettings {
            host: Some("127.0.0.1".into()),
            port: Some("0".into()),
            graph_seed: Some(seed_path.display().to_string()),
            demo_agents: Some("false".into()),
            cache_enabled: Some("false".into()),
            learning_flush_ms: Some("50".into()),
            routing_seed: Some(seed.to_string()),
            ..Default::default()
        };
        let config = myriad::config::Config::from_raw(&raw).expect("a valid configuration");
        let app = myriad::startup::Application::build(config).await.expect("the service builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / E2E_RATE));
        let started = std::time::Instant::now();
        let mut sent = Vec::new();
        let mut id = 0u64;
        while started.elapsed().as_secs_f64() < E2E_SECONDS {
            tick.tick().await;
            id += 1;
            let (client, url) = (client.clone(), format!("{base}/process"));
            sent.push(tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let body = serde_json::json!({"tasks": [{"task_id": id, "concept": "lamp", "intent": "define"}]});
                let r: serde_json::Value = client.post(url).json(&body).send().await.ok()?.json().await.ok()?;
                let result = &r["results"][id.to_string()];
                let ok = result["status"] == "success";
                let first_a = result["agent_name"] == "A" && result["attempts"] == 1;
                Some((ok, first_a, t0.elapsed().as_secs_f64() * 1000.0))
            }));
        }
        let mut outcomes = Vec::new();
        for s in sent {
            outcomes.push(s.await.ok().flatten());
        }
        let _ = stop.send(());
        let _ = server.await;
        let _ = std::fs::remove_file(&seed_path);
        let tasks = outcomes.len();
        let answered: Vec<(bool, bool, f64)> = outcomes.into_iter().flatten().collect();
        let failed = tasks - answered.iter().filter(|(ok, ..)| *ok).count();
        let first_a = answered.iter().filter(|(_, a, _)| *a).count() as f64 / tasks.max(1) as f64;
        let mut ms: Vec<f64> = answered.iter().map(|(.., ms)| *ms).collect();
        ms.sort_by(f64::total_cmp);
        let q = |q: f64| ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1))).copied().unwrap_or(0.0);
        (first_a, tasks, q(0.5), q(0.99), failed)
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### End to end\n\nA primary seeded 0.9 and its backup seeded 0.5, both answering every task in a log-normal 10 ms (σ 0.3), learning on, {E2E_RATE:.0} req/s for {E2E_SECONDS:.0} s: the simulation of it beside the service itself (the library's `Application`, cache off, `ROUTING_SEED={seed}`) in front of two real agent HTTP servers, driven over loopback. Latency through the service includes its own HTTP hops.\n\n| run | tasks | failed | first picks of A | p50 ms | p99 ms |\n|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| simulated | {} | {} | {:.1} % | {:.1} | {:.1} |",
        simulated.tasks,
        simulated.tasks - simulated.succeeded,
        simulated.share(0) * 100.0,
        simulated.quantile(0.5),
        simulated.quantile(0.99)
    );
    let _ = writeln!(
        out,
        "| through the service | {tasks} | {failed} | {:.1} % | {p50:.1} | {p99:.1} |",
        first_a * 100.0
    );
    out
}
