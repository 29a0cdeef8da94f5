//! Replicas that share what they learn: three orchestrator processes, one real redis-server,
//! real agents counting their calls.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    agents::{answering, confident, spawn_agent, Behaviour, TestAgent},
    helpers::{lamp_candidate, seed_with, spawn_process, TestApp},
    servers::RedisServer,
};

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

/// Seconds of the day at which a replica first logged `message`.
fn log_time(app: &TestApp, message: &str) -> f64 {
    let line = app
        .logs()
        .into_iter()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} in the logs"));
    let v: Value = serde_json::from_str(&line).unwrap();
    let time = v["timestamp"].as_str().unwrap().split('T').nth(1).unwrap();
    let mut parts = time.trim_end_matches('Z').split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    );
    h * 3600.0 + m * 60.0 + s
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
        // What the replicas share (breakers, holds, health) does not depend on the policy;
        // these tests need traffic to keep reaching a failing agent, which the score
        // policy's exploration floor gives (the learned policy drops it after a few
        // failures, before a breaker opens).
        ("ROUTING_POLICY", "score".into()),
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
    while lamp_candidate(&a, "Sick_AI").await["breaker"] != "open" {
        id += 1;
        let r = ask(&a, id).await;
        assert_eq!(r["status"], "success", "failover covers every failure: {r}");
        assert!(
            id < 1_200,
            "A's breaker never opened: {} calls, {}",
            sick.calls(),
            lamp_candidate(&a, "Sick_AI").await,
        );
    }
    assert_eq!(lamp_candidate(&a, "Sick_AI").await["held_by_peer"], false);

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
    let opened = log_time(&a, "circuit breaker opened");
    let heard = [
        log_time(&b, "a peer's breaker opened"),
        log_time(&c, "a peer's breaker opened"),
    ];
    println!(
        "shared health: B and C called the sick agent {spent} times in the second after A's \
         breaker opened; the news took {:.2} ms and {:.2} ms",
        (heard[0] - opened) * 1000.0,
        (heard[1] - opened) * 1000.0
    );
    for app in [&b, &c] {
        let s = lamp_candidate(app, "Sick_AI").await;
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
    while lamp_candidate(&a, "Sick_AI").await["breaker"] != "closed" {
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
        println!("recovery: {name} sent the recovered agent {back} of 40 in the next 2 s");
        assert!(back >= 5, "{name} sent the recovered agent {back} of 40");
        assert!(results.iter().all(|r| r["status"] == "success"));
    }
    assert_eq!(lamp_candidate(&b, "Sick_AI").await["held_by_peer"], false);

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
            // The weight decides among the regions' agents here: under the learned policy
            // 30 tasks are too few for a prior worth one observation to show (the us agent
            // answered 18 of 30 once, 20 needed).
            ("ROUTING_POLICY", "score".into()),
        ];
        if let Some(r) = region {
            env.push(("REGION", r.into()));
        }
        env
    };
    // Without REGION the better-weighted agent takes most of the traffic.
    let anywhere = spawn_process(&env(None), Some(seed.clone()));
    let results = burst(&anywhere, 30, Duration::from_millis(5), 0).await;
    let us_share = answered_by(&results, "US_AI");
    println!("region: without REGION the us agent answered {us_share} of 30");
    assert!(us_share >= 20, "{results:?}");
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
    let (_, gql) = app
        .post(
            "/graphql",
            &json!({"query": "{ candidates(concept: \"lamp\") { agent region local } }"}),
        )
        .await;
    assert_eq!(
        gql["data"]["candidates"][0],
        json!({"agent": "EU_AI", "region": "eu", "local": true}),
        "{gql}"
    );

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
    println!("region: eu down, the eu agent got {spent} calls, the us agent served 20 of 20");
    assert!(
        spent <= 3,
        "the eu breaker opens after two failures: {spent} calls"
    );
    let (_, found) = app.post("/discover", &json!({"concept": "lamp"})).await;
    assert_eq!(found["agent"]["name"], "US_AI", "{found}");
    assert_eq!(found["candidates"][1]["breaker"], "open", "{found}");
}

/// nginx on loopback in front of `ports`, logging per request its end time, duration,
/// status and the upstream(s) tried; stopped on drop.
struct Balancer {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Balancer {
    fn start(ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::servers::free_port();
        let d = dir.path().display();
        let servers: String = ports
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};"))
            .collect();
        // No upstream keep-alive: a drained replica's closed listener is a refused connect,
        // which nginx retries on the next replica (the request was never sent). A request
        // that was sent (a POST) is never retried: an agent call may not be idempotent.
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format lb '$msec $request_time $status "$upstream_addr" "$upstream_status"';
  access_log {d}/access.log lb;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream replicas {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_next_upstream error timeout;
      proxy_connect_timeout 1s;
    }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new("nginx")
            .args(["-p", &d.to_string(), "-c"])
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx is installed (scripts/install-test-deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Balancer { port, dir, child }
    }

