//! What replicas tell each other about agents, through Redis pub/sub.
//!
//! Each replica publishes its own breaker transitions at once (`opened`, `closed`) and, every
//! [`SUMMARY_EVERY`], a summary of each agent it called since the last one (the decayed
//! success and attempt counts of its health window, and its latency average). Every replica
//! folds what the others said into its routing policy:
//!
//! - **`opened`**: this replica *holds back* its calls to the agent for one breaker open
//!   interval (`BREAKER_OPEN_MS`), as if its own breaker were open — so an agent one replica
//!   has seen fail costs the others no failed calls. The sender's breaker publishes `opened`
//!   again after each failed probe, which renews the hold; a hold nobody renews runs out.
//! - **`closed`**: the hold ends and the agent's slow start begins again: a recovery seen by
//!   one replica is probed by all, with a ramp rather than a stampede.
//! - **summaries**: remote counts join the local ones in the health score, weighted down as
//!   local evidence grows ([`LOCAL_ENOUGH`]): local observations win. The peers' latency
//!   stands in only while this replica has measured none of its own.
//!
//! Local always wins: a hold never overrides a local breaker that is open or half-open, and
//! a success this replica sees itself ends the hold. Without Redis, or while Redis is away,
//! each replica routes alone, exactly as without sharing (counted; `/status` says `alone`).
//!
//! Everything is bounded: messages are a few hundred bytes (longer ones are ignored), the
//! outbox holds [`OUTBOX`] messages and a rate limit of [`PUBLISH_PER_SECOND`] (beyond it
//! messages are dropped and counted), summaries are at most [`MAX_SUMMARIES`] per tick, and
//! remote views are kept for at most [`MAX_AGENTS`] agents and [`MAX_PEERS`] peers each.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, time::Instant};

use crate::{cache::store::SharedStore, routing::HEALTH_TAU};

/// The pub/sub channel of agent health.
pub const CHANNEL: &str = "myriad:v1:agent-health";
/// How often each replica publishes its summaries.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Summaries published per tick at most.
pub const MAX_SUMMARIES: usize = 256;
/// Messages one replica publishes per second at most (burst as large).
pub const PUBLISH_PER_SECOND: u32 = 400;
/// Messages waiting to be published at most.
pub const OUTBOX: usize = 1_024;
/// Agents with a remote view at most (beyond it, reports on new agents are ignored).
pub const MAX_AGENTS: usize = 4_096;
/// Peers whose summaries are kept per agent at most (the oldest makes room).
pub const MAX_PEERS: usize = 32;
/// Largest message read, in bytes.
pub const MAX_MESSAGE: usize = 1_024;
/// Decayed local attempts at which remote summaries stop counting.
pub const LOCAL_ENOUGH: f64 = 10.0;

/// What one replica says about one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// Its breaker for the agent opened.
    Opened,
    /// Its breaker for the agent closed again.
    Closed,
    /// Its health window: decayed successes and attempts, and the latency average.
    Summary {
        ok: f64,
        total: f64,
        latency_ms: Option<f64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The sending replica.
    from: u64,
    agent: String,
    #[serde(flatten)]
    report: Report,
}

/// One peer's latest summary of an agent.
#[derive(Debug, Clone, Copy)]
struct PeerSummary {
    peer: u64,
    ok: f64,
    total: f64,
    latency_ms: Option<f64>,
    at: Instant,
}

/// What the other replicas said about one agent.
#[derive(Debug, Default)]
struct RemoteView {
    /// Calls are held back until then (a peer's breaker is open).
    held_until: Option<Instant>,
    /// A `closed` arrived that the slow start has not taken in yet.
    recovered: bool,
    summaries: Vec<PeerSummary>,
}

