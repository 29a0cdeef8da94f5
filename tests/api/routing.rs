//! The routing policy against real agents under steady traffic: an agent that recovers
//! comes back, a sick or slow one is avoided, equal ones share — and every task succeeds.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    agents::{answering, confident, spawn_agent, Behaviour, TestAgent},
    helpers::{lamp_candidate, seed_with, spawn_process, TestApp},
};

/// One task's result and when it was sent (seconds since the traffic started).
type Log = Arc<Mutex<Vec<(f64, Value)>>>;

/// Steady traffic: one single-task request every `1/rate` s (not waiting for answers), until
/// the returned sender is dropped or `limit` passes.
fn drive(app: &TestApp, rate: u32, limit: Duration) -> (Log, tokio::task::JoinHandle<()>) {
    let log: Log = Arc::default();
    let (client, url) = (app.client.clone(), app.url("/process"));
    let keep = log.clone();
    let handle = tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        let mut id = 0u64;
        let mut inflight = Vec::new();
        while started.elapsed() < limit {
            tick.tick().await;
            id += 1;
            let (client, url, log) = (client.clone(), url.clone(), keep.clone());
            let sent = started.elapsed().as_secs_f64();
            inflight.push(tokio::spawn(async move {
                let body =
                    json!({"tasks": [{"task_id": id, "concept": "lamp", "intent": "define"}]});
                let result = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["results"]
                        [id.to_string()]
                    .clone(),
                    Err(e) => json!({"status": "error", "error": e.to_string()}),
                };
                log.lock().unwrap().push((sent, result));
            }));
        }
        for t in inflight {
            let _ = t.await;
        }
    });
    (log, handle)
}

/// Results of tasks sent in `[from, to)` seconds.
fn window(log: &Log, from: f64, to: f64) -> Vec<Value> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, r)| r.clone())
        .collect()
}

/// Share of `results` whose first attempt went to `agent`: it answered, or it failed and
/// another agent answered after it (more than one attempt).
fn first_share(results: &[Value], agent: &str) -> f64 {
    let first = results
        .iter()
        .filter(|r| r["agent_name"] == agent || r["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    first as f64 / results.len().max(1) as f64
}

fn answered_share(results: &[Value], agent: &str) -> f64 {
    let n = results.iter().filter(|r| r["agent_name"] == agent).count();
    n as f64 / results.len().max(1) as f64
}

fn assert_all_succeeded(log: &Log) {
    let log = log.lock().unwrap();
    let failed: Vec<&Value> = log
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["status"] != "success")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} tasks failed, e.g. {}",
        failed.len(),
        log.len(),
        failed[0]
    );
}

/// The orchestrator binary in front of two agents for `lamp`/`define`, cache off,
/// learning on, under the default routing policy.
fn two_agents(best: &TestAgent, other: &TestAgent, weights: (f64, f64)) -> TestApp {
    two_agents_under("learned", best, other, weights)
}

