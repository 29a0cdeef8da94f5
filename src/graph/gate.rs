//! A breaker in front of a remote graph: while the graph is known to be down, its calls fail
//! at once instead of each waiting for the graph timeout, and one call at a time probes for
//! its return.
//!
//! Closed: every call goes through. A call that fails (unreachable or timed out) opens the
//! gate for `open_for`: every call is refused with [`GraphError::RecentFailure`]. After
//! that, one call goes through as a probe while the others are still refused; when it
//! answers the gate closes, when it fails it opens again. A probe dropped before it ended
//! (its client left) decides nothing: the next call probes. An operator's writes (register,
//! remove, add a concept) are never refused; what they meet opens or closes the gate too.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    AgentInfo, AgentRecord, Candidate, Deltas, EdgeOutcomes, GraphError, KnowledgeGraph, Learned,
    RegionRecord,
};
use crate::metrics::Metrics;

pub struct GatedGraph<G> {
    inner: G,
    open_for: Duration,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    /// Refusing until then.
    Open(Instant),
    /// One call is probing.
    Probing,
}

/// What the gate let through, and how its end is told back.
struct Pass<'a, G> {
    gate: &'a GatedGraph<G>,
    probe: bool,
    decided: bool,
}

impl<G> Pass<'_, G> {
    fn decide(mut self, answered: bool) {
        self.decided = true;
        let mut state = self.gate.lock();
        if answered {
            if *state != State::Closed {
                self.gate.count("closed");
                tracing::info!("the graph answers again");
            }
            *state = State::Closed;
        } else if self.probe || *state == State::Closed {
            if *state == State::Closed {
                tracing::warn!(
                    pause_ms = self.gate.open_for.as_millis() as u64,
                    "the graph failed; its calls fail at once until a probe answers"
                );
            }
            self.gate.count("opened");
            *state = State::Open(Instant::now() + self.gate.open_for);
        }
    }
}

impl<G> Drop for Pass<'_, G> {
    fn drop(&mut self) {
        if self.probe && !self.decided {
            let mut state = self.gate.lock();
            if *state == State::Probing {
                // Expired at once: the next call probes.
                *state = State::Open(Instant::now());
            }
        }
    }
}

impl<G> GatedGraph<G> {
    pub fn new(inner: G, open_for: Duration, metrics: Arc<Metrics>) -> Self {
        GatedGraph {
            inner,
            open_for,
            state: Mutex::new(State::Closed),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, event: &str) {
        self.metrics.graph_gate.with_label_values(&[event]).inc();
    }

    fn pass(&self) -> Result<Pass<'_, G>, GraphError> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed => false,
            State::Open(until) if Instant::now() >= until => {
                *state = State::Probing;
                self.count("probe");
                true
            }
            State::Open(_) | State::Probing => {
                self.count("refused");
                return Err(GraphError::RecentFailure);
            }
        };
        Ok(Pass {
            gate: self,
            probe,
            decided: false,
        })
    }

    /// Whether calls are refused now (open, or a probe is out).
    pub fn is_open(&self) -> bool {
        *self.lock() != State::Closed
    }

    /// A call that is never refused (an operator's write: rare, and better tried than
    /// refused); what it meets still opens or closes the gate.
    async fn always<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, GraphError>>,
    ) -> Result<T, GraphError> {
        let result = call.await;
        Pass {
            gate: self,
            probe: true,
            decided: false,
        }
        .decide(!matches!(
            result,
            Err(GraphError::Unavailable(_) | GraphError::Timeout)
        ));
        result
    }

    async fn through<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, GraphError>>,
    ) -> Result<T, GraphError> {
        let pass = self.pass()?;
        let result = call.await;
        pass.decide(!matches!(
            result,
            Err(GraphError::Unavailable(_) | GraphError::Timeout)
        ));
        result
    }
}

