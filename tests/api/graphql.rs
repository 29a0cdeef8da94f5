//! GraphQL at `/graphql` through a standard client (Python `gql`): the graph and routing
//! state to read, `process` like `POST /process`, limits refused as GraphQL errors, auth.

use myriad::config::RawSettings;
use serde_json::{json, Value};

use crate::{
    agents::{spawn_agent, Behaviour},
    helpers::{run_script, seed_with, settings, spawn_with, uncached},
};

/// Runs `document` (with `variables`) through gql's requests transport; the result, or the
/// error gql raised as `{"error": {"message", "code"}}`.
async fn gql(url: &str, key: Option<&str>, document: &str, variables: Value) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from gql import Client, gql
from gql.transport.requests import RequestsHTTPTransport
from gql.transport.exceptions import TransportQueryError
url, key, document, variables = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
headers = {"X-API-Key": key} if key else {}
client = Client(transport=RequestsHTTPTransport(url=url, headers=headers, timeout=20))
try:
    print(json.dumps(client.execute(gql(document), variable_values=variables)))
except TransportQueryError as e:
    err = e.errors[0]
    print(json.dumps({"error": {"message": err.get("message"),
                                "code": (err.get("extensions") or {}).get("code")}}))
except Exception as e:
    print(json.dumps({"error": {"message": str(e), "code": type(e).__name__}}))
"#;
    let args = vec![
        "-c".to_string(),
        SCRIPT.to_string(),
        url.to_string(),
        key.unwrap_or("").to_string(),
        document.to_string(),
        variables.to_string(),
    ];
    serde_json::from_str(&run_script("python3", args).await).expect("the script prints JSON")
}

