//! The JSON `performance` document of `GET /metrics`, read from the registry's series.

use poem_openapi::Object;
use prometheus::{core::Collector, IntCounterVec};

use super::Metrics;

/// Counters and latency figures since start.
#[derive(Object, Debug)]
#[oai(skip_serializing_if_is_none)]
pub struct Performance {
    pub uptime_s: f64,
    pub requests_total: u64,
    pub client_errors_total: u64,
    pub server_errors_total: u64,
    pub process_requests_total: u64,
    pub discover_requests_total: u64,
    pub tasks_total: u64,
    pub tasks_succeeded_total: u64,
    pub tasks_failed_total: u64,
    /// Tasks dropped because their client went away (SSE, WebSocket, subscription).
    pub tasks_cancelled_total: u64,
    pub task_latency_avg_ms: f64,
    pub learning: LearningCounts,
    pub rejections: RejectionCounts,
    pub cache: CacheCounts,
    pub neurogenesis: Option<NeurogenesisCounts>,
    pub rate_limit_fallbacks_total: u64,
    pub rate_limited_clients_tracked: Option<u64>,
    pub connections: ConnectionCounts,
    pub traces: TraceCounts,
}

/// Spans handed to the trace exporter (all zero when traces are not exported).
#[derive(Object, Debug)]
pub struct TraceCounts {
    pub spans_exported_total: u64,
    /// The backend refused them or could not be reached.
    pub spans_failed_total: u64,
    /// The export queue was full.
    pub spans_dropped_total: u64,
}

/// Hebbian learning, applied off the request path.
#[derive(Object, Debug)]
pub struct LearningCounts {
    pub outcomes_applied_total: u64,
    /// Outcomes dropped because the learning queue was full.
    pub outcomes_dropped_total: u64,
    pub batches_total: u64,
    pub decays_total: u64,
}

/// Calls refused or re-sent by the resilience stack, and inbound requests rate limited.
#[derive(Object, Debug)]
pub struct RejectionCounts {
    pub breaker_open: u64,
    pub rate_limited: u64,
    pub bulkhead_full: u64,
    pub deadline: u64,
    pub retries: u64,
    pub retries_denied_by_budget: u64,
    pub inbound_rate_limited: u64,
}

/// Both caches.
#[derive(Object, Debug)]
pub struct CacheCounts {
    pub responses: CacheTierCounts,
    pub discovery: CacheTierCounts,
    /// Entries held in process now, both caches together.
    pub l1_entries: u64,
}

/// Lookups of one cache by result.
#[derive(Object, Debug)]
pub struct CacheTierCounts {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub stale_served: u64,
    pub bypassed: u64,
    pub l2_errors: u64,
    pub invalidations: u64,
}

/// Dynamic agents grown for unknown concepts.
#[derive(Object, Debug)]
pub struct NeurogenesisCounts {
    pub created: u64,
    pub existing: u64,
    pub failed: u64,
    /// Requests that waited for an attempt already under way for the same concept.
    pub joined_in_flight: u64,
}

/// Client connections of the accept loop.
#[derive(Object, Debug)]
pub struct ConnectionCounts {
    pub open: u64,
    pub accepted_total: u64,
    pub refused_total: u64,
    pub evicted_total: u64,
    pub idle_closed_total: u64,
    pub accept_errors_total: u64,
}

/// What the registry does not hold: sizes read live from their owners.
pub struct Sizes {
    pub l1_entries: u64,
    pub clients_tracked: Option<u64>,
    pub neurogenesis: bool,
}

/// The sum of a counter's series whose labels pass `keep` (label name, value).
fn sum(c: &IntCounterVec, keep: impl Fn(&str, &str) -> bool) -> u64 {
    c.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| m.get_label().iter().all(|l| keep(l.name(), l.value())))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

impl Metrics {
    fn cache_counts(&self, cache: &str) -> CacheTierCounts {
        let lookups = |result: &str, tier: Option<&str>| {
            sum(&self.cache_lookups, |name, value| match name {
                "cache" => value == cache,
                "result" => value == result,
                "tier" => tier.is_none_or(|t| t == value),
                _ => true,
            })
        };
        let event = |e: &str| Self::get(&self.cache_events, &[cache, e]);
        CacheTierCounts {
            l1_hits: lookups("hit", Some("l1")),
            l2_hits: lookups("hit", Some("l2")),
            misses: lookups("miss", None),
            stale_served: lookups("stale", None),
            bypassed: lookups("bypass", None),
            l2_errors: event("l2_error"),
            invalidations: event("invalidation"),
        }
    }

