//! Live progress over Server-Sent Events, read by a real SSE client (eventsource-stream):
//! results in completion order as they happen, a `done` body equal to the JSON form's, and
//! a client that goes away stops the work.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour, TestAgent},
    helpers::{seed_with, spawn_with, uncached, TestApp},
};

/// Agents answering after 10, 200 and 600 ms, one intent each, all for concept `lamp`.
pub fn three_speeds() -> (TestAgent, TestAgent, TestAgent, Value) {
    let slow = |ms| Behaviour::Slow(Duration::from_millis(ms));
    let (fast, mid, late) = (
        spawn_agent("Fast_AI", slow(10)),
        spawn_agent("Mid_AI", slow(200)),
        spawn_agent("Late_AI", slow(600)),
    );
    let seed = seed_with(
        "lamp",
        &[
            ("Fast_AI", &fast.url(), &["define"], 0.5),
            ("Mid_AI", &mid.url(), &["function"], 0.5),
            ("Late_AI", &late.url(), &["compare"], 0.5),
        ],
    );
    (fast, mid, late, seed)
}

async fn open_stream(app: &TestApp, body: &Value) -> reqwest::Response {
    let resp = app
        .client
        .post(app.url("/process"))
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    resp
}

/// Drops the timing field, the one thing two runs of the same request may differ in.
fn without_latency(mut body: Value) -> Value {
    for r in body["results"].as_object_mut().unwrap().values_mut() {
        r.as_object_mut().unwrap().remove("latency_ms");
    }
    body
}

#[tokio::test]
async fn results_stream_in_completion_order_and_done_is_the_json_body() {
    let (fast, mid, late, seed) = three_speeds();
    let app = spawn_with(uncached(), Some(seed)).await;
    // Listed slowest first: the stream must follow completion, not the list.
    let body = json!({"tasks": [
        {"task_id": 1, "concept": "lamp", "intent": "compare"},
        {"task_id": "two", "concept": "lamp", "intent": "function"},
        {"task_id": 3, "concept": "lamp", "intent": "define"}
    ]});
    let sent = Instant::now();
    let raw = Arc::new(Mutex::new(String::new()));
    let seen = raw.clone();
    let mut events = open_stream(&app, &body)
        .await
        .bytes_stream()
        .inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(bytes));
            }
        })
        .eventsource();
    let mut got = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("a well-formed event");
        got.push((sent.elapsed(), event));
    }
    let names: Vec<&str> = got.iter().map(|(_, e)| e.event.as_str()).collect();
    assert_eq!(names, ["task", "task", "task", "done"]);
    let ids: Vec<&str> = got.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    let tasks: Vec<Value> = got[..3]
        .iter()
        .map(|(_, e)| serde_json::from_str(&e.data).unwrap())
        .collect();
    let order: Vec<&Value> = tasks.iter().map(|t| &t["task_id"]).collect();
    assert_eq!(order, [&json!(3), &json!("two"), &json!(1)]);
    assert!(tasks.iter().all(|t| t["status"] == "success"));
    // Streamed, not buffered: the first result is out long before the slowest agent answers.
    assert!(
        got[0].0 < Duration::from_millis(400),
        "first event after {:?}",
        got[0].0
    );
    assert!(got[2].0 >= Duration::from_millis(600));
    assert!(raw.lock().unwrap().starts_with("retry: "));

    // `done` holds exactly the results the task events carried, and is the JSON form's body.
    let done: Value = serde_json::from_str(&got[3].1.data).unwrap();
    assert_eq!(done["status"], "success");
    for t in &tasks {
        let key = match &t["task_id"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        assert_eq!(&done["results"][&key], t);
    }
    let (status, plain) = app.post("/process", &body).await;
    assert_eq!(status, 200);
    assert_eq!(without_latency(done), without_latency(plain));
    assert_eq!((fast.calls(), mid.calls(), late.calls()), (2, 2, 2));
}

