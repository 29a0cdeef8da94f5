//! Traces in a real OpenTelemetry backend (Phoenix), Prometheus text checked by promtool,
//! bounded metric cardinality, and logs that carry trace ids.

use std::{collections::HashMap, time::Duration};

use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{seed_with, spawn_process, TestApp},
    servers::PhoenixServer,
};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

async fn post_traced(app: &TestApp, body: &Value, tp: &str) -> reqwest::Response {
    app.client
        .post(app.url("/process"))
        .header("traceparent", tp)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[tokio::test]
async fn one_batch_is_one_trace_of_every_stage_under_the_clients_span_in_a_real_backend() {
    let phoenix = PhoenixServer::start().await;
    let good = spawn_agent(
        "Good_AI",
        Behaviour::Answer {
            data: json!("ok"),
            extra: json!({}),
        },
    );
    let flaky = spawn_agent(
        "Flaky_AI",
        Behaviour::FailThenOk {
            failures: 1,
            status: 503,
        },
    );
    let mut seed = seed_with("lamp", &[("Good_AI", &good.url(), &["define"], 0.5)]);
    seed["agents"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "Flaky_AI", "endpoint": flaky.url(), "intents": ["function"]}));
    seed["handles"]
        .as_array_mut()
        .unwrap()
        .push(json!({"agent": "Flaky_AI", "concept": "lamp", "weight": 0.5}));

    // The real binary (its own tracing pipeline); gRPC export here, HTTP/protobuf below.
    let app = spawn_process(
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", phoenix.grpc),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
            // Quiet logs must not silence the spans.
            ("RUST_LOG", "warn,myriad::startup=info".into()),
            ("HTTP_BACKOFF", "0.01".into()),
            ("LEARNING_FLUSH_MS", "20".into()),
        ],
        Some(seed),
    );

    let batch = json!({"tasks": [
        {"task_id": 1, "concept": "lamp", "intent": "define"},
        {"task_id": 2, "concept": "lamp", "intent": "function"}
    ]});
    let resp = post_traced(&app, &batch, &traceparent(CLIENT_TRACE, CLIENT_SPAN)).await;
    assert_eq!(resp.headers()["x-trace-id"], CLIENT_TRACE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["results"]["2"]["attempts"], 2);

    // Every agent call continued the client's trace.
    for tp in good
        .traceparents
        .lock()
        .unwrap()
        .iter()
        .chain(flaky.traceparents.lock().unwrap().iter())
    {
        let tp = tp.as_deref().expect("the agent received a traceparent");
        assert_eq!(tp.split('-').nth(1), Some(CLIENT_TRACE));
    }

    phoenix.trace(CLIENT_TRACE, 8).await;
    // Anything still on its way (export is batched every 500 ms) arrives meanwhile.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let spans = phoenix.trace(CLIENT_TRACE, 8).await;
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["context"]["span_id"].as_str().unwrap(), s))
        .collect();
    // One tree: every span's parent is in the trace, except the root, whose parent is the client's span.
    let roots: Vec<&&Value> = by_id
        .values()
        .filter(|s| !by_id.contains_key(s["parent_id"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(roots.len(), 1, "not one tree: {roots:?}");
    assert_eq!(roots[0]["name"], "POST /process");
    assert_eq!(roots[0]["parent_id"], CLIENT_SPAN);
    assert_eq!(attr(roots[0], "http.route"), "/process");

    let named = |name: &str| {
        spans
            .iter()
            .filter(move |s| s["name"] == name)
            .collect::<Vec<_>>()
    };
    // The span budget (README, "Span budget"): 3 + 3 per task + 3 per HTTP attempt. Here
    // 2 tasks and 3 attempts: a server span, 2 tasks, 2 calls and 3 attempts.
    assert_eq!(
        spans.len(),
        8,
        "{:?}",
        spans.iter().map(|s| &s["name"]).collect::<Vec<_>>()
    );
    assert!(spans.len() <= 3 + 3 * 2 + 3 * 3);
    // The in-process graph's answer is attributes of the task (a remote graph's is a
    // `discover` span of its own).
    assert!(named("discover").is_empty());
    for stage in ["task", "agent_call", "agent_attempt"] {
        assert!(
            !named(stage).is_empty(),
            "no {stage} span in {:?}",
            spans.iter().map(|s| &s["name"]).collect::<Vec<_>>()
        );
    }
    let define_task = named("task")
        .into_iter()
        .find(|s| attr(s, "task_id") == "1")
        .unwrap();
    assert_eq!(attr(define_task, "agent"), "Good_AI");
    assert_eq!(attr(define_task, "chosen_reason"), "best_score");
    // The answering agent's estimate on the concept, this success in (taken when it was
    // learned): above the edge's prior of 0.5.
    let estimate = attr(define_task, "estimate").as_f64().unwrap();
    assert!(estimate > 0.5 && estimate <= 1.0, "{define_task}");
    // Discovery ranks, routing chooses: no second `chosen` that could name another agent
    // than the one that answered.
    assert!(
        define_task["attributes"].get("chosen").is_none(),
        "{define_task}"
    );
    assert_eq!(attr(define_task, "cache_tier"), "none");
    assert!(attr(define_task, "candidates")
        .as_str()
        .unwrap()
        .contains("Good_AI:0.500"));
    // The stages' instant verdicts are attributes of the call they decided.
    let calls = named("agent_call");
    assert!(calls.iter().all(|s| attr(s, "breaker.state") == "closed"));
    assert!(calls.iter().all(|s| attr(s, "breaker.admitted") == true));
    assert!(calls.iter().any(|s| attr(s, "cache.result") == "miss"));
    // Learning is batch work: a `learn` span per edge a batch changed, a root of its own,
    // linked to the task spans whose outcomes it applied.
    let learned = phoenix.named("learn", 2).await;
    println!("learn spans: {learned:#?}");
    let learn = learned
        .iter()
        .find(|s| attr(s, "agent") == "Good_AI")
        .unwrap();
    assert_ne!(learn["context"]["trace_id"], CLIENT_TRACE);
    assert_eq!(learn["attributes"]["weight_old"].as_f64(), Some(0.5));
    assert!((learn["attributes"]["weight_new"].as_f64().unwrap() - 0.55).abs() < 1e-9);

    // The agent failure is an error span, followed by the retry attempt that succeeded.
    let mut flaky_attempts: Vec<&Value> = named("agent_attempt")
        .into_iter()
        .filter(|s| attr(s, "agent") == "Flaky_AI")
        .collect();
    flaky_attempts.sort_by_key(|s| {
        attr(s, "attempt")
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| attr(s, "attempt").to_string())
    });
    assert_eq!(flaky_attempts.len(), 2);
    assert_eq!(flaky_attempts[0]["status_code"], "ERROR");
    assert_eq!(attr(flaky_attempts[0], "retry_reason"), "http_503");
    assert_eq!(attr(flaky_attempts[1], "outcome"), "success");
    assert_ne!(flaky_attempts[1]["status_code"], "ERROR");

    // Every span that left is counted: the ones the backend holds were exported.
    let exported = app
        .series("myriad_trace_spans_total{result=\"exported\"}")
        .await;
    assert!(
        exported >= spans.len() as f64,
        "{exported} < {}",
        spans.len()
    );
    assert_eq!(
        app.series("myriad_trace_spans_total{result=\"dropped\"}")
            .await,
        0.0
    );

    // A batch streamed over SSE is the same one tree: its tasks run as the client reads,
    // under the request's span.
    let sse_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let resp = app
        .client
        .post(app.url("/process"))
        .header("traceparent", traceparent(sse_trace, CLIENT_SPAN))
        .header("accept", "text/event-stream")
        .json(&json!({"tasks": [{"task_id": 9, "concept": "lamp", "intent": "define"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("event: done"));
    let spans = phoenix.trace(sse_trace, 4).await;
    let ids: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["context"]["span_id"].as_str().unwrap(), s))
        .collect();
    let task = spans
        .iter()
        .find(|s| s["name"] == "task")
        .expect("a task span in the streamed request's trace");
    assert_eq!(attr(task, "task_id"), "9");
    let parent = ids[task["parent_id"].as_str().unwrap()];
    assert_eq!(parent["name"], "POST /process");
    assert!(spans.iter().any(|s| s["name"] == "agent_call"));

    // HTTP/protobuf export reaches the same backend; error bodies carry the trace id.
    let app2 = spawn_process(
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", phoenix.http),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ],
        None,
    );
    let second_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = post_traced(
        &app2,
        &json!({}),
        &traceparent(second_trace, "b7ad6b7169203331"),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["trace_id"], second_trace);
    let spans = phoenix.trace(second_trace, 1).await;
    assert_eq!(spans[0]["name"], "POST /process");
}

#[tokio::test]
async fn prometheus_text_passes_promtool_and_json_stays_the_default() {
    let app = crate::helpers::spawn_app().await;
    app.post("/process", &json!({"query": "what is a lightbulb"}))
        .await;
    let resp = app
        .client
        .get(app.url("/metrics"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for family in [
        "myriad_http_requests_total",
        "myriad_http_request_duration_seconds",
        "myriad_agent_calls_total",
        "myriad_agent_breaker_state",
        "myriad_cache_lookups_total",
        "myriad_tasks_total",
        "myriad_graph_query_duration_seconds",
        "myriad_build_info",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    assert!(text.contains(r#"route="/process""#));
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/install-test-deps.sh)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What a Prometheus scraper sends gets text; a browser or */* gets JSON.
    let scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let resp = app
        .client
        .get(app.url("/metrics"))
        .header("accept", scraper)
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().starts_with("# HELP"));
    let (_, json) = app.get("/metrics").await;
    assert_eq!(json["service"], "orchestrator");
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

async fn scrape(app: &TestApp) -> String {
    app.scrape().await
}

#[tokio::test]
async fn series_stay_bounded_under_random_concepts_and_user_ids() {
    let app = spawn_process(&[], None);
    scrape(&app).await; // the scrape's own route series exist from here on
    let mut counts = Vec::new();
    for round in 0..2 {
        let requests = (0..500).map(|i| {
            let n = round * 500 + i;
            let app = &app;
            async move {
                let body = json!({"query": format!("what is the thing{n}x"), "user_id": format!("user-{n}")});
                app.post("/process", &body).await;
                app.post("/discover", &json!({"concept": format!("c{n}")})).await;
                app.get(&format!("/no/such/path/{n}")).await;
            }
        });
        futures::future::join_all(requests).await;
        counts.push(series(&scrape(&app).await));
    }
    assert_eq!(
        counts[0], counts[1],
        "series grew with random input: {counts:?}"
    );
    assert!(counts[1] < 400, "{} series", counts[1]);
    let text = scrape(&app).await;
    assert!(!text.contains("thing1") && !text.contains("user-1") && !text.contains("/no/such"));
}

#[tokio::test]
async fn json_log_lines_of_a_request_carry_its_trace_id() {
    let app = spawn_process(&[("LOG_FORMAT", "json".into())], None);
    let trace = "1234567890abcdef1234567890abcdef";
    let resp = post_traced(
        &app,
        &json!({"query": "define a lightbulb"}),
        &traceparent(trace, "1111111111111111"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut line = None;
    for _ in 0..40 {
        line = app
            .logs()
            .into_iter()
            .find(|l| l.contains("request completed"));
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line: Value = serde_json::from_str(&line.expect("an access log line")).unwrap();
    assert_eq!(line["trace_id"], trace);
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(line["route"], "/process");
    assert_eq!(line["level"], "INFO");
}

#[tokio::test]
async fn spans_that_cannot_leave_are_counted_not_lost_silently() {
    // A backend that takes connections and never answers, an export timeout of 300 ms and a
    // queue of 4: while a batch waits for its timeout, the burst's spans are dropped; the
    // batch itself fails.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let app = spawn_process(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ],
        None,
    );
    let burst = (0..50).map(|_| app.get("/health"));
    for (status, _) in futures::future::join_all(burst).await {
        assert_eq!(status, 200);
    }
    let (mut counted, mut failed) = (0.0, 0.0);
    for _ in 0..100 {
        let dropped = app
            .series("myriad_trace_spans_total{result=\"dropped\"}")
            .await;
        failed = app
            .series("myriad_trace_spans_total{result=\"failed\"}")
            .await;
        counted = dropped + failed;
        if dropped > 0.0 && failed > 0.0 && counted >= 50.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 50 requests, one span each (and the scrapes' own): all accounted for.
    assert!(counted >= 50.0, "only {counted} spans counted");
    // The batch that waited on the silent backend gave up at the export timeout.
    assert!(
        failed > 0.0,
        "no export failed: the silent backend holds the queue"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics["performance"]["traces"]["spans_dropped_total"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(metrics["performance"]["traces"]["spans_exported_total"], 0);
    drop(silent);
}
