//! Discovery: the candidates for a concept and intent — from the graph, through the
//! discovery cache, the remembered route while the graph is away — and the graph's health
//! and the agents' regions it needs.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::Pipeline;
use crate::{
    cache::{discovery_key, Lookup, Subject, Tier},
    graph::{Candidate, GraphError, KnowledgeGraph},
};

/// Which region this replica is in, and the region of each agent the graph places in one.
pub struct Regions {
    pub here: String,
    agents: std::sync::RwLock<std::collections::HashMap<String, String>>,
}

/// How often the agents' regions are read again from the graph.
pub const REGIONS_REFRESH: Duration = Duration::from_secs(10);

impl Regions {
    pub fn new(here: String) -> Self {
        Regions {
            here,
            agents: Default::default(),
        }
    }

    /// The region of `agent`, if the graph places it in one.
    pub fn of(&self, agent: &str) -> Option<String> {
        self.agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .cloned()
    }

    /// Whether `agent` is in this replica's region.
    pub fn is_local(&self, agent: &str) -> bool {
        self.agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .is_some_and(|r| *r == self.here)
    }

    /// Reads every agent's region from the graph (kept as it was when the graph fails).
    pub async fn refresh(&self, graph: &dyn KnowledgeGraph) {
        match graph.regions().await {
            Ok(regions) => {
                let map = regions
                    .into_iter()
                    .flat_map(|r| {
                        let name = r.name;
                        r.agents.into_iter().map(move |a| (a, name.clone()))
                    })
                    .collect();
                *self.agents.write().unwrap_or_else(|e| e.into_inner()) = map;
            }
            Err(e) => tracing::warn!(error = %e, "could not read the agents' regions"),
        }
    }
}

/// How long the graph must have answered before an empty answer is cached as "no agent".
pub const GRAPH_SETTLE: Duration = Duration::from_secs(10);

/// The graph's recent record, as discovery saw it: (last failure, answering since).
#[derive(Debug)]
pub struct GraphAvailability(std::sync::Mutex<(Option<Instant>, Option<Instant>)>);

impl Default for GraphAvailability {
    /// Assumed healthy since start-up, never failed.
    fn default() -> Self {
        GraphAvailability(std::sync::Mutex::new((None, Some(Instant::now()))))
    }
}

impl GraphAvailability {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Instant>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn failed(&self) {
        *self.lock() = (Some(Instant::now()), None);
    }

    pub fn succeeded(&self) {
        let mut h = self.lock();
        h.1.get_or_insert_with(Instant::now);
    }

    /// Whether the graph has answered for at least [`GRAPH_SETTLE`] since its last failure.
    pub fn settled(&self) -> bool {
        self.lock()
            .1
            .is_some_and(|since| since.elapsed() >= GRAPH_SETTLE)
    }
}

impl Pipeline {
    /// Ranked candidates for (concept, intent), through the discovery cache when the graph
    /// is remote; the tier says which cache answered. `task`: the span of the task asking,
    /// if one is.
    pub async fn discover(
        &self,
        concept: &str,
        intent: &str,
        use_cache: bool,
        task: Option<&tracing::Span>,
    ) -> Result<(Vec<Candidate>, Option<Tier>), GraphError> {
        // The in-process graph answers in an instant: its answer is attributes of the task
        // that asked (cache_tier, candidates, chosen). A remote graph (and the caches in
        // front of it), or a caller that is not a task, gets a span of its own (those and
        // stale_reason, otel.status_code).
        let own_span;
        let (span, own) = match task {
            Some(task) if !self.graph.is_remote() => (task, false),
            _ => {
                own_span = tracing::info_span!("discover", concept, intent);
                (&own_span, true)
            }
        };
        let lookup = self.discover_inner(concept, intent, use_cache);
        let found = if own {
            crate::telemetry::in_span(span, lookup).await
        } else {
            lookup.await
        };
        match &found {
            // Only built when someone records it (it is per task).
            Ok((candidates, tier)) if !span.is_disabled() => {
                let cached = self.stack.caches.discovery_enabled && use_cache;
                let mut listed = String::with_capacity(candidates.len() * 24);
                for (i, c) in candidates.iter().enumerate() {
                    if i > 0 {
                        listed.push(',');
                    }
                    listed.push_str(&c.agent.name);
                    listed.push(':');
                    push_fixed3(&mut listed, c.stats.weight);
                }
                crate::record!(
                    span,
                    cache_tier = match tier {
                        Some(t) => t.as_str(),
                        None if cached => "miss",
                        None => "none",
                    },
                    candidates = listed.as_str(),
                );
            }
            Ok(_) => {}
            Err(_) => {
                crate::record!(span, otel.status_code = "ERROR");
            }
        }
        found
    }

