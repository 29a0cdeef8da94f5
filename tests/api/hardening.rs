//! Auth, limits, SSRF guard and graceful shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{error_code, seed_with, settings, spawn_process, spawn_with, TestApp},
};

const KEY: &str = "k-0123456789abcdef-client";

async fn status_of(_app: &TestApp, req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn with_api_keys_clients_need_one_and_health_stays_open() {
    let app = spawn_process(
        &[
            ("API_KEYS", format!("other-key-0123456789,{KEY}")),
            ("LOG_FORMAT", "json".into()),
        ],
        None,
    );
    let c = &app.client;
    let body = json!({"query": "what is a lightbulb"});
    let (s, b) = status_of(&app, c.post(app.url("/process")).json(&body)).await;
    assert_eq!(s, 401);
    assert_eq!(error_code(&b), "unauthorized");
    assert_eq!(
        status_of(
            &app,
            c.post(app.url("/discover"))
                .json(&json!({"concept": "lightbulb"}))
        )
        .await
        .0,
        401
    );
    assert_eq!(status_of(&app, c.get(app.url("/agents"))).await.0, 401);
    assert_eq!(
        status_of(
            &app,
            c.get(app.url("/agents"))
                .header("x-api-key", "wrong-key-0123456789")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        status_of(
            &app,
            c.post(app.url("/process")).bearer_auth(KEY).json(&body)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        status_of(
            &app,
            c.post(app.url("/process"))
                .header("x-api-key", KEY)
                .json(&body)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        status_of(&app, c.get(app.url("/agents")).header("x-api-key", KEY))
            .await
            .0,
        200
    );
    for open in ["/health", "/ready", "/metrics", "/status"] {
        assert_eq!(status_of(&app, c.get(app.url(open))).await.0, 200, "{open}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = app.logs().join("\n");
    assert!(!logs.is_empty());
    assert!(
        !logs.contains(KEY) && !logs.contains("wrong-key-0123456789"),
        "a key reached the logs"
    );
}

#[tokio::test]
async fn metrics_and_status_can_require_a_key() {
    let mut raw = settings();
    raw.api_keys = Some(KEY.into());
    raw.metrics_require_auth = Some("true".into());
    let app = spawn_with(raw, None).await;
    let c = &app.client;
    for path in ["/metrics", "/metrics/json", "/status"] {
        assert_eq!(status_of(&app, c.get(app.url(path))).await.0, 401, "{path}");
        assert_eq!(
            status_of(&app, c.get(app.url(path)).bearer_auth(KEY))
                .await
                .0,
            200,
            "{path}"
        );
    }
    assert_eq!(status_of(&app, c.get(app.url("/health"))).await.0, 200);
}

#[tokio::test]
async fn every_limit_answers_with_its_own_error() {
    let app = crate::helpers::spawn_app().await;
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!({ "d": deep });
    }
    let big = json!({"blob": "x".repeat(20_000)});
    let cases = [
        (
            json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": deep}]}),
            400,
            "args_too_deep",
        ),
        (
            json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": big}]}),
            413,
            "args_too_large",
        ),
        (
            json!({"tasks": [{"task_id": "x".repeat(200), "concept": "lightbulb", "intent": "define"}]}),
            400,
            "invalid_task_id",
        ),
        (
            json!({"tasks": [{"task_id": 1, "concept": "c".repeat(300), "intent": "define"}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "i".repeat(100)}]}),
            400,
            "invalid_body",
        ),
        (json!({"query": "q".repeat(3_000)}), 400, "invalid_body"),
        (
            json!({"query": "what is it", "user_id": "u".repeat(300)}),
            400,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = app.post("/process", &body).await;
        assert_eq!((s, error_code(&b).as_str()), (status, code), "{b}");
    }
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&b), "headers_too_large");
}

#[tokio::test]
async fn agents_outside_the_allowlist_are_refused_at_registration_and_at_start() {
    let outside = spawn_agent(
        "Outside_AI",
        Behaviour::Answer {
            data: json!("x"),
            extra: json!({}),
        },
    );
    let mut raw = settings();
    raw.admin_api_key = Some("admin".into());
    raw.agent_allowed_hosts = Some("localhost".into());
    raw.demo_agents = Some("off".into());
    let seed = seed_with(
        "lamp",
        &[("Inside_AI", "http://localhost:9/query", &["define"], 0.5)],
    );
    let app = spawn_with(raw, Some(seed)).await;
    for endpoint in [
        outside.url(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://10.0.0.1:80/q".into(),
    ] {
        let reg = json!({"name": "Outside_AI", "endpoint": endpoint, "intents": ["define"], "concepts": [{"name": "lamp"}]});
        let resp = app
            .client
            .post(app.url("/agents"))
            .header("x-admin-key", "admin")
            .json(&reg)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            error_code(&resp.json().await.unwrap()),
            "endpoint_not_allowed"
        );
    }
    assert_eq!(outside.calls(), 0, "the outside agent was contacted");

    // A seed pointing outside the allowlist does not start.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        seed_with("lamp", &[("Outside_AI", &outside.url(), &["define"], 0.5)]).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"))
        .args(["serve", "--port", "0", "--host", "127.0.0.1"])
        .env("GRAPH_SEED", file.path())
        .env("AGENT_ALLOWED_HOSTS", "localhost")
        .env_remove("PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AGENT_ALLOWED_HOSTS"));
    assert_eq!(outside.calls(), 0);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_flushes_learning_and_exits_zero() {
    let db = crate::servers::ArcadeServer::start().await;
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(1_500)));
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), seed.to_string()).unwrap();
    let mut env = db.env();
    let seeded = std::process::Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"))
        .arg("seed-graph")
        .arg("--file")
        .arg(file.path())
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(seeded.status.success());
    // Learning would only be written after a minute: only the shutdown flush can write it.
    env.push(("LEARNING_FLUSH_MS", "60000".into()));
    let mut app = spawn_process(&env, None);
    let client = app.client.clone();
    let url = app.url("/process");
    let request = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(slow.calls(), 1, "the call is in flight");
    let pid = app.child().pid();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"]["1"]["status"], "success");
    let status =
        tokio::task::spawn_blocking(move || app.child().wait_exit(Duration::from_secs(15)))
            .await
            .unwrap()
            .expect("the process exited");
    assert_eq!(status.code(), Some(0));
    let w = db
        .cypher(
            "MATCH (:Agent {name: 'Slow_AI'})-[h:HANDLES_CONCEPT]->() RETURN h.weight AS w",
            json!({}),
        )
        .await[0]["w"]
        .as_f64();
    assert_eq!(
        w,
        Some(0.55),
        "the pending learning update was not flushed at shutdown"
    );
}
