//! Hebbian learning, off the request path.
//!
//! The pipeline drops each outcome into a bounded channel and moves on; one worker applies
//! them to the graph in batches every flush interval and runs the periodic decay. When the
//! channel is full, outcomes are dropped and counted rather than slowing requests down.
//!
//! A batch is grouped per agent→concept edge (linear in its size) and written once. Its
//! trace is one `learn` span per edge it changed, a root of its own carrying span links to
//! the tasks whose outcomes it applied (at most [`MAX_LINKS`] each, the rest counted): the
//! shape of batch work in OpenTelemetry, and bounded by the edges, not by the load. When
//! the graph fails, the outcomes wait (bounded by [`QUEUE`]) and the write is tried again
//! with a growing pause, instead of being dropped.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};

use crate::{
    config::LearningSettings,
    graph::{Deltas, EdgeOutcomes, KnowledgeGraph, Outcome},
    metrics::Metrics,
};

/// Outcomes waiting to be applied, at most (in the channel, and again while the graph is
/// away).
pub const QUEUE: usize = 16_384;
/// Outcomes applied in one write, at most.
const BATCH: usize = 4_096;
/// Links from one `learn` span to the task spans it came from, at most.
pub const MAX_LINKS: usize = 128;
/// Longest pause between two tries of a write the graph refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An outcome and the span context of the task it came from (a link of the learning span),
/// when that task is traced.
type Traced = (Outcome, Option<crate::telemetry::SpanContext>);