    /// The graph's answer (through the discovery cache when it is on); when the graph is
    /// away, the last route it gave, whatever the cache settings.
    async fn discover_inner(
        &self,
        concept: &str,
        intent: &str,
        use_cache: bool,
    ) -> Result<(Vec<Candidate>, Option<Tier>), GraphError> {
        let found = self.discover_source(concept, intent, use_cache).await;
        if !self.graph.is_remote() {
            return found;
        }
        let routes = &self.stack.caches.routes;
        let key = discovery_key(concept, intent);
        let error = match found {
            // A graph starting up answers empty for a moment: a known route is kept.
            Ok((candidates, None))
                if candidates.is_empty() && !self.graph_availability.settled() =>
            {
                GraphError::EmptyAnswer
            }
            Ok((candidates, tier)) => {
                if tier.is_none() {
                    routes.remember(&key, concept, &candidates).await;
                }
                return Ok((candidates, tier));
            }
            Err(e) => e,
        };
        match routes.recall(&key).await {
            Some(candidates) => {
                self.stale_route(&error, "memory", concept, intent);
                Ok((candidates, None))
            }
            None if matches!(error, GraphError::EmptyAnswer) => Ok((Vec::new(), None)),
            None => Err(error),
        }
    }

    /// Counts and shows a route served from what was known before (`from`: a cache tier or
    /// the route memory) because the graph's answer could not be used.
    fn stale_route(&self, error: &GraphError, from: &str, concept: &str, intent: &str) {
        let reason = error.stale_reason();
        self.metrics
            .discovery_stale_served
            .with_label_values(&[reason])
            .inc();
        crate::record!(tracing::Span::current(), stale_reason = reason);
        tracing::debug!(reason, from, concept, intent, "serving a stale route");
    }

    /// The graph's answer, through the discovery cache when it is on.
    async fn discover_source(
        &self,
        concept: &str,
        intent: &str,
        use_cache: bool,
    ) -> Result<(Vec<Candidate>, Option<Tier>), GraphError> {
        let caches = &self.stack.caches;
        if !(caches.discovery_enabled && use_cache) {
            return match self.graph.discover(concept, intent).await {
                Ok(found) => {
                    self.graph_availability.succeeded();
                    Ok((found, None))
                }
                Err(e) => {
                    if !matches!(e, GraphError::RecentFailure) {
                        self.graph_availability.failed();
                    }
                    Err(e)
                }
            };
        }
        let key = discovery_key(concept, intent);
        let subject = Subject {
            agent: None,
            concept,
        };
        let lookup = caches
            .discovery
            .get_or_fetch(&key, subject, |stale| {
                let stale_route = stale
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                async move {
                    let found = match self.graph.discover(concept, intent).await {
                        Ok(found) => {
                            self.graph_availability.succeeded();
                            found
                        }
                        Err(e) => {
                            if !matches!(e, GraphError::RecentFailure) {
                                self.graph_availability.failed();
                            }
                            return Err(e);
                        }
                    };
                    let ttl = if !found.is_empty() {
                        Some(caches.settings.discovery_ttl)
                    } else if stale_route {
                        // A graph starting up answers empty for a moment; a route it had
                        // goes away only through an invalidation, which removes the entry.
                        return Err(GraphError::EmptyAnswer);
                    } else if self.graph_availability.settled() {
                        Some(caches.settings.negative_ttl)
                    } else {
                        None
                    };
                    Ok((serde_json::to_value(&found).unwrap_or_default(), ttl))
                }
            })
            .await;
        let decode = |v: Value| serde_json::from_value::<Vec<Candidate>>(v).unwrap_or_default();
        match lookup {
            Lookup::Fresh { value, tier } => Ok((decode(value), tier)),
            Lookup::Stale { value, tier, error } => {
                self.stale_route(&error, tier.as_str(), concept, intent);
                Ok((decode(value), Some(tier)))
            }
            Lookup::Failed(e) => Err(e),
        }
    }
}

/// `v` with three decimals, as `{:.3}` writes it for the weights a graph holds, in integer
/// arithmetic (a float with a precision is the slow path of `fmt`).
fn push_fixed3(s: &mut String, v: f64) {
    use std::fmt::Write;
    let milli = (v * 1000.0).round();
    if !milli.is_finite() || milli.abs() >= 1e15 {
        let _ = write!(s, "{v:.3}");
        return;
    }
    let milli = milli as i64;
    if milli < 0 {
        s.push('-');
    }
    let (int, frac) = (milli.unsigned_abs() / 1000, milli.unsigned_abs() % 1000);
    // Weights are under ten: one digit, and the three decimals, as characters.
    if int < 10 {
        s.push(char::from(b'0' + int as u8));
    } else {
        let _ = write!(s, "{int}");
    }
    s.push('.');
    for d in [frac / 100, frac / 10 % 10, frac % 10] {
        s.push(char::from(b'0' + d as u8));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weights_are_written_with_three_decimals_as_fmt_would() {
        for v in [
            0.0,
            0.9,
            0.85,
            1.0,
            0.12345,
            0.9996,
            12.5,
            9.9996,
            123.4567,
            -0.25,
            f64::NAN,
            1e300,
        ] {
            let mut s = String::new();
            super::push_fixed3(&mut s, v);
            assert_eq!(s, format!("{v:.3}"), "{v}");
        }
    }
}
