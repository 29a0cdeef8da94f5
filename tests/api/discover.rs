use serde_json::json;

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{error_code, seed_with, settings, spawn_app, spawn_with},
};

#[tokio::test]
async fn discover_finds_the_agent_for_a_concept_and_intent() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/discover",
            &json!({"concept": "lightbulb", "intent": "function"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success");
    assert_eq!(body["concept"], "lightbulb");
    assert_eq!(body["agent"]["name"], "Lightbulb_Function_AI");
    assert!(body["agent_url"].as_str().unwrap().ends_with("/query"));
}

#[tokio::test]
async fn discover_defaults_the_intent_to_define() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/discover", &json!({"concept": "Lightbulb"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["intent"], "define");
    assert_eq!(body["agent"]["name"], "Lightbulb_Definition_AI");
}

#[tokio::test]
async fn discover_answers_404_in_the_old_shape_for_an_unknown_concept() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/discover",
            &json!({"concept": "zebra", "intent": "define"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], "no_agent_found");
    assert_eq!(body["concept"], "zebra");
    assert!(body["agent_url"].is_null());
    assert!(body["message"].is_string());
    assert_eq!(error_code(&body), "no_agent_found");
}

#[tokio::test]
async fn discover_rejects_missing_and_invalid_concepts() {
    let app = spawn_app().await;
    for bad in [
        json!({}),
        json!({"concept": ""}),
        json!({"concept": 5}),
        json!({"concept": "x".repeat(200)}),
        json!({"concept": "ok", "intent": "drop table;"}),
    ] {
        let (status, body) = app.post("/discover", &bad).await;
        assert_eq!(status, 400, "{bad}");
        error_code(&body);
    }
}

#[tokio::test]
async fn discovery_honours_the_intent_and_ranks_by_weight() {
    let a = spawn_agent(
        "Strong",
        Behaviour::Answer {
            data: json!("s"),
            extra: json!({}),
        },
    );
    let b = spawn_agent(
        "Weak",
        Behaviour::Answer {
            data: json!("w"),
            extra: json!({}),
        },
    );
    let c = spawn_agent(
        "Other",
        Behaviour::Answer {
            data: json!("o"),
            extra: json!({}),
        },
    );
    let seed = seed_with(
        "lamp",
        &[
            ("Weak", &b.url(), &["define"], 0.3),
            ("Strong", &a.url(), &["define"], 0.9),
            ("Other", &c.url(), &["compare"], 1.0),
        ],
    );
    let app = spawn_with(settings(), Some(seed)).await;
    let (_, body) = app
        .post("/discover", &json!({"concept": "lamp", "intent": "define"}))
        .await;
    let names: Vec<_> = body["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Strong", "Weak"]);
    let (_, body) = app
        .post(
            "/discover",
            &json!({"concept": "lamp", "intent": "compare"}),
        )
        .await;
    assert_eq!(body["agent"]["name"], "Other");
}
