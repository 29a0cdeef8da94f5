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
//!   local evidence grows ([`crate::routing::LOCAL_ENOUGH`]): local observations win. The peers' latency
//!   stands in only while this replica has measured none of its own.
//! - **evidence**: the outcomes each (agent, concept) pair had at the sender since its last
//!   tick, counted in the learned estimate like this replica's own (an agent's quality is the
//!   same whoever calls it): every replica routes on what all of them saw.
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

use crate::{
    routing::{PeerView, SharedEvidence, HEALTH_TAU},
    store::SharedStore,
};

/// The pub/sub channel of agent health.
pub const HEALTH_CHANNEL: &str = "myriad:v1:agent-health";
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
/// Peers' evidence reports waiting to be counted at most (beyond, they are dropped).
pub const MAX_EVIDENCE_IN: usize = 4_096;

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
    /// Outcomes of the agent on `concept` since its last tick, for the learned estimate.
    Evidence {
        concept: String,
        prior: f64,
        ok: f64,
        failed: f64,
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

/// This replica's side of shared agent health.
pub struct Peers {
    replica: u64,
    hold: Duration,
    views: Mutex<HashMap<String, RemoteView>>,
    outbox: mpsc::Sender<String>,
    limiter: DefaultDirectRateLimiter,
    listening: OnceLock<Arc<AtomicBool>>,
    store: Arc<dyn SharedStore>,
    events: IntCounterVec,
    /// Peers' evidence not yet counted ([`Peers::take_evidence`]).
    evidence_in: Mutex<Vec<SharedEvidence>>,
}

impl Peers {
    /// Starts the publisher; `hold` is how long a peer's `opened` holds calls back. The
    /// subscription is the caller's (it owns the connection): see [`Self::listen_through`].
    pub fn start(store: Arc<dyn SharedStore>, hold: Duration, events: IntCounterVec) -> Arc<Self> {
        let (outbox, mut rx) = mpsc::channel::<String>(OUTBOX);
        let shared = Arc::new(Peers {
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
            evidence_in: Mutex::new(Vec::new()),
        });
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let event = match store.publish(HEALTH_CHANNEL, &msg).await {
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
        if listening && self.store.status().status == "up" {
            "shared"
        } else {
            "alone"
        }
    }

    /// The flag the subscription raises while it is subscribed to [`HEALTH_CHANNEL`].
    pub fn listen_through(&self, listening: Arc<AtomicBool>) {
        let _ = self.listening.set(listening);
    }

    /// Every [`SUMMARY_EVERY`], publishes what `called` returns — a summary of each agent
    /// called since the last look — until either side is gone (`called` answers `None`).
    pub fn spawn_summaries(
        self: &Arc<Self>,
        called: impl Fn(Instant) -> Option<Vec<(String, Report)>> + Send + Sync + 'static,
    ) {
        let called = Arc::new(called);
        crate::every::every(SUMMARY_EVERY, self, move |peers| {
            let called = Arc::clone(&called);
            async move {
                let Some(reports) = called(Instant::now()) else {
                    return false;
                };
                for (agent, report) in reports {
                    peers.publish(&agent, report);
                }
                true
            }
        });
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
            .filter(|m| m.agent.len() <= 256 && m.from != self.replica)
            .filter(|m| match m.report {
                Report::Summary { ok, total, .. } => {
                    ok.is_finite() && total.is_finite() && 0.0 <= ok && ok <= total
                }
                _ => true,
            });
        let Some(msg) = msg else {
            self.events.with_label_values(&["ignored"]).inc();
            return;
        };
        if let Report::Evidence {
            concept,
            prior,
            ok,
            failed,
        } = msg.report
        {
            let e = SharedEvidence {
                agent: msg.agent,
                concept,
                prior,
                ok,
                failed,
            };
            let mut inbox = self.evidence_in.lock().unwrap_or_else(|e| e.into_inner());
            let event = if e.is_valid() && inbox.len() < MAX_EVIDENCE_IN {
                inbox.push(e);
                "received"
            } else {
                "ignored"
            };
            self.events.with_label_values(&[event]).inc();
            return;
        }
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
            // Handled above, before the agent views.
            Report::Evidence { .. } => {}
            Report::Summary {
                ok,
                total,
                latency_ms,
            } => {
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

    /// The peers' evidence received since the last call.
    pub fn take_evidence(&self) -> Vec<SharedEvidence> {
        std::mem::take(&mut *self.evidence_in.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Tells the peers what `evidence` this replica saw.
    pub fn publish_evidence(&self, evidence: Vec<SharedEvidence>) {
        for e in evidence {
            self.publish(
                &e.agent,
                Report::Evidence {
                    concept: e.concept,
                    prior: e.prior,
                    ok: e.ok,
                    failed: e.failed,
                },
            );
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
    use crate::store::{GcraVerdict, StoreError, StoreStatus};

    /// A store that accepts everything (the unit under test is the folding, not Redis).
    struct Accepting;

    #[async_trait::async_trait]
    impl SharedStore for Accepting {
        async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        async fn set(&self, _: &str, _: Vec<u8>, _: Duration) -> Result<(), StoreError> {
            Ok(())
        }
        async fn delete_prefix(&self, _: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn publish(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn gcra(&self, _: &str, _: Duration, _: u32) -> Result<GcraVerdict, StoreError> {
            Ok(GcraVerdict::Allowed { remaining: 1 })
        }
        async fn retry_budget(
            &self,
            _: &str,
            _: Duration,
            _: u64,
            _: u64,
            _: &[(u64, u64)],
        ) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn status(&self) -> StoreStatus {
            StoreStatus {
                status: "up",
                breaker: Default::default(),
                errors_total: 0,
                short_circuited_total: 0,
                recoveries_total: 0,
            }
        }
    }

    fn shared() -> (Arc<Peers>, IntCounterVec) {
        let events =
            IntCounterVec::new(prometheus::Opts::new("e", "e"), &["event"]).expect("valid");
        let s = Peers::start(Arc::new(Accepting), Duration::from_secs(5), events.clone());
        (s, events)
    }

    fn from(peer: u64, agent: &str, kind: &str) -> String {
        format!(r#"{{"from":{peer},"agent":"{agent}","kind":"{kind}"}}"#)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peers_open_breaker_holds_calls_until_it_closes_a_local_success_or_the_interval_ends()
    {
        let (s, _) = shared();
        s.on_message(&from(1, "a", "opened"));
        assert!(s.held("a") && s.view("a").held);
        s.on_message(&from(1, "a", "closed"));
        let v = s.view("a");
        assert!(!v.held && v.recovered, "{v:?}");
        assert!(!s.view("a").recovered, "a recovery is taken in once");

        s.on_message(&from(2, "a", "opened"));
        s.local_success("a");
        assert!(!s.held("a"), "this replica's own success wins");

        s.on_message(&from(2, "a", "opened"));
        tokio::time::advance(Duration::from_millis(5_001)).await;
        assert!(!s.held("a"), "a hold nobody renews runs out");
    }

    #[tokio::test]
    async fn its_own_malformed_and_oversized_messages_change_nothing() {
        let (s, events) = shared();
        s.on_message(&from(s.replica, "a", "opened"));
        s.on_message("not json");
        s.on_message(&from(1, &"x".repeat(300), "opened"));
        s.on_message(&format!(
            r#"{{"from":1,"agent":"a","kind":"opened","pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE)
        ));
        s.on_message(r#"{"from":1,"agent":"a","kind":"summary","ok":5,"total":2}"#);
        s.on_message(r#"{"from":1,"agent":"a","kind":"summary","ok":-1,"total":1e999}"#);
        assert!(!s.held("a"));
        assert_eq!(s.view("a"), PeerView::default());
        assert_eq!(events.with_label_values(&["ignored"]).get(), 6);
        assert_eq!(events.with_label_values(&["received"]).get(), 0);
    }

    #[tokio::test]
    async fn remote_views_are_bounded() {
        let (s, events) = shared();
        for i in 0..MAX_AGENTS + 10 {
            s.on_message(&from(1, &format!("agent-{i}"), "opened"));
        }
        assert_eq!(s.tracked(), MAX_AGENTS);
        assert_eq!(events.with_label_values(&["ignored"]).get(), 10);
        for peer in 0..MAX_PEERS as u64 + 5 {
            s.on_message(&format!(
                r#"{{"from":{},"agent":"agent-0","kind":"summary","ok":1,"total":1,"latency_ms":4}}"#,
                peer + 100
            ));
        }
        let v = s.view("agent-0");
        assert!((v.total - MAX_PEERS as f64).abs() < 0.01, "{v:?}");
        assert_eq!(v.latency_ms, Some(4.0));
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