/// [`two_agents`] under `policy`.
fn two_agents_under(
    policy: &str,
    best: &TestAgent,
    other: &TestAgent,
    weights: (f64, f64),
) -> TestApp {
    let seed = seed_with(
        "lamp",
        &[
            (&best.name, &best.url(), &["define"], weights.0),
            (&other.name, &other.url(), &["define"], weights.1),
        ],
    );
    spawn_process(
        &[
            ("CACHE_ENABLED", "false".into()),
            ("DEMO_AGENTS", "off".into()),
            ("LEARNING_FLUSH_MS", "50".into()),
            ("ROUTING_SEED", "11".into()),
            ("ROUTING_POLICY", policy.into()),
        ],
        Some(seed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_recovers_regains_its_share_and_no_task_fails_meanwhile() {
    let best = answering("Best_AI");
    let other = answering("Other_AI");
    let app = two_agents(&best, &other, (0.9, 0.6));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_before = best.calls();
    best.set(Behaviour::Status(500));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let calls_when_recovered = best.calls() - calls_before;
    best.set(Behaviour::Answer {
        data: json!("Best_AI answered"),
        extra: json!({}),
    });
    // While it was failing, only the breaker's first failures and its probes reached it.
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let during = window(&log, 3.0, 10.0);
    assert_eq!(answered_share(&during, "Best_AI"), 0.0);
    assert!(
        calls_when_recovered <= 12,
        "{calls_when_recovered} calls reached the failing agent"
    );
    // Within 20 s of recovering (at 10 s), it takes ≥ 30 % of the tasks again.
    let back = window(&log, 25.0, 30.0);
    let share = answered_share(&back, "Best_AI");
    assert!(
        share >= 0.3,
        "the recovered agent answered {:.0} % of {} tasks in 25–30 s",
        share * 100.0,
        back.len()
    );
    // The decisions were visible: a probe brought it back, exploration kept measuring.
    assert!(
        app.series("myriad_routing_decisions_total{reason=\"probe\"}")
            .await
            >= 1.0
    );
    assert!(
        app.series("myriad_routing_decisions_total{reason=\"explore\"}")
            .await
            >= 1.0
    );
    let (_, d) = app.post("/discover", &json!({"concept": "lamp"})).await;
    let best_view = d["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Best_AI")
        .unwrap()
        .clone();
    for part in [
        "score",
        "weight",
        "health",
        "latency_ms",
        "in_flight",
        "breaker",
        "share",
    ] {
        assert!(!best_view[part].is_null(), "{part} missing in {best_view}");
    }
    assert_eq!(best_view["breaker"], "closed");
    assert!(best_view["share"].as_f64().unwrap() >= 0.2, "{best_view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_failing_forty_percent_loses_its_first_pick_and_every_task_succeeds() {
    let sick = spawn_agent(
        "Sick_AI",
        Behaviour::FailSome {
            fails: 2,
            every: 5,
            status: 500,
        },
    );
    let other = answering("Other_AI");
    // The score policy's health signal and exploration floor (the learned policy's
    // counterpart: an_agent_answering_95_percent_keeps_most_first_picks_over_one_answering_80).
    let app = two_agents_under("score", &sick, &other, (0.9, 0.6));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(10));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let late = window(&log, 5.0, 10.0);
    let share = first_share(&late, "Sick_AI");
    assert!(
        share <= 0.2,
        "the sick agent got {:.0} % of first attempts in 5–10 s",
        share * 100.0
    );
    // …but it is still measured (exploration), so a recovery would be seen.
    assert!(share > 0.0, "the sick agent was never tried in 5–10 s");
    // Its breaker never tripped: it was avoided for its health, not cut off.
    let (_, agents) = app.get("/agents").await;
    let view = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Sick_AI")
        .unwrap()
        .clone();
    assert_eq!(view["breaker"], "closed", "{view}");
    let health = view["health"].as_f64().unwrap();
    assert!((0.3..0.85).contains(&health), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_loses_most_first_attempts_to_a_fast_one() {
    let slow = answering("Slow_AI");
    let fast = answering("Fast_AI");
    let app = two_agents_under("score", &slow, &fast, (0.9, 0.6));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(12));
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.set(Behaviour::Slow(Duration::from_millis(300)));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let late = window(&log, 7.0, 12.0);
    let share = first_share(&late, "Slow_AI");
    assert!(
        share < 0.25,
        "the slow agent got {:.0} % of first attempts in 7–12 s",
        share * 100.0
    );
    let (_, agents) = app.get("/agents").await;
    let latency = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Slow_AI")
        .unwrap()["latency_ms"]
        .as_f64()
        .unwrap();
    assert!(latency > 100.0, "Slow_AI latency {latency} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_equal_agents_share_the_traffic() {
    let a = answering("Twin_A");
    let b = answering("Twin_B");
    // The score policy's fourth-power share. The learned policy's Thompson draws share too,
    // but their split of near-equal agents wanders over a few hundred tasks (31–67 % in
    // 5 s here); its long-run split is the routing benchmark's `twins` scenario.
    let app = two_agents_under("score", &a, &b, (0.7, 0.7));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(5));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let all = window(&log, 0.0, 5.0);
    let share = answered_share(&all, "Twin_A");
    assert!(
        (0.35..=0.65).contains(&share),
        "Twin_A answered {:.0} % of {} tasks",
        share * 100.0,
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weight_policy_keeps_sending_everything_to_the_heaviest_agent() {
    let best = answering("Heavy_AI");
    let other = answering("Light_AI");
    let seed = seed_with(
        "lamp",
        &[
            ("Heavy_AI", &best.url(), &["define"], 0.9),
            ("Light_AI", &other.url(), &["define"], 0.6),
        ],
    );
    let app = spawn_process(
        &[
            ("CACHE_ENABLED", "false".into()),
            ("DEMO_AGENTS", "off".into()),
            ("ROUTING_POLICY", "weight".into()),
        ],
        Some(seed),
    );
    let (log, traffic) = drive(&app, 50, Duration::from_secs(2));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    assert_eq!(answered_share(&window(&log, 0.0, 2.0), "Heavy_AI"), 1.0);
    assert_eq!(other.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_keeps_most_first_picks_over_its_backup_after_both_weights_saturate() {
    // The operator's primary (0.9) and backup (0.5), both always answering: twenty
    // successes bring both Hebbian weights to 1.0 within seconds, and the estimate the
    // default policy routes on still keeps the primary first.
    let primary = answering("Primary_AI");
    let backup = answering("Backup_AI");
    let app = two_agents(&primary, &backup, (0.9, 0.5));
    let (log, traffic) = drive(&app, 200, Duration::from_secs(20));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let (_, agents) = app.get("/agents").await;
    let primary_weight = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Primary_AI")
        .map(|a| a["concepts"][0]["weight"].clone());
    assert_eq!(
        primary_weight,
        Some(json!(1.0)),
        "the weight saturates: {agents}"
    );
    let all = window(&log, 0.0, 20.0);
    let share = answered_share(&all, "Primary_AI");
    eprintln!(
        "primary/backup through real agents: {:.1} % of {} first picks to the primary",
        share * 100.0,
        all.len()
    );
    assert!(
        share >= 0.7,
        "the primary answered {:.1} % of {} tasks",
        share * 100.0,
        all.len()
    );
    // Whether the backup answered any task depends on the first few draws only: once the
    // primary's evidence dominates, a backup that never failed is not drawn first (its
    // posterior cannot beat a near-certain primary; it is asked on failover). An
    // assertion that it was asked failed once in about 30 runs; what holds is below.
    eprintln!("the backup answered {} tasks", backup.calls());
    // The estimate is visible, and says why.
    let (p, b) = (
        lamp_candidate(&app, "Primary_AI").await,
        lamp_candidate(&app, "Backup_AI").await,
    );
    assert!(p["estimate"].as_f64() > b["estimate"].as_f64(), "{p} {b}");
    assert!(p["evidence"].as_f64().unwrap() > 100.0, "{p}");
    assert!(b["estimate_sd"].as_f64().unwrap() > 0.0, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answering_95_percent_keeps_most_first_picks_over_one_answering_80() {
    // Failures are 422s (not retried), so each one is a task the agent did not answer, and
    // its failover to the other agent.
    let good = spawn_agent(
        "Good_AI",
        Behaviour::FailSome {
            fails: 1,
            every: 20,
            status: 422,
        },
    );
    let fair = spawn_agent(
        "Fair_AI",
        Behaviour::FailSome {
            fails: 1,
            every: 5,
            status: 422,
        },
    );
    let app = two_agents(&good, &fair, (0.5, 0.5));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(16));
    traffic.await.unwrap();
    let late = window(&log, 4.0, 16.0);
    let good_first = late
        .iter()
        .filter(|r| {
            (r["agent_name"] == "Good_AI" && r["attempts"] == 1)
                || (r["agent_name"] == "Fair_AI" && r["attempts"].as_u64() > Some(1))
        })
        .count() as f64
        / late.len().max(1) as f64;
    eprintln!(
        "95 % vs 80 % through real agents: {:.1} % of {} first picks to the 95 % agent",
        good_first * 100.0,
        late.len()
    );
    assert!(
        good_first >= 0.85,
        "the 95 % agent got {:.1} % of {} first picks in 4–16 s",
        good_first * 100.0,
        late.len()
    );
    let (g, f) = (
        lamp_candidate(&app, "Good_AI").await,
        lamp_candidate(&app, "Fair_AI").await,
    );
    assert!(
        (0.9..0.99).contains(&g["estimate"].as_f64().unwrap()),
        "{g}"
    );
    assert!(f["estimate"].as_f64() < g["estimate"].as_f64(), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sure_of_its_answers_is_preferred_to_one_that_is_not() {
    // Both always answer; one says it is 30 % sure of each answer, the other 95 %.
    let unsure = confident("Unsure_AI", 0.3);
    let sure = confident("Sure_AI", 0.95);
    let app = two_agents(&unsure, &sure, (0.5, 0.5));
    let (log, traffic) = drive(&app, 50, Duration::from_secs(8));
    traffic.await.unwrap();
    assert_all_succeeded(&log);
    let late = window(&log, 3.0, 8.0);
    let share = answered_share(&late, "Sure_AI");
    assert!(
        share >= 0.85,
        "the sure agent answered {:.1} % of {} tasks in 3–8 s",
        share * 100.0,
        late.len()
    );
    // The confidence reaches the client as the agent sent it.
    assert!(late[0]["confidence"].as_f64().is_some(), "{}", late[0]);
    let (u, s) = (
        lamp_candidate(&app, "Unsure_AI").await,
        lamp_candidate(&app, "Sure_AI").await,
    );
    assert!(
        (0.2..0.45).contains(&u["estimate"].as_f64().unwrap()),
        "{u}"
    );
    assert!(s["estimate"].as_f64().unwrap() > 0.85, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_feedback_moves_traffic_away_from_an_agent_whose_answers_are_wrong() {
    const KEY: &str = "feedback-client-key-0001";
    let sink = crate::servers::OtlpSink::start();
    let right = answering("Right_AI");
    let wrong = answering("Wrong_AI");
    let seed = seed_with(
        "lamp",
        &[
            (&right.name, &right.url(), &["define"], 0.5),
            // The operator's primary: it takes the first picks until clients speak.
            (&wrong.name, &wrong.url(), &["define"], 0.9),
        ],
    );
    let app = spawn_process(
        &[
            ("CACHE_ENABLED", "false".into()),
            ("DEMO_AGENTS", "off".into()),
            ("ROUTING_SEED", "5".into()),
            ("API_KEYS", KEY.into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
        ],
        Some(seed),
    );
    let post = |path: &str, body: Value, key: Option<&str>| {
        let mut r = app.client.post(app.url(path)).json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    // One task; its answering agent and the trace the feedback names it by.
    let ask = |id: u64| {
        post(
            "/process",
            json!({"tasks": [{"task_id": id, "concept": "lamp", "intent": "define"}]}),
            Some(KEY),
        )
    };
    let served = |resp: reqwest::Response| async move {
        let trace = resp.headers()["x-trace-id"].to_str().unwrap().to_string();
        let body: Value = resp.json().await.unwrap();
        let agent = body["results"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["agent_name"]
            .as_str()
            .unwrap()
            .to_string();
        (trace, agent)
    };
    let evidence = |agent: &'static str| {
        let app = &app;
        async move {
            let d: Value = app
                .client
                .post(app.url("/discover"))
                .bearer_auth(KEY)
                .json(&json!({"concept": "lamp"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            d["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == agent)
                .unwrap()["evidence"]
                .as_f64()
                .unwrap()
        }
    };

    // Before clients speak, the primary takes most first picks.
    let mut answered = Vec::new();
    for id in 1..=20u64 {
        answered.push((id, served(ask(id).await.unwrap()).await));
    }
    let early_wrong = answered
        .iter()
        .filter(|(_, (_, a))| a == "Wrong_AI")
        .count();
    assert!(
        early_wrong >= 14,
        "Wrong_AI answered {early_wrong} of 20 tasks"
    );
    // Bad feedback is refused, and changes nothing (after the first picks: a word on this
    // task is a client speaking).
    let (trace, agent) = served(ask(21).await.unwrap()).await;
    let name: &'static str = if agent == "Wrong_AI" {
        "Wrong_AI"
    } else {
        "Right_AI"
    };
    let before = evidence(name).await;
    let good = json!({"trace_id": trace, "task_id": 21, "success": false});
    let refused = [
        (
            json!({"trace_id": "not-a-trace", "task_id": 21, "success": false}),
            Some(KEY),
            400,
            "invalid_body",
        ),
        (
            json!({"trace_id": trace, "task_id": 21, "success": false, "score": 2}),
            Some(KEY),
            400,
            "invalid_body",
        ),
        (
            json!({"trace_id": trace, "task_id": 22, "success": false}),
            Some(KEY),
            404,
            "task_not_found",
        ),
        (good.clone(), None, 401, "unauthorized"),
    ];
    for (body, key, status, code) in refused {
        let resp = post("/feedback", body.clone(), key).await.unwrap();
        let got = resp.status().as_u16();
        let err: Value = resp.json().await.unwrap();
        assert_eq!((got, &err["code"]), (status, &json!(code)), "{body}: {err}");
    }
    // (Evidence fades with time, by ~1e-5 here; a counted outcome would add 1.)
    let after = evidence(name).await;
    assert!(
        (after - before).abs() < 0.01,
        "refused feedback changed the estimate: {before} → {after}"
    );
    // The first word on a task counts, a second does not.
    let resp = post("/feedback", good.clone(), Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            &accepted["status"],
            &accepted["agent"],
            &accepted["concept"]
        ),
        (&json!("accepted"), &json!(agent), &json!("lamp"))
    );
    let resp = post("/feedback", good, Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), 404);

    // Then every answer of Wrong_AI is called wrong, those and the ones after: it loses
    // the first picks.
    let feedback = |id: u64, trace: String| {
        post(
            "/feedback",
            json!({"trace_id": trace, "task_id": id, "success": false}),
            Some(KEY),
        )
    };
    for (id, (trace, agent)) in answered {
        if agent == "Wrong_AI" {
            assert_eq!(feedback(id, trace).await.unwrap().status(), 200);
        }
    }
    let mut late_wrong = 0;
    for id in 23..=82u64 {
        let (trace, agent) = served(ask(id).await.unwrap()).await;
        if agent == "Wrong_AI" {
            late_wrong += 1;
            assert_eq!(feedback(id, trace).await.unwrap().status(), 200);
        }
    }
    eprintln!(
        "Wrong_AI answered {early_wrong} of 20 tasks before feedback, {late_wrong} of 60 after"
    );
    assert!(
        late_wrong <= 9,
        "Wrong_AI still answered {late_wrong} of the 60 tasks after feedback"
    );
}
