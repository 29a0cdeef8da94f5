//! The two-tier cache against a real redis-server, with a second replica in a child process.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    agents::{answering, spawn_agent, Behaviour},
    helpers::{seed_with, settings, spawn_process, spawn_with, TestApp},
    servers::RedisServer,
};

async fn ask(app: &TestApp, args: Value) -> Value {
    let body =
        json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define", "args": args}]});
    let (status, body) = app.post("/process", &body).await;
    assert_eq!(status, 200, "{body}");
    body["results"]["1"].clone()
}

fn redis_settings(redis: &RedisServer) -> myriad::config::RawSettings {
    let mut raw = settings();
    raw.redis_url = Some(redis.url());
    raw
}

/// Waits for the background L2 write of a fresh answer.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_repeated_task_is_served_from_l1_and_another_process_serves_it_from_l2() {
    let redis = RedisServer::start();
    let agent = answering("Cached_AI");
    let seed = seed_with("lamp", &[("Cached_AI", &agent.url(), &["define"], 0.5)]);
    let a = spawn_with(redis_settings(&redis), Some(seed.clone())).await;
    let first = ask(&a, json!({})).await;
    assert_eq!(first["status"], "success");
    assert!(first["cached"].is_null());
    let second = ask(&a, json!({})).await;
    assert_eq!(second["cached"], "l1");
    assert_eq!(second["data"], first["data"]);
    assert_eq!(agent.calls(), 1);

    settle().await;
    let b = spawn_process(&[("REDIS_URL", redis.url())], Some(seed));
    let from_b = ask(&b, json!({})).await;
    assert_eq!(from_b["cached"], "l2", "{from_b}");
    assert_eq!(from_b["data"], first["data"]);
    assert_eq!(ask(&b, json!({})).await["cached"], "l1");
    assert_eq!(agent.calls(), 1, "the second replica called the agent");

    let (_, metrics) = a.get("/metrics").await;
    let stats = &metrics["performance"]["cache"]["responses"];
    assert_eq!(
        (stats["l1_hits"].as_u64(), stats["misses"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn fifty_concurrent_identical_misses_make_one_agent_call() {
    let redis = RedisServer::start();
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(200)));
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let app = spawn_with(redis_settings(&redis), Some(seed)).await;
    let requests = (0..50).map(|_| ask(&app, json!({"same": true})));
    let results = futures::future::join_all(requests).await;
    assert!(results.iter().all(|r| r["status"] == "success"));
    assert_eq!(slow.calls(), 1);
    assert_eq!(results.iter().filter(|r| r["cached"].is_null()).count(), 1);
}

#[tokio::test]
async fn replicas_see_each_others_invalidations() {
    let redis = RedisServer::start();
    let agent = answering("Shared_AI");
    let seed = seed_with("lamp", &[("Shared_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = redis_settings(&redis);
    raw.admin_api_key = Some("admin-secret".into());
    let a = spawn_with(raw, Some(seed.clone())).await;
    let b = spawn_process(
        &[
            ("REDIS_URL", redis.url()),
            ("ADMIN_API_KEY", "admin-secret".into()),
        ],
        Some(seed),
    );
    ask(&a, json!({})).await;
    settle().await;
    assert_eq!(ask(&b, json!({})).await["cached"], "l2");
    assert_eq!(ask(&b, json!({})).await["cached"], "l1");
    assert_eq!(agent.calls(), 1);

    // A graph change on A (the agent re-registered) reaches B's L1 through Redis.
    let registration = json!({"name": "Shared_AI", "endpoint": agent.url(), "intents": ["define"], "concepts": [{"name": "lamp"}]});
    let resp = a
        .client
        .post(a.url("/agents"))
        .header("x-admin-key", "admin-secret")
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    settle().await;
    let after = ask(&b, json!({})).await;
    assert!(
        after["cached"].is_null(),
        "B still served its L1 entry: {after}"
    );
    assert_eq!(agent.calls(), 2);

    // And the other way round: B re-registers, A forgets.
    settle().await;
    ask(&a, json!({})).await; // A's own invalidation emptied its L1: this refills it from L2
    assert_eq!(ask(&a, json!({})).await["cached"], "l1");
    let resp = b
        .client
        .post(b.url("/agents"))
        .header("x-admin-key", "admin-secret")
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    settle().await;
    assert!(ask(&a, json!({})).await["cached"].is_null());
    assert_eq!(agent.calls(), 3);
}

#[tokio::test]
async fn redis_going_away_degrades_the_service_and_its_return_restores_l2_without_a_restart() {
    let mut redis = RedisServer::start();
    let agent = answering("Steady_AI");
    let seed = seed_with("lamp", &[("Steady_AI", &agent.url(), &["define"], 0.5)]);
    let a = spawn_with(redis_settings(&redis), Some(seed.clone())).await;
    assert_eq!(ask(&a, json!({"n": 0})).await["status"], "success");
    let (_, status) = a.get("/status").await;
    assert_eq!(status["dependencies"]["redis"]["status"], "up");

    redis.kill();
    for n in 1..=10 {
        let r = ask(&a, json!({ "n": n })).await;
        assert_eq!(
            r["status"], "success",
            "request {n} failed with Redis down: {r}"
        );
    }
    assert_eq!(
        ask(&a, json!({"n": 1})).await["cached"],
        "l1",
        "L1 keeps working"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await; // past the /status probe cache
    let (code, status) = a.get("/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "degraded");
    assert_eq!(status["dependencies"]["redis"]["status"], "degraded");

    redis.restart();
    let mut up = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, status) = a.get("/status").await;
        if status["dependencies"]["redis"]["status"] == "up" {
            up = true;
            break;
        }
    }
    assert!(up, "redis never came back in /status");
    // A writes to L2 again: a new replica reads it from there.
    assert!(ask(&a, json!({"n": 99})).await["cached"].is_null());
    settle().await;
    let b = spawn_process(&[("REDIS_URL", redis.url())], Some(seed));
    assert_eq!(ask(&b, json!({"n": 99})).await["cached"], "l2");
}

#[tokio::test]
async fn an_expired_answer_is_served_stale_when_the_agent_dies() {
    let agent = answering("Mortal_AI");
    let seed = seed_with("lamp", &[("Mortal_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.cache_ttl_s = Some("1".into());
    raw.stale_ttl_s = Some("60".into());
    raw.http_retries = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    let fresh = ask(&app, json!({})).await;
    assert_eq!(fresh["status"], "success");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    drop(agent); // the agent process goes away: connections are refused
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = ask(&app, json!({})).await;
    assert_eq!(stale["status"], "success", "{stale}");
    assert_eq!(stale["stale"], true);
    assert_eq!(stale["cached"], "l1");
    assert_eq!(stale["data"], fresh["data"]);
    // Nothing cached for other args: that task fails.
    assert_eq!(
        ask(&app, json!({"other": 1})).await["code"],
        "upstream_error"
    );
}

#[tokio::test]
async fn no_cache_requests_and_cache_enabled_false_bypass_the_cache() {
    let agent = answering("Fresh_AI");
    let seed = seed_with("lamp", &[("Fresh_AI", &agent.url(), &["define"], 0.5)]);
    let app = spawn_with(settings(), Some(seed.clone())).await;
    ask(&app, json!({})).await;
    let body = json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]});
    let resp = app
        .client
        .post(app.url("/process"))
        .header("cache-control", "no-cache")
        .json(&body)
        .send()
        .await
        .unwrap();
    let r: Value = resp.json().await.unwrap();
    assert!(r["results"]["1"]["cached"].is_null());
    assert_eq!(agent.calls(), 2);

    let mut raw = settings();
    raw.cache_enabled = Some("false".into());
    let off = spawn_with(raw, Some(seed)).await;
    for _ in 0..3 {
        assert!(ask(&off, json!({})).await["cached"].is_null());
    }
    assert_eq!(agent.calls(), 5);
}

#[tokio::test]
async fn device_intents_are_never_cached() {
    let app = crate::helpers::spawn_app().await;
    let task = json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "status"}]});
    for _ in 0..2 {
        let (_, body) = app.post("/process", &task).await;
        assert!(body["results"]["1"]["cached"].is_null());
    }
}