#[derive(Clone, Default)]
pub struct Learner {
    tx: Option<mpsc::Sender<Traced>>,
    metrics: Arc<Metrics>,
    stop: Arc<tokio::sync::Notify>,
    worker: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Learner {
    /// A learner that ignores every outcome (learning disabled).
    pub fn disabled() -> Self {
        Learner::default()
    }

    /// Starts the worker; it ends when every `Learner` clone is dropped, after a last flush.
    pub fn spawn(
        graph: Arc<dyn KnowledgeGraph>,
        settings: &LearningSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        if !settings.enabled {
            return Learner::disabled();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = Arc::new(tokio::sync::Notify::new());
        let handle = tokio::spawn(worker(
            graph,
            settings.clone(),
            rx,
            metrics.clone(),
            stop.clone(),
        ));
        Learner {
            tx: Some(tx),
            metrics,
            stop,
            worker: Arc::new(std::sync::Mutex::new(Some(handle))),
        }
    }

    /// Applies every pending outcome now and stops the worker (at shutdown), waiting at
    /// most `within`.
    pub async fn shutdown(&self, within: std::time::Duration) {
        let handle = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            self.stop.notify_one();
            if tokio::time::timeout(within, handle).await.is_err() {
                tracing::warn!("pending learning updates were not all written before shutdown");
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, outcome: Outcome) {
        if let Some(tx) = &self.tx {
            let link = crate::telemetry::subscriber::current_context().filter(|cx| cx.sampled);
            if tx.try_send((outcome, link)).is_err() {
                self.metrics.learning.with_label_values(&["dropped"]).inc();
            }
        }
    }
}

async fn worker(
    graph: Arc<dyn KnowledgeGraph>,
    settings: LearningSettings,
    mut rx: mpsc::Receiver<Traced>,
    metrics: Arc<Metrics>,
    stop: Arc<tokio::sync::Notify>,
) {
    let deltas = Deltas {
        success: settings.delta_success,
        failure: settings.delta_failure,
    };
    let mut decay = tokio::time::interval_at(
        Instant::now() + settings.decay_interval,
        settings.decay_interval,
    );
    decay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::new(metrics.clone());
    let mut incoming = Vec::with_capacity(BATCH);
    // When the pending outcomes are written next, and how many writes failed in a row.
    let mut flush_at: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.notified() => {
                while let Ok(o) = rx.try_recv() {
                    pending.push(o);
                }
                pending.flush(&*graph, deltas).await;
                tracing::info!("learning flushed for shutdown");
                break;
            }
            n = rx.recv_many(&mut incoming, BATCH) => {
                if n == 0 {
                    pending.flush(&*graph, deltas).await;
                    break;
                }
                for o in incoming.drain(..) {
                    pending.push(o);
                }
                // Let a burst accumulate so it lands as one write.
                flush_at.get_or_insert_with(|| Instant::now() + settings.flush_interval);
            }
            _ = sleep_until(flush_at) => {
                if pending.flush(&*graph, deltas).await {
                    failures = 0;
                    flush_at = None;
                } else {
                    failures += 1;
                    let pause = settings
                        .flush_interval
                        .saturating_mul(1 << failures.min(10))
                        .min(MAX_BACKOFF);
                    flush_at = Some(Instant::now() + pause);
                }
            }
            _ = decay.tick() => {
                match graph.decay(settings.decay_rate).await {
                    Ok(edges) => {
                        metrics.learning.with_label_values(&["decay"]).inc();
                        tracing::info!(edges, rate = settings.decay_rate, "hebbian decay applied");
                    }
                    Err(e) => {
                        metrics.learning.with_label_values(&["error"]).inc();
                        tracing::warn!(error = %e, "hebbian decay failed");
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Outcomes not yet written, grouped per edge in arrival order, with the task span contexts
/// to link (at most [`MAX_LINKS`] per edge, the rest counted). At most [`QUEUE`] outcomes:
/// what comes beyond is dropped, counted.
struct Pending {
    edges: Vec<Edge>,
    index: HashMap<(String, String), usize>,
    outcomes: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Edge {
    outcomes: EdgeOutcomes,
    links: Vec<crate::telemetry::SpanContext>,
    links_dropped: usize,
}

impl Pending {
    fn new(metrics: Arc<Metrics>) -> Self {
        Pending {
            edges: Vec::new(),
            index: HashMap::new(),
            outcomes: 0,
            metrics,
        }
    }

    fn push(&mut self, (outcome, link): Traced) {
        if self.outcomes >= QUEUE {
            self.metrics.learning.with_label_values(&["dropped"]).inc();
            return;
        }
        self.outcomes += 1;
        let key = (outcome.agent, outcome.concept);
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.edges.push(Edge {
                    outcomes: EdgeOutcomes {
                        agent: key.0.clone(),
                        concept: key.1.clone(),
                        successes: Vec::new(),
                        estimate: None,
                    },
                    ..Edge::default()
                });
                self.index.insert(key, self.edges.len() - 1);
                self.edges.len() - 1
            }
        };
        let edge = &mut self.edges[i];
        edge.outcomes.successes.push(outcome.success);
        if outcome.estimate.is_some() {
            edge.outcomes.estimate = outcome.estimate;
        }
        if let Some(link) = link {
            if edge.links.len() < MAX_LINKS {
                edge.links.push(link);
            } else {
                edge.links_dropped += 1;
            }
        }
    }

    /// Writes every pending outcome in one write; true when the graph took it (or there was
    /// nothing to write). When it fails, everything stays pending for the next try.
    async fn flush(&mut self, graph: &dyn KnowledgeGraph, deltas: Deltas) -> bool {
        if self.edges.is_empty() {
            return true;
        }
        let edges: Vec<EdgeOutcomes> = self.edges.iter().map(|e| e.outcomes.clone()).collect();
        match graph.learn(&edges, deltas).await {
            Ok(changes) => {
                let metrics = &self.metrics.learning;
                metrics
                    .with_label_values(&["applied"])
                    .inc_by(self.outcomes as u64);
                metrics.with_label_values(&["batch"]).inc();
                for c in &changes {
                    let Some(edge) = self
                        .index
                        .get(&(c.agent.clone(), c.concept.clone()))
                        .map(|&i| &self.edges[i])
                    else {
                        continue;
                    };
                    let successes = edge.outcomes.successes.iter().filter(|s| **s).count();
                    tracing::debug!(agent = %c.agent, concept = %c.concept, old = c.old, new = c.new, "weight updated");
                    let span = tracing::info_span!(
                        parent: None,
                        "learn",
                        agent = %c.agent,
                        concept = %c.concept,
                        outcomes = edge.outcomes.successes.len(),
                        successes,
                        weight_old = c.old,
                        weight_new = c.new,
                        batch = self.outcomes,
                        links_dropped = edge.links_dropped,
                    );
                    if !span.is_disabled() {
                        for link in &edge.links {
                            crate::telemetry::subscriber::link(&span, *link);
                        }
                    }
                }
                self.edges.clear();
                self.index.clear();
                self.outcomes = 0;
                true
            }
            Err(e) => {
                self.metrics.learning.with_label_values(&["error"]).inc();
                self.metrics.learning.with_label_values(&["deferred"]).inc();
                tracing::warn!(error = %e, outcomes = self.outcomes, "learning update failed; the outcomes wait for the graph");
                false
            }
        }
    }
}
