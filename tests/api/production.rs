//! The product as a newcomer runs it, everything on at once: the embedded default graph and
//! demo agents, tracing `always_on` exported over OTLP to a real receiver, learning on, the
//! response cache off; a burst at saturation while clients with a timeout shorter than an
//! agent's latency give up, and `/health` is probed throughout.
//!
//! What a user would notice is asserted: every request answered and every task served,
//! `/health` answering during the burst, the process back to idle after it, the spans per
//! request within the documented budget (docs/OBSERVABILITY.md), no breaker open on a
//! healthy agent, no panic and no ERROR line. The long version (two release replicas,
//! Redis, the Bolt graph server, k6 from 200 req/s to saturation) is
//! `loadtests/run-production.sh`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::spawn_process,
    servers::OtlpSink,
};

/// Spans one request may export at most: its server span, the question's parse and
/// synthesis, then per task its span, a remote graph's `discover` and neurogenesis, and per
/// HTTP attempt `agent_call`, `agent_attempt` and an in-process demo agent's server span.
fn span_budget(tasks: u64, attempts: u64) -> u64 {
    3 + 3 * tasks + 3 * attempts
}

/// CPU time (user + system) the process has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_on_a_burst_at_saturation_is_answered_and_the_service_returns_to_idle() {
    let sink = OtlpSink::start();
    // A healthy agent slower than the impatient clients' timeout, beside the demo agents.
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(300)));
    let mut seed: Value = serde_json::from_str(include_str!("../../seed/default.json")).unwrap();
    seed["concepts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sun", "primary_definition": "The star at the centre."}));
    seed["agents"].as_array_mut().unwrap().push(json!({
        "name": "Slow_AI", "type": "static", "endpoint": slow.url(), "intents": ["define"]
    }));
    seed["handles"]
        .as_array_mut()
        .unwrap()
        .push(json!({"agent": "Slow_AI", "concept": "sun", "weight": 0.5}));
    let mut app = spawn_process(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
            ("CACHE_ENABLED", "false".into()),
            ("RUST_LOG", "info".into()),
        ],
        Some(seed),
    );
    let pid = app.child().pid();
    let base = app.base.clone();
    let rss_before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    // /health, every 50 ms, throughout.
    let health = tokio::spawn({
        let (base, stop) = (base.clone(), stop.clone());
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let r = client.get(format!("{base}/health")).send().await;
                assert!(
                    r.is_ok_and(|r| r.status() == 200),
                    "/health did not answer within 2 s during the burst"
                );
                took.push(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            took
        }
    });
    // Clients that give up after 100 ms on an agent that answers in 300 ms.
    let impatient = tokio::spawn({
        let base = base.clone();
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(100))
                .build()
                .unwrap();
            for _ in 0..8 {
                let r = client
                    .post(format!("{base}/process"))
                    .json(&json!({"tasks": [{"task_id": 1, "concept": "sun", "intent": "define"}]}))
                    .send()
                    .await;
                assert!(r.is_err_and(|e| e.is_timeout()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // The burst: 32 connections as fast as they are answered, for 3 s.
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let burst_end = Instant::now() + Duration::from_secs(3);
    let burst: Vec<_> = (0..32)
        .map(|c| {
            let (base, sent, failed) = (base.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while Instant::now() < burst_end {
                    n += 1;
                    let task = json!({"tasks": [{"task_id": 1, "concept": "lightbulb",
                        "intent": "define", "args": {"client": c, "n": n}}]});
                    let r = client
                        .post(format!("{base}/process"))
                        .json(&task)
                        .send()
                        .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let ok = match r {
                        Ok(r) if r.status() == 200 => r
                            .json::<Value>()
                            .await
                            .is_ok_and(|b| b["results"]["1"]["status"] == "success"),
                        _ => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    impatient.await.unwrap();
    let ended = Instant::now();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));

    // Back to idle within 5 s: a one-second window below 5 % of a core.
    let mut idle_after = None;
    let mut samples = Vec::new();
    while idle_after.is_none() && ended.elapsed() < Duration::from_secs(6) {
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let share = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
        samples.push(share);
        if share < 0.05 {
            idle_after = Some(ended.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    let rss_after = rss_kib(pid);

    // Every outcome applied: the learning flush has closed its `learn` spans.
    for _ in 0..40 {
        if app.series("myriad_learning_total{event=\"applied\"}").await >= sent as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every span handed to the exporter has left (exported, failed or dropped, counted):
    // wait until the receiver has seen everything but its own scrapes — unchanged over a
    // second, longer than the exporter's round (500 ms), so a span closed just before a
    // look has left by the next.
    let mut seen = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s = sink.summary().await;
        let now = s["spans"].as_u64().unwrap() - s["by_name"]["GET /metrics"].as_u64().unwrap_or(0);
        if now == seen {
            break;
        }
        seen = now;
    }
    let spans = (
        app.series("myriad_trace_spans_total{result=\"exported\"}")
            .await,
        app.series("myriad_trace_spans_total{result=\"failed\"}")
            .await,
        app.series("myriad_trace_spans_total{result=\"dropped\"}")
            .await,
    );
    let summary = sink.summary().await;
    let by_name = |n: &str| summary["by_name"][n].as_u64().unwrap_or(0);
    let mut health_ms: Vec<u128> = health.iter().map(Duration::as_millis).collect();
    health_ms.sort_unstable();
    let p99 = health_ms[(health_ms.len() * 99 / 100).min(health_ms.len() - 1)];
    println!(
        "burst: {sent} requests in 3 s ({failed} failed); /health p99 {p99} ms (max {} ms) over {} probes; \
         idle again after {idle_after:?} (CPU share per second: {samples:.3?}); RSS {rss_before} KiB → {rss_after} KiB; \
         spans exported {} failed {} dropped {}; received by name {}",
        health_ms.last().unwrap(),
        health_ms.len(),
        spans.0,
        spans.1,
        spans.2,
        summary["by_name"],
    );

    assert_eq!(failed, 0, "tasks an agent could serve failed");
    assert!(sent > 100, "the burst sent only {sent} requests");
    assert!(
        idle_after.is_some(),
        "still busy 5 s after the load: {samples:?}"
    );
    // Spans: none dropped or refused by the receiver, every exported one received, and per
    // request within the budget (every request here is one task, one attempt; /health and
    // /metrics are one span each).
    assert_eq!((spans.1, spans.2), (0.0, 0.0), "spans failed or dropped");
    assert!(
        summary["spans"].as_f64().unwrap() >= spans.0,
        "spans counted as exported never arrived"
    );
    let requests = by_name("POST /process");
    assert_eq!(requests, sent + 8, "one server span per /process request");
    assert_eq!(by_name("task"), sent + 8);
    let per_request = (summary["spans"].as_u64().unwrap()
        - by_name("GET /health")
        - by_name("GET /metrics")) as f64
        / requests as f64;
    assert!(
        per_request <= span_budget(1, 1) as f64,
        "{per_request:.1} spans per request, over the budget of {}",
        span_budget(1, 1)
    );
    // Learning is one span per edge per applied batch, linked to its tasks (capped).
    let learn = sink.spans("learn").await;
    assert!(!learn.is_empty());
    assert!(
        (learn.len() as u64) < sent / 10,
        "{} learn spans for {sent} requests",
        learn.len()
    );
    let attr = |s: &Value, k: &str| {
        s["attributes"][k]
            .as_u64()
            .or_else(|| s["attributes"][k].as_str()?.parse().ok())
            .unwrap()
    };
    let mut outcomes = 0;
    for s in &learn {
        let links = s["links"].as_array().unwrap().len() as u64;
        assert!(links <= 128, "{links} links");
        assert_eq!(links + attr(s, "links_dropped"), attr(s, "outcomes"), "{s}");
        outcomes += attr(s, "outcomes");
    }
    assert_eq!(
        outcomes, sent,
        "every served task learned once (and no cancel)"
    );
    // The clients that gave up are cancels, not the slow agent's failures.
    assert_eq!(
        app.series("myriad_tasks_total{status=\"cancelled\"}").await,
        8.0
    );
    assert_eq!(
        app.series("myriad_agent_breaker_state{agent=\"Slow_AI\"}")
            .await,
        0.0,
        "a healthy agent's breaker opened"
    );
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "sun", "intent": "define"}]}),
        )
        .await;
    assert_eq!(
        (status, &body["results"]["1"]["status"]),
        (200, &json!("success"))
    );
    for line in app.logs() {
        assert!(!line.contains("\"level\":\"ERROR\""), "{line}");
    }
    let stderr = app.child().stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
