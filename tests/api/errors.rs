use serde_json::{json, Value};

use crate::helpers::{error_code, settings, spawn_app, spawn_with};

#[tokio::test]
async fn empty_and_incomplete_bodies_are_400() {
    let app = spawn_app().await;
    // Shape errors are caught by the schema (`invalid_body`, with the reason); rules the
    // schema cannot express have their own code.
    let cases = [
        (json!({}), "invalid_body"),
        (json!({"user_id": "x"}), "invalid_body"),
        (json!({"tasks": []}), "invalid_body"),
        // Exactly one of the two forms, even when one of them is empty.
        (
            json!({"query": "define a lightbulb", "tasks": []}),
            "invalid_body",
        ),
        (
            json!({"query": "define a lightbulb", "tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define"}]}),
            "invalid_body",
        ),
        (json!({"query": "   "}), "invalid_body"),
        (
            json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define"}, {"task_id": "1", "concept": "lightbulb", "intent": "function"}]}),
            "duplicate_task_id",
        ),
        (
            json!({"tasks": [{"task_id": 1, "concept": "", "intent": "define"}]}),
            "invalid_body",
        ),
        (
            json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": [1]}]}),
            "invalid_body",
        ),
    ];
    for (body, code) in cases {
        let (status, resp) = app.post("/process", &body).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(error_code(&resp), code, "{body}");
    }
}

#[tokio::test]
async fn a_question_naming_nothing_is_answered_as_failed_not_rejected() {
    let app = spawn_app().await;
    let (status, body) = app.post("/process", &json!({"query": "?!?"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["result"]["code"], "unparseable_query");
    // Both forms at once is ambiguous (the schema is oneOf): 400 naming what is accepted.
    let (status, body) = app
        .post("/process", &json!({"query": "x", "tasks": [{"task_id": 9, "concept": "lightbulb", "intent": "define"}]}))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("exactly one of"));
}

#[tokio::test]
async fn wrong_types_are_400_with_the_error_body() {
    let app = spawn_app().await;
    for body in [
        json!({"tasks": "not a list"}),
        json!({"tasks": {"task_id": 1}}),
        json!({"query": 42}),
        json!({"tasks": [{"task_id": 1.5, "concept": "lightbulb", "intent": "define"}]}),
        json!({"tasks": [{"task_id": 1, "concept": 7, "intent": "define"}]}),
        json!({"tasks": [{"concept": "lightbulb", "intent": "define"}]}),
        json!([1, 2]),
        json!("text"),
    ] {
        let (status, resp) = app.post("/process", &body).await;
        assert_eq!(status, 400, "{body} → {resp}");
        error_code(&resp);
    }
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_raw("/process", "application/json", "{\"query\": ")
        .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "invalid_body");
    let (status, body) = app.post_raw("/process", "text/plain", "{}").await;
    assert_eq!(status, 415);
    assert_eq!(error_code(&body), "unsupported_media_type");
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
    let resp = app.client.delete(app.url("/process")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn too_many_tasks_is_413() {
    let mut raw = settings();
    raw.max_tasks = Some("3".into());
    let app = spawn_with(raw, None).await;
    let tasks: Vec<Value> = (0..4)
        .map(|i| json!({"task_id": i, "concept": "lightbulb", "intent": "define"}))
        .collect();
    let (status, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "too_many_tasks");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_or_without_content_length() {
    let mut raw = settings();
    raw.max_body_bytes = Some("2048".into());
    let app = spawn_with(raw, None).await;
    let big = json!({"query": "x".repeat(4096)}).to_string();
    let (status, body) = app
        .post_raw("/process", "application/json", big.clone())
        .await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "payload_too_large");
    // Chunked: no Content-Length to trust.
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, body) = app
        .post_raw(
            "/process",
            "application/json",
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "payload_too_large");
}

/// A client that sends its whole oversized body before reading (as most do) reads the 413:
/// the body is read and discarded first, so the connection is not reset under it.
#[tokio::test]
async fn a_client_that_sends_a_whole_oversized_body_reads_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = settings();
    raw.max_body_bytes = Some("65536".into());
    let app = spawn_with(raw, None).await;
    let body = json!({"query": "x".repeat(200 * 1024)}).to_string();
    let addr = app.base.trim_start_matches("http://").to_string();
    for round in 0..5 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /process HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        // In pieces, as over a real network: the 413 is ready before the body has arrived.
        let mut written = Ok(());
        for piece in body.as_bytes().chunks(32 * 1024) {
            written = socket.write_all(piece).await;
            if written.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut answer = Vec::new();
        let read = socket.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            written.is_ok() && read.is_ok() && answer.starts_with("HTTP/1.1 413"),
            "round {round}: write {written:?}, read {read:?}, answer {answer:?}"
        );
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
}

#[tokio::test]
async fn rejected_requests_change_nothing() {
    let app = spawn_app().await;
    let (_, before) = app.get("/agents").await;
    for body in [
        json!({}),
        json!({"tasks": "x"}),
        json!({"tasks": [{"task_id": 1, "concept": "", "intent": "define"}]}),
    ] {
        let (status, _) = app.post("/process", &body).await;
        assert_eq!(status, 400);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (_, after) = app.get("/agents").await;
    assert_eq!(before, after);
    let (_, metrics) = app.get("/metrics").await;
    assert_eq!(metrics["performance"]["tasks_total"], 0);
}
