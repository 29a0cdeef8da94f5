//! Two-tier cache: moka (L1, bounded, per process) in front of a shared store (L2, Redis).
//!
//! Lookup is L1 → L2 (then fill L1) → upstream (then fill both). All of it for one key runs
//! under moka's per-key compute lock, so N concurrent misses make one upstream call: the
//! first caller fetches, the others find the fresh entry when their turn comes. Entries live
//! `ttl` (jittered ±10 %) fresh and `STALE_TTL_S` more as stale: a stale entry is served,
//! marked `stale`, only when the upstream fails. Errors are never cached as values.
//!
//! Keys are namespaced and versioned: `myriad:v1:resp:{agent}:{concept}:{hash}` and
//! `myriad:v1:disc:{concept}:{hash}`, where every part is a SHA-256 prefix and `hash`
//! covers agent + concept + intent + canonical args. A graph change removes the affected
//! keys from L2 and tells every replica (Redis pub/sub) to drop them from its L1.

pub mod routes;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use moka::ops::compute::Op;
use rand::Rng;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::store::SharedStore;
use crate::{
    config::CacheSettings,
    metrics::{Memo, Metrics},
};

/// Pub/sub channel carrying [`Invalidation`]s between replicas.
pub const INVALIDATION_CHANNEL: &str = "myriad:v1:invalidate";
const NS: &str = "myriad:v1";

mod keys;
pub use keys::{discovery_key, l2_patterns, response_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    L1,
    L2,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
        }
    }
}

/// What a graph change makes stale. Sent to every replica as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Invalidation {
    pub agents: Vec<String>,
    pub concepts: Vec<String>,
}

/// What a cache may hold: cloned for every hit (a discovery's candidates as a JSON value; an
/// agent's answer as [`crate::agents::Kept`], whose clone shares it), written to the shared
/// tier as JSON.
pub trait Held: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Held for T {}

/// One cached value and what it is about (for invalidation).
#[derive(Debug)]
pub struct Cached<V = Value> {
    pub value: V,
    fresh_until: Instant,
    stale_until: Instant,
    agent: Option<String>,
    concept: String,
}

impl<V> Cached<V> {
    fn fresh(&self) -> bool {
        Instant::now() < self.fresh_until
    }
    fn usable_stale(&self) -> bool {
        Instant::now() < self.stale_until
    }
}

/// The L2 encoding: the value and its freshness deadline in Unix milliseconds.
#[derive(Serialize, Deserialize)]
struct Wire<V> {
    v: V,
    f: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// ±10 % so entries written together do not expire together.
pub fn jitter(ttl: Duration) -> Duration {
    ttl.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// How a lookup ended.
#[derive(Debug)]
pub enum Lookup<E, V = Value> {
    /// A fresh value; `tier` is None when it came from upstream just now.
    Fresh { value: V, tier: Option<Tier> },
    /// Upstream failed with `error`; an expired value was still usable.
    Stale { value: V, tier: Tier, error: E },
    /// Upstream failed and nothing usable was cached.
    Failed(E),
}

/// What a fetch produced: the value and how long it may be cached (None = do not cache).
pub type Fetched<V = Value> = (V, Option<Duration>);

/// Metadata of an entry: which agent and concept it is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub agent: Option<&'a str>,
    pub concept: &'a str,
}

pub struct TwoTier<V = Value> {
    /// `responses` or `discovery` (the `cache` label).
    name: &'static str,
    l1: moka::future::Cache<String, Arc<Cached<V>>>,
    l2: Option<Arc<dyn SharedStore>>,
    stale_ttl: Duration,
    metrics: Arc<Metrics>,
    /// `myriad_cache_lookups_total{cache=name}`.
    lookups: Memo,
}

impl<V: Held> TwoTier<V> {
    pub fn new(
        name: &'static str,
        max_entries: u64,
        max_ttl: Duration,
        stale_ttl: Duration,
        l2: Option<Arc<dyn SharedStore>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let l1 = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .time_to_live(max_ttl.mul_f64(1.1) + stale_ttl)
            .support_invalidation_closures()
            .build();
        TwoTier {
            name,
            l1,
            l2,
            stale_ttl,
            lookups: Memo::new(&metrics.cache_lookups, &[name]),
            metrics,
        }
    }

    /// Counts a lookup (`result`: hit, miss, stale, bypass).
    pub fn count(&self, tier: &'static str, result: &'static str) {
        self.lookups.inc(&[tier, result]);
    }

