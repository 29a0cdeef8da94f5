//! The embedded knowledge graph: the whole graph in process, loaded from a seed file.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use std::sync::{Arc, RwLock};

use super::{
    hebbian,
    seed::{demo_placeholder, Seed},
    sort_by_weight, AgentInfo, AgentRecord, Candidate, Deltas, EdgeOutcomes, EdgeStats, GraphError,
    KnowledgeGraph, Learned, RegionRecord, WeightChange,
};

#[derive(Default)]
struct State {
    /// concept name → primary definition
    concepts: BTreeMap<String, String>,
    /// Shared with the candidates discovery hands out (no copy of an agent per task).
    agents: BTreeMap<String, Arc<AgentInfo>>,
    /// concept → agent → edge statistics: discovery reads one concept's edges, not all.
    /// (foldhash: discovery hashes the concept once a task; SipHash cost ~170 instructions.)
    edges: HashMap<String, BTreeMap<String, EdgeStats>, foldhash::fast::RandomState>,
    /// region name → what belongs to it
    regions: BTreeMap<String, RegionRecord>,
}

pub struct MemoryGraph {
    state: RwLock<State>,
}

#[derive(Debug, thiserror::Error)]
#[error("agent {agent:?} uses the demo agent {demo:?}, which is not running (DEMO_AGENTS=off or unknown name)")]
pub struct UnresolvedDemo {
    pub agent: String,
    pub demo: String,
}

