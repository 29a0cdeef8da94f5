//! In-process counters behind `GET /metrics`.

pub mod prom;

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub struct Metrics {
    started: Instant,
    pub requests: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
    pub process_requests: AtomicU64,
    pub discover_requests: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Rate-limit checks decided locally because the shared store was unavailable.
    pub rate_limit_fallbacks: std::sync::Arc<AtomicU64>,
    tasks: AtomicU64,
    tasks_succeeded: AtomicU64,
    tasks_failed: AtomicU64,
    task_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors_4xx: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            process_requests: AtomicU64::new(0),
            discover_requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_limit_fallbacks: Default::default(),
            tasks: AtomicU64::new(0),
            tasks_succeeded: AtomicU64::new(0),
            tasks_failed: AtomicU64::new(0),
            task_micros: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record_task(&self, success: bool, took: Duration) {
        self.tasks.fetch_add(1, Relaxed);
        if success {
            self.tasks_succeeded.fetch_add(1, Relaxed);
        } else {
            self.tasks_failed.fetch_add(1, Relaxed);
        }
        self.task_micros
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn record_status(&self, status: u16) {
        self.requests.fetch_add(1, Relaxed);
        match status {
            400..=499 => self.errors_4xx.fetch_add(1, Relaxed),
            500..=599 => self.errors_5xx.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The `performance` object of the JSON metrics.
    pub fn performance(&self) -> Value {
        let tasks = self.tasks.load(Relaxed);
        let avg = if tasks == 0 {
            0.0
        } else {
            self.task_micros.load(Relaxed) as f64 / tasks as f64 / 1000.0
        };
        json!({
            "uptime_s": self.uptime().as_secs_f64(),
            "requests_total": self.requests.load(Relaxed),
            "client_errors_total": self.errors_4xx.load(Relaxed),
            "server_errors_total": self.errors_5xx.load(Relaxed),
            "process_requests_total": self.process_requests.load(Relaxed),
            "discover_requests_total": self.discover_requests.load(Relaxed),
            "tasks_total": tasks,
            "tasks_succeeded_total": self.tasks_succeeded.load(Relaxed),
            "tasks_failed_total": self.tasks_failed.load(Relaxed),
            "task_latency_avg_ms": avg,
        })
    }
}