#[async_trait]
impl<G: KnowledgeGraph> KnowledgeGraph for GatedGraph<G> {
    async fn discover(&self, concept: &str, intent: &str) -> Result<Vec<Candidate>, GraphError> {
        self.through(self.inner.discover(concept, intent)).await
    }
    async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError> {
        self.through(self.inner.agents()).await
    }
    async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError> {
        self.through(self.inner.regions()).await
    }
    async fn learn(&self, edges: &[EdgeOutcomes], deltas: Deltas) -> Learned {
        self.through(self.inner.learn(edges, deltas)).await
    }
    async fn upsert_agent(
        &self,
        agent: AgentInfo,
        concepts: &[(String, f64)],
    ) -> Result<bool, GraphError> {
        self.always(self.inner.upsert_agent(agent, concepts)).await
    }
    async fn add_concept(&self, name: &str, definition: &str) -> Result<(), GraphError> {
        self.always(self.inner.add_concept(name, definition)).await
    }
    async fn remove_agent(&self, name: &str) -> Result<Option<Vec<String>>, GraphError> {
        self.always(self.inner.remove_agent(name)).await
    }
    async fn decay(&self, rate: f64) -> Result<usize, GraphError> {
        self.through(self.inner.decay(rate)).await
    }
    async fn ping(&self) -> Result<(), GraphError> {
        self.through(self.inner.ping()).await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::memory::MemoryGraph;

    /// A graph whose every call fails or answers, as told.
    struct Switch {
        up: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
        inner: MemoryGraph,
    }

    impl Switch {
        fn ask(&self) -> Result<(), GraphError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.up.load(SeqCst) {
                Ok(())
            } else {
                Err(GraphError::Unavailable("refused".into()))
            }
        }
    }

    #[async_trait]
    impl KnowledgeGraph for Switch {
        async fn discover(&self, c: &str, i: &str) -> Result<Vec<Candidate>, GraphError> {
            self.ask()?;
            self.inner.discover(c, i).await
        }
        async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError> {
            self.inner.agents().await
        }
        async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError> {
            self.inner.regions().await
        }
        async fn learn(&self, e: &[EdgeOutcomes], d: Deltas) -> Learned {
            self.ask()?;
            self.inner.learn(e, d).await
        }
        async fn upsert_agent(
            &self,
            a: AgentInfo,
            c: &[(String, f64)],
        ) -> Result<bool, GraphError> {
            self.inner.upsert_agent(a, c).await
        }
        async fn add_concept(&self, n: &str, d: &str) -> Result<(), GraphError> {
            self.inner.add_concept(n, d).await
        }
        async fn remove_agent(&self, n: &str) -> Result<Option<Vec<String>>, GraphError> {
            self.inner.remove_agent(n).await
        }
        async fn decay(&self, r: f64) -> Result<usize, GraphError> {
            self.inner.decay(r).await
        }
        async fn ping(&self) -> Result<(), GraphError> {
            self.ask()
        }
        fn backend(&self) -> &'static str {
            "switch"
        }
    }

    fn gated() -> GatedGraph<Switch> {
        let seed = crate::graph::seed::Seed::parse(crate::graph::seed::DEFAULT_SEED).unwrap();
        let inner = MemoryGraph::from_seed(&seed, |_| Some("http://127.0.0.1:9".into())).unwrap();
        GatedGraph::new(
            Switch {
                up: true.into(),
                calls: 0.into(),
                inner,
            },
            Duration::from_millis(500),
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_refuses_calls_at_once_until_one_probe_answers() {
        use std::sync::atomic::Ordering::SeqCst;
        let g = gated();
        g.ping().await.unwrap();
        g.inner.up.store(false, SeqCst);
        assert!(matches!(g.ping().await, Err(GraphError::Unavailable(_))));
        // Open: refused without asking the graph.
        for _ in 0..10 {
            assert!(matches!(g.ping().await, Err(GraphError::RecentFailure)));
        }
        assert_eq!(g.inner.calls.load(SeqCst), 2);
        // After the pause one probe asks; it fails and the gate opens again.
        tokio::time::advance(Duration::from_millis(501)).await;
        assert!(matches!(g.ping().await, Err(GraphError::Unavailable(_))));
        assert!(matches!(g.ping().await, Err(GraphError::RecentFailure)));
        assert_eq!(g.inner.calls.load(SeqCst), 3);
        // The graph returns: the next probe closes the gate.
        g.inner.up.store(true, SeqCst);
        tokio::time::advance(Duration::from_millis(501)).await;
        g.ping().await.unwrap();
        assert!(!g.is_open());
        g.ping().await.unwrap();
        assert_eq!(g.inner.calls.load(SeqCst), 5);
        let m = &g.metrics.graph_gate;
        assert_eq!(m.with_label_values(&["opened"]).get(), 2);
        assert_eq!(m.with_label_values(&["refused"]).get(), 11);
        assert_eq!(m.with_label_values(&["probe"]).get(), 2);
        assert_eq!(m.with_label_values(&["closed"]).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_before_it_ends_decides_nothing() {
        let g = gated();
        g.inner.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = g.ping().await;
        tokio::time::advance(Duration::from_millis(501)).await;
        {
            let pass = g.pass().unwrap();
            assert!(pass.probe);
            assert!(matches!(g.pass(), Err(GraphError::RecentFailure)));
        }
        // The next call probes at once.
        assert!(g.pass().unwrap().probe);
    }
}
