//! Neurogenesis: when no agent handles a concept, research it with the agents that can
//! collaborate, record the concept, and register a dynamic agent for it — once per
//! concept, however many requests ask at the same time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    agents::AgentTransport,
    cache::{Caches, Invalidation},
    graph::{AgentInfo, KnowledgeGraph},
    metrics::Metrics,
};

/// Intents a dynamic agent serves (plus the one that triggered it).
const DYNAMIC_INTENTS: [&str; 6] = [
    "define",
    "explain_impact",
    "analyze_historical_context",
    "function",
    "explain_limitation",
    "compare",
];
/// Collaborators asked at most.
const MAX_COLLABORATORS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grown {
    /// A dynamic agent was registered for the concept.
    Created(String),
    /// Somebody else (another replica) had already given it an agent.
    Existing,
    /// It could not be done (graph unavailable).
    Failed,
}

impl Grown {
    /// The status reported in the task result, as the original service did.
    pub fn status(&self) -> &'static str {
        match self {
            Grown::Created(_) => "neurogenesis_created",
            Grown::Existing => "neurogenesis_existing",
            Grown::Failed => "neurogenesis_failed",
        }
    }
}

pub struct Neurogenesis {
    graph: Arc<dyn KnowledgeGraph>,
    transport: Arc<dyn AgentTransport>,
    caches: Arc<Caches>,
    template_url: String,
    timeout: Duration,
    inflight: Mutex<HashMap<String, Shared<BoxFuture<'static, Grown>>>>,
    metrics: Arc<Metrics>,
}

/// A stable agent name for a concept: readable part plus a hash, so concepts that
/// sanitize alike still get distinct agents.
pub fn dynamic_agent_name(concept: &str) -> String {
    let readable: String = concept
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    let hash: String = Sha256::digest(concept.as_bytes())[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("Dynamic_{readable}_{hash}")
}

/// `…/query` → `…/collaborate`.
fn collaborate_url(endpoint: &str) -> String {
    match endpoint.strip_suffix("/query") {
        Some(base) => format!("{base}/collaborate"),
        None => format!("{}/collaborate", endpoint.trim_end_matches('/')),
    }
}

impl Neurogenesis {
    pub fn new(
        graph: Arc<dyn KnowledgeGraph>,
        transport: Arc<dyn AgentTransport>,
        caches: Arc<Caches>,
        template_url: String,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Neurogenesis {
            graph,
            transport,
            caches,
            template_url,
            timeout,
            inflight: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Gives `concept` an agent; concurrent callers for one concept share one attempt.
    pub async fn ensure(self: &Arc<Self>, concept: &str, intent: &str) -> Grown {
        let attempt = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(concept) {
                Some(f) => {
                    self.metrics
                        .neurogenesis
                        .with_label_values(&["joined"])
                        .inc();
                    f.clone()
                }
                None => {
                    let me = self.clone();
                    let (c, i) = (concept.to_string(), intent.to_string());
                    let f = async move { me.grow(&c, &i).await }.boxed().shared();
                    inflight.insert(concept.to_string(), f.clone());
                    f
                }
            }
        };
        let grown = attempt.await;
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(concept);
        grown
    }

    async fn grow(&self, concept: &str, intent: &str) -> Grown {
        let span = tracing::info_span!("neurogenesis", concept, intent);
        let grown =
            tracing::Instrument::instrument(self.try_grow(concept, intent), span.clone()).await;
        crate::record!(span, outcome = grown.status());
        self.metrics
            .neurogenesis
            .with_label_values(&[grown.status().trim_start_matches("neurogenesis_")])
            .inc();
        if let Grown::Created(agent) = &grown {
            tracing::info!(concept, agent, "neurogenesis registered a dynamic agent");
        }
        grown
    }

    async fn try_grow(&self, concept: &str, intent: &str) -> Grown {
        match self.graph.discover(concept, intent).await {
            Ok(c) if !c.is_empty() => return Grown::Existing,
            Ok(_) => {}
            Err(_) => return Grown::Failed,
        }
        let findings = self.research(concept, intent).await;
        let definition = findings
            .first()
            .cloned()
            .unwrap_or_else(|| format!("'{concept}' was added to the graph by neurogenesis."));
        if self.graph.add_concept(concept, &definition).await.is_err() {
            return Grown::Failed;
        }
        let name = dynamic_agent_name(concept);
        let mut intents: Vec<String> = DYNAMIC_INTENTS.iter().map(|s| s.to_string()).collect();
        if !intents.iter().any(|i| i == intent) {
            intents.push(intent.to_string());
        }
        let agent = AgentInfo {
            name: name.clone(),
            agent_type: "dynamic".into(),
            endpoint: self.template_url.clone(),
            status: "active".into(),
            intents,
            capabilities: vec!["dynamic".into()],
            facts: Some(findings.join(" ")).filter(|f| !f.is_empty()),
        };
        if self
            .graph
            .upsert_agent(agent, &[(concept.to_string(), 0.5)])
            .await
            .is_err()
        {
            return Grown::Failed;
        }
        self.caches
            .invalidate(Invalidation {
                agents: vec![name.clone()],
                concepts: vec![concept.to_string()],
            })
            .await;
        Grown::Created(name)
    }

    /// Asks agents that collaborate what they know (bounded time); returns their findings.
    async fn research(&self, concept: &str, intent: &str) -> Vec<String> {
        let Ok(agents) = self.graph.agents().await else {
            return Vec::new();
        };
        let body = json!({
            "source_agent": "orchestrator",
            "request_type": "research",
            "concept": concept,
            "context": {"intent": intent},
        });
        let asks = agents
            .iter()
            .filter(|a| a.agent.capabilities.iter().any(|c| c == "collaborate"))
            .take(MAX_COLLABORATORS)
            .map(|a| {
                let url = collaborate_url(&a.agent.endpoint);
                let body = &body;
                async move { self.transport.post_json(&url, body, self.timeout).await }
            });
        let answers = tokio::time::timeout(self.timeout, futures::future::join_all(asks))
            .await
            .unwrap_or_default();
        answers
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|v| {
                v.get("findings")
                    .or_else(|| v.get("data"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_are_stable_readable_and_distinct() {
        assert_eq!(
            dynamic_agent_name("solar panel"),
            dynamic_agent_name("solar panel")
        );
        assert!(dynamic_agent_name("solar panel").starts_with("Dynamic_solar_panel_"));
        assert_ne!(dynamic_agent_name("a b"), dynamic_agent_name("a-b"));
        assert!(dynamic_agent_name(&"x".repeat(500)).len() < 70);
    }

    #[test]
    fn collaboration_goes_to_the_agents_collaborate_route() {
        assert_eq!(
            collaborate_url("http://h:1/query"),
            "http://h:1/collaborate"
        );
        assert_eq!(
            collaborate_url("http://h:1/agent/"),
            "http://h:1/agent/collaborate"
        );
    }
}
