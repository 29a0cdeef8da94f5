use serde_json::json;

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{error_code, settings, spawn_app, spawn_with},
};

#[tokio::test]
async fn the_admin_api_is_403_when_no_admin_key_is_configured() {
    let app = spawn_app().await;
    let resp = app
        .client
        .delete(app.url("/agents/Lightbulb_Function_AI"))
        .header("x-admin-key", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(&resp.json().await.unwrap()), "admin_disabled");
    assert_eq!(app.get("/agents").await.1["count"], 2, "nothing changed");
}

#[tokio::test]
async fn a_missing_or_wrong_admin_key_changes_nothing() {
    let mut raw = settings();
    raw.admin_api_key = Some("right".into());
    let app = spawn_with(raw, None).await;
    let resp = app
        .client
        .delete(app.url("/agents/Lightbulb_Function_AI"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(&resp.json().await.unwrap()), "unauthorized");
    let resp = app
        .client
        .delete(app.url("/agents/Lightbulb_Function_AI"))
        .header("x-admin-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(app.get("/agents").await.1["count"], 2);
}

#[tokio::test]
async fn registered_and_removed_agents_are_visible_at_once() {
    let agent = spawn_agent(
        "Sun_AI",
        Behaviour::Answer {
            data: json!("hot"),
            extra: json!({}),
        },
    );
    let mut raw = settings();
    raw.admin_api_key = Some("k".into());
    let app = spawn_with(raw, None).await;
    let reg = json!({"name": "Sun_AI", "endpoint": agent.url(), "intents": ["define"], "concepts": [{"name": "Sun", "weight": 0.9}]});
    let resp = app
        .client
        .post(app.url("/agents"))
        .header("x-admin-key", "k")
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "registered");
    assert_eq!(app.get("/agents").await.1["count"], 3);
    let (status, found) = app.post("/discover", &json!({"concept": "sun"})).await;
    assert_eq!(
        (status, found["agent"]["name"].as_str()),
        (200, Some("Sun_AI"))
    );
    let (_, done) = app
        .post("/process", &json!({"query": "what is the sun"}))
        .await;
    assert_eq!(done["result"]["data"], "hot");

    let resp = app
        .client
        .delete(app.url("/agents/Sun_AI"))
        .header("x-admin-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.post("/discover", &json!({"concept": "sun"})).await.0,
        404
    );
    let resp = app
        .client
        .delete(app.url("/agents/Sun_AI"))
        .header("x-admin-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn invalid_registrations_are_400_and_change_nothing() {
    let mut raw = settings();
    raw.admin_api_key = Some("k".into());
    let app = spawn_with(raw, None).await;
    for bad in [
        json!({"name": "", "endpoint": "http://127.0.0.1:1/q", "intents": ["define"], "concepts": [{"name": "x"}]}),
        json!({"name": "X", "endpoint": "ftp://127.0.0.1/q", "intents": ["define"], "concepts": [{"name": "x"}]}),
        json!({"name": "X", "endpoint": "http://127.0.0.1:1/q", "intents": [], "concepts": [{"name": "x"}]}),
        json!({"name": "X", "endpoint": "http://127.0.0.1:1/q", "intents": ["define"], "concepts": [{"name": "x", "weight": 7}]}),
        json!({"name": "X", "endpoint": "http://127.0.0.1:1/q", "intents": ["de fine"], "concepts": [{"name": "x"}]}),
    ] {
        let resp = app
            .client
            .post(app.url("/agents"))
            .header("x-admin-key", "k")
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        error_code(&resp.json().await.unwrap());
    }
    assert_eq!(app.get("/agents").await.1["count"], 2);
}

#[tokio::test]
async fn endpoints_with_credentials_injections_or_ambiguous_hosts_are_refused_and_nothing_changes()
{
    let mut raw = settings();
    raw.admin_api_key = Some("k".into());
    let app = spawn_with(raw, None).await;
    let before = app.get("/agents").await.1;
    let port = crate::servers::free_port();
    let register = |name: &str, endpoint: String, extra: serde_json::Value| {
        let mut body = json!({"name": name, "endpoint": endpoint, "intents": ["define"], "concepts": [{"name": "Sun"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.client
            .post(app.url("/agents"))
            .header("x-admin-key", "k")
            .json(&body)
            .send()
    };
    for (name, endpoint, code) in [
        (
            "Secret_AI",
            format!("http://:s3cr3t@127.0.0.1:{port}/query"),
            "endpoint_not_allowed",
        ),
        (
            "User_AI",
            format!("http://admin@127.0.0.1:{port}/query"),
            "endpoint_not_allowed",
        ),
        (
            "Crlf_AI",
            format!("http://127.0.0.1:{port}/query\r\nX-Injected: 1"),
            "endpoint_not_allowed",
        ),
        (
            "Slash_AI",
            "http://127.0.0.1\\@evil.example/".to_string(),
            "endpoint_not_allowed",
        ),
        (
            "Space_AI",
            format!("http://127.0.0.1:{port}/a b"),
            "endpoint_not_allowed",
        ),
        (
            "Ftp_AI",
            format!("ftp://127.0.0.1:{port}/"),
            "invalid_endpoint",
        ),
    ] {
        let resp = register(name, endpoint.clone(), json!({})).await.unwrap();
        assert_eq!(resp.status(), 400, "{endpoint:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(error_code(&body), code, "{endpoint:?} → {body}");
        assert!(!body.to_string().contains("s3cr3t"), "{body}");
    }
    for name in ["a/b", "..", "evil\u{202E}IA_"] {
        let resp = register(name, format!("http://127.0.0.1:{port}/query"), json!({}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name:?}");
        assert_eq!(error_code(&resp.json().await.unwrap()), "invalid_name");
    }
    let resp = register(
        "Typo_AI",
        format!("http://127.0.0.1:{port}/query"),
        json!({"intent": ["define"]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400, "an unknown field passed");
    assert_eq!(
        app.get("/agents").await.1,
        before,
        "a refused registration changed the graph"
    );
    // An accepted endpoint is stored in its normalized form.
    let resp = register(
        "Norm_AI",
        format!("HTTP://127.0.0.1:{port}/query"),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, agents) = app.get("/agents").await;
    let stored = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Norm_AI")
        .unwrap()["endpoint"]
        .clone();
    assert_eq!(stored, format!("http://127.0.0.1:{port}/query"));
}
