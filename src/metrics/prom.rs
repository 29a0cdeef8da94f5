//! Prometheus metrics, served as text from `GET /metrics` to scrapers.
//!
//! Label values are bounded: route templates, fixed enums, and agent names — the latter
//! capped at [`MAX_AGENT_LABELS`] distinct values (then `other`), since neurogenesis can
//! create agents. Never raw URLs, concepts or user ids.

use std::{
    collections::HashSet,
    sync::{LazyLock, Mutex},
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Distinct agent label values before the rest are folded into `other`.
pub const MAX_AGENT_LABELS: usize = 256;

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Prom {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub agent_calls: IntCounterVec,
    pub agent_duration: HistogramVec,
    pub breaker_state: IntGaugeVec,
    pub cache_lookups: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub tasks: IntCounterVec,
    pub neurogenesis: IntCounterVec,
    pub routing_decisions: IntCounterVec,
    pub discovery_stale_served: IntCounterVec,
    pub graph_queries: HistogramVec,
    agents_seen: Mutex<HashSet<String>>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Prom {
    fn new() -> Self {
        let r = Registry::new_custom(Some("myriad".into()), None).expect("valid prefix");
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone()))
            .expect("registered once");
        build.with_label_values(&[crate::VERSION]).set(1);
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "agent_breaker_state",
                "Circuit breaker state per agent: 0 closed, 1 open, 2 half-open.",
            ),
            &["agent"],
        )
        .expect("valid metric");
        r.register(Box::new(breaker_state.clone()))
            .expect("registered once");
        Prom {
            http_requests: counter(
                &r,
                "http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency by route template and method.",
                &["route", "method"],
            ),
            agent_calls: counter(
                &r,
                "agent_calls_total",
                "Calls through the resilience stack by agent and outcome.",
                &["agent", "outcome"],
            ),
            agent_duration: histogram(
                &r,
                "agent_call_duration_seconds",
                "Latency of agent calls (all attempts) by agent.",
                &["agent"],
            ),
            cache_lookups: counter(
                &r,
                "cache_lookups_total",
                "Cache lookups by cache, tier and result.",
                &["cache", "tier", "result"],
            ),
            rate_limited: counter(
                &r,
                "rate_limit_rejections_total",
                "Requests or calls refused by a rate limit, by scope.",
                &["scope"],
            ),
            tasks: counter(&r, "tasks_total", "Tasks by final status.", &["status"]),
            neurogenesis: counter(
                &r,
                "neurogenesis_total",
                "Neurogenesis attempts by outcome.",
                &["outcome"],
            ),
            routing_decisions: {
                let c = counter(
                    &r,
                    "routing_decisions_total",
                    "Tasks answered by an agent, by why that agent was chosen.",
                    &["reason"],
                );
                for reason in crate::routing::Reason::ALL {
                    c.with_label_values(&[reason.as_str()]);
                }
                c
            },
            discovery_stale_served: {
                let c = counter(
                    &r,
                    "discovery_stale_served_total",
                    "Routes served from a stale discovery entry, by why the graph's answer was not used.",
                    &["reason"],
                );
                for reason in [
                    "graph_error",
                    "graph_timeout",
                    "recent_failure",
                    "empty_answer",
                ] {
                    c.with_label_values(&[reason]);
                }
                c
            },
            graph_queries: histogram(
                &r,
                "graph_query_duration_seconds",
                "Knowledge graph call latency by operation.",
                &["operation"],
            ),
            breaker_state,
            registry: r,
            agents_seen: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for an agent: its name, or `other` past the cap.
    pub fn agent_label(&self, agent: &str) -> String {
        let mut seen = self.agents_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(agent) {
            return agent.to_string();
        }
        if seen.len() < MAX_AGENT_LABELS {
            seen.insert(agent.to_string());
            agent.to_string()
        } else {
            "other".to_string()
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process-wide registry.
pub static PROM: LazyLock<Prom> = LazyLock::new(Prom::new);

/// Route template of a request path: a fixed set, never the raw path.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/ready" => "/ready",
        "/status" => "/status",
        "/agents" => "/agents",
        "/metrics" => "/metrics",
        "/metrics/json" => "/metrics/json",
        "/discover" => "/discover",
        "/process" => "/process",
        "/process_query" => "/process_query",
        "/openapi.json" => "/openapi.json",
        p if p == "/docs" || p.starts_with("/docs/") => "/docs",
        p if p.starts_with("/agents/") => "/agents/{name}",
        _ => "unmatched",
    }
}

/// The methods a route template answers (the `Allow` header of a 405).
pub fn allowed_methods(route: &str) -> &'static str {
    match route {
        "/agents" => "GET, POST",
        "/agents/{name}" => "DELETE",
        "/discover" | "/process" | "/process_query" => "POST",
        "unmatched" => "",
        _ => "GET",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_and_agent_labels_are_capped() {
        assert_eq!(route_template("/agents/Evil%20Agent"), "/agents/{name}");
        assert_eq!(route_template("/wp-admin/x.php"), "unmatched");
        let p = Prom::new();
        for i in 0..MAX_AGENT_LABELS + 10 {
            p.agent_label(&format!("agent-{i}"));
        }
        assert_eq!(p.agent_label("agent-0"), "agent-0");
        assert_eq!(p.agent_label("a-new-one"), "other");
        assert!(p.render().contains("myriad_build_info"));
    }
}