#[tokio::test]
async fn a_standard_client_reads_the_graph_and_processes_a_batch() {
    let good = spawn_agent(
        "Good_AI",
        Behaviour::Answer {
            data: json!("a lamp gives light"),
            extra: json!({}),
        },
    );
    let other = spawn_agent("Other_AI", Behaviour::Status(500));
    let mut seed = seed_with(
        "lamp",
        &[
            ("Good_AI", &good.url(), &["define"], 0.9),
            ("Other_AI", &other.url(), &["define"], 0.4),
        ],
    );
    seed["agents"][1]["region"] = json!("Test");
    // The graph's order, so the batch below goes to Good_AI first every time: under the
    // score policy its random draws send about 6 % of first picks to the 0.4 agent (the
    // policy's own tests cover that).
    let settings = RawSettings {
        routing_policy: Some("weight".into()),
        ..uncached()
    };
    let app = spawn_with(settings, Some(seed)).await;
    let url = app.url("/graphql");
    let url = url.as_str();

    let read = gql(
        url,
        None,
        "query($c: String!) {
           status { service graphBackend agents }
           agents { name intents breaker concepts { concept weight } }
           concepts { name agents }
           regions { name concepts agents }
           candidates(concept: $c) { agent score weight health admitted breaker }
         }",
        json!({"c": "lamp"}),
    )
    .await;
    assert_eq!(read["status"]["graphBackend"], "memory", "{read}");
    assert_eq!(read["status"]["agents"], 2);
    let lamp = read["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lamp")
        .unwrap();
    assert_eq!(lamp["agents"], json!(["Good_AI", "Other_AI"]));
    assert_eq!(
        read["regions"],
        json!([{"name": "Test", "concepts": ["lamp"], "agents": ["Other_AI"]}])
    );
    let candidates = read["candidates"].as_array().unwrap();
    assert_eq!(candidates[0]["agent"], "Good_AI");
    assert_eq!(candidates[0]["weight"], 0.9);
    assert_eq!(candidates[0]["score"], 0.9);
    assert_eq!(candidates[0]["breaker"], "CLOSED");

    let done = gql(
        url,
        None,
        "mutation($tasks: [TaskInput!]) {
           process(tasks: $tasks) { status results { taskId status agentName data attempts } }
         }",
        json!({"tasks": [
            {"taskId": "b", "concept": "lamp", "intent": "define"},
            {"taskId": 1, "concept": "nothing", "intent": "define"}
        ]}),
    )
    .await;
    let results = &done["process"]["results"];
    assert_eq!(done["process"]["status"], "PARTIAL", "{done}");
    // In the batch's order.
    assert_eq!(results[0]["taskId"], "b");
    assert_eq!(results[0]["agentName"], "Good_AI");
    assert_eq!(results[0]["data"], "a lamp gives light");
    assert_eq!(results[1]["taskId"], 1);
    assert_eq!(results[1]["status"], "error");
    assert_eq!(good.calls(), 1);
    assert_eq!(other.calls(), 0);
    let metrics = gql(
        url,
        None,
        "{ metrics { tasksTotal tasksSucceededTotal tasksFailedTotal tasksCancelledTotal } }",
        json!({}),
    )
    .await;
    assert_eq!(
        metrics["metrics"],
        json!({"tasksTotal": 2, "tasksSucceededTotal": 1, "tasksFailedTotal": 1, "tasksCancelledTotal": 0})
    );

    // The same validation as /process, as GraphQL errors with the same codes.
    let bad = gql(
        url,
        None,
        "mutation { process(query: \"hi\", tasks: []) { status } }",
        json!({}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "invalid_body", "{bad}");
    let bad = gql(
        url,
        None,
        "{ candidates(concept: \"bad\\u0001name\") { agent } }",
        json!({}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "invalid_concept", "{bad}");
}

#[tokio::test]
async fn queries_over_the_limits_are_graphql_errors_not_failures() {
    let app = spawn_with(settings(), None).await;
    let url = app.url("/graphql");
    // Deeper than the limit: refused with a GraphQL error, the service unharmed.
    let deep = gql(
        &url,
        None,
        "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }",
        json!({}),
    ).await;
    assert!(
        deep["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too deep")),
        "{deep}"
    );
    let aliases: String = (0..600)
        .map(|i| format!("a{i}: status {{ version }} "))
        .collect();
    let wide = gql(&url, None, &format!("{{ {aliases} }}"), json!({})).await;
    assert!(
        wide["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("complex")),
        "{wide}"
    );
    // Introspection is on: the schema is public, like /openapi.json.
    let types = gql(&url, None, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(types["__schema"]["queryType"]["name"], "QueryRoot");
    assert_eq!(app.get("/health").await.0, 200);
    // The committed SDL is what the service serves.
    let served = app
        .client
        .get(app.url("/graphql/schema"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, include_str!("../../openapi/schema.graphql"));
}

#[tokio::test]
async fn with_api_keys_graphql_needs_one_too() {
    let raw = RawSettings {
        api_keys: Some("client-key-0123456789".into()),
        ..settings()
    };
    let app = spawn_with(raw, None).await;
    let url = app.url("/graphql");
    let refused = gql(&url, None, "{ status { version } }", json!({})).await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("401")),
        "{refused}"
    );
    let ok = gql(
        &url,
        Some("client-key-0123456789"),
        "{ status { version } }",
        json!({}),
    )
    .await;
    assert_eq!(ok["status"]["version"], env!("CARGO_PKG_VERSION"));
}

/// Subscribes to `document` over graphql-ws (gql's websockets transport); every event, or
/// `{"error": …}`.
async fn subscribe(url: &str, init: Value, document: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import asyncio, json, sys, time
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
url, init, document = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
async def main():
    transport = WebsocketsTransport(url=url, init_payload=init,
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    start = time.monotonic()
    try:
        async with Client(transport=transport) as session:
            async for event in session.subscribe(gql(document)):
                event["at_ms"] = (time.monotonic() - start) * 1000
                print(json.dumps(event), flush=True)
    except Exception as e:
        print(json.dumps({"error": str(e)}))
asyncio.run(main())
"#;
    let args = vec![
        "-c".to_string(),
        SCRIPT.to_string(),
        url.replace("http://", "ws://"),
        init.to_string(),
        document.to_string(),
    ];
    run_script("python3", args)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn a_subscription_over_graphql_ws_yields_results_as_they_complete() {
    let (_fast, _mid, _late, seed) = crate::stream::three_speeds();
    let raw = RawSettings {
        api_keys: Some("client-key-0123456789".into()),
        ..uncached()
    };
    let app = spawn_with(raw, Some(seed)).await;
    let url = app.url("/graphql/ws");
    let document = "subscription {
        process(tasks: [
          {taskId: 1, concept: \"lamp\", intent: \"compare\"},
          {taskId: 2, concept: \"lamp\", intent: \"define\"}
        ]) {
          __typename
          ... on TaskOutcome { taskId status agentName }
          ... on BatchDone { status }
        }
      }";
    let events = subscribe(&url, json!({"apiKey": "client-key-0123456789"}), document).await;
    let kinds: Vec<&Value> = events.iter().map(|e| &e["process"]["__typename"]).collect();
    assert_eq!(
        kinds,
        ["TaskOutcome", "TaskOutcome", "BatchDone"],
        "{events:?}"
    );
    // Completion order: the 10 ms agent's result first, long before the 600 ms one.
    assert_eq!(events[0]["process"]["taskId"], 2);
    assert_eq!(events[0]["process"]["agentName"], "Fast_AI");
    assert_eq!(events[1]["process"]["taskId"], 1);
    assert_eq!(events[2]["process"]["status"], "SUCCESS");
    assert!(events[0]["at_ms"].as_f64().unwrap() + 300.0 < events[1]["at_ms"].as_f64().unwrap());
    // Without the key in the connection_init payload: refused.
    let refused = subscribe(&url, json!({}), document).await;
    assert!(refused[0]["error"].is_string(), "{refused:?}");
    assert_eq!(refused.len(), 1);
}

#[tokio::test]
async fn graphiql_loads_in_a_real_browser_from_the_service_alone() {
    let app = spawn_with(settings(), None).await;
    let base = app.url("");
    let base = base.trim_end_matches('/').to_string();
    let out = run_script("node", vec!["tests/browser/graphiql.mjs".into(), base]).await;
    let seen: Value = serde_json::from_str(&out).expect("the script printed JSON");
    // The default query ran against the service and showed its answer.
    let result = seen["result"].as_str().unwrap();
    assert!(result.contains("Lightbulb_Definition_AI"), "{result}");
    // Nothing was fetched from anywhere else (no CDN).
    assert_eq!(seen["foreign"], json!([]));
}

/// `/discover` and GraphQL `candidates` list the same agents in the same order under either
/// routing policy — here once the heavier agent has failed enough to rank below the other by
/// score, while the weight policy keeps the graph's order.
#[tokio::test]
async fn graphql_and_discover_list_the_candidates_in_the_same_order_under_either_policy() {
    let failing = spawn_agent("Heavy_AI", Behaviour::Status(500));
    let good = crate::agents::answering("Light_AI");
    let seed = seed_with(
        "lamp",
        &[
            ("Heavy_AI", &failing.url(), &["define"], 0.9),
            ("Light_AI", &good.url(), &["define"], 0.5),
        ],
    );
    for (policy, first) in [("weight", "Heavy_AI"), ("score", "Light_AI")] {
        let raw = RawSettings {
            routing_policy: Some(policy.into()),
            ..uncached()
        };
        let app = spawn_with(raw, Some(seed.clone())).await;
        for _ in 0..4 {
            let (status, body) = app
                .post(
                    "/process",
                    &json!({"tasks": [{"task_id": 1, "concept": "lamp", "intent": "define"}]}),
                )
                .await;
            assert_eq!(
                (status, &body["results"]["1"]["agent_name"]),
                (200, &json!("Light_AI")),
                "{body}"
            );
        }
        let (status, discovered) = app
            .post("/discover", &json!({"concept": "lamp", "intent": "define"}))
            .await;
        assert_eq!(status, 200, "{discovered}");
        let listed: Vec<Value> = discovered["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        let read = gql(
            app.url("/graphql").as_str(),
            None,
            "{ candidates(concept: \"lamp\") { agent } }",
            json!({}),
        )
        .await;
        let ranked: Vec<Value> = read["candidates"]
            .as_array()
            .unwrap_or_else(|| panic!("{read}"))
            .iter()
            .map(|c| c["agent"].clone())
            .collect();
        assert_eq!(listed, ranked, "under ROUTING_POLICY={policy}");
        assert_eq!(
            listed[0], first,
            "under ROUTING_POLICY={policy}: {discovered}"
        );
    }
}
