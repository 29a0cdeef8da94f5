//! The graph's operations in Cypher: discovery, the agent list, learning, registration,
//! decay — each a parameterised query run through the connection of `mod.rs`.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use neo4rs::{query, BoltType, Query, Row};

use super::{Neo4jGraph, AGENT_FIELDS, EDGE_FIELDS};
use crate::graph::{
    seed::demo_placeholder, sort_by_weight, AgentInfo, AgentRecord, Candidate, Deltas,
    EdgeOutcomes, EdgeStats, GraphError, KnowledgeGraph, Learned, RegionRecord, WeightChange,
};

impl Neo4jGraph {
    fn agent(&self, row: &Row) -> Option<AgentInfo> {
        let endpoint: String = row.get("endpoint").ok()?;
        let endpoint = match demo_placeholder(&endpoint) {
            Some(id) => (self.resolve)(id).unwrap_or(endpoint),
            None => endpoint,
        };
        Some(AgentInfo {
            name: row.get("name").ok()?,
            agent_type: row.get("type").unwrap_or_else(|_| "static".into()),
            endpoint,
            status: row.get("status").unwrap_or_else(|_| "active".into()),
            intents: row.get("intents").unwrap_or_default(),
            capabilities: row.get("capabilities").unwrap_or_default(),
            facts: row.get::<Option<String>>("facts").ok().flatten(),
        })
    }
}

fn stats(row: &Row) -> EdgeStats {
    EdgeStats {
        weight: row.get("weight").unwrap_or(0.0),
        usage_count: row.get::<i64>("usage_count").unwrap_or(0).max(0) as u64,
        success_count: row.get::<i64>("success_count").unwrap_or(0).max(0) as u64,
        failure_count: row.get::<i64>("failure_count").unwrap_or(0).max(0) as u64,
        success_rate: row.get("success_rate").unwrap_or(0.0),
        estimate: match (
            row.get::<Option<f64>>("estimate_ok").ok().flatten(),
            row.get::<Option<f64>>("estimate_failed").ok().flatten(),
        ) {
            (Some(ok), Some(failed)) => Some([ok, failed]),
            _ => None,
        },
    }
}

/// Creates or updates an agent node with every property it carries.
pub(super) fn agent_merge(agent: &AgentInfo) -> Query {
    query(
        "MERGE (a:Agent {name: $name}) SET a.type = $type, a.endpoint = $endpoint, \
         a.status = $status, a.intents = $intents, a.capabilities = $caps, a.facts = $facts",
    )
    .param("name", agent.name.as_str())
    .param("type", agent.agent_type.as_str())
    .param("endpoint", agent.endpoint.as_str())
    .param("status", agent.status.as_str())
    .param("intents", agent.intents.clone())
    .param("caps", agent.capabilities.clone())
    .param("facts", agent.facts.clone())
}

pub(super) fn edge_merge(agent: &str, concept: &str, weight: f64) -> Query {
    query(
        "MATCH (a:Agent {name: $agent}), (c:Concept {name: $concept}) \
         MERGE (a)-[h:HANDLES_CONCEPT]->(c) ON CREATE SET h.weight = $weight, h.usage_count = 0, \
         h.success_count = 0, h.failure_count = 0, h.success_rate = 0.0",
    )
    .param("agent", agent)
    .param("concept", concept)
    .param("weight", weight)
}

#[async_trait]
impl KnowledgeGraph for Neo4jGraph {
    async fn discover(&self, concept: &str, intent: &str) -> Result<Vec<Candidate>, GraphError> {
        let q = format!(
            "MATCH (a:Agent)-[h:HANDLES_CONCEPT]->(c:Concept {{name: $concept}}) \
             WHERE $intent IN a.intents AND a.status = 'active' \
             RETURN {AGENT_FIELDS}, {EDGE_FIELDS} \
             ORDER BY weight DESC, success_rate DESC, name ASC"
        );
        let rows = self
            .rows(query(&q).param("concept", concept).param("intent", intent))
            .await?;
        let mut found: Vec<Candidate> = rows
            .iter()
            .filter_map(|r| {
                Some(Candidate {
                    agent: std::sync::Arc::new(self.agent(r)?),
                    stats: stats(r),
                })
            })
            .collect();
        sort_by_weight(&mut found);
        Ok(found)
    }

