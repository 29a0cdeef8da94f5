use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_is_healthy_and_names_the_service_and_version() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "orchestrator");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn status_reports_dependencies_environment_and_no_secrets() {
    let mut raw = crate::helpers::settings();
    raw.neo4j_password = Some("s3cret-value".into());
    let app = crate::helpers::spawn_with(raw, None).await;
    let resp = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("s3cret-value"));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["service"], "orchestrator");
    assert_eq!(body["status"], "running");
    assert_eq!(body["dependencies"]["graph"]["status"], "up");
    assert_eq!(
        body["dependencies"]["agents"]["Lightbulb_Definition_AI"]["breaker"],
        "closed"
    );
    assert_eq!(body["environment"]["max_tasks"], 100);
}

#[tokio::test]
async fn ready_is_200_when_agents_can_be_routed_and_503_when_none_exist() {
    let app = spawn_app().await;
    let (status, body) = app.get("/ready").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    assert_eq!(body["routable_agents"], 2);

    let empty = serde_json::json!({"concepts": [{"name": "x"}]});
    let app = crate::helpers::spawn_with(crate::helpers::settings(), Some(empty)).await;
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(crate::helpers::error_code(&body), "not_ready");
    assert!(!body["reasons"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn agents_lists_both_demo_agents_with_intents_concepts_and_breakers() {
    let app = spawn_app().await;
    let (status, body) = app.get("/agents").await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 2);
    let agents = body["agents"].as_array().unwrap();
    let def = agents
        .iter()
        .find(|a| a["name"] == "Lightbulb_Definition_AI")
        .unwrap();
    assert!(def["intents"]
        .as_array()
        .unwrap()
        .contains(&"define".into()));
    assert_eq!(def["type"], "static");
    assert_eq!(def["breaker"], "closed");
    assert!(def["endpoint"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(def["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "lightbulb"));
}

#[tokio::test]
async fn metrics_answer_json_for_any_accept_and_on_the_alias() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/metrics"))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["service"], "orchestrator");
    assert_eq!(body["features"]["autonomous_learning"], true);
    assert!(body["performance"]["requests_total"].is_u64());
    let (status, alias) = app.get("/metrics/json").await;
    assert_eq!(status, 200);
    assert_eq!(alias["service"], "orchestrator");
}

#[tokio::test]
async fn the_served_spec_matches_the_committed_one() {
    let app = spawn_app().await;
    let (status, served) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed"),
    )
    .unwrap();
    assert!(
        served == committed,
        "openapi/openapi.json is stale: regenerate it with `cargo run -q -- openapi > openapi/openapi.json`"
    );
    for path in [
        "/health",
        "/ready",
        "/status",
        "/agents",
        "/metrics",
        "/metrics/json",
        "/discover",
        "/process",
        "/process_query",
    ] {
        assert!(
            served["paths"][path].is_object(),
            "{path} is not in the spec"
        );
    }
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger"), "not a Swagger UI page");
}

/// `Server-Timing: gateway;dur=…, agent;dur=…` as a map of name → milliseconds.
fn server_timing(resp: &reqwest::Response) -> std::collections::HashMap<String, f64> {
    let header = resp.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    header
        .split(',')
        .map(|entry| {
            let (name, dur) = entry.trim().split_once(";dur=").expect("name;dur=ms");
            (name.to_string(), dur.parse().expect("a number of ms"))
        })
        .collect()
}

#[tokio::test]
async fn every_response_says_how_long_the_gateway_and_the_agents_took() {
    use crate::agents::{spawn_agent, Behaviour};
    use std::time::Duration;
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(80)));
    let seed = crate::helpers::seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let app = crate::helpers::spawn_with(crate::helpers::uncached(), Some(seed)).await;
    // Two tasks to the same 80 ms agent run at once: their waits overlap and count once.
    let batch = serde_json::json!({"tasks": [
        {"task_id": 1, "concept": "lamp", "intent": "define"},
        {"task_id": 2, "concept": "lamp", "intent": "define", "args": {"n": 2}}
    ]});
    let resp = app
        .client
        .post(app.url("/process"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let timing = server_timing(&resp);
    assert_eq!(slow.calls(), 2);
    let (gateway, agent) = (timing["gateway"], timing["agent"]);
    assert!((80.0..160.0).contains(&agent), "{timing:?}");
    assert!(gateway >= 0.0 && gateway < agent, "{timing:?}");

    // No agent called: the gateway's time only.
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    let timing = server_timing(&resp);
    assert!(
        timing.contains_key("gateway") && !timing.contains_key("agent"),
        "{timing:?}"
    );

    // The same figure, as a histogram by route.
    let count = "myriad_gateway_overhead_seconds_count{route=\"/process\"}";
    assert_eq!(app.series(count).await, 1.0);
}
