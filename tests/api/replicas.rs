//! Replicas that share what they learn: three orchestrator processes, one real redis-server,
//! real agents counting their calls.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour, TestAgent},
    helpers::{seed_with, spawn_process, TestApp},
    servers::RedisServer,
};

fn answering(name: &str) -> TestAgent {
    spawn_agent(
        name,
        Behaviour::Answer {
            data: json!(format!("{name} answered")),
            extra: json!({}),
        },
    )
}

/// One single-task request for `lamp`/`define`; the task's result.
async fn ask(app: &TestApp, id: u64) -> Value {
    let body = json!({"tasks": [{"task_id": id, "concept": "lamp", "intent": "define"}]});
    let (status, body) = app.post("/process", &body).await;
    assert_eq!(status, 200, "{body}");
    body["results"][id.to_string()].clone()
}

/// `n` requests to `app`, one every `every`, all at once in flight; their results.
async fn burst(app: &TestApp, n: u64, every: Duration, first_id: u64) -> Vec<Value> {
    let mut runs = Vec::new();
    for i in 0..n {
        let (client, url) = (app.client.clone(), app.url("/process"));
        let id = first_id + i;
        runs.push(tokio::spawn(async move {
            let body = json!({"tasks": [{"task_id": id, "concept": "lamp", "intent": "define"}]});
            let r: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["results"][id.to_string()].clone()
        }));
        tokio::time::sleep(every).await;
    }
    let mut out = Vec::new();
    for r in runs {
        out.push(r.await.unwrap());
    }
    out
}