/// What the routing policy takes from the peers for one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerView {
    /// A peer's breaker is open: hold calls back.
    pub held: bool,
    /// A peer saw the agent recover since the last look: restart the slow start.
    pub recovered: bool,
    /// Decayed (successes, attempts) the peers reported, summed.
    pub ok: f64,
    pub total: f64,
    /// The peers' latency averages, weighted by their attempts (for an agent this replica
    /// has no latency of its own for).
    pub latency_ms: Option<f64>,
}

/// Health of an agent from local counts and the peers', local first: the peers' counts
/// weigh `1 − local_total ÷ LOCAL_ENOUGH` (nothing once this replica has seen enough), with
/// one imagined success as a prior.
pub fn folded_health(local_ok: f64, local_total: f64, peers: &PeerView) -> f64 {
    let w = (1.0 - local_total / LOCAL_ENOUGH).clamp(0.0, 1.0);
    (local_ok + w * peers.ok + 1.0) / (local_total + w * peers.total + 1.0)
}

/// This replica's side of shared agent health.
pub struct SharedHealth {
    replica: u64,
    hold: Duration,
    views: Mutex<HashMap<String, RemoteView>>,
    outbox: mpsc::Sender<String>,
    limiter: DefaultDirectRateLimiter,
    listening: OnceLock<Arc<AtomicBool>>,
    store: Arc<dyn SharedStore>,
    events: IntCounterVec,
}