#[tokio::test]
async fn a_question_streams_its_tasks_then_the_answer() {
    let app = crate::helpers::spawn_app().await;
    let body = json!({"query": "What is a lightbulb?"});
    let mut events = open_stream(&app, &body).await.bytes_stream().eventsource();
    let mut got = Vec::new();
    while let Some(event) = events.next().await {
        got.push(event.unwrap());
    }
    assert_eq!(got.last().unwrap().event, "done");
    let done: Value = serde_json::from_str(&got.last().unwrap().data).unwrap();
    assert!(
        done["answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{done}"
    );
    assert_eq!(done["tasks"].as_array().unwrap().len(), got.len() - 1);
    // Bad input is refused before any stream starts: a 4xx JSON error, as without the header.
    let resp = app
        .client
        .post(app.url("/process"))
        .header("accept", "text/event-stream")
        .json(&json!({"tasks": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["code"].is_string(), "{err}");
}

#[tokio::test]
async fn a_client_that_goes_away_stops_the_work_without_blaming_the_agent() {
    let (fast, _mid, late, seed) = three_speeds();
    let raw = myriad::config::RawSettings {
        task_concurrency: Some("2".into()),
        // One failure would open the breaker: a cancel must not be one.
        breaker_consecutive_failures: Some("1".into()),
        ..uncached()
    };
    let app = spawn_with(raw, Some(seed)).await;
    // One quick task, then six for the 600 ms agent, two at a time.
    let mut tasks = vec![json!({"task_id": 0, "concept": "lamp", "intent": "define"})];
    for n in 1..=6 {
        tasks.push(json!({"task_id": n, "concept": "lamp", "intent": "compare", "args": {"n": n}}));
    }
    let resp = open_stream(&app, &json!({ "tasks": tasks })).await;
    let mut events = resp.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "task");
    drop(events); // the client goes away
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_disconnect = late.calls();
    assert!(at_disconnect <= 2, "{at_disconnect} calls began");
    // Long enough for the rest to have started and finished, had they not been cancelled.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        late.calls(),
        at_disconnect,
        "tasks started after the client left"
    );
    assert_eq!(fast.calls(), 1);
    let cancelled = app.series("myriad_tasks_total{status=\"cancelled\"}").await;
    assert_eq!(cancelled, 6.0);
    // A cancel says nothing about the agent: no breaker failure, no learning.
    assert_eq!(
        app.series("myriad_agent_breaker_state{agent=\"Late_AI\"}")
            .await,
        0.0
    );
    assert_eq!(app.weight("Late_AI", "lamp").await, 0.5);
    assert_eq!(
        app.series("myriad_agent_calls_total{agent=\"Late_AI\",outcome=\"success\"}")
            .await,
        0.0
    );
}

/// JSON `/process`, `/process_query` and the GraphQL mutation, each left by a client whose
/// timeout is shorter than the agent: the same cancel as a stream's, never the agent's fault.
#[tokio::test]
async fn clients_that_give_up_on_any_transport_never_open_a_healthy_agents_breaker() {
    let slow = spawn_agent("Slow_AI", Behaviour::Slow(Duration::from_millis(400)));
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let raw = myriad::config::RawSettings {
        // Three failures would open the breaker: eight cancels must not be one.
        breaker_consecutive_failures: Some("3".into()),
        ..uncached()
    };
    let app = spawn_with(raw, Some(seed)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let task = json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]});
    let question = json!({"query": "What is a lamp?"});
    let mutation = json!({"query":
        "mutation { process(tasks: [{taskId: 1, concept: \"lamp\", intent: \"define\"}]) { status } }"});
    let calls: [(&str, &Value); 8] = [
        ("/process", &task),
        ("/process_query", &question),
        ("/graphql", &mutation),
        ("/process", &task),
        ("/process_query", &task),
        ("/graphql", &mutation),
        ("/process", &question),
        ("/process", &task),
    ];
    for (path, body) in calls {
        let sent = impatient.post(app.url(path)).json(body).send().await;
        assert!(
            sent.is_err_and(|e| e.is_timeout()),
            "{path} answered in time"
        );
    }
    // Every call reached the agent and was dropped when its client left.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(slow.calls(), 8);
    assert_eq!(
        app.series("myriad_tasks_total{status=\"cancelled\"}").await,
        8.0
    );
    assert_eq!(
        app.series("myriad_agent_breaker_state{agent=\"Slow_AI\"}")
            .await,
        0.0,
        "a client's timeout opened the breaker"
    );
    assert_eq!(
        app.weight("Slow_AI", "lamp").await,
        0.5,
        "cancels were learned"
    );
    // A patient client is served by the agent.
    let (status, body) = app.post("/process", &task).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"]["1"]["status"], "success", "{body}");
    assert_eq!(slow.calls(), 9);
    // A request that hits its own deadline is still the agent's failure.
    let short = myriad::config::RawSettings {
        request_timeout_ms: Some("100".into()),
        agent_timeout_ms: Some("100".into()),
        breaker_consecutive_failures: Some("3".into()),
        ..uncached()
    };
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let strict = spawn_with(short, Some(seed)).await;
    for _ in 0..3 {
        let (_, body) = strict.post("/process", &task).await;
        assert_eq!(body["results"]["1"]["code"], "timeout", "{body}");
    }
    assert_eq!(
        strict
            .series("myriad_agent_breaker_state{agent=\"Slow_AI\"}")
            .await,
        1.0,
        "deadline failures must count against the agent"
    );
}