/// What `/discover` shows of `agent` as a candidate for `lamp` now (live, not cached).
async fn agent_status(app: &TestApp, agent: &str) -> Value {
    let (_, found) = app.post("/discover", &json!({"concept": "lamp"})).await;
    found["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == agent)
        .cloned()
        .unwrap()
}

fn replica(redis: &RedisServer, seed: &Value, extra: &[(&'static str, String)]) -> TestApp {
    let mut env = vec![
        ("REDIS_URL", redis.url()),
        ("CACHE_ENABLED", "false".into()),
        ("DEMO_AGENTS", "off".into()),
        ("HTTP_RETRIES", "0".into()),
        ("BREAKER_CONSECUTIVE_FAILURES", "3".into()),
        ("BREAKER_OPEN_MS", "1500".into()),
        ("ROUTING_SLOW_START_S", "0.5".into()),
    ];
    env.extend_from_slice(extra);
    spawn_process(&env, Some(seed.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_one_replica_finds_sick_is_avoided_by_all_and_its_recovery_reaches_all() {
    let mut redis = RedisServer::start();
    let sick = answering("Sick_AI");
    let good = answering("Good_AI");
    let seed = seed_with(
        "lamp",
        &[
            (&sick.name, &sick.url(), &["define"], 1.0),
            (&good.name, &good.url(), &["define"], 0.5),
        ],
    );
    let a = replica(&redis, &seed, &[]);
    let b = replica(&redis, &seed, &[]);
    let c = replica(&redis, &seed, &[]);
    // Every replica knows both agents, healthy, and is subscribed.
    for (i, app) in [&a, &b, &c].into_iter().enumerate() {
        for n in 0..10 {
            assert_eq!(ask(app, i as u64 * 100 + n).await["status"], "success");
        }
        let (_, status) = app.get("/status").await;
        assert_eq!(status["dependencies"]["redis"]["shared_health"], "shared");
    }
    assert!(
        sick.calls() > 15,
        "the better-weighted agent took most calls"
    );

    // It turns sick: traffic to A alone, until A's breaker opens.
    sick.set(Behaviour::Status(503));
    let mut id = 1_000;
    while agent_status(&a, "Sick_AI").await["breaker"] != "open" {
        id += 1;
        let r = ask(&a, id).await;
        assert_eq!(r["status"], "success", "failover covers every failure: {r}");
        assert!(
            id < 1_200,
            "A's breaker never opened: {} calls, {}",
            sick.calls(),
            agent_status(&a, "Sick_AI").await,
        );
    }
    assert_eq!(agent_status(&a, "Sick_AI").await["held_by_peer"], false);

    // In the next second B and C send it at most one call each.
    let before = sick.calls();
    let started = Instant::now();
    let (rb, rc) = tokio::join!(
        burst(&b, 20, Duration::from_millis(45), 2_000),
        burst(&c, 20, Duration::from_millis(45), 3_000),
    );
    let spent = sick.calls() - before;
    assert!(started.elapsed() < Duration::from_millis(1_500));
    let peer_lines = |app: &TestApp| {
        app.logs()
            .into_iter()
            .filter(|l| l.contains("peer") || l.contains("breaker"))
            .collect::<Vec<_>>()
    };
    assert!(
        spent <= 2,
        "B and C called the sick agent {spent} times; B: {:?} C: {:?}",
        peer_lines(&b),
        peer_lines(&c)
    );
    for r in rb.iter().chain(&rc) {
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agent_name"], "Good_AI", "{r}");
    }
    for app in [&b, &c] {
        let s = agent_status(app, "Sick_AI").await;
        assert_eq!(s["held_by_peer"], true, "{s}");
        assert_eq!(
            s["breaker"], "closed",
            "its own breaker never had to open: {s}"
        );
        assert!(
            app.series("myriad_shared_health_messages_total{event=\"received\"}")
                .await
                >= 1.0
        );
    }

    // It recovers: A's probe sees it, and all three route to it again.
    sick.set(Behaviour::Answer {
        data: json!("Sick_AI answered"),
        extra: json!({}),
    });
    while agent_status(&a, "Sick_AI").await["breaker"] != "closed" {
        id += 1;
        ask(&a, id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(id < 1_300, "A's breaker never closed");
    }
    let (rb, rc) = tokio::join!(
        burst(&b, 40, Duration::from_millis(50), 4_000),
        burst(&c, 40, Duration::from_millis(50), 5_000),
    );
    for (name, results) in [("B", &rb), ("C", &rc)] {
        let back = results
            .iter()
            .filter(|r| r["agent_name"] == "Sick_AI")
            .count();
        assert!(back >= 5, "{name} sent the recovered agent {back} of 40");
        assert!(results.iter().all(|r| r["status"] == "success"));
    }
    assert_eq!(agent_status(&b, "Sick_AI").await["held_by_peer"], false);

    // Redis away: each replica routes alone, and says so.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = b.get("/status").await;
        if status["dependencies"]["redis"]["shared_health"] == "alone" {
            break;
        }
        assert!(Instant::now() < deadline, "B never said it was alone");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ask(&b, 9_000).await["status"], "success");
}

/// Three replicas in front of one agent that fails every call, retries on; the calls the
/// agent received beyond the first attempts (the retries) across all three replicas.
async fn outage_retries(redis: &RedisServer, scope: &str, name: &str) -> (usize, usize) {
    let down = spawn_agent(name, Behaviour::Status(503));
    let seed = seed_with("lamp", &[(&down.name, &down.url(), &["define"], 1.0)]);
    let env = [
        ("HTTP_RETRIES", "3".to_string()),
        ("HTTP_BACKOFF", "0".into()),
        ("RETRY_BUDGET_PERCENT", "5".into()),
        ("RETRY_BUDGET_SCOPE", scope.into()),
        // Breakers stay closed: the budget alone bounds the retries.
        ("BREAKER_CONSECUTIVE_FAILURES", "1000".into()),
        ("BREAKER_MIN_CALLS", "100000".into()),
    ];
    let replicas: Vec<TestApp> = (0..3).map(|_| replica(redis, &seed, &env)).collect();
    let per_replica = 40;
    let runs = replicas.iter().enumerate().map(|(r, app)| async move {
        for n in 0..per_replica {
            let result = ask(app, (r * 1_000 + n) as u64).await;
            assert_eq!(result["status"], "error", "{result}");
        }
    });
    futures::future::join_all(runs).await;
    let first = 3 * per_replica;
    (down.calls() - first, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_seen_by_three_replicas_spends_one_retry_budget() {
    let redis = RedisServer::start();
    // One budget: at most 3 + 5 % of the 120 first attempts = 9 retries in all.
    let (retries, first) = outage_retries(&redis, "cluster", "Down_AI").await;
    assert!(
        (3..=3 + first * 5 / 100).contains(&retries),
        "{retries} retries for {first} first attempts across three replicas"
    );
    println!("cluster budget: {retries} retries for {first} first attempts");
    // Each replica its own budget: 3 × (3 + 5 % of 40) = 15, the multiplication avoided above.
    let (alone, _) = outage_retries(&redis, "replica", "Down_Too_AI").await;
    assert!(
        alone > 3 + first * 5 / 100,
        "three separate budgets allowed only {alone} retries"
    );
    println!("replica budgets: {alone} retries for {first} first attempts");
}

/// A seed where `lamp` is served by an agent in `eu` and a better-weighted one in `us`.
fn two_regions(eu: &TestAgent, us: &TestAgent) -> Value {
    json!({
        "regions": [{"name": "eu"}, {"name": "us"}],
        "concepts": [{"name": "lamp", "primary_definition": "test concept"}],
        "agents": [
            {"name": eu.name, "type": "static", "endpoint": eu.url(), "intents": ["define"],
             "capabilities": [], "region": "eu"},
            {"name": us.name, "type": "static", "endpoint": us.url(), "intents": ["define"],
             "capabilities": [], "region": "us"},
        ],
        "handles": [
            {"agent": eu.name, "concept": "lamp", "weight": 0.6},
            {"agent": us.name, "concept": "lamp", "weight": 1.0},
        ],
    })
}

fn answered_by(results: &[Value], agent: &str) -> usize {
    results.iter().filter(|r| r["agent_name"] == agent).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_prefers_its_regions_agent_and_fails_over_to_another_region_visibly() {
    let eu = answering("EU_AI");
    let us = answering("US_AI");
    let seed = two_regions(&eu, &us);
    let env = |region: Option<&str>| {
        let mut env = vec![
            ("CACHE_ENABLED", "false".to_string()),
            ("DEMO_AGENTS", "off".into()),
            ("HTTP_RETRIES", "0".into()),
            ("BREAKER_CONSECUTIVE_FAILURES", "2".into()),
            ("LEARNING_FLUSH_MS", "60000".into()),
        ];
        if let Some(r) = region {
            env.push(("REGION", r.into()));
        }
        env
    };
    // Without REGION the better-weighted agent takes most of the traffic.
    let anywhere = spawn_process(&env(None), Some(seed.clone()));
    let results = burst(&anywhere, 30, Duration::from_millis(5), 0).await;
    assert!(answered_by(&results, "US_AI") >= 20, "{results:?}");
    let (_, found) = anywhere
        .post("/discover", &json!({"concept": "lamp"}))
        .await;
    assert_eq!(found["candidates"][0]["local"], Value::Null);

    // In eu: the eu agent, though lighter, takes every task, and says why.
    let app = spawn_process(&env(Some("eu")), Some(seed));
    let results = burst(&app, 30, Duration::from_millis(5), 100).await;
    assert_eq!(answered_by(&results, "EU_AI"), 30, "{results:?}");
    assert_eq!(
        app.series("myriad_routing_decisions_total{reason=\"local_region\"}")
            .await,
        30.0
    );
    let (_, found) = app.post("/discover", &json!({"concept": "lamp"})).await;
    let first = &found["candidates"][0];
    assert_eq!(
        (&first["name"], &first["region"], &first["local"]),
        (&json!("EU_AI"), &json!("eu"), &json!(true)),
        "{found}"
    );
    assert_eq!(found["candidates"][1]["local"], false);
    assert_eq!(found["agent"]["name"], "EU_AI");

    // The eu agent goes down: the us agent serves every task, as the region's failover.
    eu.set(Behaviour::Status(503));
    let before = eu.calls();
    let results = burst(&app, 20, Duration::from_millis(20), 200).await;
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "success" && r["agent_name"] == "US_AI"),
        "{results:?}"
    );
    assert_eq!(
        app.series("myriad_routing_decisions_total{reason=\"region_failover\"}")
            .await,
        20.0
    );
    let spent = eu.calls() - before;
    assert!(
        spent <= 3,
        "the eu breaker opens after two failures: {spent} calls"
    );
    let (_, found) = app.post("/discover", &json!({"concept": "lamp"})).await;
    assert_eq!(found["agent"]["name"], "US_AI", "{found}");
    assert_eq!(found["candidates"][1]["breaker"], "open", "{found}");
}
