use serde_json::{json, Value};

use crate::{
    agents::{dead_url, spawn_agent, spawn_json_server, Behaviour},
    helpers::{seed_with, settings, spawn_app, spawn_with},
};

#[tokio::test]
async fn a_single_query_is_answered_by_the_definition_agent() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"query": "Define a lightbulb", "user_id": "test"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert!(body["result"].is_object());
    assert_eq!(body["result"]["agent_name"], "Lightbulb_Definition_AI");
    assert_eq!(body["result"]["status"], "success");
    assert_eq!(body["tasks"][0]["concept"], "lightbulb");
    assert_eq!(body["tasks"][0]["intent"], "define");
    assert!(body["answer"].as_str().unwrap().contains("light"));
    assert!(body["results"]["1"].is_object());
}

#[tokio::test]
async fn a_batch_is_answered_by_the_two_demo_agents() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [
                {"task_id": 1, "concept": "lightbulb", "intent": "define"},
                {"task_id": 2, "concept": "lightbulb", "intent": "function"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let results = body["results"].as_object().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results["1"]["agent_name"], "Lightbulb_Definition_AI");
    assert_eq!(results["2"]["agent_name"], "Lightbulb_Function_AI");
    assert_eq!(results["1"]["task_id"], 1);
    assert_eq!(results["1"]["attempts"], 1);
    assert!(results["1"]["cached"].is_null());
    assert_eq!(results["1"]["stale"], false);
    assert!(results["1"]["latency_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn the_alias_route_behaves_like_process() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/process_query",
            &json!({"tasks": [{"task_id": "a", "concept": "lightbulb", "intent": "define"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"]["a"]["task_id"], "a");
    assert_eq!(body["status"], "success");
}

#[tokio::test]
async fn a_mixed_batch_reports_each_task_and_is_partial() {
    let good = spawn_agent(
        "Good_AI",
        Behaviour::Answer {
            data: json!("fine"),
            extra: json!({"confidence": 0.9}),
        },
    );
    let broken = spawn_agent("Broken_AI", Behaviour::Status(500));
    let mut seed = seed_with("lamp", &[("Good_AI", &good.url(), &["define"], 0.5)]);
    seed["concepts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sun"}));
    seed["agents"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "Broken_AI", "endpoint": broken.url(), "intents": ["define"]}));
    seed["handles"]
        .as_array_mut()
        .unwrap()
        .push(json!({"agent": "Broken_AI", "concept": "sun", "weight": 0.5}));
    let mut raw = settings();
    raw.http_retries = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [
                {"task_id": 1, "concept": "lamp", "intent": "define", "args": {"depth": 2}},
                {"task_id": 2, "concept": "unicorn", "intent": "define"},
                {"task_id": 3, "concept": "sun", "intent": "define"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "partial");
    let r = &body["results"];
    assert_eq!(r["1"]["status"], "success");
    assert_eq!(r["1"]["data"], "fine");
    assert_eq!(r["1"]["confidence"], 0.9, "agent fields pass through");
    assert_eq!(r["2"]["status"], "error");
    assert_eq!(r["2"]["code"], "no_agent");
    assert_eq!(r["3"]["status"], "error");
    assert_eq!(r["3"]["code"], "upstream_error");
    assert_eq!(r["3"]["agent_name"], "Broken_AI");
    let err = r["3"]["error"].as_str().unwrap();
    assert!(
        !err.contains("reqwest") && !err.contains("hyper"),
        "internal text leaked: {err}"
    );
    // What the agent received is the agent protocol, with the client's args.
    let got = good.received.lock().unwrap()[0].clone();
    assert_eq!(
        got,
        json!({"task_id": 1, "intent": "define", "concept": "lamp", "args": {"depth": 2}})
    );
    assert_eq!(broken.calls(), 1);
}

#[tokio::test]
async fn a_batch_where_every_task_fails_is_failed_not_an_http_error() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "nothing", "intent": "define"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed");
}

#[tokio::test]
async fn an_agent_answering_400_is_reported_as_rejected() {
    let picky = spawn_agent("Picky_AI", Behaviour::Status(400));
    let seed = seed_with("lamp", &[("Picky_AI", &picky.url(), &["define"], 0.5)]);
    let app = spawn_with(settings(), Some(seed)).await;
    let (_, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}),
        )
        .await;
    assert_eq!(body["results"]["1"]["code"], "agent_rejected");
    assert_eq!(body["results"]["1"]["data"], "failing with 400");
    assert_eq!(picky.calls(), 1);
}