impl MemoryGraph {
    /// Builds the graph from a validated seed; `demo_url` resolves `{demo:<name>}` endpoints.
    pub fn from_seed(
        seed: &Seed,
        demo_url: impl Fn(&str) -> Option<String>,
    ) -> Result<MemoryGraph, UnresolvedDemo> {
        let mut state = State::default();
        for r in &seed.regions {
            state.regions.insert(
                r.name.clone(),
                RegionRecord {
                    name: r.name.clone(),
                    ..RegionRecord::default()
                },
            );
        }
        let mut member = |region: &Option<String>, name: &str, agent: bool| {
            if let Some(r) = region.as_ref().and_then(|r| state.regions.get_mut(r)) {
                let list = if agent {
                    &mut r.agents
                } else {
                    &mut r.concepts
                };
                list.push(name.to_string());
                list.sort();
            }
        };
        for c in &seed.concepts {
            member(&c.region, &c.name, false);
        }
        for a in &seed.agents {
            member(&a.region, &a.name, true);
        }
        for c in &seed.concepts {
            state
                .concepts
                .insert(c.name.clone(), c.primary_definition.clone());
        }
        for a in &seed.agents {
            let endpoint = match demo_placeholder(&a.endpoint) {
                Some(demo) => demo_url(demo).ok_or_else(|| UnresolvedDemo {
                    agent: a.name.clone(),
                    demo: demo.to_string(),
                })?,
                None => a.endpoint.clone(),
            };
            state.agents.insert(
                a.name.clone(),
                Arc::new(AgentInfo {
                    endpoint,
                    ..a.info()
                }),
            );
        }
        for h in &seed.handles {
            state
                .edges
                .entry(h.concept.clone())
                .or_default()
                .insert(h.agent.clone(), EdgeStats::new(h.weight));
        }
        Ok(MemoryGraph {
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KnowledgeGraph for MemoryGraph {
    async fn discover(&self, concept: &str, intent: &str) -> Result<Vec<Candidate>, GraphError> {
        let state = self.read();
        let Some(edges) = state.edges.get(concept) else {
            return Ok(Vec::new());
        };
        let mut found: Vec<Candidate> = edges
            .iter()
            .filter_map(|(a, stats)| {
                let agent = state.agents.get(a)?;
                (agent.status == "active" && agent.intents.iter().any(|i| i == intent)).then(|| {
                    Candidate {
                        agent: agent.clone(),
                        stats: stats.clone(),
                    }
                })
            })
            .collect();
        sort_by_weight(&mut found);
        Ok(found)
    }

    async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError> {
        Ok(self.read().regions.values().cloned().collect())
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError> {
        let state = self.read();
        Ok(state
            .agents
            .values()
            .map(|agent| {
                let mut concepts: Vec<(String, EdgeStats)> = state
                    .edges
                    .iter()
                    .filter_map(|(c, edges)| Some((c.clone(), edges.get(&agent.name)?.clone())))
                    .collect();
                concepts.sort_by(|a, b| a.0.cmp(&b.0));
                AgentRecord {
                    agent: AgentInfo::clone(agent),
                    concepts,
                }
            })
            .collect())
    }

    async fn learn(&self, edges: &[EdgeOutcomes], deltas: Deltas) -> Learned {
        let mut state = self.write();
        let mut changes = Vec::with_capacity(edges.len());
        for e in edges {
            // Only existing edges learn: an outcome never invents an agent→concept link.
            let Some(stats) = state
                .edges
                .get_mut(&e.concept)
                .and_then(|edges| edges.get_mut(&e.agent))
            else {
                continue;
            };
            let old = stats.weight;
            for &success in &e.successes {
                hebbian(stats, success, deltas);
            }
            if e.estimate.is_some() {
                stats.estimate = e.estimate;
            }
            changes.push(WeightChange {
                agent: e.agent.clone(),
                concept: e.concept.clone(),
                old,
                new: stats.weight,
            });
        }
        Ok(changes)
    }

    async fn upsert_agent(
        &self,
        agent: AgentInfo,
        concepts: &[(String, f64)],
    ) -> Result<bool, GraphError> {
        let mut state = self.write();
        let existed = state.agents.contains_key(&agent.name);
        let name = agent.name.clone();
        for (c, edges) in state.edges.iter_mut() {
            if !concepts.iter().any(|(k, _)| k == c) {
                edges.remove(&name);
            }
        }
        state.edges.retain(|_, edges| !edges.is_empty());
        for (concept, weight) in concepts {
            state.concepts.entry(concept.clone()).or_default();
            state
                .edges
                .entry(concept.clone())
                .or_default()
                .entry(name.clone())
                .or_insert_with(|| EdgeStats::new(*weight));
        }
        state.agents.insert(name, Arc::new(agent));
        Ok(existed)
    }

    async fn add_concept(&self, name: &str, definition: &str) -> Result<(), GraphError> {
        self.write()
            .concepts
            .entry(name.to_string())
            .or_insert_with(|| definition.to_string());
        Ok(())
    }

    async fn remove_agent(&self, name: &str) -> Result<Option<Vec<String>>, GraphError> {
        let mut state = self.write();
        if state.agents.remove(name).is_none() {
            return Ok(None);
        }
        for region in state.regions.values_mut() {
            region.agents.retain(|a| a != name);
        }
        let mut concepts = Vec::new();
        state.edges.retain(|c, edges| {
            if edges.remove(name).is_some() {
                concepts.push(c.clone());
            }
            !edges.is_empty()
        });
        concepts.sort();
        Ok(Some(concepts))
    }

    async fn decay(&self, rate: f64) -> Result<usize, GraphError> {
        let mut state = self.write();
        let factor = (1.0 - rate).clamp(0.0, 1.0);
        let mut n = 0;
        for stats in state
            .edges
            .values_mut()
            .flat_map(|edges| edges.values_mut())
        {
            stats.weight *= factor;
            n += 1;
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<(), GraphError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> MemoryGraph {
        let seed = Seed::parse(
            r#"{"concepts":[{"name":"lamp"}],
            "agents":[
              {"name":"B","endpoint":"http://127.0.0.1:1/q","intents":["define","compare"]},
              {"name":"A","endpoint":"http://127.0.0.1:2/q","intents":["define"]},
              {"name":"C","endpoint":"{demo:factbase}","intents":["compare"]}],
            "handles":[{"agent":"A","concept":"lamp","weight":0.5},
                       {"agent":"B","concept":"lamp","weight":0.5},
                       {"agent":"C","concept":"lamp","weight":0.9}]}"#,
        )
        .unwrap();
        MemoryGraph::from_seed(&seed, |d| Some(format!("http://demo/{d}"))).unwrap()
    }

    #[tokio::test]
    async fn discovery_honours_the_intent_and_ranks_deterministically() {
        let g = graph();
        let names = |c: Vec<Candidate>| {
            c.into_iter()
                .map(|c| c.agent.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(g.discover("lamp", "define").await.unwrap()),
            ["A", "B"]
        );
        assert_eq!(
            names(g.discover("lamp", "compare").await.unwrap()),
            ["C", "B"]
        );
        assert!(g.discover("lamp", "dance").await.unwrap().is_empty());
        assert!(g.discover("sun", "define").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn learning_moves_the_edge_of_the_agent_that_answered() {
        let g = graph();
        let deltas = Deltas {
            success: 0.05,
            failure: 0.02,
        };
        let edge = |agent: &str, successes: &[bool]| EdgeOutcomes {
            agent: agent.into(),
            concept: "lamp".into(),
            successes: successes.to_vec(),
            estimate: None,
        };
        let changes = g.learn(&[edge("B", &[true])], deltas).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert!((changes[0].new - 0.55).abs() < 1e-9);
        // B now outranks A for "define".
        let first = &g.discover("lamp", "define").await.unwrap()[0];
        assert_eq!(first.agent.name, "B");
        assert!(g
            .learn(&[edge("Z", &[true])], deltas)
            .await
            .unwrap()
            .is_empty());
        // A batch of many outcomes of one edge is one change, applied one at a time:
        // ten successes from 0.55 stop at 1.0, and the failure after them counts from there.
        let mut many = vec![true; 10];
        many.push(false);
        let changes = g.learn(&[edge("B", &many)], deltas).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert!((changes[0].old - 0.55).abs() < 1e-9);
        assert!((changes[0].new - 0.98).abs() < 1e-9, "{:?}", changes[0]);
    }

    #[tokio::test]
    async fn agents_can_be_registered_and_removed() {
        let g = graph();
        let agent = AgentInfo {
            name: "D".into(),
            agent_type: "dynamic".into(),
            endpoint: "http://127.0.0.1:9/q".into(),
            status: "active".into(),
            intents: vec!["define".into()],
            capabilities: vec![],
            facts: None,
        };
        assert!(!g
            .upsert_agent(agent.clone(), &[("sun".into(), 0.7)])
            .await
            .unwrap());
        assert_eq!(
            g.discover("sun", "define").await.unwrap()[0].agent.name,
            "D"
        );
        assert!(g.upsert_agent(agent, &[("sun".into(), 0.1)]).await.unwrap());
        let c = g.discover("sun", "define").await.unwrap();
        assert_eq!(
            c[0].stats.weight, 0.7,
            "an existing edge keeps its learned weight"
        );
        assert_eq!(
            g.remove_agent("D").await.unwrap(),
            Some(vec!["sun".to_string()])
        );
        assert!(g.discover("sun", "define").await.unwrap().is_empty());
        assert_eq!(g.remove_agent("D").await.unwrap(), None);
    }

    #[tokio::test]
    async fn decay_shrinks_every_weight() {
        let g = graph();
        g.decay(0.5).await.unwrap();
        let c = g.discover("lamp", "compare").await.unwrap();
        assert!((c[0].stats.weight - 0.45).abs() < 1e-9);
    }

    #[test]
    fn a_missing_demo_agent_is_named() {
        let seed = Seed::parse(
            r#"{"agents":[{"name":"C","endpoint":"{demo:factbase}","intents":["define"]}]}"#,
        )
        .unwrap();
        let err = MemoryGraph::from_seed(&seed, |_| None).err().unwrap();
        assert_eq!(err.demo, "factbase");
    }
}