    async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError> {
        let mut regions: BTreeMap<String, RegionRecord> = self
            .rows(query("MATCH (r:Region) RETURN r.name AS name"))
            .await?
            .iter()
            .filter_map(|r| r.get::<String>("name").ok())
            .map(|name| {
                let record = RegionRecord {
                    name: name.clone(),
                    ..RegionRecord::default()
                };
                (name, record)
            })
            .collect();
        for label in ["Concept", "Agent"] {
            let members = self
                .rows(query(&format!(
                    "MATCH (n:{label})-[:BELONGS_TO]->(r:Region) RETURN r.name AS region, n.name AS name"
                )))
                .await?;
            for m in &members {
                let (Ok(region), Ok(name)) = (m.get::<String>("region"), m.get::<String>("name"))
                else {
                    continue;
                };
                if let Some(r) = regions.get_mut(&region) {
                    let list = if label == "Agent" {
                        &mut r.agents
                    } else {
                        &mut r.concepts
                    };
                    list.push(name);
                    list.sort();
                }
            }
        }
        Ok(regions.into_values().collect())
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError> {
        let agents = self
            .rows(query(&format!(
                "MATCH (a:Agent) RETURN {AGENT_FIELDS} ORDER BY name"
            )))
            .await?;
        let edges = self
            .rows(query(&format!(
                "MATCH (a:Agent)-[h:HANDLES_CONCEPT]->(c:Concept) RETURN a.name AS agent, c.name AS concept, {EDGE_FIELDS}"
            )))
            .await?;
        let mut by_agent: HashMap<String, Vec<(String, EdgeStats)>> = HashMap::new();
        for e in &edges {
            if let (Ok(agent), Ok(concept)) = (e.get::<String>("agent"), e.get::<String>("concept"))
            {
                by_agent.entry(agent).or_default().push((concept, stats(e)));
            }
        }
        Ok(agents
            .iter()
            .filter_map(|r| self.agent(r))
            .map(|agent| {
                let mut concepts = by_agent.remove(&agent.name).unwrap_or_default();
                concepts.sort_by(|a, b| a.0.cmp(&b.0));
                AgentRecord { agent, concepts }
            })
            .collect())
    }

    async fn learn(&self, edges: &[EdgeOutcomes], deltas: Deltas) -> Learned {
        // One write per batch: each edge's outcomes in order, the Hebbian rule applied one
        // at a time (`reduce`), clamped at each step as the embedded graph does.
        let updates: Vec<HashMap<String, BoltType>> = edges
            .iter()
            .map(|e| {
                let wins = e.successes.iter().filter(|s| **s).count() as i64;
                let losses = e.successes.len() as i64 - wins;
                let mut u = HashMap::from([
                    ("agent".to_string(), BoltType::from(e.agent.as_str())),
                    ("concept".to_string(), BoltType::from(e.concept.as_str())),
                    ("wins".to_string(), BoltType::from(wins)),
                    ("losses".to_string(), BoltType::from(losses)),
                    ("seq".to_string(), BoltType::from(e.successes.clone())),
                ]);
                if let Some([ok, failed]) = e.estimate {
                    u.insert("est_ok".to_string(), BoltType::from(ok));
                    u.insert("est_failed".to_string(), BoltType::from(failed));
                }
                u
            })
            .collect();
        let rows = self
            .rows(
                query(
                    "UNWIND $updates AS u \
                     MATCH (a:Agent {name: u.agent})-[h:HANDLES_CONCEPT]->(c:Concept {name: u.concept}) \
                     WITH h, u, h.weight AS old, h.usage_count AS uses, h.success_count AS wins \
                     SET h.usage_count = uses + u.wins + u.losses, \
                         h.success_count = wins + u.wins, \
                         h.failure_count = h.failure_count + u.losses, \
                         h.weight = reduce(w = old, s IN u.seq | CASE WHEN s \
                             THEN (CASE WHEN w + $up > 1.0 THEN 1.0 ELSE w + $up END) \
                             ELSE (CASE WHEN w - $down < 0.0 THEN 0.0 ELSE w - $down END) END), \
                         h.success_rate = toFloat(wins + u.wins) / (uses + u.wins + u.losses), \
                         h.estimate_ok = coalesce(u.est_ok, h.estimate_ok), \
                         h.estimate_failed = coalesce(u.est_failed, h.estimate_failed), \
                         h.last_used = timestamp(), h.last_updated = timestamp() \
                     RETURN u.agent AS agent, u.concept AS concept, old, h.weight AS new",
                )
                .param("updates", updates)
                .param("up", deltas.success)
                .param("down", deltas.failure),
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(WeightChange {
                    agent: r.get("agent").ok()?,
                    concept: r.get("concept").ok()?,
                    old: r.get("old").ok()?,
                    new: r.get("new").ok()?,
                })
            })
            .collect())
    }

    async fn upsert_agent(
        &self,
        agent: AgentInfo,
        concepts: &[(String, f64)],
    ) -> Result<bool, GraphError> {
        let existed = !self
            .rows(
                query("MATCH (a:Agent {name: $name}) RETURN a.name AS name")
                    .param("name", agent.name.as_str()),
            )
            .await?
            .is_empty();
        self.exec(agent_merge(&agent)).await?;
        let names: Vec<String> = concepts.iter().map(|(c, _)| c.clone()).collect();
        self.exec(
            query(
                "MATCH (a:Agent {name: $name})-[h:HANDLES_CONCEPT]->(c:Concept) \
                 WHERE NOT c.name IN $keep DELETE h",
            )
            .param("name", agent.name.as_str())
            .param("keep", names),
        )
        .await?;
        for (concept, weight) in concepts {
            self.exec(query("MERGE (c:Concept {name: $name})").param("name", concept.as_str()))
                .await?;
            self.exec(edge_merge(&agent.name, concept, *weight)).await?;
        }
        Ok(existed)
    }

    async fn remove_agent(&self, name: &str) -> Result<Option<Vec<String>>, GraphError> {
        let rows = self
            .rows(
                query(
                    "MATCH (a:Agent {name: $name}) OPTIONAL MATCH (a)-[:HANDLES_CONCEPT]->(c:Concept) \
                     RETURN c.name AS concept",
                )
                .param("name", name),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        self.exec(query("MATCH (a:Agent {name: $name}) DETACH DELETE a").param("name", name))
            .await?;
        let mut concepts: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get::<Option<String>>("concept").ok().flatten())
            .collect();
        concepts.sort();
        Ok(Some(concepts))
    }

    async fn add_concept(&self, name: &str, definition: &str) -> Result<(), GraphError> {
        self.exec(
            query(
                "MERGE (c:Concept {name: $name}) ON CREATE SET c.primary_definition = $def, \
                 c.created_by = 'neurogenesis'",
            )
            .param("name", name)
            .param("def", definition),
        )
        .await
    }

    async fn decay(&self, rate: f64) -> Result<usize, GraphError> {
        let rows = self
            .rows(
                query("MATCH ()-[h:HANDLES_CONCEPT]->() SET h.weight = h.weight * $factor RETURN count(h) AS n")
                    .param("factor", (1.0 - rate).clamp(0.0, 1.0)),
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<i64>("n").ok())
            .unwrap_or_default() as usize)
    }

    async fn ping(&self) -> Result<(), GraphError> {
        self.rows(query("RETURN 1 AS ok")).await.map(|_| ())
    }

    fn backend(&self) -> &'static str {
        "neo4j"
    }

    fn is_remote(&self) -> bool {
        true
    }
}