    /// (end time as unix seconds, duration s, status, upstreams tried) per request.
    fn log(&self) -> Vec<(f64, f64, u16, Vec<u16>)> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let end: f64 = f.next().unwrap().parse().unwrap();
                let took: f64 = f.next().unwrap().parse().unwrap();
                let status: u16 = f.next().unwrap().parse().unwrap();
                let upstreams = f
                    .next()
                    .unwrap()
                    .split('"')
                    .nth(1)
                    .unwrap()
                    .split(", ")
                    .filter_map(|u| u.rsplit(':').next()?.parse().ok())
                    .collect();
                (end, took, status, upstreams)
            })
            .collect()
    }
}

impl Drop for Balancer {
    /// SIGTERM: the master stops its workers (SIGKILL would leave them running).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn signal(app: &mut TestApp, sig: &str) -> f64 {
    let pid = app.child().pid().to_string();
    let at = unix_now();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success());
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_load_a_drained_replica_loses_nothing_and_a_killed_one_only_its_in_flight() {
    let redis = RedisServer::start();
    let agent = spawn_agent("Steady_AI", Behaviour::Slow(Duration::from_millis(50)));
    let seed = seed_with("lamp", &[(&agent.name, &agent.url(), &["define"], 1.0)]);
    let mut replicas: Vec<TestApp> = (0..3)
        .map(|_| replica(&redis, &seed, &[("SHUTDOWN_DRAIN_S", "10".into())]))
        .collect();
    let ports: Vec<u16> = replicas
        .iter()
        .map(|r| r.base.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let lb = Balancer::start(&ports);
    let (rate, seconds) = (200, 8);
    let summary = tempfile::NamedTempFile::new().unwrap();
    let k6 = {
        let (url, out) = (
            format!("http://127.0.0.1:{}/process", lb.port),
            summary.path().display().to_string(),
        );
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("k6")
                .args([
                    "run",
                    "--quiet",
                    "--no-usage-report",
                    "--summary-export",
                    &out,
                ])
                .args(["-e", &format!("URL={url}")])
                .args(["-e", &format!("RATE={rate}")])
                .args(["-e", &format!("DURATION_S={seconds}")])
                .arg("loadtests/replica_failure.js")
                .output()
                .expect("k6 is installed (scripts/install-test-deps.sh)")
        })
    };
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let termed = signal(&mut replicas[0], "-TERM");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let killed = signal(&mut replicas[1], "-KILL");
    let out = k6.await.unwrap();
    assert!(
        out.status.success(),
        "k6: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = replicas[0].child().wait_exit(Duration::from_secs(5));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the drained replica exits cleanly: {exit:?}\n{}",
        replicas[0].child().report(40)
    );

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(summary.path()).unwrap())
        .expect("k6 wrote its summary");
    let sent = summary["metrics"]["http_reqs"]["count"].as_f64().unwrap();
    let client_failed = summary["metrics"]["failed_requests"]["count"]
        .as_f64()
        .unwrap_or(0.0);
    let log = lb.log();
    let failures: Vec<_> = log.iter().filter(|(_, _, s, _)| *s != 200).collect();
    let on = |port: u16| {
        log.iter()
            .filter(move |(_, _, _, u)| u.last() == Some(&port))
    };
    let (drained_port, killed_port) = (ports[0], ports[1]);
    let served_after = |port: u16, at: f64| {
        on(port)
            .filter(|(end, took, _, _)| end - took > at + 0.05)
            .count()
    };
    println!(
        "replica failure: {sent} requests at {rate}/s, {} failed (client saw {client_failed}); \
         drained replica served {} ({} started after SIGTERM), killed replica {} ({} failed), survivor {}",
        failures.len(),
        on(drained_port).count(),
        served_after(drained_port, termed),
        on(killed_port).count(),
        on(killed_port).filter(|(_, _, s, _)| *s != 200).count(),
        on(ports[2]).count(),
    );
    assert!(
        sent >= f64::from(rate * seconds) * 0.95,
        "k6 held the rate: {sent}"
    );
    assert_eq!(
        log.len() as f64,
        sent,
        "every request went through the balancer"
    );
    assert_eq!(client_failed, failures.len() as f64);
    // Nothing lost to the drained replica, and it took nothing new after its SIGTERM.
    let lost: Vec<_> = on(drained_port).filter(|(_, _, s, _)| *s != 200).collect();
    assert!(
        lost.is_empty(),
        "lost on the drained replica (SIGTERM at {termed:.3}): {lost:?}"
    );
    assert_eq!(served_after(drained_port, termed), 0);
    // Every failure was a request the killed replica held when it was killed.
    for (end, took, status, upstreams) in &failures {
        assert_eq!(
            upstreams.last(),
            Some(&killed_port),
            "{status} on {upstreams:?}"
        );
        assert!(
            end - took <= killed + 0.05 && *end >= killed - 0.05,
            "a failure not in flight at the kill: started {:.3}, ended {end:.3}, killed {killed:.3}",
            end - took
        );
    }
    // In flight on one replica: about a third of rate × 50 ms, with room for scheduling.
    assert!(failures.len() <= 20, "{} failures", failures.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_measured_of_an_agent_reaches_a_replica_that_never_called_it() {
    let redis = RedisServer::start();
    // Fails one call in two; breakers stay closed, so only the health shows it.
    let flaky = spawn_agent(
        "Flaky_AI",
        Behaviour::FailSome {
            fails: 1,
            every: 2,
            status: 503,
        },
    );
    let other = answering("Other_AI");
    let seed = seed_with(
        "lamp",
        &[
            (&flaky.name, &flaky.url(), &["define"], 1.0),
            (&other.name, &other.url(), &["define"], 0.2),
        ],
    );
    let env = [
        ("BREAKER_CONSECUTIVE_FAILURES", "1000".to_string()),
        ("BREAKER_MIN_CALLS", "100000".into()),
        ("ROUTING_EXPLORE_PERCENT", "100".into()),
    ];
    let a = replica(&redis, &seed, &env);
    let b = replica(&redis, &seed, &env);
    let fresh = lamp_candidate(&b, "Flaky_AI").await;
    assert_eq!(
        (&fresh["health"], &fresh["latency_ms"]),
        (&json!(1.0), &Value::Null)
    );
    for n in 0..40 {
        ask(&a, n).await;
    }
    assert!(flaky.calls() >= 10, "A measured the flaky agent");
    let measured = lamp_candidate(&a, "Flaky_AI").await;
    // The next summary tick carries it to B, which has not called it once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let seen = lamp_candidate(&b, "Flaky_AI").await;
        if seen["health"].as_f64().unwrap() < 0.8 {
            break seen;
        }
        assert!(Instant::now() < deadline, "B never learned: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen["latency_ms"].as_f64().is_some(), "{seen}");
    let (ha, hb) = (
        measured["health"].as_f64().unwrap(),
        seen["health"].as_f64().unwrap(),
    );
    assert!((ha - hb).abs() < 0.15, "A sees {ha}, B {hb}");
    assert_eq!(seen["breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_the_retry_budget_falls_back_to_the_replicas_own() {
    let mut redis = RedisServer::start();
    let down = spawn_agent("Alone_AI", Behaviour::Status(503));
    let seed = seed_with("lamp", &[(&down.name, &down.url(), &["define"], 1.0)]);
    let env = [
        ("HTTP_RETRIES", "3".to_string()),
        ("HTTP_BACKOFF", "0".into()),
        ("RETRY_BUDGET_PERCENT", "5".into()),
        ("BREAKER_CONSECUTIVE_FAILURES", "1000".into()),
        ("BREAKER_MIN_CALLS", "100000".into()),
    ];
    let app = replica(&redis, &seed, &env);
    redis.kill();
    for n in 0..40 {
        assert_eq!(ask(&app, n).await["status"], "error");
    }
    // The local budget decided every withdrawal, and still bounded the retries.
    let retries = down.calls() - 40;
    assert!((3..=3 + 2).contains(&retries), "{retries} retries");
    assert!(
        app.series("myriad_retries_total{result=\"budget_fallback\"}")
            .await
            >= retries as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_learned_of_an_agents_answers_routes_a_replica_that_never_called_it() {
    let redis = RedisServer::start();
    // Both always answer; one is 10 % sure of its answers.
    let unsure = confident("Unsure_AI", 0.1);
    let sure = answering("Sure_AI");
    let seed = seed_with(
        "lamp",
        &[
            (&unsure.name, &unsure.url(), &["define"], 0.9),
            (&sure.name, &sure.url(), &["define"], 0.5),
        ],
    );
    let policy = [
        ("ROUTING_POLICY", "learned".to_string()),
        ("ROUTING_SEED", "3".into()),
    ];
    let a = replica(&redis, &seed, &policy);
    let b = replica(&redis, &seed, &policy);
    let fresh = lamp_candidate(&b, "Unsure_AI").await;
    assert_eq!(fresh["evidence"], 0.0, "{fresh}");
    for n in 0..60 {
        ask(&a, n).await;
    }
    // A tried its primary, heard it was unsure, and moved on (one answer at 0.1 takes the
    // estimate from 0.9 to 0.5, two to 0.37).
    let learned = lamp_candidate(&a, "Unsure_AI").await;
    let on_a = learned["estimate"].as_f64().unwrap();
    assert!(on_a <= 0.5, "{learned}");
    // The next tick carries A's outcomes to B, which has not called either agent.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let seen = lamp_candidate(&b, "Unsure_AI").await;
        if seen["evidence"].as_f64().unwrap() >= 1.0 || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        seen["evidence"].as_f64().unwrap() >= 1.0,
        "B's view: {seen}"
    );
    assert!(
        (seen["estimate"].as_f64().unwrap() - on_a).abs() < 0.05,
        "B's view {seen} is not A's ({on_a})"
    );
    // B routes on it from its first task: the operator's primary (0.9) has lost its lead.
    let calls_before = unsure.calls();
    for n in 100..130 {
        assert_eq!(ask(&b, n).await["status"], "success");
    }
    let to_unsure = unsure.calls() - calls_before;
    eprintln!("B's view from A's outcomes: {seen}; B sent {to_unsure} of 30 tasks to it");
    assert!(
        to_unsure <= 6,
        "B still sent {to_unsure} of 30 tasks to the unsure agent"
    );
}
