//! The last route the graph gave for each (concept, intent): routing state, not a cache of
//! answers. It is kept whether or not responses or discovery are cached, so that tasks keep
//! reaching healthy agents while a remote graph is away; bounded, and invalidated like the
//! caches when an agent or concept changes.

use std::sync::Arc;

use crate::graph::Candidate;

use super::Invalidation;

/// Routes remembered at most.
pub const MAX_ROUTES: u64 = 10_000;

struct Route {
    concept: String,
    candidates: Vec<Candidate>,
}

pub struct RouteMemory {
    routes: moka::future::Cache<String, Arc<Route>>,
}

impl Default for RouteMemory {
    fn default() -> Self {
        RouteMemory::new(MAX_ROUTES)
    }
}

impl RouteMemory {
    pub fn new(capacity: u64) -> Self {
        RouteMemory {
            routes: moka::future::Cache::builder()
                .max_capacity(capacity)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// What the graph answered for `key` (an empty answer forgets the route).
    pub async fn remember(&self, key: &str, concept: &str, candidates: &[Candidate]) {
        if candidates.is_empty() {
            self.routes.invalidate(key).await;
            return;
        }
        let route = Route {
            concept: concept.to_string(),
            candidates: candidates.to_vec(),
        };
        self.routes.insert(key.to_string(), Arc::new(route)).await;
    }

    /// The last route the graph gave for `key`.
    pub async fn recall(&self, key: &str) -> Option<Vec<Candidate>> {
        self.routes.get(key).await.map(|r| r.candidates.clone())
    }

    /// Forgets every route through an agent or of a concept the invalidation names.
    pub fn forget(&self, inv: &Invalidation) {
        if inv.agents.is_empty() && inv.concepts.is_empty() {
            return;
        }
        let inv = inv.clone();
        let result = self.routes.invalidate_entries_if(move |_, r| {
            inv.concepts.contains(&r.concept)
                || r.candidates
                    .iter()
                    .any(|c| inv.agents.contains(&c.agent.name))
        });
        if result.is_err() {
            self.routes.invalidate_all();
        }
    }

    /// Routes held now, counted one by one (exact, unlike moka's lagging entry count).
    pub fn len(&self) -> u64 {
        self.routes.iter().count() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{AgentInfo, EdgeStats};

    fn candidate(name: &str) -> Candidate {
        Candidate {
            agent: std::sync::Arc::new(AgentInfo {
                name: name.into(),
                agent_type: "t".into(),
                endpoint: "http://127.0.0.1:9/q".into(),
                status: "active".into(),
                intents: vec!["define".into()],
                capabilities: vec![],
                facts: None,
            }),
            stats: EdgeStats::new(0.5),
        }
    }

    #[tokio::test]
    async fn routes_are_recalled_forgotten_and_bounded() {
        let m = RouteMemory::new(10);
        m.remember("lamp/define", "lamp", &[candidate("A"), candidate("B")])
            .await;
        m.remember("sun/define", "sun", &[candidate("C")]).await;
        let names = |c: Vec<Candidate>| {
            c.into_iter()
                .map(|c| c.agent.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(m.recall("lamp/define").await.unwrap()), ["A", "B"]);
        // An empty answer forgets it.
        m.remember("sun/define", "sun", &[]).await;
        assert!(m.recall("sun/define").await.is_none());
        // An invalidation naming an agent forgets every route through it.
        m.remember("sun/define", "sun", &[candidate("C")]).await;
        m.forget(&Invalidation {
            agents: vec!["B".into()],
            concepts: vec![],
        });
        m.routes.run_pending_tasks().await;
        assert!(m.recall("lamp/define").await.is_none());
        assert!(m.recall("sun/define").await.is_some());
        // Bounded.
        for i in 0..100 {
            m.remember(&format!("k{i}"), "x", &[candidate("A")]).await;
        }
        m.routes.run_pending_tasks().await;
        assert!(m.len() <= 10, "{}", m.len());
    }
}
