//! Every counter of one application, recorded once in one Prometheus registry.
//!
//! `GET /metrics` renders the registry as Prometheus text for scrapers, and the JSON document
//! (the original service's contract, see `document`) reads the same series. Each application
//! owns its registry, so two instances in one process never mix their counts.
//!
//! Label values are bounded: route templates, fixed enums, and agent names — the latter
//! capped at [`MAX_AGENT_LABELS`] distinct values (then `other`), since neurogenesis can
//! create agents. Never raw URLs, concepts or user ids.

pub mod document;
pub mod routes;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use poem::http::Method;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The series of one (route, method, status), resolved once.
pub struct RequestSeries {
    /// `myriad_http_requests_total{route,method,status}`.
    pub requests: IntCounter,
    /// `myriad_http_request_duration_seconds{route,method}`.
    pub duration: Histogram,
    /// `myriad_gateway_overhead_seconds{route}`.
    pub overhead: Histogram,
}

/// Label sets a [`Memo`] keeps resolved; past them a value is resolved on each use.
const MEMO_SLOTS: usize = 24;

/// The counters of one family for a few label sets, each resolved on its first use and then
/// read without hashing or locking (`with_label_values` hashes every label value and takes
/// the family's lock on every call: a few per task on the request path). The leading
/// labels are fixed at construction (an agent's name), the rest given per use, as
/// `&'static str` (fixed enums).
pub struct Memo {
    family: IntCounterVec,
    fixed: Box<[String]>,
    slots: [std::sync::OnceLock<Resolved>; MEMO_SLOTS],
}

