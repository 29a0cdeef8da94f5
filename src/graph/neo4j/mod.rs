//! The production graph: Neo4j 5 (or any Bolt 4.x server speaking OpenCypher) via neo4rs.
//!
//! Every call runs under its own timeout: neo4rs retries transient errors internally for up
//! to a minute, which must never reach a request. User input is only ever a parameter.
//! The Cypher here is the subset Neo4j 5 and ArcadeDB (the test server) both accept.

use std::{sync::Arc, time::Duration};

use neo4rs::{query, ConfigBuilder, Query, Row};

use super::{seed::Seed, GraphError};
use cypher::{agent_merge, edge_merge};

mod cypher;

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
     h.success_count AS success_count, h.failure_count AS failure_count, h.success_rate AS success_rate, \
     h.estimate_ok AS estimate_ok, h.estimate_failed AS estimate_failed";

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
            self.exec(agent_merge(&a.info())).await?;
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
}
