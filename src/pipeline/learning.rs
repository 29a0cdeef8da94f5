//! Hebbian learning, off the request path.
//!
//! The pipeline drops each outcome into a bounded channel and moves on; one worker applies
//! them to the graph in batches every flush interval and runs the periodic decay. When the
//! channel is full, outcomes are dropped and counted rather than slowing requests down.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{
    config::LearningSettings,
    graph::{Deltas, KnowledgeGraph, Outcome},
    metrics::Metrics,
};

/// Outcomes waiting to be applied, at most.
const QUEUE: usize = 16_384;
/// Outcomes applied in one write, at most.
const BATCH: usize = 4_096;

/// An outcome and the span of the task it came from (the learning span's parent).
type Traced = (Outcome, tracing::Span);

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
            if tx.try_send((outcome, tracing::Span::current())).is_err() {
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
        tokio::time::Instant::now() + settings.decay_interval,
        settings.decay_interval,
    );
    decay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = stop.notified() => {
                drain(&*graph, &mut rx, &mut batch, deltas, &metrics).await;
                break;
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                // Let a burst accumulate so it lands as one write (unless shutting down).
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(settings.flush_interval) => false,
                    _ = stop.notified() => true,
                };
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(o) => batch.push(o),
                        Err(_) => break,
                    }
                }
                apply(&*graph, &mut batch, deltas, &metrics).await;
                if stopping {
                    drain(&*graph, &mut rx, &mut batch, deltas, &metrics).await;
                    break;
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

/// Applies everything still queued (shutdown).
async fn drain(
    graph: &dyn KnowledgeGraph,
    rx: &mut mpsc::Receiver<Traced>,
    batch: &mut Vec<Traced>,
    deltas: Deltas,
    metrics: &Metrics,
) {
    while let Ok(o) = rx.try_recv() {
        batch.push(o);
        if batch.len() == BATCH {
            apply(graph, batch, deltas, metrics).await;
        }
    }
    if !batch.is_empty() {
        apply(graph, batch, deltas, metrics).await;
    }
    tracing::info!("learning flushed for shutdown");
}

async fn apply(
    graph: &dyn KnowledgeGraph,
    batch: &mut Vec<Traced>,
    deltas: Deltas,
    metrics: &Metrics,
) {
    let outcomes: Vec<Outcome> = batch.iter().map(|(o, _)| o.clone()).collect();
    match graph.learn(&outcomes, deltas).await {
        Ok(changes) => {
            metrics
                .learning
                .with_label_values(&["applied"])
                .inc_by(batch.len() as u64);
            metrics.learning.with_label_values(&["batch"]).inc();
            for c in &changes {
                tracing::debug!(agent = %c.agent, concept = %c.concept, old = c.old, new = c.new, "weight updated");
                // Each task that contributed sees what its outcome changed, in its trace.
                for (o, parent) in batch.iter() {
                    if o.agent == c.agent && o.concept == c.concept && !parent.is_disabled() {
                        tracing::info_span!(
                            parent: parent,
                            "learn",
                            agent = %c.agent,
                            concept = %c.concept,
                            success = o.success,
                            weight_old = c.old,
                            weight_new = c.new,
                            batch = outcomes.len(),
                        )
                        .in_scope(|| {});
                    }
                }
            }
        }
        Err(e) => {
            metrics.learning.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, outcomes = outcomes.len(), "learning update failed; batch dropped");
        }
    }
    batch.clear();
}