/// A label set (after the fixed labels) and its counter.
type Resolved = (Box<[&'static str]>, IntCounter);

impl Memo {
    pub fn new(family: &IntCounterVec, fixed: &[&str]) -> Self {
        Memo {
            family: family.clone(),
            fixed: fixed.iter().map(|s| s.to_string()).collect(),
            slots: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }

    fn resolve(&self, values: &[&str]) -> IntCounter {
        let labels: Vec<&str> = self
            .fixed
            .iter()
            .map(String::as_str)
            .chain(values.iter().copied())
            .collect();
        self.family.with_label_values(&labels)
    }

    /// Adds one to the series of `values` (after the fixed labels).
    pub fn inc(&self, values: &[&'static str]) {
        for slot in &self.slots {
            // An empty slot takes this label set; a taken one is ours or another's.
            let (taken, counter) = slot.get_or_init(|| (values.into(), self.resolve(values)));
            if **taken == *values {
                counter.inc();
                return;
            }
        }
        self.resolve(values).inc();
    }
}

/// Distinct agent label values before the rest are folded into `other`.
pub const MAX_AGENT_LABELS: usize = 256;

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    started: Instant,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Time a request spent outside agent calls.
    pub gateway_overhead: HistogramVec,
    pub tasks: IntCounterVec,
    pub task_duration: Histogram,
    pub agent_calls: IntCounterVec,
    pub agent_duration: HistogramVec,
    pub breaker_state: IntGaugeVec,
    /// Calls the resilience stack refused before any attempt, by stage.
    pub refused: IntCounterVec,
    /// Retries sent, and retries the budget denied.
    pub retries: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_fallbacks: IntCounter,
    /// Agent-health messages between replicas, by event.
    pub shared_health: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_events: IntCounterVec,
    pub learning: IntCounterVec,
    pub neurogenesis: IntCounterVec,
    /// `myriad_hedges_total{result}`: hedges sent, won, or not sent for want of budget.
    pub hedges: IntCounterVec,
    pub routing_decisions: IntCounterVec,
    pub discovery_stale_served: IntCounterVec,
    pub graph_gate: IntCounterVec,
    pub graph_queries: HistogramVec,
    pub connections_open: IntGauge,
    pub connections: IntCounterVec,
    /// `POST /process` requests the purpose-built lane served, or declined to the operation.
    pub process_lane: [IntCounter; 2],
    agents_seen: Mutex<HashSet<String>>,
    /// Each (route, method, status) request series, resolved on first use.
    by_request: crate::NameMap<(&'static str, &'static str, u16), Arc<RequestSeries>>,
}

/// Registers series on one registry; every name gets the `myriad_` prefix.
struct Register<'a>(&'a Registry);

impl Register<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.0
            .register(Box::new(m.clone()))
            .expect("registered once");
        m
    }

    /// A counter with its label values known up front, so each shows from zero.
    fn counter(&self, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
        let c = self.counters(name, help, &[label]);
        for v in values {
            c.with_label_values(&[v]);
        }
        c
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("myriad".into()), None).expect("valid prefix");
        let r = Register(&registry);
        let build = r.add(
            IntGaugeVec::new(
                Opts::new("build_info", "Build information; the value is always 1."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[crate::VERSION]).set(1);
        // The trace pipeline is the process's, shared by every application in it.
        r.add(crate::telemetry::export::SPANS.clone());
        Metrics {
            http_requests: r.counters(
                "http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: r.histograms(
                "http_request_duration_seconds",
                "HTTP request latency by route template and method.",
                &["route", "method"],
            ),
            gateway_overhead: r.histograms(
                "gateway_overhead_seconds",
                "Time a request spent in the gateway itself (outside agent calls), by route.",
                &["route"],
            ),
            tasks: r.counter(
                "tasks_total",
                "Tasks by final status.",
                "status",
                &["success", "error"],
            ),
            task_duration: r.add(
                Histogram::with_opts(
                    HistogramOpts::new("task_duration_seconds", "Latency of one task.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            agent_calls: r.counters(
                "agent_calls_total",
                "Calls through the resilience stack by agent and outcome.",
                &["agent", "outcome"],
            ),
            agent_duration: r.histograms(
                "agent_call_duration_seconds",
                "Latency of agent calls (all attempts) by agent.",
                &["agent"],
            ),
            breaker_state: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "agent_breaker_state",
                        "Circuit breaker state per agent: 0 closed, 1 open, 2 half-open.",
                    ),
                    &["agent"],
                )
                .expect("valid metric"),
            ),
            refused: r.counter(
                "calls_refused_total",
                "Agent calls refused before any attempt, by the stage that refused them.",
                "reason",
                &["breaker_open", "held_by_peer", "bulkhead_full", "shed", "deadline", "throttled"],
            ),
            retries: r.counter(
                "retries_total",
                "Retries of agent calls: sent, or denied by the retry budget; budget_fallback counts withdrawals the local budget decided because the shared store was away.",
                "result",
                &["sent", "denied_by_budget", "budget_fallback"],
            ),
            rate_limited: r.counter(
                "rate_limit_rejections_total",
                "Requests or calls refused by a rate limit, by scope.",
                "scope",
                &["client", "agent"],
            ),
            rate_limit_fallbacks: r.add(
                IntCounter::new(
                    "rate_limit_fallbacks_total",
                    "Rate-limit checks decided locally because the shared store was unavailable.",
                )
                .expect("valid metric"),
            ),
            shared_health: r.counter(
                "shared_health_messages_total",
                "Agent-health messages between replicas: published, publish_failed, dropped (over a bound), received, ignored (own, malformed or over a bound).",
                "event",
                &["published", "publish_failed", "dropped", "received", "ignored"],
            ),
            cache_lookups: r.counters(
                "cache_lookups_total",
                "Cache lookups by cache, tier and result.",
                &["cache", "tier", "result"],
            ),
            cache_events: r.counters(
                "cache_events_total",
                "Shared-store errors and invalidations, by cache.",
                &["cache", "event"],
            ),
            learning: r.counter(
                "learning_total",
                "Hebbian learning: outcomes applied or dropped, batches, decay runs, errors, writes deferred until the graph returns.",
                "event",
                &["applied", "dropped", "batch", "decay", "error", "deferred"],
            ),
            neurogenesis: r.counter(
                "neurogenesis_total",
                "Neurogenesis attempts by outcome.",
                "outcome",
                &["created", "existing", "failed", "joined"],
            ),
            hedges: r.counter(
                "hedges_total",
                "Hedged calls: sent (a second candidate asked too), won (its answer came first), no_budget (not sent: the retry budget was spent).",
                "result",
                &["sent", "won", "no_budget"],
            ),
            routing_decisions: r.counter(
                "routing_decisions_total",
                "Tasks answered by an agent, by why that agent was chosen.",
                "reason",
                &crate::routing::Reason::ALL.map(|r| r.as_str()),
            ),
            discovery_stale_served: r.counter(
                "discovery_stale_served_total",
                "Routes served from a stale discovery entry, by why the graph's answer was not used.",
                "reason",
                &["graph_error", "graph_timeout", "recent_failure", "empty_answer"],
            ),
            graph_gate: r.counter(
                "graph_gate_total",
                "The gate in front of a remote graph: opened after a failure, calls refused while open, probes of its return, closed when a probe answered.",
                "event",
                &["opened", "refused", "probe", "closed"],
            ),
            graph_queries: r.histograms(
                "graph_query_duration_seconds",
                "Knowledge graph call latency by operation.",
                &["operation"],
            ),
            process_lane: {
                let lane = r.counter(
                    "process_lane_total",
                    "JSON POST /process requests by how their body was read: served by the lane straight from the bytes, or declined to the schema's operation (a question, an unknown member, a value the schema refuses).",
                    "outcome",
                    &["served", "declined"],
                );
                ["served", "declined"].map(|o| lane.with_label_values(&[o]))
            },
            connections_open: r.add(
                IntGauge::new("connections_open", "Client connections open now.")
                    .expect("valid metric"),
            ),
            connections: r.counter(
                "connections_total",
                "Client connections: accepted, refused or evicted at the cap, closed idle, accept errors.",
                "event",
                &["accepted", "refused", "evicted", "idle_closed", "accept_error"],
            ),
            registry,
            started: Instant::now(),
            agents_seen: Mutex::new(HashSet::new()),
            by_request: Default::default(),
        }
    }

    /// The series one answered request counts in, resolved once per (route, method,
    /// status). A method outside HTTP's own is labelled `other`: a client's made-up method
    /// names must not grow the series (or this map).
    pub fn request_series(
        &self,
        route: &'static str,
        method: &Method,
        status: u16,
    ) -> Arc<RequestSeries> {
        const KNOWN: [(Method, &str); 9] = [
            (Method::GET, "GET"),
            (Method::POST, "POST"),
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
            (Method::PATCH, "PATCH"),
            (Method::HEAD, "HEAD"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::CONNECT, "CONNECT"),
            (Method::TRACE, "TRACE"),
        ];
        let method: &'static str = KNOWN
            .iter()
            .find(|(known, _)| known == method)
            .map_or("other", |(_, name)| name);
        let key = (route, method, status);
        if let Some(series) = self.by_request.get(&key) {
            return series.clone();
        }
        self.by_request
            .entry(key)
            .or_insert_with(|| {
                Arc::new(RequestSeries {
                    requests: self.http_requests.with_label_values(&[
                        route,
                        method,
                        &status.to_string(),
                    ]),
                    duration: self.http_duration.with_label_values(&[route, method]),
                    overhead: self.gateway_overhead.with_label_values(&[route]),
                })
            })
            .clone()
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
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

    /// The value of one labelled counter.
    fn get(c: &IntCounterVec, labels: &[&str]) -> u64 {
        c.with_label_values(labels).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        let p = Metrics::new();
        for i in 0..50 {
            let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
            p.request_series("/process", &method, 405).requests.inc();
        }
        p.request_series("/process", &Method::POST, 200)
            .requests
            .inc();
        let text = p.render();
        assert!(
            text.contains(r#"method="other",route="/process",status="405"} 50"#),
            "{text}"
        );
        assert_eq!(
            text.matches("myriad_http_requests_total{").count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn agent_labels_are_capped_and_registries_are_apart() {
        let p = Metrics::new();
        for i in 0..MAX_AGENT_LABELS + 10 {
            p.agent_label(&format!("agent-{i}"));
        }
        assert_eq!(p.agent_label("agent-0"), "agent-0");
        assert_eq!(p.agent_label("a-new-one"), "other");
        assert!(p.render().contains("myriad_build_info"));
        p.tasks.with_label_values(&["success"]).inc();
        assert_eq!(
            Metrics::new().tasks.with_label_values(&["success"]).get(),
            0
        );
        assert!(p
            .render()
            .contains("myriad_tasks_total{status=\"success\"} 1"));
    }
}
