//! Myriad Orchestrator: an observability-first, resilient gateway in front of agent services.
//!
//! # Layout
//! - [`cli`]: the command line, one function per subcommand (`main.rs` only calls it).
//! - [`startup`]: `Application::build(config)` wires everything and binds the listener.
//! - [`server`]: the accept loop — connection cap, header-read and idle timeouts, drain.
//! - [`cores`]: one runtime per core, each with its own listener (`RUNTIME=per_core`).
//! - [`failure`]: the stable failure codes of task results.
//! - [`context`]: the per-request context (deadline, cache policy) every stage is handed.
//! - [`config`]: every setting (flags and the original service's environment variables),
//!   validated together at start-up.
//! - [`api`]: the HTTP surface (poem-openapi operations, DTOs, one error body for all errors).
//! - [`pipeline`]: the path of one task — parse the query, discover candidates, call them
//!   through the resilience stack with failover, learn from the outcome, synthesize.
//! - [`routing`]: the routing policy and the live signals it owns — which candidate goes
//!   first (weight, health, latency, exploration, slow start) and why.
//! - [`resilience`]: deadline, rate limit, bulkhead, circuit breaker, retry, per-try timeout.
//! - [`cache`]: the two-tier cache (moka L1, Redis L2), single flight per key, stale
//!   answers, invalidation across replicas.
//! - [`store`]: the shared store (Redis behind a small trait, a short timeout and a breaker)
//!   the cache, the limits, the retry budget and peer health use.
//! - [`graph`]: the knowledge graph trait, the seed format, the in-memory and Neo4j backends.
//! - [`agents`]: the agent protocol over HTTP and the built-in demo agents.
//! - [`metrics`], [`telemetry`]: counters behind `/metrics`; logging set-up.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod cores;
pub mod every;
pub mod failure;
pub mod graph;
pub mod metrics;
pub mod pipeline;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;

/// A concurrent map keyed by what every request looks up (agent names, estimate pairs,
/// request series): `DashMap` hashed with foldhash, seeded per process — SipHash cost more
/// than the lookup itself.
pub type NameMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// Runs `f` with this thread's random generator (seeded from the OS once per thread; no
/// lock, no cache line shared between cores). For draws that need to be unpredictable
/// enough, not secret: routing's exploration, span ids.
pub fn with_thread_rng<T>(f: impl FnOnce(&mut rand::rngs::SmallRng) -> T) -> T {
    use rand::SeedableRng;
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_entropy());
    }
    RNG.with(|rng| f(&mut rng.borrow_mut()))
}

/// The crate version, reported by `/health`, `/status` and `/metrics`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