#[tokio::test]
async fn an_unreachable_agent_fails_the_task_not_the_request() {
    let dead = dead_url();
    let seed = seed_with("lamp", &[("Gone_AI", &dead.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.http_retries = Some("0".into());
    let app = spawn_with(raw, Some(seed)).await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"]["1"]["code"], "upstream_error");
}

#[tokio::test]
async fn tasks_of_a_batch_run_concurrently() {
    let slow = spawn_agent(
        "Slow_AI",
        Behaviour::Slow(std::time::Duration::from_millis(300)),
    );
    let seed = seed_with("lamp", &[("Slow_AI", &slow.url(), &["define"], 0.5)]);
    let app = spawn_with(crate::helpers::uncached(), Some(seed)).await;
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"task_id": i, "concept": "lamp", "intent": "define"}))
        .collect();
    let started = std::time::Instant::now();
    let (_, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    let took = started.elapsed();
    assert_eq!(body["status"], "success");
    assert_eq!(slow.calls(), 5);
    // Sequential would take 1.5 s; generous bound for a shared machine.
    assert!(
        took < std::time::Duration::from_millis(1_200),
        "batch took {took:?}"
    );
}

#[tokio::test]
async fn a_hung_agent_is_cut_off_by_the_deadline() {
    let hung = spawn_agent("Hung_AI", Behaviour::Hang);
    let seed = seed_with("lamp", &[("Hung_AI", &hung.url(), &["define"], 0.5)]);
    let mut raw = settings();
    raw.request_timeout_ms = Some("400".into());
    raw.agent_timeout_ms = Some("300".into());
    let app = spawn_with(raw, Some(seed)).await;
    let (status, body) = app
        .post(
            "/process",
            &json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"]["1"]["code"], "timeout");
}

#[tokio::test]
async fn remote_input_and_output_processors_are_used_when_configured() {
    let (input_url, input_seen, _a) = spawn_json_server(json!({"task_list": {"tasks": [
        {"task_id": 1, "concept": "lightbulb", "intent": "function"}
    ]}}));
    let (output_url, output_seen, _b) =
        spawn_json_server(json!({"final_answer": "from the output processor"}));
    let mut raw = settings();
    raw.input_processor_url = Some(input_url);
    raw.output_processor_url = Some(output_url);
    let app = spawn_with(raw, None).await;
    let (status, body) = app
        .post("/process", &json!({"query": "anything", "user_id": "u1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["agent_name"], "Lightbulb_Function_AI");
    assert_eq!(body["answer"], "from the output processor");
    let (path, sent) = input_seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/process/basic");
    assert_eq!(sent, json!({"query": "anything", "user_id": "u1"}));
    let (path, sent) = output_seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/synthesize/basic");
    assert_eq!(sent["results"]["1"]["status"], "success");
}

#[tokio::test]
async fn an_unavailable_input_processor_is_a_502_json_error() {
    let mut raw = settings();
    let dead = dead_url();
    raw.input_processor_url = Some(dead.url().trim_end_matches("/query").to_string());
    let app = spawn_with(raw, None).await;
    let (status, body) = app
        .post("/process", &json!({"query": "what is a lightbulb"}))
        .await;
    assert_eq!(status, 502);
    assert_eq!(
        crate::helpers::error_code(&body),
        "input_processor_unavailable"
    );
}

/// Every `latency_ms` removed: the one field two runs of the same task never share.
fn without_latency(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            map.remove("latency_ms");
            for x in map.values_mut() {
                *x = without_latency(x.take());
            }
        }
        Value::Array(items) => {
            for x in items.iter_mut() {
                *x = without_latency(x.take());
            }
        }
        _ => {}
    }
    v
}

/// The lane that reads a JSON batch straight from its bytes (on the server's own path)
/// answers every body exactly as the schema's operation does (a `Bearer` header sends the
/// same request to the operation; with no keys configured it changes nothing else), and it
/// is really taken.
#[tokio::test]
async fn lane_and_operation_answer_alike() {
    let app = spawn_with(
        myriad::config::RawSettings {
            max_tasks: Some("3".into()),
            ..crate::helpers::uncached()
        },
        None,
    )
    .await;
    let deep = (0..40).fold(json!(1), |v, _| json!({ "a": v }));
    let task = |id: Value, concept: &str, intent: &str| json!({"task_id": id, "concept": concept, "intent": intent});
    let bodies: Vec<String> = [
        json!({"tasks": [task(json!(1), "lightbulb", "define")]}),
        json!({"tasks": [task(json!("a"), " LightBulb ", "DEFINE"), task(json!(2), "lightbulb", "function")], "user_id": "u"}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "user_id": null}),
        json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": null}]}),
        json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": {"n": [1, 2]}}]}),
        json!({"tasks": [task(json!(1), "unknown thing", "define")]}),
        json!({"tasks": []}),
        json!({"tasks": [task(json!(1), "a", "define"), task(json!(2), "b", "define"), task(json!(3), "c", "define"), task(json!(4), "d", "define")]}),
        json!({"tasks": [task(json!(1), "lightbulb", "define"), task(json!(1), "lightbulb", "function")]}),
        json!({"tasks": [task(json!("x".repeat(129)), "lightbulb", "define")]}),
        json!({"tasks": [task(json!(1), "", "define")]}),
        json!({"tasks": [task(json!(1), "   ", "define")]}),
        json!({"tasks": [task(json!(1), "lamp\u{7}", "define")]}),
        json!({"tasks": [task(json!(1), "lightbulb", "de fine")]}),
        json!({"tasks": [task(json!(1.5), "lightbulb", "define")]}),
        json!({"tasks": [task(json!(u64::MAX), "lightbulb", "define")]}),
        json!({"tasks": [task(json!(-7), "lightbulb", "define")]}),
        json!({"tasks": [task(json!(true), "lightbulb", "define")]}),
        json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": [1]}]}),
        json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "args": deep}]}),
        json!({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define", "extra": 1}]}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "user_id": "u".repeat(129)}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "user_id": 5}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "priority": "low"}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "priority": null}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "priority": "urgent"}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "priority": 5}),
        json!({"query": "Define a lightbulb", "priority": "high"}),
        json!({"tasks": [task(json!(1), "lightbulb", "define")], "query": "what is a lightbulb"}),
        json!({"query": "Define a lightbulb"}),
        json!({"tasks": "not a list"}),
        json!([1]),
    ]
    .iter()
    .map(Value::to_string)
    .chain([
        r#"{"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define"}], "tasks": []}"#.into(),
        r#"{"tasks": [{"task_id": 1, "concept": "lightbulb", "concept": "lamp", "intent": "define"}]}"#.into(),
        r#"{"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define"}]} x"#.into(),
        "{\"tasks\": ".into(),
        String::new(),
    ])
    .collect();
    // The lane's side on a new connection each time: the server's own path reads it (a
    // connection it hands to the general server stays there).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let send = |body: String, operation: bool, timeout: Option<&str>, priority: Option<&str>| {
        let client = if operation { &app.client } else { &fresh };
        let mut req = client
            .post(app.url("/process"))
            .header("content-type", "application/json")
            .body(body);
        if operation {
            req = req.header("authorization", "Bearer not-checked");
        }
        if let Some(ms) = timeout {
            req = req.header("x-request-timeout-ms", ms);
        }
        if let Some(p) = priority {
            req = req.header("x-priority", p);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
            let text = resp.text().await.unwrap();
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            (status, content_type, without_latency(body))
        }
    };
    for body in &bodies {
        let lane = send(body.clone(), false, None, None).await;
        let operation = send(body.clone(), true, None, None).await;
        assert_eq!(lane, operation, "{body}");
    }
    // The client's deadline: taken by the lane when the operation would accept it.
    let one = &bodies[0];
    for timeout in ["2000", "20", "0", "x", "600001"] {
        let lane = send(one.clone(), false, Some(timeout), None).await;
        let operation = send(one.clone(), true, Some(timeout), None).await;
        assert_eq!(lane, operation, "{timeout}");
    }
    // The client's priority: likewise.
    for priority in ["high", "normal", "low", "HIGH", "urgent", ""] {
        let lane = send(one.clone(), false, None, Some(priority)).await;
        let operation = send(one.clone(), true, None, Some(priority)).await;
        assert_eq!(lane, operation, "{priority}");
    }
    let scrape = app.scrape().await;
    let count = |outcome: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "myriad_process_lane_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap()
    };
    // Taken by the lane: the well-formed batches (8 answered, 1 naming an unknown concept,
    // and 5 the use case refuses: empty, too many, duplicate ids, a task id too long, args
    // too deep); declined: everything the schema must judge. Then 2 of the deadlines and
    // 3 of the priorities.
    assert_eq!(count("served"), 14 + 2 + 3, "{scrape}");
    assert_eq!(
        count("declined"),
        bodies.len() as u64 - 14 + 3 + 3,
        "{scrape}"
    );
}
