//! The resilience pipeline against real misbehaving agents, counting the calls they receive.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    agents::{answering, dead_url, spawn_agent, spawn_closing_agent, Behaviour},
    helpers::{error_code, seed_with, spawn_with, uncached as settings, TestApp},
};

fn task(id: impl Into<Value>) -> Value {
    json!({"task_id": id.into(), "concept": "lamp", "intent": "define"})
}

async fn one(app: &TestApp, id: u64) -> Value {
    let (status, body) = app.post("/process", &json!({"tasks": [task(id)]})).await;
    assert_eq!(status, 200, "{body}");
    body["results"][id.to_string()].clone()
}

async fn agent_status(app: &TestApp, agent: &str) -> Value {
    // /status caches its probes for 1 s; wait it out so the state is fresh.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let (_, body) = app.get("/status").await;
    body["dependencies"]["agents"][agent].clone()
}

#[tokio::test]
async fn the_breaker_opens_within_the_configured_failures_and_the_agent_stops_being_called() {
    let broken = spawn_agent("Broken_AI", Behaviour::Status(500));
    let seed = seed_with("lamp", &[("Broken_AI", &broken.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.breaker_consecutive_failures = Some("3".into());
    raw.breaker_open_ms = Some("60000".into());
    raw.http_retries = Some("0".into());
    // The breaker alone: no floor under ejection (its own test is below).
    raw.routing_panic_interval_ms = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    let mut codes = Vec::new();
    for i in 0..10 {
        codes.push(one(&app, i).await["code"].as_str().unwrap().to_string());
    }
    assert_eq!(
        broken.calls(),
        3,
        "calls after the breaker opened reached the agent"
    );
    assert!(
        codes[..3].iter().all(|c| c == "upstream_error"),
        "{codes:?}"
    );
    assert!(codes[3..].iter().all(|c| c == "breaker_open"), "{codes:?}");
    let status = agent_status(&app, "Broken_AI").await;
    assert_eq!(status["breaker"], "open");
    assert_eq!(status["recent_failure_rate"], 1.0, "{status}");
    let (_, agents) = app.get("/agents").await;
    assert_eq!(agents["agents"][0]["breaker"], "open");
    let (_, metrics) = app.get("/metrics").await;
    assert_eq!(metrics["performance"]["rejections"]["breaker_open"], 7);
}

#[tokio::test]
async fn half_open_probes_are_capped_and_the_breaker_closes_after_recovery() {
    let agent = spawn_agent("Flaky_AI", Behaviour::Status(500));
    let seed = seed_with("lamp", &[("Flaky_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.breaker_consecutive_failures = Some("2".into());
    raw.breaker_open_ms = Some("300".into());
    raw.breaker_half_open_probes = Some("1".into());
    raw.http_retries = Some("0".into());
    // The breaker's own probes alone: no floor under ejection.
    raw.routing_panic_interval_ms = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    one(&app, 1).await;
    one(&app, 2).await;
    assert_eq!(one(&app, 3).await["code"], "breaker_open");
    assert_eq!(agent.calls(), 2);

    // The agent recovers, slowly: while the single probe is in flight, others are refused.
    agent.set(Behaviour::Slow(Duration::from_millis(400)));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let tasks: Vec<Value> = (10..20).map(task).collect();
    let (_, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    let results = body["results"].as_object().unwrap();
    let ok = results
        .values()
        .filter(|r| r["status"] == "success")
        .count();
    let refused = results
        .values()
        .filter(|r| r["code"] == "breaker_open")
        .count();
    assert_eq!((ok, refused), (1, 9), "{body}");
    assert_eq!(agent.calls(), 3, "exactly one probe reached the agent");

    // The probe succeeded: closed again, traffic flows.
    agent.set(Behaviour::Answer {
        data: json!("back"),
        extra: json!({}),
    });
    assert_eq!(one(&app, 30).await["status"], "success");
    assert_eq!(one(&app, 31).await["status"], "success");
    assert_eq!(agent_status(&app, "Flaky_AI").await["breaker"], "closed");
}

#[tokio::test]
async fn a_hung_agent_costs_at_most_the_per_try_timeout_and_never_more_than_the_deadline() {
    let hung = spawn_agent("Hung_AI", Behaviour::Hang);
    let hung2 = spawn_agent("Hung2_AI", Behaviour::Hang);
    let seed = seed_with(
        "lamp",
        &[
            ("Hung_AI", &hung.url(), &["define"], 0.9),
            ("Hung2_AI", &hung2.url(), &["define"], 0.5),
        ],
    );
    let mut raw = settings();
    raw.agent_timeout_ms = Some("300".into());
    raw.request_timeout_ms = Some("500".into());
    raw.http_retries = Some("3".into());
    let app = spawn_with(raw, Some(seed)).await;
    let started = Instant::now();
    let r = one(&app, 1).await;
    let took = started.elapsed();
    assert_eq!(r["code"], "timeout");
    // A timeout is not retried (the agent may have acted): one attempt on the first agent,
    // then the second agent gets what is left of the 500 ms deadline.
    assert_eq!(hung.calls(), 1);
    assert_eq!(hung2.calls(), 1);
    assert!(
        took < Duration::from_millis(1_500),
        "took {took:?} for a 500 ms deadline"
    );
    assert!(
        took >= Duration::from_millis(450),
        "returned before the deadline: {took:?}"
    );
}

#[tokio::test]
async fn an_agents_400_neither_opens_the_breaker_nor_is_retried() {
    let picky = spawn_agent("Picky_AI", Behaviour::Status(400));
    let seed = seed_with("lamp", &[("Picky_AI", &picky.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.breaker_consecutive_failures = Some("2".into());
    raw.http_retries = Some("3".into());
    raw.http_backoff = Some("0.001".into());
    let app = spawn_with(raw, Some(seed)).await;
    for i in 0..6 {
        let r = one(&app, i).await;
        assert_eq!(r["code"], "agent_rejected");
        assert_eq!(r["attempts"], 1);
    }
    assert_eq!(picky.calls(), 6);
    assert_eq!(agent_status(&app, "Picky_AI").await["breaker"], "closed");
}

#[tokio::test]
async fn retryable_answers_are_retried_until_success() {
    let agent = spawn_agent(
        "Busy_AI",
        Behaviour::FailThenOk {
            failures: 2,
            status: 503,
        },
    );
    let seed = seed_with("lamp", &[("Busy_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.http_retries = Some("3".into());
    raw.http_backoff = Some("0.01".into());
    let app = spawn_with(raw, Some(seed)).await;
    let r = one(&app, 1).await;
    assert_eq!(r["status"], "success");
    assert_eq!(r["attempts"], 3);
    assert_eq!(agent.calls(), 3);
}

#[tokio::test]
async fn a_500_and_a_dropped_connection_are_not_retried_but_a_refused_connection_is() {
    let err500 = spawn_agent("Err_AI", Behaviour::Status(500));
    let (closing, connections) = spawn_closing_agent();
    let dead = dead_url();
    let mut raw = settings();
    raw.http_retries = Some("2".into());
    raw.http_backoff = Some("0.001".into());
    for (url, name) in [
        (err500.url(), "Err_AI"),
        (closing.clone(), "Closing_AI"),
        (dead.url(), "Dead_AI"),
    ] {
        let seed = seed_with("lamp", &[(name, &url, &["define"], 0.5)]);
        let app = spawn_with(raw.clone(), Some(seed)).await;
        let r = one(&app, 1).await;
        assert_eq!(r["code"], "upstream_error", "{name}: {r}");
        let expected = if name == "Dead_AI" { 3 } else { 1 };
        assert_eq!(r["attempts"], expected, "{name}: {r}");
    }
    assert_eq!(err500.calls(), 1);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn during_an_outage_retries_stop_at_the_budget() {
    let down = spawn_agent("Down_AI", Behaviour::Status(503));
    let seed = seed_with("lamp", &[("Down_AI", &down.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.http_retries = Some("3".into());
    raw.http_backoff = Some("0.001".into());
    raw.retry_budget_percent = Some("20".into());
    raw.breaker_consecutive_failures = Some("1000".into());
    raw.breaker_failure_rate = Some("1.0".into());
    raw.breaker_min_calls = Some("100000".into());
    let app = spawn_with(raw, Some(seed)).await;
    for i in 0..50 {
        one(&app, i).await;
    }
    let calls = down.calls();
    // Without a budget: 50 × 4 = 200 calls. With it: 50 + floor 3 + 20 % of 50.
    assert!(calls > 50, "no retry happened at all");
    assert!(
        calls <= 50 + 3 + 10,
        "{calls} calls: retries exceeded the budget"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics["performance"]["rejections"]["retries_denied_by_budget"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn when_the_best_agent_is_broken_every_task_succeeds_through_the_other() {
    let broken = spawn_agent("Best_AI", Behaviour::Status(500));
    let backup = spawn_agent(
        "Backup_AI",
        Behaviour::Answer {
            data: json!("from backup"),
            extra: json!({}),
        },
    );
    let seed = seed_with(
        "lamp",
        &[
            ("Best_AI", &broken.url(), &["define"], 1.0),
            ("Backup_AI", &backup.url(), &["define"], 0.2),
        ],
    );
    let mut raw = settings();
    raw.breaker_consecutive_failures = Some("3".into());
    raw.breaker_open_ms = Some("60000".into());
    raw.http_retries = Some("0".into());
    raw.enable_autonomous_learning = Some("false".into());
    // The graph's order, so the breaker alone keeps the broken agent out (the score
    // policy avoids it even sooner: tests/api/routing.rs).
    raw.routing_policy = Some("weight".into());
    let app = spawn_with(raw, Some(seed)).await;
    for i in 0..10 {
        let r = one(&app, i).await;
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agent_name"], "Backup_AI");
    }
    assert_eq!(
        broken.calls(),
        3,
        "the broken agent kept being called after its breaker opened"
    );
    assert_eq!(backup.calls(), 10);
    let (_, d) = app.post("/discover", &json!({"concept": "lamp"})).await;
    assert_eq!(
        d["agent"]["name"], "Backup_AI",
        "discovery skips the open breaker"
    );
}

#[tokio::test]
async fn inbound_429_has_a_correct_retry_after_and_limits_each_client_separately() {
    let mut raw = settings();
    raw.rate_limit_per_client = Some("1".into());
    raw.rate_limit_burst = Some("2".into());
    let app = spawn_with(raw, None).await;
    let body = json!({"concept": "lightbulb"});
    for _ in 0..2 {
        let (status, _) = app.post("/discover", &body).await;
        assert_eq!(status, 200);
    }
    let resp = app
        .client
        .post(app.url("/discover"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let h = resp.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-ratelimit-limit"], "2");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&err), "rate_limited");
    // Another client (API key) has its own quota; /health is never limited.
    let resp = app
        .client
        .post(app.url("/process"))
        .header("x-api-key", "k1")
        .json(&json!({"query": "define lightbulb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.get("/health").await.0, 200);
    // After Retry-After, the first client is served again.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    assert_eq!(app.post("/discover", &body).await.0, 200);
}

#[tokio::test]
async fn the_per_agent_limit_holds() {
    let agent = spawn_agent(
        "Limited_AI",
        Behaviour::Answer {
            data: json!("ok"),
            extra: json!({}),
        },
    );
    let seed = seed_with("lamp", &[("Limited_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.agent_rate_limit = Some("2".into());
    let app = spawn_with(raw, Some(seed)).await;
    let tasks: Vec<Value> = (0..10).map(task).collect();
    let (_, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    let results = body["results"].as_object().unwrap();
    let limited = results
        .values()
        .filter(|r| r["code"] == "rate_limited")
        .count();
    assert_eq!(agent.calls(), 2, "{body}");
    assert_eq!(limited, 8);
    assert_eq!(body["status"], "partial");
}

#[tokio::test]
async fn calls_beyond_the_bulkhead_fail_fast() {
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(500)));
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.agent_max_inflight = Some("2".into());
    let app = spawn_with(raw, Some(seed)).await;
    let tasks: Vec<Value> = (0..6).map(task).collect();
    let (_, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    let results = body["results"].as_object().unwrap();
    let full: Vec<&Value> = results
        .values()
        .filter(|r| r["code"] == "bulkhead_full")
        .collect();
    assert_eq!(full.len(), 4, "{body}");
    assert!(
        full.iter()
            .all(|r| r["latency_ms"].as_f64().unwrap() < 100.0),
        "bulkhead refusals waited: {body}"
    );
    assert_eq!(slow.calls(), 2);
}

#[tokio::test]
async fn a_breaker_whose_open_interval_ended_is_shown_half_open_even_with_no_call_since() {
    let broken = spawn_agent("Quiet_AI", Behaviour::Status(500));
    let seed = seed_with("lamp", &[("Quiet_AI", &broken.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.breaker_consecutive_failures = Some("2".into());
    raw.breaker_open_ms = Some("300".into());
    raw.http_retries = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    one(&app, 1).await;
    one(&app, 2).await;
    let (_, agents) = app.get("/agents").await;
    assert_eq!(agents["agents"][0]["breaker"], "open");
    // No call comes; the open interval ends; /status and /agents say a probe is due.
    let status = agent_status(&app, "Quiet_AI").await;
    assert_eq!(status["breaker"], "half_open", "{status}");
    let (_, agents) = app.get("/agents").await;
    assert_eq!(agents["agents"][0]["breaker"], "half_open");
    assert_eq!(broken.calls(), 2, "showing the state called nobody");
}

/// POSTs one `lamp` task, the client saying it waits `timeout_ms` (if given).
async fn post_with_timeout(app: &TestApp, timeout_ms: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/process"))
        .json(&json!({"tasks": [task(1)]}));
    if let Some(ms) = timeout_ms {
        req = req.header("x-request-timeout-ms", ms);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Every agent call tells the agent how long the gateway will wait (`x-request-timeout-ms`):
/// the per-try timeout, or the time the client's own deadline leaves, whichever is less.
#[tokio::test]
async fn the_agent_is_told_the_time_left() {
    let agent = answering("Told_AI");
    let app = spawn_with(
        myriad::config::RawSettings {
            agent_timeout_ms: Some("1500".into()),
            ..settings()
        },
        Some(seed_with(
            "lamp",
            &[("Told_AI", &agent.url(), &["define"], 0.9)],
        )),
    )
    .await;
    let told = |i: usize| -> u64 {
        agent.timeouts.lock().unwrap()[i]
            .as_deref()
            .expect("the header is sent")
            .parse()
            .expect("whole milliseconds")
    };
    // No deadline from the client: the per-try timeout (1,500 ms, less than the 10 s left).
    let (status, body) = post_with_timeout(&app, None).await;
    assert_eq!(status, 200, "{body}");
    assert!((1_480..=1_500).contains(&told(0)), "told {}", told(0));
    // The client waits 400 ms: the agent is told what is left of them.
    let (status, body) = post_with_timeout(&app, Some("400")).await;
    assert_eq!(status, 200, "{body}");
    assert!((370..=400).contains(&told(1)), "told {}", told(1));
    assert_eq!(agent.calls(), 2);
}

/// With less than `AGENT_MIN_TIME_LEFT_MS` (25 ms by default) left, no call is started: the
/// task fails at once as timed out, and the agent is never asked. A deadline the header
/// cannot carry is a 400 that starts nothing.
#[tokio::test]
async fn no_call_is_started_without_time_to_answer() {
    let agent = answering("Late_AI");
    let app = spawn_with(
        settings(),
        Some(seed_with(
            "lamp",
            &[("Late_AI", &agent.url(), &["define"], 0.9)],
        )),
    )
    .await;
    let started = Instant::now();
    let (status, body) = post_with_timeout(&app, Some("20")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["1"]["status"], "error", "{body}");
    assert_eq!(body["results"]["1"]["code"], "timeout", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    for bad in ["0", "abc", "600001", "-5", "1.5"] {
        let (status, body) = post_with_timeout(&app, Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_parameter", "{bad}: {body}");
    }
    assert_eq!(agent.calls(), 0, "no call was started");
    // With time enough, the same task is answered.
    let (status, body) = post_with_timeout(&app, Some("2000")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["1"]["status"], "success", "{body}");
    assert_eq!(agent.calls(), 1);
}

/// An agent answering 429 with `Retry-After: 2` is sent nothing for 2 s — every task goes to
/// the other agent at once — and its health does not drop (breaker closed, health whole);
/// once the time has passed it is the first choice again.
#[tokio::test]
async fn an_agent_that_asks_for_time_gets_it_and_nothing_else() {
    let busy = spawn_agent("Busy_AI", Behaviour::Throttle("2"));
    let spare = answering("Spare_AI");
    let app = spawn_with(
        myriad::config::RawSettings {
            routing_policy: Some("weight".into()),
            ..settings()
        },
        Some(seed_with(
            "lamp",
            &[
                ("Busy_AI", &busy.url(), &["define"], 0.9),
                // Low enough that its successes (+0.05 each) keep it below Busy_AI's 0.9.
                ("Spare_AI", &spare.url(), &["define"], 0.1),
            ],
        )),
    )
    .await;
    let first = Instant::now();
    let mut served = 0;
    while first.elapsed() < Duration::from_millis(1_700) {
        let r = one(&app, served + 1).await;
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agent_name"], "Spare_AI", "{r}");
        // The 429 cost no retry: one attempt of Busy_AI's on the first task, none after.
        assert_eq!(r["attempts"], if served == 0 { 2 } else { 1 }, "{r}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(busy.calls(), 1, "asked once, then left alone for its 2 s");
    assert!(served >= 8, "{served} tasks");
    let candidate = crate::helpers::lamp_candidate(&app, "Busy_AI").await;
    assert_eq!(candidate["breaker"], "closed", "{candidate}");
    assert_eq!(candidate["health"], 1.0, "{candidate}");
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("myriad_calls_refused_total{reason=\"throttled\"}"),
        "{scrape}"
    );
    // Its time is up: the graph's first choice again.
    busy.set(Behaviour::Answer {
        data: json!("busy answered"),
        extra: json!({}),
    });
    tokio::time::sleep(Duration::from_millis(2_100).saturating_sub(first.elapsed())).await;
    let r = one(&app, 1_000).await;
    assert_eq!(r["agent_name"], "Busy_AI", "{r}");
    assert_eq!(busy.calls(), 2);
}

/// The floor under ejection: with every candidate's breaker open the concept is not
/// black-holed — the best-ranked agent still gets one call per `ROUTING_PANIC_INTERVAL_MS`
/// (`panic`), no more, and its first answer closes its breaker.
#[tokio::test]
async fn a_concept_whose_every_breaker_is_open_gets_a_bounded_trickle_and_recovers_at_once() {
    let down = spawn_agent("Down_AI", Behaviour::Status(503));
    let gone = spawn_agent("Gone_AI", Behaviour::Status(503));
    let app = spawn_with(
        myriad::config::RawSettings {
            breaker_consecutive_failures: Some("2".into()),
            // No half-open probe within the test: only the floor lets calls through.
            breaker_open_ms: Some("600000".into()),
            routing_panic_interval_ms: Some("300".into()),
            http_retries: Some("0".into()),
            ..settings()
        },
        Some(seed_with(
            "lamp",
            &[
                ("Down_AI", &down.url(), &["define"], 0.9),
                ("Gone_AI", &gone.url(), &["define"], 0.5),
            ],
        )),
    )
    .await;
    // Two tasks, each trying both agents: both breakers open.
    for id in 1..=2 {
        assert_eq!(one(&app, id).await["status"], "error");
    }
    for agent in ["Down_AI", "Gone_AI"] {
        let c = crate::helpers::lamp_candidate(&app, agent).await;
        assert_eq!(c["breaker"], "open", "{c}");
    }
    // Let a full interval pass, so each agent's trickle starts with a call of its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = (down.calls(), gone.calls());
    let started = Instant::now();
    let mut tasks = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        let r = one(&app, 100 + tasks).await;
        assert_eq!(r["status"], "error", "{r}");
        tasks += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let elapsed = started.elapsed().as_millis() as usize;
    let trickle = (down.calls() - before.0, gone.calls() - before.1);
    // One call per agent per 300 ms at most; the best-ranked first.
    let most = elapsed / 300 + 1;
    assert!(tasks >= 20, "{tasks} tasks");
    assert!(
        trickle.0 >= 3 && trickle.0 <= most,
        "{trickle:?} in {elapsed} ms"
    );
    assert!(trickle.1 <= most, "{trickle:?} in {elapsed} ms");
    let c = crate::helpers::lamp_candidate(&app, "Down_AI").await;
    assert_eq!(
        c["breaker"], "open",
        "a failed panic call leaves it open: {c}"
    );

    // It answers again: the next panic call is served, closes its breaker, and the tasks
    // after it are routed as usual.
    down.set(Behaviour::Answer {
        data: json!("back"),
        extra: json!({}),
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = one(&app, 1_000).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["agent_name"], "Down_AI", "{r}");
    let c = crate::helpers::lamp_candidate(&app, "Down_AI").await;
    assert_eq!(c["breaker"], "closed", "{c}");
    let calls = (down.calls(), gone.calls());
    for id in 1_001..=1_005 {
        let r = one(&app, id).await;
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agent_name"], "Down_AI", "{r}");
    }
    assert_eq!(
        (down.calls() - calls.0, gone.calls() - calls.1),
        (5, 0),
        "one call a task"
    );
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("myriad_routing_decisions_total{reason=\"panic\"} 1"),
        "{scrape}"
    );
}

/// Hedged calls: an agent that stalls 1 % of its calls for 500 ms puts none of it into the
/// tasks of an intent safe to repeat (`HEDGE_INTENTS`) — the next candidate is asked after
/// the hedge delay and answers first — at a few percent more calls; a task of any other
/// intent is never sent twice, and waits the stall out. k6 sends 200 a second.
#[tokio::test]
async fn a_stalling_agent_is_hedged_for_safe_intents_and_never_for_others() {
    let stalling = spawn_agent(
        "Stalling_AI",
        Behaviour::StallSome {
            stalls: 1,
            every: 100,
            delay: Duration::from_millis(500),
        },
    );
    let spare = answering("Spare_AI");
    let app = spawn_with(
        myriad::config::RawSettings {
            // The graph's order: the stalling agent is always asked first.
            routing_policy: Some("weight".into()),
            hedge_intents: Some("define".into()),
            // Only a real stall is hedged, whatever this machine's load does to latency.
            hedge_delay_min_ms: Some("50".into()),
            ..settings()
        },
        Some(seed_with(
            "lamp",
            &[
                ("Stalling_AI", &stalling.url(), &["define", "function"], 0.9),
                ("Spare_AI", &spare.url(), &["define", "function"], 0.1),
            ],
        )),
    )
    .await;
    // Until an agent has answered 20 calls its hedge delay is the longest: measure it first
    // (its call 0 stalls).
    for i in 0..30 {
        let (status, _) = app
            .post(
                "/process",
                &json!({"tasks": [{"task_id": 1_000 + i, "concept": "lamp", "intent": "function"}]}),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!((stalling.calls(), spare.calls()), (30, 0));

    // k6: 400 one-task requests at 200 a second.
    let safe = k6_tail(&app, 200, 2, &[("INTENT", "define")]).await;
    let stalls = 4; // calls 100, 200, 300 and 400 of the stalling agent
    let slowest = safe["served_ms"]["max"].as_f64().unwrap();
    assert_eq!(count(&safe, "unserved"), 0.0, "every task served");
    assert!(
        slowest < 400.0,
        "a stall reached a hedged task: {slowest} ms"
    );
    let hedged = spare.calls();
    let scrape = app.scrape().await;
    let series = |name: &str| {
        scrape
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let won = series("myriad_hedges_total{result=\"won\"}");
    println!(
        "hedged {hedged}, won {won}, p99 {} ms, slowest {slowest} ms",
        safe["served_ms"]["p(99)"]
    );
    let p99 = safe["served_ms"]["p(99)"].as_f64().unwrap();
    assert!(p99 <= 30.0, "hedged p99 {p99} ms");
    assert!(won >= stalls, "{won} tasks answered by the hedge");
    let sent = count(&safe, "http_reqs") as usize;
    assert!(
        hedged * 100 <= sent * 5,
        "{hedged} extra calls for {sent} tasks (at most 5 %)"
    );
    assert_eq!(series("myriad_hedges_total{result=\"sent\"}"), hedged);
    assert_eq!(
        series("myriad_routing_decisions_total{reason=\"hedge\"}"),
        won
    );
    assert_eq!(
        stalling.calls(),
        30 + sent,
        "every task asked the first choice once"
    );
    // The stalled calls the hedges beat were cancelled, not failed.
    let c = crate::helpers::lamp_candidate(&app, "Stalling_AI").await;
    assert_eq!(
        (&c["breaker"], &c["health"]),
        (&json!("closed"), &json!(1.0)),
        "{c}"
    );

    // Not safe to repeat: one call a task, and the stalls are waited out.
    let unsafe_ = k6_tail(&app, 200, 2, &[("INTENT", "function")]).await;
    assert_eq!(
        spare.calls(),
        hedged,
        "a task not safe to repeat was sent twice"
    );
    assert_eq!(
        stalling.calls(),
        30 + sent + count(&unsafe_, "http_reqs") as usize
    );
    let slowest = unsafe_["served_ms"]["max"].as_f64().unwrap();
    assert!(slowest >= 450.0, "a task waited out a stall: {slowest} ms");
}

/// k6 (`loadtests/tail.js`) sending `rate` one-task `/process` requests a second to `app`
/// for `seconds`, with `env` (`PRIORITY`, `BODY_PRIORITY`): its summary's metrics.
async fn k6_tail(app: &TestApp, rate: u32, seconds: u32, env: &[(&str, &str)]) -> Value {
    let summary = tempfile::NamedTempFile::new().unwrap();
    let out = summary.path().display().to_string();
    let mut args = vec![
        "run".to_string(),
        "--quiet".into(),
        "--no-usage-report".into(),
        "--summary-export".into(),
        out.clone(),
    ];
    for (k, v) in [
        ("URL", app.url("/process")),
        ("RATE", rate.to_string()),
        ("DURATION_S", seconds.to_string()),
        ("CONCEPT", "lamp".into()),
    ]
    .into_iter()
    .chain(env.iter().map(|(k, v)| (*k, v.to_string())))
    {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.push("loadtests/tail.js".into());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("k6")
            .args(&args)
            .output()
            .expect("k6 is installed (scripts/install-test-deps.sh)")
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "k6: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let metrics = summary["metrics"].clone();
    let sent = metrics["http_reqs"]["count"].as_f64().unwrap();
    assert!(
        sent >= f64::from(rate * seconds) * 0.95,
        "k6 held the rate: {sent} of {}",
        rate * seconds
    );
    // Every request answered: a 200, or a 503 for a shed one (which k6 counts as failed).
    let failed = (metrics["http_req_failed"]["value"].as_f64().unwrap() * sent).round();
    assert_eq!(
        failed,
        metrics["shed"]["count"].as_f64().unwrap_or(0.0),
        "every request answered"
    );
    metrics
}

fn count(metrics: &Value, name: &str) -> f64 {
    metrics[name]["count"].as_f64().unwrap_or(0.0)
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Adaptive concurrency: offered twice what an agent sustains (4 calls at a time of 20 ms:
/// 200 a second; k6 offers 400), an adaptive limit keeps the agent's latency within twice
/// its unloaded latency — the excess is refused at once — while the fixed limit (64) lets a
/// queue build at the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_keeps_an_overloaded_agents_latency_and_a_fixed_one_does_not() {
    let service = Duration::from_millis(20);
    let mut seen_latency = Vec::new();
    for mode in ["adaptive", "fixed"] {
        let agent = spawn_agent(
            "Busy_AI",
            Behaviour::Capacity {
                slots: std::sync::Arc::new(tokio::sync::Semaphore::new(4)),
                service,
            },
        );
        let app = crate::helpers::spawn_process(
            &[
                ("AGENT_CONCURRENCY", mode.into()),
                ("AGENT_MAX_INFLIGHT", "64".into()),
                ("CACHE_ENABLED", "false".into()),
                ("HTTP_RETRIES", "0".into()),
                ("ROUTING_PANIC_INTERVAL_MS", "0".into()),
            ],
            Some(seed_with(
                "lamp",
                &[("Busy_AI", &agent.url(), &["define"], 0.9)],
            )),
        );
        k6_tail(&app, 400, 4, &[]).await;
        // The last half: the limit has learned.
        let seen: Vec<Duration> = agent
            .latencies
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| *d)
            .collect();
        let settled = seen[seen.len() / 2..].to_vec();
        let (q50, q99) = (quantile(settled.clone(), 0.5), quantile(settled, 0.99));
        let (_, status) = app.get("/status").await;
        let limit = &status["dependencies"]["agents"]["Busy_AI"]["concurrency_limit"];
        println!(
            "{mode}: {} calls reached the agent, its latency p50 {q50:?} p99 {q99:?}, limit {limit}",
            seen.len()
        );
        seen_latency.push((q50, q99));
    }
    let ((adaptive50, adaptive99), (fixed50, _)) = (seen_latency[0], seen_latency[1]);
    assert!(
        adaptive50 <= service * 2,
        "adaptive: the agent's latency {adaptive50:?} is within twice its unloaded latency"
    );
    // Its tail: a call waits at most for the slots ahead of it (settled limit 6–7, 4 slots).
    assert!(
        adaptive99 <= service * 5 / 2,
        "adaptive: p99 {adaptive99:?}"
    );
    assert!(
        fixed50 > service * 4,
        "fixed: a queue builds at the agent ({fixed50:?})"
    );
}

/// Priority under overload: offered twice what an agent sustains (k6: 100 `high` and 300
/// `low` a second, the low ones saying so in their body), `low` requests are shed with 503
/// `overloaded` and `Retry-After`, and `high` ones keep their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_low_priority_is_shed_and_high_priority_keeps_its_latency() {
    let agent = spawn_agent(
        "Busy_AI",
        Behaviour::Capacity {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(4)),
            service: Duration::from_millis(20),
        },
    );
    let app = crate::helpers::spawn_process(
        &[
            ("AGENT_CONCURRENCY", "adaptive".into()),
            ("CACHE_ENABLED", "false".into()),
            ("HTTP_RETRIES", "0".into()),
            ("ROUTING_PANIC_INTERVAL_MS", "0".into()),
        ],
        Some(seed_with(
            "lamp",
            &[("Busy_AI", &agent.url(), &["define"], 0.9)],
        )),
    );
    let ms = |m: &Value, q: &str| m["served_ms"][q].as_f64().unwrap();
    // The agent's latency for the calls of tasks whose id starts with `prefix` (the gateway's
    // own latency on this shared machine moves with whatever else runs; the agent's does
    // not).
    let p99_at_agent = |prefix: &str| {
        let seen: Vec<Duration> = agent
            .latencies
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| id.as_str().is_some_and(|i| i.starts_with(prefix)))
            .map(|(_, d)| *d)
            .collect();
        quantile(seen, 0.99)
    };
    // Unloaded: the high traffic alone (half of what the agent sustains).
    let alone = k6_tail(
        &app,
        100,
        4,
        &[("PRIORITY", "high"), ("TASK_PREFIX", "alone-")],
    )
    .await;
    let unloaded = p99_at_agent("alone-");
    let (high, low) = tokio::join!(
        k6_tail(
            &app,
            100,
            4,
            &[("PRIORITY", "high"), ("TASK_PREFIX", "high-")]
        ),
        k6_tail(
            &app,
            300,
            4,
            &[("BODY_PRIORITY", "low"), ("TASK_PREFIX", "low-")]
        ),
    );
    let (high99, shed, lows) = (
        p99_at_agent("high-"),
        count(&low, "shed"),
        count(&low, "http_reqs"),
    );
    println!(
        "at the agent: unloaded p99 {unloaded:?}, high p99 {high99:?}; client side: unloaded p99 \
         {:.1} ms, high p99 {:.1} ms; low: {shed} of {lows} shed",
        ms(&alone, "p(99)"),
        ms(&high, "p(99)")
    );
    assert_eq!(count(&high, "shed"), 0.0, "high is never shed");
    assert_eq!(count(&high, "unserved"), 0.0, "every high task was served");
    assert!(
        shed * 4.0 >= lows,
        "low is shed under overload: {shed} of {lows}"
    );
    assert_eq!(
        count(&low, "shed_unexplained"),
        0.0,
        "every shed request has Retry-After: 1 and the overloaded code"
    );
    assert!(
        high99 <= unloaded * 2,
        "high p99 {high99:?} within twice its unloaded {unloaded:?}"
    );
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("myriad_calls_refused_total{reason=\"shed\"}"),
        "{scrape}"
    );
    // A priority the API does not know is a clear 400.
    let bad = app
        .client
        .post(app.url("/process"))
        .header("x-priority", "urgent")
        .json(&json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "invalid_parameter", "{body}");
}
