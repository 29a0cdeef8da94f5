//! The knowledge graph: which agent handles which concept and intent, and how well.
//!
//! The pipeline only sees [`KnowledgeGraph`]; `memory` is the embedded backend loaded from a
//! seed file (see [`seed`] for the format, a public contract).

pub mod gate;
pub mod memory;
pub mod neo4j;
pub mod seed;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// An agent as recorded in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    pub endpoint: String,
    pub status: String,
    pub intents: Vec<String>,
    pub capabilities: Vec<String>,
    /// What neurogenesis learned about a dynamic agent's concept; sent as `args.facts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<String>,
}

/// Learned statistics of one agent→concept edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    pub weight: f64,
    pub usage_count: u64,
    pub success_count: u64,
    pub failure_count: u64,
    pub success_rate: f64,
    /// The learned routing estimate's decayed evidence (successes, failures) when it was last
    /// written with the weight; a replica that has not seen the pair yet starts from it.
    #[serde(default)]
    pub estimate: Option<[f64; 2]>,
}

impl EdgeStats {
    pub fn new(weight: f64) -> Self {
        EdgeStats {
            weight,
            usage_count: 0,
            success_count: 0,
            failure_count: 0,
            success_rate: 0.0,
            estimate: None,
        }
    }
}

/// One agent able to serve a (concept, intent), with its edge statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Shared with the graph's own record (cloning a candidate copies no agent).
    pub agent: std::sync::Arc<AgentInfo>,
    pub stats: EdgeStats,
}

/// An agent with every concept it handles.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent: AgentInfo,
    pub concepts: Vec<(String, EdgeStats)>,
}

/// A region of the graph with the concepts and agents that belong to it, by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionRecord {
    pub name: String,
    pub concepts: Vec<String>,
    pub agents: Vec<String>,
}

/// The outcome of one agent call, fed to Hebbian learning.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub agent: String,
    pub concept: String,
    pub success: bool,
    /// The learned estimate's evidence (successes, failures) right after this outcome, to
    /// persist on the edge.
    pub estimate: Option<[f64; 2]>,
}

/// The outcomes of one agent→concept edge in a learning batch, in the order they happened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EdgeOutcomes {
    pub agent: String,
    pub concept: String,
    /// `true` for a success, in arrival order (the Hebbian rule is applied one at a time).
    pub successes: Vec<bool>,
    /// The learned estimate's evidence after the last of them.
    pub estimate: Option<[f64; 2]>,
}

/// Groups outcomes per edge, keeping each edge's order; edges in order of first appearance.
/// Linear in the number of outcomes.
pub fn per_edge(outcomes: impl IntoIterator<Item = Outcome>) -> Vec<EdgeOutcomes> {
    let mut index: std::collections::HashMap<(String, String), usize> = Default::default();
    let mut edges: Vec<EdgeOutcomes> = Vec::new();
    for o in outcomes {
        let i = *index
            .entry((o.agent.clone(), o.concept.clone()))
            .or_insert_with(|| {
                edges.push(EdgeOutcomes {
                    agent: o.agent,
                    concept: o.concept,
                    successes: Vec::new(),
                    estimate: None,
                });
                edges.len() - 1
            });
        edges[i].successes.push(o.success);
        if o.estimate.is_some() {
            edges[i].estimate = o.estimate;
        }
    }
    edges
}

/// What learning did to one edge in a batch, for logs and traces.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightChange {
    pub agent: String,
    pub concept: String,
    /// The weight before the batch and after it.
    pub old: f64,
    pub new: f64,
}

/// Hebbian constants, applied by the graph backend.
#[derive(Debug, Clone, Copy)]
pub struct Deltas {
    pub success: f64,
    pub failure: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("graph backend unavailable: {0}")]
    Unavailable(String),
    #[error("graph query timed out")]
    Timeout,
    /// Discovery did not ask: the graph failed moments ago.
    #[error("the graph failed moments ago")]
    RecentFailure,
    /// The graph answered "nobody" for a route it had: taken as the graph recovering.
    #[error("the graph answered empty for a known route")]
    EmptyAnswer,
}

