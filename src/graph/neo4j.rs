//! The production graph: Neo4j 5 (or any Bolt 4.x server speaking OpenCypher) via neo4rs.
//!
//! Every call runs under its own timeout: neo4rs retries transient errors internally for up
//! to a minute, which must never reach a request. User input is only ever a parameter.
//! The Cypher here is the subset Neo4j 5 and ArcadeDB (the test server) both accept.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use neo4rs::{query, BoltType, ConfigBuilder, Query, Row};

use super::{
    seed::{demo_placeholder, Seed},
    sort_by_weight, AgentInfo, AgentRecord, Candidate, Deltas, EdgeOutcomes, EdgeStats, GraphError,
    KnowledgeGraph, Learned, RegionRecord, WeightChange,
};

/// Resolves `{demo:<id>}` endpoints to the demo agents running in this process.
pub type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct Neo4jGraph {
    /// The connection pool; replaced by a fresh one after a query was cut off (see `pool`).
    graph: std::sync::RwLock<neo4rs::Graph>,
    /// A query was cut off by its timeout since the pool was made.
    cut_off: Arc<std::sync::atomic::AtomicBool>,
    config: neo4rs::Config,
    timeout: Duration,
    resolve: Resolver,
}

/// A query on its way; dropped before [`Running::ended`], it marks the pool as cut off.
struct Running(Option<Arc<std::sync::atomic::AtomicBool>>);

impl Running {
    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(cut_off) = &self.0 {
            cut_off.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Settings of the Bolt connection.
#[derive(Clone)]
pub struct Neo4jSettings {
    pub uri: String,
    pub user: String,
    pub password: String,
    pub database: Option<String>,
    pub timeout: Duration,
    pub pool: usize,
}

fn unavailable(e: neo4rs::Error) -> GraphError {
    tracing::debug!(error = %e, "graph query failed");
    GraphError::Unavailable("the graph server failed the query".into())
}

const AGENT_FIELDS: &str = "a.name AS name, a.type AS type, a.endpoint AS endpoint, \
     a.status AS status, a.intents AS intents, a.capabilities AS capabilities, a.facts AS facts";
const EDGE_FIELDS: &str = "h.weight AS weight, h.usage_count AS usage_count, \
     h.success_count AS success_count, h.failure_count AS failure_count, h.success_rate AS success_rate";

/// Runs a query (bounded by its own timeout) in a task of its own, so that a caller that
/// goes away (a client that left mid-discovery) lets it finish instead of cutting its
/// connection off mid-answer: under a load of leaving clients, cutting off renewed the whole
/// pool dozens of times a minute.
async fn detached<T: Send + 'static>(
    query: impl std::future::Future<Output = Result<T, GraphError>> + Send + 'static,
) -> Result<T, GraphError> {
    tokio::spawn(query).await.unwrap_or_else(|_| {
        Err(GraphError::Unavailable(
            "the graph query was stopped".into(),
        ))
    })
}

impl Neo4jGraph {
    /// Builds the (lazy) connection pool; nothing touches the server yet.
    pub async fn connect(s: &Neo4jSettings, resolve: Resolver) -> Result<Self, GraphError> {
        let uri = s
            .uri
            .trim_start_matches("bolt://")
            .trim_start_matches("neo4j://")
            .to_string();
        let mut config = ConfigBuilder::default()
            .uri(uri)
            .user(s.user.as_str())
            .password(s.password.as_str())
            .max_connections(s.pool)
            .fetch_size(500);
        if let Some(db) = &s.database {
            config = config.db(db.as_str());
        }
        let config = config
            .build()
            .map_err(|_| GraphError::Unavailable("invalid Bolt configuration".into()))?;
        let graph = tokio::time::timeout(s.timeout, neo4rs::Graph::connect(config.clone()))
            .await
            .map_err(|_| GraphError::Timeout)?
            .map_err(unavailable)?;
        Ok(Neo4jGraph {
            graph: std::sync::RwLock::new(graph),
            cut_off: Default::default(),
            config,
            timeout: s.timeout,
            resolve,
        })
    }