    /// Counts a shared-store error or an invalidation.
    pub fn event(&self, event: &str) {
        self.metrics
            .cache_events
            .with_label_values(&[self.name, event])
            .inc();
    }

    fn entry(&self, value: V, ttl: Duration, subject: &Subject<'_>) -> Cached<V> {
        let now = Instant::now();
        Cached {
            value,
            fresh_until: now + ttl,
            stale_until: now + ttl + self.stale_ttl,
            agent: subject.agent.map(str::to_string),
            concept: subject.concept.to_string(),
        }
    }

    fn decode(&self, bytes: &[u8], subject: &Subject<'_>) -> Option<Cached<V>> {
        let wire: Wire<V> = serde_json::from_slice(bytes).ok()?;
        let now_ms = unix_ms();
        let fresh_left = Duration::from_millis(wire.f.saturating_sub(now_ms));
        let mut c = self.entry(wire.v, fresh_left, subject);
        if wire.f < now_ms {
            // Expired in L2 already: keep the remaining stale window.
            let late = Duration::from_millis(now_ms - wire.f);
            c.stale_until = Instant::now() + self.stale_ttl.saturating_sub(late);
        }
        Some(c)
    }

    fn write_l2(&self, key: &str, value: &V, ttl: Duration) {
        let Some(l2) = self.l2.clone() else { return };
        let wire = Wire {
            v: value,
            f: unix_ms() + ttl.as_millis() as u64,
        };
        let Ok(bytes) = serde_json::to_vec(&wire) else {
            return;
        };
        let key = key.to_string();
        let life = ttl + self.stale_ttl;
        let (metrics, name) = (self.metrics.clone(), self.name);
        tokio::spawn(async move {
            if l2.set(&key, bytes, life).await.is_err() {
                metrics
                    .cache_events
                    .with_label_values(&[name, "l2_error"])
                    .inc();
            }
        });
    }

    /// Looks `key` up in L1, then L2, then calls `fetch` — once for all concurrent callers.
    /// `fetch` is shown the stale value that would be served if it failed, so it can refuse
    /// an answer worse than that one (an empty route from a graph that is starting up).
    pub async fn get_or_fetch<E, F, Fut>(
        &self,
        key: &str,
        subject: Subject<'_>,
        fetch: F,
    ) -> Lookup<E, V>
    where
        E: Send,
        F: for<'v> FnOnce(Option<&'v V>) -> Fut + Send,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send,
    {
        if let Some(e) = self.l1.get(key).await {
            if e.fresh() {
                self.count("l1", "hit");
                return Lookup::Fresh {
                    value: e.value.clone(),
                    tier: Some(Tier::L1),
                };
            }
        }
        // Boxed: the miss's future (L1's compute, L2, the fetch) was two thirds of this
        // one's size, and every future that awaits this one, hit or not, was as large and
        // copied at each level (docs/BENCHMARKS.md, stop 37).
        Box::pin(self.fill(key, subject, fetch)).await
    }