impl GraphError {
    /// Why a stale route was served instead of this answer (a metric label).
    pub fn stale_reason(&self) -> &'static str {
        match self {
            GraphError::Unavailable(_) => "graph_error",
            GraphError::Timeout => "graph_timeout",
            GraphError::RecentFailure => "recent_failure",
            GraphError::EmptyAnswer => "empty_answer",
        }
    }
}

/// Canonical form of a concept name: trimmed, lower case, inner whitespace collapsed.
/// [`normalize_concept`] of a name the caller owns: kept as it is when it is already
/// normal (ASCII, lowercase, words one space apart), the usual case, with nothing copied.
pub fn normalized_concept(name: impl AsRef<str> + Into<String>) -> String {
    let text = name.as_ref();
    let normal = text.bytes().all(|b| {
        b.is_ascii() && !b.is_ascii_uppercase() && (b == b' ' || !b.is_ascii_whitespace())
    }) && !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.contains("  ");
    if normal {
        name.into()
    } else {
        normalize_concept(text)
    }
}

pub fn normalize_concept(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for word in name.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.is_ascii() {
            out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(&word.to_lowercase());
        }
    }
    out
}

#[async_trait]
pub trait KnowledgeGraph: Send + Sync + 'static {
    /// Agents that handle `concept` and list `intent`, best first (weight, then success rate,
    /// then name — deterministic).
    async fn discover(&self, concept: &str, intent: &str) -> Result<Vec<Candidate>, GraphError>;
    /// Every agent with its concepts, ordered by name.
    async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError>;
    /// Every region with what belongs to it (`BELONGS_TO`), all ordered by name.
    async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError>;
    /// Applies a batch of outcomes (the Hebbian rule, one outcome at a time in each edge's
    /// order), keyed by the agent's real name. One change per existing edge; outcomes of
    /// edges that do not exist are ignored.
    async fn learn(&self, edges: &[EdgeOutcomes], deltas: Deltas) -> Learned;
    /// Registers `agent` (or replaces the agent of that name) handling `concepts` with the
    /// given initial weights; unknown concepts are created. True when it already existed.
    async fn upsert_agent(
        &self,
        agent: AgentInfo,
        concepts: &[(String, f64)],
    ) -> Result<bool, GraphError>;
    /// Records a concept (idempotent: an existing one keeps its definition).
    async fn add_concept(&self, name: &str, definition: &str) -> Result<(), GraphError>;
    /// Removes an agent and its edges; the concepts it handled (None when it did not exist).
    async fn remove_agent(&self, name: &str) -> Result<Option<Vec<String>>, GraphError>;
    /// Multiplies every weight by `1 - rate`.
    async fn decay(&self, rate: f64) -> Result<usize, GraphError>;
    /// Cheap reachability probe.
    async fn ping(&self) -> Result<(), GraphError>;
    /// Backend name for `/status`.
    fn backend(&self) -> &'static str;
    /// True when queries leave the process (worth caching discovery in front of).
    fn is_remote(&self) -> bool {
        false
    }
}

/// Ranking shared by every backend: weight desc, success rate desc, name asc.
pub fn sort_by_weight(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        b.stats
            .weight
            .total_cmp(&a.stats.weight)
            .then(b.stats.success_rate.total_cmp(&a.stats.success_rate))
            .then_with(|| a.agent.name.cmp(&b.agent.name))
    });
}

/// The Hebbian rule on one edge.
pub fn hebbian(stats: &mut EdgeStats, success: bool, deltas: Deltas) {
    stats.usage_count += 1;
    if success {
        stats.success_count += 1;
        stats.weight = (stats.weight + deltas.success).min(1.0);
    } else {
        stats.failure_count += 1;
        stats.weight = (stats.weight - deltas.failure).max(0.0);
    }
    stats.success_rate = stats.success_count as f64 / stats.usage_count as f64;
}

/// What a learning batch changed: one entry per edge it reached.
pub type Learned = Result<Vec<WeightChange>, GraphError>;

/// Times every call of a graph backend into the `graph_query_duration_seconds` histogram.
pub struct TimedGraph<G> {
    graph: G,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// `discover`'s series, looked up once (discovery runs once a task).
    discover: prometheus::Histogram,
}

impl<G> TimedGraph<G> {
    pub fn new(graph: G, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        let discover = metrics.graph_queries.with_label_values(&["discover"]);
        TimedGraph {
            graph,
            metrics,
            discover,
        }
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $e:expr) => {{
        let _t = $self
            .metrics
            .graph_queries
            .with_label_values(&[$op])
            .start_timer();
        $e
    }};
}

