use std::time::Duration;

use serde_json::json;

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{seed_with, settings, spawn_app, spawn_with, TestApp},
};

async fn wait_for_weight(
    app: &TestApp,
    agent: &str,
    concept: &str,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    for _ in 0..100 {
        let w = app.weight(agent, concept).await;
        if pred(w) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.weight(agent, concept).await
}

#[tokio::test]
async fn a_success_strengthens_the_edge_of_the_agent_that_answered() {
    let app = spawn_app().await;
    let before_def = app.weight("Lightbulb_Definition_AI", "lightbulb").await;
    let before_fun = app.weight("Lightbulb_Function_AI", "lightbulb").await;
    let (_, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "function"}]}),
        )
        .await;
    assert_eq!(body["status"], "success");
    let after = wait_for_weight(&app, "Lightbulb_Function_AI", "lightbulb", |w| {
        w > before_fun
    })
    .await;
    assert!(
        (after - (before_fun + 0.05)).abs() < 1e-9,
        "{before_fun} → {after}"
    );
    // The other agent's edge did not move.
    assert_eq!(
        app.weight("Lightbulb_Definition_AI", "lightbulb").await,
        before_def
    );
    let (_, agents) = app.get("/agents").await;
    let edge = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Lightbulb_Function_AI")
        .unwrap()["concepts"][0]
        .clone();
    assert_eq!(edge["usage_count"], 1);
    assert_eq!(edge["success_count"], 1);
}

#[tokio::test]
async fn a_failure_weakens_the_edge_and_discover_shows_it() {
    let broken = spawn_agent("Broken_AI", Behaviour::Status(500));
    let seed = seed_with("lamp", &[("Broken_AI", &broken.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.http_retries = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    app.post(
        "/process",
        &json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}),
    )
    .await;
    let after = wait_for_weight(&app, "Broken_AI", "lamp", |w| w < 0.5).await;
    assert!((after - 0.48).abs() < 1e-9, "0.5 → {after}");
    let (_, body) = app.post("/discover", &json!({"concept": "lamp"})).await;
    assert!((body["candidates"][0]["weight"].as_f64().unwrap() - 0.48).abs() < 1e-9);
}

#[tokio::test]
async fn learning_can_be_switched_off() {
    let mut raw = settings();
    raw.enable_autonomous_learning = Some("false".into());
    let app = spawn_with(raw, None).await;
    let before = app.weight("Lightbulb_Definition_AI", "lightbulb").await;
    app.post("/process", &json!({"query": "define a lightbulb"}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.weight("Lightbulb_Definition_AI", "lightbulb").await,
        before
    );
}