    /// [`TwoTier::get_or_fetch`] past a missing or stale L1 entry: once for all concurrent
    /// callers, L2, then `fetch`.
    async fn fill<E, F, Fut>(&self, key: &str, subject: Subject<'_>, fetch: F) -> Lookup<E, V>
    where
        E: Send,
        F: for<'v> FnOnce(Option<&'v V>) -> Fut + Send,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send,
    {
        let mut out: Option<Lookup<E, V>> = None;
        let slot = &mut out;
        let subject = &subject;
        self.l1
            .entry(key.to_string())
            .and_compute_with(|current| async move {
                let current = current.map(|e| e.into_value());
                if let Some(c) = current.as_ref().filter(|c| c.fresh()) {
                    // Another caller refreshed it while this one waited.
                    self.count("l1", "hit");
                    *slot = Some(Lookup::Fresh {
                        value: c.value.clone(),
                        tier: Some(Tier::L1),
                    });
                    return Op::Nop;
                }
                let mut stale = current
                    .filter(|c| c.usable_stale())
                    .map(|c| (c.value.clone(), Tier::L1));
                if let Some(l2) = &self.l2 {
                    match l2.get(key).await {
                        Ok(Some(bytes)) => {
                            if let Some(entry) = self.decode(&bytes, subject) {
                                if entry.fresh() {
                                    self.count("l2", "hit");
                                    *slot = Some(Lookup::Fresh {
                                        value: entry.value.clone(),
                                        tier: Some(Tier::L2),
                                    });
                                    return Op::Put(Arc::new(entry));
                                }
                                if stale.is_none() && entry.usable_stale() {
                                    stale = Some((entry.value, Tier::L2));
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            self.event("l2_error");
                        }
                    }
                }
                self.count(if self.l2.is_some() { "l2" } else { "l1" }, "miss");
                match fetch(stale.as_ref().map(|(v, _)| v)).await {
                    Ok((value, Some(ttl))) => {
                        let ttl = jitter(ttl);
                        self.write_l2(key, &value, ttl);
                        let entry = self.entry(value.clone(), ttl, subject);
                        *slot = Some(Lookup::Fresh { value, tier: None });
                        Op::Put(Arc::new(entry))
                    }
                    Ok((value, None)) => {
                        *slot = Some(Lookup::Fresh { value, tier: None });
                        Op::Nop
                    }
                    Err(error) => {
                        *slot = Some(match stale {
                            Some((value, tier)) => {
                                self.count(tier.as_str(), "stale");
                                Lookup::Stale { value, tier, error }
                            }
                            None => Lookup::Failed(error),
                        });
                        Op::Nop
                    }
                }
            })
            .await;
        out.expect("the compute closure always runs")
    }

    /// Drops the L1 entries about these agents or concepts.
    pub fn invalidate_local(&self, inv: &Invalidation) {
        if inv.agents.is_empty() && inv.concepts.is_empty() {
            return;
        }
        self.event("invalidation");
        let inv = inv.clone();
        let result = self.l1.invalidate_entries_if(move |_, v| {
            v.agent.as_ref().is_some_and(|a| inv.agents.contains(a))
                || inv.concepts.contains(&v.concept)
        });
        if result.is_err() {
            self.l1.invalidate_all();
        }
    }

    pub fn clear_local(&self) {
        self.l1.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.l1.entry_count()
    }

    /// Entries held in process now, counted one by one (exact, unlike `entry_count`,
    /// which lags behind recent writes).
    pub fn entries_now(&self) -> usize {
        self.l1.iter().count()
    }
}

/// Both caches of a replica, the shared store, and invalidation across replicas.
pub struct Caches {
    pub responses: TwoTier<crate::agents::Kept>,
    pub discovery: TwoTier,
    pub store: Option<Arc<dyn SharedStore>>,
    pub settings: CacheSettings,
    /// Discovery is cached only in front of a remote graph; the in-memory graph answers
    /// faster than any cache round trip.
    pub discovery_enabled: bool,
    /// The last route per (concept, intent), whatever the cache settings.
    pub routes: routes::RouteMemory,
}

impl Caches {
    pub fn new(
        settings: CacheSettings,
        store: Option<Arc<dyn SharedStore>>,
        remote_graph: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let longest_disc = settings.discovery_ttl.max(settings.negative_ttl);
        Caches {
            responses: TwoTier::new(
                "responses",
                settings.max_entries,
                settings.ttl,
                settings.stale_ttl,
                store.clone(),
                metrics.clone(),
            ),
            // Stale candidates keep routing while the graph server is away.
            discovery: TwoTier::new(
                "discovery",
                settings.max_entries,
                longest_disc,
                settings.stale_ttl,
                store.clone(),
                metrics,
            ),
            discovery_enabled: settings.enabled && remote_graph,
            routes: routes::RouteMemory::default(),
            store,
            settings,
        }
    }

    /// Whether answers to `intent` may be cached at all.
    pub fn cacheable(&self, intent: &str) -> bool {
        self.settings.enabled && !self.settings.bypass_intents.iter().any(|i| i == intent)
    }

    /// A graph change: drop local entries, delete shared ones, tell the other replicas.
    pub async fn invalidate(&self, inv: Invalidation) {
        self.apply(&inv);
        let Some(store) = &self.store else { return };
        for pattern in l2_patterns(&inv) {
            if store.delete_prefix(&pattern).await.is_err() {
                self.responses.event("l2_error");
            }
        }
        if let Ok(msg) = serde_json::to_string(&inv) {
            if store.publish(INVALIDATION_CHANNEL, &msg).await.is_err() {
                tracing::warn!(
                    "could not publish a cache invalidation; other replicas expire it by TTL"
                );
            }
        }
    }

    /// Drops the local entries an invalidation names.
    pub fn apply(&self, inv: &Invalidation) {
        self.responses.invalidate_local(inv);
        self.discovery.invalidate_local(inv);
        self.routes.forget(inv);
    }

    /// Handles a message from the invalidation channel.
    pub fn on_message(&self, payload: &str) {
        match serde_json::from_str::<Invalidation>(payload) {
            Ok(inv) => self.apply(&inv),
            Err(_) => tracing::warn!("ignored a malformed invalidation message"),
        }
    }

    /// After a lost subscription, anything may have changed.
    pub fn clear_local(&self) {
        self.responses.clear_local();
        self.discovery.clear_local();
    }

    /// Entries held in process now, both caches together.
    pub fn l1_entries(&self) -> u64 {
        self.responses.entry_count() + self.discovery.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    fn cache() -> TwoTier {
        cache_with(Duration::from_secs(60))
    }

    /// An L1-only cache whose entries stay fresh `ttl`, then stale for a minute.
    fn cache_with(ttl: Duration) -> TwoTier {
        let minute = Duration::from_secs(60);
        TwoTier::new("test", 100, ttl, minute, None, Default::default())
    }

    const SUBJECT: Subject<'static> = Subject {
        agent: Some("A"),
        concept: "lamp",
    };

    #[test]
    fn keys_are_namespaced_and_canonical() {
        let k1 = response_key("A", "lamp", "define", &json!({"b": 1, "a": 2}));
        let k2 = response_key(
            "A",
            "lamp",
            "define",
            &serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap(),
        );
        assert_eq!(k1, k2);
        assert!(k1.starts_with("myriad:v1:resp:"));
        assert_ne!(k1, response_key("A", "lamp", "function", &json!({})));
        assert_ne!(
            k1,
            response_key("B", "lamp", "define", &json!({"b": 1, "a": 2}))
        );
        assert!(discovery_key("lamp", "define").starts_with("myriad:v1:disc:"));
        assert!(l2_patterns(&Invalidation {
            agents: vec!["A".into()],
            concepts: vec![]
        })[0]
            .starts_with("myriad:v1:resp:"));
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_upstream_call() {
        let c = Arc::new(cache());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let (c, calls) = (c.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                c.get_or_fetch::<(), _, _>("k", SUBJECT, |_| async move {
                    calls.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok((json!("v"), Some(Duration::from_secs(60))))
                })
                .await
            }));
        }
        for h in handles {
            assert!(matches!(h.await.unwrap(), Lookup::Fresh { .. }));
        }
        assert_eq!(calls.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_stale_values_are_served_on_error() {
        let c = cache_with(Duration::from_millis(10));
        let r = c
            .get_or_fetch("k", SUBJECT, |_| async { Err::<Fetched, _>("down") })
            .await;
        assert!(matches!(r, Lookup::Failed("down")));
        let r = c
            .get_or_fetch::<&str, _, _>("k", SUBJECT, |_| async {
                Ok((json!(1), Some(Duration::from_millis(10))))
            })
            .await;
        assert!(matches!(r, Lookup::Fresh { tier: None, .. }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let r = c
            .get_or_fetch("k", SUBJECT, |_| async { Err::<Fetched, _>("down") })
            .await;
        match r {
            Lookup::Stale { value, tier, error } => {
                assert_eq!((value, tier, error), (json!(1), Tier::L1, "down"))
            }
            other => panic!("expected stale, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn invalidation_drops_matching_entries_only() {
        let c = cache();
        for (k, agent) in [("k1", "A"), ("k2", "B")] {
            let s = Subject {
                agent: Some(agent),
                concept: "lamp",
            };
            c.get_or_fetch::<(), _, _>(k, s, |_| async {
                Ok((json!(k), Some(Duration::from_secs(60))))
            })
            .await;
        }
        c.invalidate_local(&Invalidation {
            agents: vec!["A".into()],
            concepts: vec![],
        });
        let calls = AtomicUsize::new(0);
        for (k, agent) in [("k1", "A"), ("k2", "B")] {
            let s = Subject {
                agent: Some(agent),
                concept: "lamp",
            };
            c.get_or_fetch::<(), _, _>(k, s, |_| async {
                calls.fetch_add(1, Relaxed);
                Ok((json!(k), Some(Duration::from_secs(60))))
            })
            .await;
        }
        assert_eq!(calls.load(Relaxed), 1, "only A's entry was dropped");
    }
}