#[async_trait]
impl<G: KnowledgeGraph> KnowledgeGraph for TimedGraph<G> {
    async fn discover(&self, concept: &str, intent: &str) -> Result<Vec<Candidate>, GraphError> {
        let _t = self.discover.start_timer();
        self.graph.discover(concept, intent).await
    }
    async fn regions(&self) -> Result<Vec<RegionRecord>, GraphError> {
        timed!(self, "regions", self.graph.regions().await)
    }
    async fn agents(&self) -> Result<Vec<AgentRecord>, GraphError> {
        timed!(self, "agents", self.graph.agents().await)
    }
    async fn learn(&self, edges: &[EdgeOutcomes], deltas: Deltas) -> Learned {
        timed!(self, "learn", self.graph.learn(edges, deltas).await)
    }
    async fn upsert_agent(
        &self,
        agent: AgentInfo,
        concepts: &[(String, f64)],
    ) -> Result<bool, GraphError> {
        timed!(
            self,
            "upsert_agent",
            self.graph.upsert_agent(agent, concepts).await
        )
    }
    async fn add_concept(&self, name: &str, definition: &str) -> Result<(), GraphError> {
        timed!(
            self,
            "add_concept",
            self.graph.add_concept(name, definition).await
        )
    }
    async fn remove_agent(&self, name: &str) -> Result<Option<Vec<String>>, GraphError> {
        timed!(self, "remove_agent", self.graph.remove_agent(name).await)
    }
    async fn decay(&self, rate: f64) -> Result<usize, GraphError> {
        timed!(self, "decay", self.graph.decay(rate).await)
    }
    async fn ping(&self) -> Result<(), GraphError> {
        timed!(self, "ping", self.graph.ping().await)
    }
    fn backend(&self) -> &'static str {
        self.graph.backend()
    }
    fn is_remote(&self) -> bool {
        self.graph.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hebbian_rule_is_clamped_to_the_unit_interval() {
        let d = Deltas {
            success: 0.05,
            failure: 0.02,
        };
        let mut s = EdgeStats::new(0.98);
        hebbian(&mut s, true, d);
        assert_eq!(s.weight, 1.0);
        let mut s = EdgeStats::new(0.01);
        hebbian(&mut s, false, d);
        assert_eq!(s.weight, 0.0);
        assert_eq!((s.usage_count, s.failure_count), (1, 1));
        assert_eq!(s.success_rate, 0.0);
    }

    #[test]
    fn outcomes_are_grouped_per_edge_in_order() {
        let o = |a: &str, c: &str, success| Outcome {
            agent: a.into(),
            concept: c.into(),
            success,
            estimate: None,
        };
        let edges = per_edge([
            o("A", "x", true),
            o("B", "x", false),
            o("A", "x", false),
            o("A", "y", true),
            o("A", "x", true),
        ]);
        let got: Vec<(&str, &str, &[bool])> = edges
            .iter()
            .map(|e| (e.agent.as_str(), e.concept.as_str(), &e.successes[..]))
            .collect();
        assert_eq!(
            got,
            [
                ("A", "x", &[true, false, true][..]),
                ("B", "x", &[false][..]),
                ("A", "y", &[true][..]),
            ]
        );
    }

    #[test]
    fn concepts_are_normalized() {
        assert_eq!(normalize_concept("  Light   Bulb "), "light bulb");
        // Word by word, as the whole string lowercased (Greek final sigma included).
        for s in [
            "ΟΔΟΣ  ΣΟΦΟΣ Σ",
            "İstanbul\tÉTÉ",
            " \u{3000}Ab\u{85}CD ",
            "",
            "   ",
        ] {
            let whole = s
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            assert_eq!(normalize_concept(s), whole, "{s:?}");
        }
        // A name already normal is kept; any other is normalized, as by the copying form.
        for s in [
            "light bulb",
            "light  bulb",
            " light",
            "light ",
            "Light",
            "light\tbulb",
            "light\u{a0}bulb",
            "été",
            "a-b_c.d'e 9",
            "",
            " ",
        ] {
            assert_eq!(
                normalized_concept(s.to_string()),
                normalize_concept(s),
                "{s:?}"
            );
        }
    }
}
