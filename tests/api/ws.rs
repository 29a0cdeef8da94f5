//! Batches over a WebSocket, through a real client library (tokio-tungstenite): concurrent
//! batches on one socket, cancel, a client that goes away, auth and hostile input.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use myriad::config::RawSettings;
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, protocol::frame::coding::CloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    helpers::{spawn_with, uncached, TestApp},
    stream::three_speeds,
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, key: Option<&str>) -> Socket {
    let mut req = app
        .url("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
    }
    connect_async(req).await.expect("the socket opens").0
}

async fn send(socket: &mut Socket, msg: Value) {
    socket.send(Message::text(msg.to_string())).await.unwrap();
}

/// The next JSON message (within 5 s).
async fn next(socket: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket is open")
            .expect("a well-formed frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads until the socket closes; the close code.
async fn closed(socket: &mut Socket) -> Option<CloseCode> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        match msg {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test]
async fn batches_on_one_socket_interleave_and_one_can_be_cancelled() {
    let (fast, mid, late, seed) = three_speeds();
    let app = spawn_with(uncached(), Some(seed)).await;
    let mut socket = connect(&app, None).await;
    send(
        &mut socket,
        json!({"type": "process", "id": "slow", "tasks": [
            {"task_id": 1, "concept": "lamp", "intent": "compare"}
        ]}),
    )
    .await;
    send(
        &mut socket,
        json!({"type": "process", "id": 7, "tasks": [
            {"task_id": 1, "concept": "lamp", "intent": "function"},
            {"task_id": 2, "concept": "lamp", "intent": "define"}
        ]}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = next(&mut socket).await;
        seen.push((m["type"].as_str().unwrap().to_string(), m["id"].clone(), m));
    }
    let order: Vec<(&str, &Value)> = seen.iter().map(|(t, id, _)| (t.as_str(), id)).collect();
    // The quick batch finishes while the slow one is still running: interleaved, by id.
    assert_eq!(
        order,
        [
            ("task", &json!(7)),
            ("task", &json!(7)),
            ("done", &json!(7)),
            ("task", &json!("slow")),
            ("done", &json!("slow")),
        ]
    );
    assert_eq!(seen[0].2["result"]["task_id"], 2);
    assert_eq!(seen[2].2["body"]["status"], "success");
    assert_eq!(seen[2].2["body"]["results"]["1"]["agent_name"], "Mid_AI");

    // A cancel stops one batch: no result, no done, and its agent call is dropped.
    send(
        &mut socket,
        json!({"type": "process", "id": "gone", "tasks": [
            {"task_id": 1, "concept": "lamp", "intent": "compare", "args": {"n": 2}}
        ]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&mut socket, json!({"type": "cancel", "id": "gone"})).await;
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "cancelled", "id": "gone"})
    );
    send(
        &mut socket,
        json!({"type": "process", "id": "after", "tasks": [
            {"task_id": 1, "concept": "lamp", "intent": "define", "args": {"n": 3}}
        ]}),
    )
    .await;
    // Past the cancelled call's 600 ms: only the later batch speaks.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = next(&mut socket).await;
    let b = next(&mut socket).await;
    assert_eq!((&a["type"], &a["id"]), (&json!("task"), &json!("after")));
    assert_eq!((&b["type"], &b["id"]), (&json!("done"), &json!("after")));
    assert_eq!((fast.calls(), mid.calls(), late.calls()), (2, 1, 2));
    assert_eq!(
        app.series("myriad_tasks_total{status=\"cancelled\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_socket_that_closes_mid_batch_stops_its_work() {
    let (_fast, _mid, late, seed) = three_speeds();
    let raw = RawSettings {
        task_concurrency: Some("2".into()),
        ..uncached()
    };
    let app = spawn_with(raw, Some(seed)).await;
    let mut socket = connect(&app, None).await;
    let mut tasks = vec![json!({"task_id": 0, "concept": "lamp", "intent": "define"})];
    for n in 1..=6 {
        tasks.push(json!({"task_id": n, "concept": "lamp", "intent": "compare", "args": {"n": n}}));
    }
    send(
        &mut socket,
        json!({"type": "process", "id": 1, "tasks": tasks}),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "task");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_close = late.calls();
    assert!(at_close <= 2, "{at_close}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        late.calls(),
        at_close,
        "tasks started after the socket closed"
    );
    assert_eq!(
        app.series("myriad_tasks_total{status=\"cancelled\"}").await,
        6.0
    );
}

#[tokio::test]
async fn hostile_messages_get_clear_errors_and_the_socket_keeps_working() {
    let raw = RawSettings {
        max_body_bytes: Some("4096".into()),
        ..crate::helpers::settings()
    };
    let app = spawn_with(raw, None).await;
    let mut socket = connect(&app, None).await;
    socket.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next(&mut socket).await["code"], "invalid_body");
    send(&mut socket, json!({"type": "explode", "id": 1})).await;
    assert_eq!(next(&mut socket).await["code"], "unknown_message");
    socket.send(Message::binary(vec![0u8; 16])).await.unwrap();
    assert_eq!(next(&mut socket).await["code"], "invalid_body");
    send(
        &mut socket,
        json!({"type": "process", "id": 1, "tasks": []}),
    )
    .await;
    let m = next(&mut socket).await;
    assert_eq!(
        (&m["type"], &m["id"], &m["code"]),
        (&json!("error"), &json!(1), &json!("invalid_body"))
    );
    send(
        &mut socket,
        json!({"type": "process", "id": {"an": "object"}, "query": "hi"}),
    )
    .await;
    assert_eq!(next(&mut socket).await["code"], "invalid_body");
    send(&mut socket, json!({"type": "cancel", "id": "nothing"})).await;
    assert_eq!(next(&mut socket).await["code"], "not_found");

    // A flood of batches: each is answered (done) or refused (too_many_batches), none lost.
    for n in 0..1000 {
        send(
            &mut socket,
            json!({"type": "process", "id": n, "query": "What is a lightbulb?"}),
        )
        .await;
    }
    let (mut done, mut refused) = (0, 0);
    while done + refused < 1000 {
        let m = next(&mut socket).await;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("done"), _) => done += 1,
            (Some("error"), Some("too_many_batches")) => refused += 1,
            (Some("task"), _) => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert!(done >= 16, "{done} done, {refused} refused");
    send(
        &mut socket,
        json!({"type": "process", "id": "last", "query": "What is a lightbulb?"}),
    )
    .await;
    loop {
        let m = next(&mut socket).await;
        if m["type"] == "done" {
            assert_eq!(m["id"], "last");
            break;
        }
    }
    // Over MAX_BODY_BYTES: closed with 1009, and the server is fine.
    send(
        &mut socket,
        json!({"type": "process", "id": 2, "query": "x".repeat(8_000)}),
    )
    .await;
    assert_eq!(closed(&mut socket).await, Some(CloseCode::Size));
    assert_eq!(app.get("/health").await.0, 200);
}

#[tokio::test]
async fn with_api_keys_a_socket_needs_one_in_a_header_or_the_first_message() {
    let raw = RawSettings {
        api_keys: Some("client-key-0123456789".into()),
        ..crate::helpers::settings()
    };
    let app = spawn_with(raw, None).await;
    let query = json!({"type": "process", "id": 1, "query": "What is a lightbulb?"});
    // No key: an error, then closed for policy.
    let mut socket = connect(&app, None).await;
    send(&mut socket, query.clone()).await;
    assert_eq!(next(&mut socket).await["code"], "unauthorized");
    assert_eq!(closed(&mut socket).await, Some(CloseCode::Policy));
    // A wrong key in a header: no upgrade at all.
    let mut req = app
        .url("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", "nope".parse().unwrap());
    assert!(connect_async(req).await.is_err());
    // The key in a header, or as the first message: served.
    for header in [Some("client-key-0123456789"), None] {
        let mut socket = connect(&app, header).await;
        if header.is_none() {
            send(
                &mut socket,
                json!({"type": "auth", "key": "client-key-0123456789"}),
            )
            .await;
        }
        send(&mut socket, query.clone()).await;
        loop {
            let m = next(&mut socket).await;
            if m["type"] == "done" {
                break;
            }
            assert_eq!(m["type"], "task", "{m}");
        }
    }
}