    /// The `performance` object of the JSON metrics.
    pub fn performance(&self, live: Sizes) -> Performance {
        let requests = |keep: &dyn Fn(&str, &str) -> bool| sum(&self.http_requests, keep);
        let status_class =
            |class: char| requests(&|name, value| name != "status" || value.starts_with(class));
        let route =
            |routes: &[&str]| requests(&|name, value| name != "route" || routes.contains(&value));
        let tasks = |status: &str| Self::get(&self.tasks, &[status]);
        let task_count = self.task_duration.get_sample_count();
        let learning = |event: &str| Self::get(&self.learning, &[event]);
        let refused = |reason: &str| Self::get(&self.refused, &[reason]);
        let neuro = |outcome: &str| Self::get(&self.neurogenesis, &[outcome]);
        let conns = |event: &str| Self::get(&self.connections, &[event]);
        Performance {
            uptime_s: self.uptime().as_secs_f64(),
            requests_total: requests(&|_, _| true),
            client_errors_total: status_class('4'),
            server_errors_total: status_class('5'),
            process_requests_total: route(&["/process", "/process_query"]),
            discover_requests_total: route(&["/discover"]),
            tasks_total: tasks("success") + tasks("error"),
            tasks_succeeded_total: tasks("success"),
            tasks_failed_total: tasks("error"),
            tasks_cancelled_total: tasks("cancelled"),
            task_latency_avg_ms: if task_count == 0 {
                0.0
            } else {
                self.task_duration.get_sample_sum() / task_count as f64 * 1000.0
            },
            learning: LearningCounts {
                outcomes_applied_total: learning("applied"),
                outcomes_dropped_total: learning("dropped"),
                batches_total: learning("batch"),
                decays_total: learning("decay"),
            },
            rejections: RejectionCounts {
                breaker_open: refused("breaker_open"),
                rate_limited: Self::get(&self.rate_limited, &["agent"]),
                bulkhead_full: refused("bulkhead_full"),
                deadline: refused("deadline"),
                retries: Self::get(&self.retries, &["sent"]),
                retries_denied_by_budget: Self::get(&self.retries, &["denied_by_budget"]),
                inbound_rate_limited: Self::get(&self.rate_limited, &["client"]),
            },
            cache: CacheCounts {
                responses: self.cache_counts("responses"),
                discovery: self.cache_counts("discovery"),
                l1_entries: live.l1_entries,
            },
            neurogenesis: live.neurogenesis.then(|| NeurogenesisCounts {
                created: neuro("created"),
                existing: neuro("existing"),
                failed: neuro("failed"),
                joined_in_flight: neuro("joined"),
            }),
            rate_limit_fallbacks_total: self.rate_limit_fallbacks.get(),
            rate_limited_clients_tracked: live.clients_tracked,
            connections: ConnectionCounts {
                open: self.connections_open.get().max(0) as u64,
                accepted_total: conns("accepted"),
                refused_total: conns("refused"),
                evicted_total: conns("evicted"),
                idle_closed_total: conns("idle_closed"),
                accept_errors_total: conns("accept_error"),
            },
            traces: {
                let spans = |r: &str| {
                    crate::telemetry::export::SPANS
                        .with_label_values(&[r])
                        .get()
                };
                TraceCounts {
                    spans_exported_total: spans("exported"),
                    spans_failed_total: spans("failed"),
                    spans_dropped_total: spans("dropped"),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_reads_the_series_the_scrape_shows() {
        let m = Metrics::new();
        for (route, status) in [
            ("/process", "200"),
            ("/process_query", "400"),
            ("/discover", "503"),
        ] {
            m.http_requests
                .with_label_values(&[route, "POST", status])
                .inc();
        }
        m.cache_lookups
            .with_label_values(&["responses", "l2", "miss"])
            .inc();
        m.cache_lookups
            .with_label_values(&["responses", "l1", "miss"])
            .inc();
        m.cache_lookups
            .with_label_values(&["discovery", "l1", "hit"])
            .inc();
        m.task_duration.observe(0.004);
        m.tasks.with_label_values(&["success"]).inc();
        let live = Sizes {
            l1_entries: 3,
            clients_tracked: None,
            neurogenesis: false,
        };
        let p = m.performance(live);
        assert_eq!(
            (
                p.requests_total,
                p.client_errors_total,
                p.server_errors_total
            ),
            (3, 1, 1)
        );
        assert_eq!(
            (p.process_requests_total, p.discover_requests_total),
            (2, 1)
        );
        assert_eq!(
            (p.cache.responses.misses, p.cache.discovery.l1_hits),
            (2, 1)
        );
        assert_eq!(p.cache.responses.l1_hits, 0);
        assert!((p.task_latency_avg_ms - 4.0).abs() < 1e-9);
        assert!(p.neurogenesis.is_none());
        let text = m.render();
        assert!(text.contains(
            "myriad_http_requests_total{method=\"POST\",route=\"/process\",status=\"200\"} 1"
        ));
    }
}