    /// The pool to run a query on, and a guard to drop when the query ended.
    ///
    /// A query cut off by its timeout leaves its answer unread on its connection, and the
    /// driver would hand that connection, out of step, to the next query, which would then
    /// read the old answer as its own. So after a cut-off the pool is replaced by a fresh
    /// one (lazy: nothing opens until a query needs it); the old one closes as its last
    /// users finish. (A caller that goes away does not cut a query off: see [`detached`].)
    async fn pool(&self) -> (neo4rs::Graph, Running) {
        use std::sync::atomic::Ordering;
        if self.cut_off.swap(false, Ordering::AcqRel) {
            if let Ok(Ok(fresh)) =
                tokio::time::timeout(self.timeout, neo4rs::Graph::connect(self.config.clone()))
                    .await
            {
                *self.graph.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::debug!("graph connection pool renewed after a query was cut off");
            } else {
                self.cut_off.store(true, Ordering::Release);
            }
        }
        let graph = self.graph.read().unwrap_or_else(|e| e.into_inner()).clone();
        (graph, Running(Some(self.cut_off.clone())))
    }

    async fn rows(&self, q: Query) -> Result<Vec<Row>, GraphError> {
        let (graph, running) = self.pool().await;
        let timeout = self.timeout;
        detached(async move {
            let work = async {
                let mut stream = graph.execute(q).await.map_err(unavailable)?;
                let mut rows = Vec::new();
                while let Some(row) = stream.next().await.map_err(unavailable)? {
                    rows.push(row);
                }
                Ok(rows)
            };
            let rows = tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| GraphError::Timeout)?;
            running.ended();
            rows
        })
        .await
    }

    /// `(node)-[:BELONGS_TO]->(region)`; `label` is `Concept` or `Agent`.
    async fn link_region(&self, label: &str, name: &str, region: &str) -> Result<(), GraphError> {
        let cypher = format!(
            "MATCH (n:{label} {{name: $name}}), (r:Region {{name: $region}}) MERGE (n)-[:BELONGS_TO]->(r)"
        );
        self.exec(query(&cypher).param("name", name).param("region", region))
            .await
    }

    async fn exec(&self, q: Query) -> Result<(), GraphError> {
        let (graph, running) = self.pool().await;
        let timeout = self.timeout;
        detached(async move {
            let done = tokio::time::timeout(timeout, graph.run(q))
                .await
                .map_err(|_| GraphError::Timeout)?;
            running.ended();
            done.map_err(unavailable)
        })
        .await
    }

    /// Uniqueness constraints on names, where the server supports them (idempotent).
    pub async fn ensure_schema(&self) {
        for (name, label) in [
            ("agent_name", "Agent"),
            ("concept_name", "Concept"),
            ("region_name", "Region"),
        ] {
            let q = format!(
                "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (n:{label}) REQUIRE n.name IS UNIQUE"
            );
            if let Err(e) = self.exec(query(&q)).await {
                tracing::info!(error = %e, label, "uniqueness constraint not created (server may not support it)");
            }
        }
    }

    /// Loads a seed; MERGE throughout, and edges keep learned weights, so a second run
    /// changes nothing.
    pub async fn seed(&self, seed: &Seed) -> Result<(), GraphError> {
        self.ensure_schema().await;
        for r in &seed.regions {
            self.exec(query("MERGE (r:Region {name: $name})").param("name", r.name.as_str()))
                .await?;
        }
        for c in &seed.concepts {
            self.exec(
                query("MERGE (c:Concept {name: $name}) ON CREATE SET c.primary_definition = $def")
                    .param("name", c.name.as_str())
                    .param("def", c.primary_definition.as_str()),
            )
            .await?;
            if let Some(region) = &c.region {
                self.link_region("Concept", &c.name, region).await?;
            }
        }
        for a in &seed.agents {
            self.exec(
                query(
                    "MERGE (a:Agent {name: $name}) SET a.type = $type, a.endpoint = $endpoint, \
                     a.status = 'active', a.intents = $intents, a.capabilities = $caps",
                )
                .param("name", a.name.as_str())
                .param("type", a.agent_type.as_str())
                .param("endpoint", a.endpoint.as_str())
                .param("intents", a.intents.clone())
                .param("caps", a.capabilities.clone()),
            )
            .await?;
            if let Some(region) = &a.region {
                self.link_region("Agent", &a.name, region).await?;
            }
        }
        for h in &seed.handles {
            self.exec(edge_merge(&h.agent, &h.concept, h.weight))
                .await?;
        }
        Ok(())
    }

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
    }
}

fn edge_merge(agent: &str, concept: &str, weight: f64) -> Query {
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
                    agent: self.agent(r)?,
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
                HashMap::from([
                    ("agent".to_string(), BoltType::from(e.agent.as_str())),
                    ("concept".to_string(), BoltType::from(e.concept.as_str())),
                    ("wins".to_string(), BoltType::from(wins)),
                    ("losses".to_string(), BoltType::from(losses)),
                    ("seq".to_string(), BoltType::from(e.successes.clone())),
                ])
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
        self.exec(
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
            .param("facts", agent.facts.clone()),
        )
        .await?;
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