impl SharedHealth {
    /// Starts the publisher; `hold` is how long a peer's `opened` holds calls back. The
    /// subscription is the caller's (it owns the connection): see [`Self::listen_through`].
    pub fn start(store: Arc<dyn SharedStore>, hold: Duration, events: IntCounterVec) -> Arc<Self> {
        let (outbox, mut rx) = mpsc::channel::<String>(OUTBOX);
        let shared = Arc::new(SharedHealth {
            replica: rand::random(),
            hold,
            views: Mutex::new(HashMap::new()),
            outbox,
            limiter: RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(PUBLISH_PER_SECOND).expect("not zero"),
            )),
            listening: OnceLock::new(),
            store: store.clone(),
            events: events.clone(),
        });
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let event = match store.publish(CHANNEL, &msg).await {
                    Ok(()) => "published",
                    Err(_) => "publish_failed",
                };
                events.with_label_values(&[event]).inc();
            }
        });
        shared
    }

    /// `shared` while both publishing and listening work, else `alone`.
    pub fn mode(&self) -> &'static str {
        let listening = self
            .listening
            .get()
            .is_some_and(|l| l.load(Ordering::Acquire));
        if listening && self.store.health().status == "up" {
            "shared"
        } else {
            "alone"
        }
    }

    /// The flag the subscription raises while it is subscribed to [`CHANNEL`].
    pub fn listen_through(&self, listening: Arc<AtomicBool>) {
        let _ = self.listening.set(listening);
    }

    /// Queues a report on `agent` for the peers (dropped, and counted, past the bounds).
    pub fn publish(&self, agent: &str, report: Report) {
        let msg = Message {
            from: self.replica,
            agent: agent.to_string(),
            report,
        };
        let sent = self.limiter.check().is_ok()
            && serde_json::to_string(&msg)
                .ok()
                .filter(|m| m.len() <= MAX_MESSAGE)
                .is_some_and(|m| self.outbox.try_send(m).is_ok());
        if !sent {
            self.events.with_label_values(&["dropped"]).inc();
        }
    }

    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<String, RemoteView>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one message from the channel: its own and malformed ones are ignored.
    pub fn on_message(&self, payload: &str) {
        let msg = (payload.len() <= MAX_MESSAGE)
            .then(|| serde_json::from_str::<Message>(payload).ok())
            .flatten()
            .filter(|m| m.agent.len() <= 256);
        let Some(msg) = msg.filter(|m| m.from != self.replica) else {
            self.events.with_label_values(&["ignored"]).inc();
            return;
        };
        let now = Instant::now();
        let mut views = self.views();
        if !views.contains_key(&msg.agent) && views.len() >= MAX_AGENTS {
            self.events.with_label_values(&["ignored"]).inc();
            return;
        }
        self.events.with_label_values(&["received"]).inc();
        let view = views.entry(msg.agent.clone()).or_default();
        match msg.report {
            Report::Opened => {
                tracing::info!(agent = %msg.agent, "a peer's breaker opened: holding calls back");
                view.held_until = Some(now + self.hold);
            }
            Report::Closed => {
                if view.held_until.take().is_some() {
                    tracing::info!(agent = %msg.agent, "a peer saw the agent recover");
                }
                view.recovered = true;
            }
            Report::Summary {
                ok,
                total,
                latency_ms,
            } => {
                let (ok, total) = (ok.max(0.0), total.max(0.0));
                if !(ok.is_finite() && total.is_finite()) || ok > total {
                    return;
                }
                let latency_ms = latency_ms.filter(|l| l.is_finite() && *l >= 0.0);
                view.summaries.retain(|s| s.peer != msg.from);
                if view.summaries.len() >= MAX_PEERS {
                    view.summaries.remove(0);
                }
                view.summaries.push(PeerSummary {
                    peer: msg.from,
                    ok,
                    total,
                    latency_ms,
                    at: now,
                });
            }
        }
    }

    /// What the peers say about `agent` now (taking in a recovery).
    pub fn view(&self, agent: &str) -> PeerView {
        let now = Instant::now();
        let mut views = self.views();
        let Some(view) = views.get_mut(agent) else {
            return PeerView::default();
        };
        let held = view.held_until.is_some_and(|t| t > now);
        if !held {
            view.held_until = None;
        }
        let (mut ok, mut total, mut latency, mut latency_weight) = (0.0, 0.0, 0.0, 0.0);
        for s in &view.summaries {
            let dt = now.saturating_duration_since(s.at).as_secs_f64();
            let keep = (-dt / HEALTH_TAU.as_secs_f64()).exp();
            ok += s.ok * keep;
            total += s.total * keep;
            if let Some(l) = s.latency_ms {
                latency += l * s.ok * keep;
                latency_weight += s.ok * keep;
            }
        }
        PeerView {
            held,
            recovered: std::mem::take(&mut view.recovered),
            ok,
            total,
            latency_ms: (latency_weight > 0.0).then(|| latency / latency_weight),
        }
    }

    /// Whether calls to `agent` are held back now.
    pub fn held(&self, agent: &str) -> bool {
        self.views()
            .get(agent)
            .and_then(|v| v.held_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// This replica saw `agent` answer: its own observation ends any hold.
    pub fn local_success(&self, agent: &str) {
        if let Some(v) = self.views().get_mut(agent) {
            v.held_until = None;
        }
    }

    /// Agents with a remote view now.
    pub fn tracked(&self) -> usize {
        self.views().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_evidence_outweighs_the_peers() {
        let sick = PeerView {
            ok: 0.0,
            total: 20.0,
            ..Default::default()
        };
        // Nothing seen here: the peers' verdict stands.
        assert!(folded_health(0.0, 0.0, &sick) < 0.1);
        // Half the evidence needed: half the weight.
        let h = folded_health(5.0, 5.0, &sick);
        assert!((0.3..0.4).contains(&h), "{h}");
        // Enough of its own: the local view alone.
        assert_eq!(folded_health(10.0, 10.0, &sick), 1.0);
    }

    #[test]
    fn messages_are_small_and_tagged() {
        let m = Message {
            from: 7,
            agent: "a".into(),
            report: Report::Summary {
                ok: 1.5,
                total: 2.0,
                latency_ms: Some(3.0),
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"from":7,"agent":"a","kind":"summary","ok":1.5,"total":2.0,"latency_ms":3.0}"#
        );
        let back: Message = serde_json::from_str(r#"{"from":1,"agent":"x","kind":"opened"}"#)
            .expect("opened parses");
        assert_eq!(back.report, Report::Opened);
    }
}