#[tokio::test]
async fn a_global_rate_limit_holds_across_two_processes_and_falls_back_to_local_limits() {
    let mut redis = RedisServer::start();
    let mut raw = redis_settings(&redis);
    raw.rate_limit_per_client = Some("1".into());
    raw.rate_limit_burst = Some("3".into());
    let a = spawn_with(raw, None).await;
    let b = spawn_process(
        &[
            ("REDIS_URL", redis.url()),
            ("RATE_LIMIT_PER_CLIENT", "1".into()),
            ("RATE_LIMIT_BURST", "3".into()),
        ],
        None,
    );
    let discover = json!({"concept": "lightbulb"});
    let send = |app: &TestApp| {
        app.client
            .post(app.url("/discover"))
            .header("x-api-key", "shared-client")
            .json(&discover)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send(&a).await.unwrap().status(), 200);
    }
    let limited = send(&b).await.unwrap();
    assert_eq!(
        limited.status(),
        429,
        "the quota is not shared across replicas"
    );
    assert!(limited.headers().contains_key("retry-after"));

    // Redis away: each replica enforces the same limit locally (fail-open to local).
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(send(&b).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "local fallback");
    let (_, metrics) = b.get("/metrics").await;
    assert!(
        metrics["performance"]["rate_limit_fallbacks_total"]
            .as_u64()
            .unwrap()
            >= 5
    );
}

/// Keys in the Redis of `port`, asked over a raw socket (independent of the code under test).
fn dbsize(port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"DBSIZE\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim()
        .strip_prefix(':')?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_outage_l2_and_shared_limits_are_back_within_two_seconds_of_its_return() {
    let mut redis = RedisServer::start();
    let agent = answering("Steady_AI");
    let seed = seed_with("lamp", &[("Steady_AI", &agent.url(), &["define"], 0.5)]);
    let mut raw = redis_settings(&redis);
    raw.rate_limit_per_client = Some("100000".into());
    let a = spawn_with(raw, Some(seed)).await;
    // Cached traffic throughout: repeats (L1) and new tasks (written to L2).
    let traffic = {
        let (client, url) = (a.client.clone(), a.url("/process"));
        tokio::spawn(async move {
            for n in 0u64.. {
                let body = json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define", "args": {"n": n % 50 + n / 10}}]});
                let _ = client.post(&url).json(&body).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        dbsize(redis.port).unwrap() > 0,
        "L2 was written before the outage"
    );
    redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.restart(); // returns once Redis answers PING
    let back = std::time::Instant::now();
    let mut written = None;
    while back.elapsed() < Duration::from_secs(10) {
        if dbsize(redis.port).unwrap_or(0) > 0 {
            written = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    traffic.abort();
    let written = written.expect("L2 was never written again");
    assert!(
        written < Duration::from_secs(2),
        "L2 written again {written:?} after Redis answered"
    );
    // The shared limits run on Redis again: its breaker is closed, so calls pass through.
    let (_, status) = a.get("/status").await;
    let redis_status = &status["dependencies"]["redis"];
    assert_eq!(redis_status["breaker"], "closed", "{redis_status}");
    assert!(
        redis_status["recoveries_total"].as_u64().unwrap() >= 1,
        "{redis_status}"
    );
}
