//! The Neo4j backend (neo4rs over Bolt) against a real ArcadeDB server.

use std::{process::Command, time::Duration};

use myriad::config::RawSettings;
use serde_json::{json, Value};

use crate::{
    agents::{confident, spawn_agent, Behaviour},
    helpers::{lamp_candidate, seed_with, settings, spawn_with, TestApp},
    servers::ArcadeServer,
};

fn seed_graph(db: &ArcadeServer, seed: &Value) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), seed.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"))
        .arg("seed-graph")
        .arg("--file")
        .arg(file.path())
        .env_clear()
        .envs(db.env())
        .output()
        .unwrap()
}

fn graph_settings(db: &ArcadeServer) -> RawSettings {
    let mut raw = settings();
    for (k, v) in db.env() {
        match k {
            "NEO4J_URI" => raw.neo4j_uri = Some(v),
            "NEO4J_USER" => raw.neo4j_user = Some(v),
            "NEO4J_PASSWORD" => raw.neo4j_password = Some(v),
            "NEO4J_DATABASE" => raw.neo4j_database = Some(v),
            _ => {}
        }
    }
    raw.graph_timeout_ms = Some("2000".into());
    raw
}

async fn count(db: &ArcadeServer, query: &str) -> i64 {
    db.cypher(query, json!({})).await[0]["n"]
        .as_i64()
        .unwrap_or(-1)
}

async fn weight(db: &ArcadeServer, agent: &str, concept: &str) -> f64 {
    db.cypher(
        "MATCH (a:Agent {name: $a})-[h:HANDLES_CONCEPT]->(c:Concept {name: $c}) RETURN h.weight AS w",
        json!({"a": agent, "c": concept}),
    )
    .await[0]["w"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

async fn one(app: &TestApp, concept: &str, intent: &str, args: Value) -> Value {
    let body =
        json!({"tasks": [{"task_id": 1, "concept": concept, "intent": intent, "args": args}]});
    let (status, body) = app.post("/process", &body).await;
    assert_eq!(status, 200, "{body}");
    body["results"]["1"].clone()
}

#[tokio::test]
async fn seeding_twice_leaves_one_copy() {
    let db = ArcadeServer::start().await;
    let seed: Value = serde_json::from_str(include_str!("../../seed/default.json")).unwrap();
    for _ in 0..2 {
        let out = seed_graph(&db, &seed);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(&db, "MATCH (n:Agent) RETURN count(n) AS n").await, 2);
    assert_eq!(
        count(&db, "MATCH (n:Concept) RETURN count(n) AS n").await,
        2
    );
    assert_eq!(count(&db, "MATCH (n:Region) RETURN count(n) AS n").await, 2);
    assert_eq!(
        count(&db, "MATCH ()-[h:HANDLES_CONCEPT]->() RETURN count(h) AS n").await,
        3
    );
    assert_eq!(
        count(&db, "MATCH ()-[b:BELONGS_TO]->() RETURN count(b) AS n").await,
        4
    );
}

#[tokio::test]
async fn tasks_are_routed_through_the_graph_honouring_intents_and_weights_change_in_the_database() {
    let db = ArcadeServer::start().await;
    let definer = spawn_agent(
        "Definer_AI",
        Behaviour::Answer {
            data: json!("a definition"),
            extra: json!({}),
        },
    );
    let explainer = spawn_agent(
        "Explainer_AI",
        Behaviour::Answer {
            data: json!("how it works"),
            extra: json!({}),
        },
    );
    let mut seed = seed_with(
        "lamp",
        &[
            ("Definer_AI", &definer.url(), &["define"], 0.5),
            ("Explainer_AI", &explainer.url(), &["function"], 0.5),
        ],
    );
    seed["agents"][0]["region"] = json!("Test");
    assert!(seed_graph(&db, &seed).status.success());
    let app = spawn_with(graph_settings(&db), None).await;
    assert_eq!(
        one(&app, "lamp", "define", json!({})).await["agent_name"],
        "Definer_AI"
    );
    assert_eq!(
        one(&app, "lamp", "function", json!({})).await["agent_name"],
        "Explainer_AI"
    );
    assert_eq!(
        one(&app, "lamp", "compare", json!({})).await["code"],
        "no_agent"
    );
    assert_eq!((definer.calls(), explainer.calls()), (1, 1));
    // Learning reaches the database (batched, off the request path).
    let mut w = f64::NAN;
    for _ in 0..100 {
        w = weight(&db, "Definer_AI", "lamp").await;
        if w > 0.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((w - 0.55).abs() < 1e-9, "weight in the database: {w}");
    let row = &db
        .cypher(
            "MATCH (a:Agent {name: 'Definer_AI'})-[h:HANDLES_CONCEPT]->() RETURN h.usage_count AS u, h.success_count AS s, h.success_rate AS r",
            json!({}),
        )
        .await[0];
    assert_eq!(
        (row["u"].as_i64(), row["s"].as_i64(), row["r"].as_f64()),
        (Some(1), Some(1), Some(1.0))
    );
    // Regions read back from the database (`BELONGS_TO`).
    let (status, regions) = app
        .post(
            "/graphql",
            &json!({"query": "{ regions { name concepts agents } }"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        regions["data"]["regions"],
        json!([{"name": "Test", "concepts": ["lamp"], "agents": ["Definer_AI"]}])
    );
    let (_, status) = app.get("/status").await;
    assert_eq!(status["dependencies"]["graph"]["backend"], "neo4j");
    assert_eq!(status["dependencies"]["graph"]["status"], "up");
}

#[tokio::test]
async fn decay_runs_on_its_interval() {
    let db = ArcadeServer::start().await;
    let seed = seed_with(
        "lamp",
        &[("Any_AI", "http://127.0.0.1:9/query", &["define"], 0.8)],
    );
    assert!(seed_graph(&db, &seed).status.success());
    let mut raw = graph_settings(&db);
    raw.hebbian_decay_interval_s = Some("1".into());
    raw.hebbian_decay_rate = Some("0.5".into());
    let _app = spawn_with(raw, None).await;
    let mut w = f64::NAN;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        w = weight(&db, "Any_AI", "lamp").await;
        if w < 0.8 {
            break;
        }
    }
    assert!(
        (w - 0.4).abs() < 1e-9 || (w - 0.2).abs() < 1e-9,
        "decayed weight {w}"
    );
}

async fn twenty_requests_for(app: &TestApp, concept: &str) -> Vec<Value> {
    let asks = (0..20).map(|_| one(app, concept, "define", json!({})));
    futures::future::join_all(asks).await
}

#[tokio::test]
async fn twenty_concurrent_requests_for_an_unknown_concept_create_one_concept_and_one_agent() {
    let db = ArcadeServer::start().await;
    let seed: Value = serde_json::from_str(include_str!("../../seed/default.json")).unwrap();
    assert!(seed_graph(&db, &seed).status.success());
    let mut raw = graph_settings(&db);
    raw.enable_dynamic_agents = Some("true".into());
    raw.demo_agents = Some("on".into());
    let app = spawn_with(raw, None).await;
    let results = twenty_requests_for(&app, "solar panel").await;
    assert!(
        results.iter().all(|r| r["status"] == "success"),
        "{results:?}"
    );
    assert!(results
        .iter()
        .any(|r| r["neurogenesis_status"] == "neurogenesis_created"));
    assert_eq!(
        count(
            &db,
            "MATCH (c:Concept {name: 'solar panel'}) RETURN count(c) AS n"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "MATCH (a:Agent)-[:HANDLES_CONCEPT]->(c:Concept {name: 'solar panel'}) RETURN count(a) AS n").await,
        1
    );
    let agent = &db.cypher("MATCH (a:Agent)-[:HANDLES_CONCEPT]->(c:Concept {name: 'solar panel'}) RETURN a.type AS t, a.name AS n", json!({})).await[0];
    assert_eq!(agent["t"], "dynamic");
    // A later request routes to the new agent without neurogenesis.
    let later = one(&app, "solar panel", "define", json!({})).await;
    assert_eq!(later["agent_name"], agent["n"]);
    assert!(later.get("neurogenesis_status").is_none());
}

#[tokio::test]
async fn neurogenesis_is_single_flight_on_the_embedded_graph_too() {
    let mut raw = settings();
    raw.enable_dynamic_agents = Some("true".into());
    let app = spawn_with(raw, None).await;
    let results = twenty_requests_for(&app, "wind turbine").await;
    assert!(
        results.iter().all(|r| r["status"] == "success"),
        "{results:?}"
    );
    let (_, agents) = app.get("/agents").await;
    let handling: Vec<&Value> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["concepts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "wind turbine")
        })
        .collect();
    assert_eq!(handling.len(), 1);
    let (_, metrics) = app.get("/metrics").await;
    assert_eq!(metrics["performance"]["neurogenesis"]["created"], 1);
}

#[tokio::test]
async fn the_graph_server_going_away_degrades_and_its_return_recovers_without_a_restart() {
    let mut db = ArcadeServer::start().await;
    let agent = spawn_agent(
        "Lamp_AI",
        Behaviour::Answer {
            data: json!("lit"),
            extra: json!({}),
        },
    );
    let seed = seed_with(
        "lamp",
        &[("Lamp_AI", &agent.url(), &["define", "function"], 0.5)],
    );
    assert!(seed_graph(&db, &seed).status.success());
    let app = spawn_with(graph_settings(&db), None).await;
    assert_eq!(
        one(&app, "lamp", "define", json!({"n": 0})).await["status"],
        "success"
    );

    db.kill();
    // Discovery answers from its cache; the agent is still called for new args.
    let r = one(&app, "lamp", "define", json!({"n": 1})).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(agent.calls(), 2);
    // So the replica stays in its load balancer, saying why it is degraded.
    let (code, ready) = app.get("/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert!(
        ready["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("remembered discovery answers")),
        "{ready}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (code, status) = app.get("/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "degraded");
    assert_eq!(status["dependencies"]["graph"]["status"], "down");
    // Never-seen discovery fails cleanly and fast, as a task error.
    let started = std::time::Instant::now();
    assert_eq!(
        one(&app, "lamp", "function", json!({})).await["code"],
        "graph_unavailable"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    db.restart();
    let mut recovered = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if one(&app, "lamp", "function", json!({})).await["status"] == "success" {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the service did not recover after the graph server returned"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        app.get("/status").await.1["dependencies"]["graph"]["status"],
        "up"
    );
}

#[tokio::test]
async fn a_known_route_survives_an_empty_answer_and_a_hung_graph_and_goes_only_when_removed() {
    let db = ArcadeServer::start().await;
    let agent = spawn_agent(
        "Lamp_AI",
        Behaviour::Answer {
            data: json!("lit"),
            extra: json!({}),
        },
    );
    let seed = seed_with("lamp", &[("Lamp_AI", &agent.url(), &["define"], 0.5)]);
    assert!(seed_graph(&db, &seed).status.success());
    let mut raw = graph_settings(&db);
    raw.graph_timeout_ms = Some("500".into());
    raw.discovery_cache_ttl_s = Some("1".into());
    raw.admin_api_key = Some("k".into());
    let app = spawn_with(raw, None).await;
    assert_eq!(
        one(&app, "lamp", "define", json!({"n": 0})).await["status"],
        "success"
    );

    // The graph answers "nobody" for the route (as a graph server starting up does): the
    // known route is kept, not replaced by a cached "no agent".
    db.cypher(
        "MATCH (a:Agent {name: 'Lamp_AI'}) SET a.intents = ['other'] RETURN count(a) AS n",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for n in 1..4 {
        let r = one(&app, "lamp", "define", json!({ "n": n })).await;
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agent_name"], "Lamp_AI");
    }

    // The graph hangs after the entry expired: 20 concurrent tasks all get the stale route
    // within about one GRAPH_TIMEOUT_MS (500 ms), not one after another.
    db.pause(true);
    let started = std::time::Instant::now();
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"task_id": i, "concept": "lamp", "intent": "define", "args": {"hung": i}}))
        .collect();
    let (status, body) = app.post("/process", &json!({ "tasks": tasks })).await;
    let took = started.elapsed();
    db.pause(false);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success", "{body}");
    assert!(
        body["results"]
            .as_object()
            .unwrap()
            .values()
            .all(|r| r["agent_name"] == "Lamp_AI"),
        "{body}"
    );
    assert!(
        took < Duration::from_millis(1_500),
        "20 tasks took {took:?} against a hung graph (GRAPH_TIMEOUT_MS=500)"
    );
    for reason in ["empty_answer", "graph_timeout", "recent_failure"] {
        let series = format!("myriad_discovery_stale_served_total{{reason=\"{reason}\"}}");
        let n = app.series(&series).await;
        assert!(n >= 1.0, "{series} is {n}");
    }

    // An invalidation says the route really went away: then "no agent" is the answer.
    let resp = app
        .client
        .delete(app.url("/agents/Lamp_AI"))
        .header("x-admin-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        one(&app, "lamp", "define", json!({"n": 99})).await["code"],
        "no_agent"
    );
}

#[tokio::test]
async fn hostile_concept_strings_are_stored_verbatim_or_rejected_and_never_alter_the_graph() {
    let db = ArcadeServer::start().await;
    let seed: Value = serde_json::from_str(include_str!("../../seed/default.json")).unwrap();
    assert!(seed_graph(&db, &seed).status.success());
    let mut raw = graph_settings(&db);
    raw.enable_dynamic_agents = Some("true".into());
    raw.demo_agents = Some("on".into());
    let app = spawn_with(raw, None).await;
    let nodes_before = count(&db, "MATCH (n) RETURN count(n) AS n").await;
    for hostile in [
        "lamp'}) DETACH DELETE n //",
        "x\" OR 1=1 MATCH (n) DETACH DELETE n",
        "{name: 'x'}",
        "a`b` MERGE (z:Evil)",
    ] {
        let body = json!({"tasks": [{"task_id": 1, "concept": hostile, "intent": "define"}]});
        let (status, resp) = app.post("/process", &body).await;
        assert_eq!(status, 400, "{hostile}: {resp}");
        let (status, _) = app.post("/discover", &json!({"concept": hostile})).await;
        assert_eq!(status, 404, "discovery of {hostile}");
    }
    assert_eq!(
        count(&db, "MATCH (n) RETURN count(n) AS n").await,
        nodes_before
    );
    // Plain words that happen to be Cypher are just a concept name, stored verbatim.
    let r = one(&app, "DETACH DELETE everything", "define", json!({})).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        count(
            &db,
            "MATCH (c:Concept {name: 'detach delete everything'}) RETURN count(c) AS n"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "MATCH (n:Agent) RETURN count(n) AS n").await, 3);
    assert_eq!(count(&db, "MATCH (n:Evil) RETURN count(n) AS n").await, 0);
    assert_eq!(
        count(
            &db,
            "MATCH (c:Concept {name: 'lightbulb'}) RETURN count(c) AS n"
        )
        .await,
        1
    );
}

/// The same outcomes, in the same batches, through the embedded graph and through Neo4j on
/// the real Bolt server: the same weights and counts (the Hebbian rule applied one outcome
/// at a time in each edge's order, clamped at each step), and one change per edge.
#[tokio::test]
async fn both_graphs_learn_the_same_weights_from_the_same_outcomes() {
    use myriad::graph::{
        memory::MemoryGraph,
        neo4j::{Neo4jGraph, Neo4jSettings},
        seed::Seed,
        Deltas, EdgeOutcomes, KnowledgeGraph,
    };
    let db = ArcadeServer::start().await;
    let seed = seed_with(
        "lamp",
        &[
            ("High_AI", "http://127.0.0.1:9/q", &["define"], 0.98),
            ("Low_AI", "http://127.0.0.1:9/q", &["define"], 0.03),
        ],
    );
    assert!(seed_graph(&db, &seed).status.success());
    let memory = MemoryGraph::from_seed(&Seed::parse(&seed.to_string()).unwrap(), |_| None)
        .expect("the seed loads");
    let env: std::collections::HashMap<_, _> = db.env().into_iter().collect();
    let neo4j = Neo4jGraph::connect(
        &Neo4jSettings {
            uri: env["NEO4J_URI"].clone(),
            user: env["NEO4J_USER"].clone(),
            password: env["NEO4J_PASSWORD"].clone(),
            database: Some(env["NEO4J_DATABASE"].clone()),
            timeout: Duration::from_secs(5),
            pool: 2,
        },
        std::sync::Arc::new(|_: &str| None),
    )
    .await
    .unwrap();
    let deltas = Deltas {
        success: 0.05,
        failure: 0.02,
    };
    let edge = |agent: &str, successes: &[bool]| EdgeOutcomes {
        agent: agent.into(),
        concept: "lamp".into(),
        successes: successes.to_vec(),
        estimate: None,
    };
    // Saturation in the middle of a batch (High: 0.98 → 1.0, the failure counts from 1.0),
    // the floor (Low: failures past 0), an edge that does not exist, and a second batch.
    let batches = vec![
        vec![
            edge("High_AI", &[true, true, false, true, false, false]),
            edge("Low_AI", &[false, false, true, false, false, false]),
            edge("Nobody_AI", &[true]),
        ],
        vec![edge("Low_AI", &[true; 7]), edge("High_AI", &[false, true])],
    ];
    for batch in &batches {
        let from_memory = memory.learn(batch, deltas).await.unwrap();
        let from_neo4j = neo4j.learn(batch, deltas).await.unwrap();
        assert_eq!(from_memory.len(), 2, "one change per existing edge");
        assert_eq!(from_neo4j.len(), 2, "one change per existing edge");
        for m in &from_memory {
            let n = from_neo4j.iter().find(|n| n.agent == m.agent).unwrap();
            assert!((m.old - n.old).abs() < 1e-9, "{m:?} vs {n:?}");
            assert!((m.new - n.new).abs() < 1e-9, "{m:?} vs {n:?}");
        }
    }
    let stats = |records: Vec<myriad::graph::AgentRecord>| {
        let mut v: Vec<(String, f64, u64, u64, u64)> = records
            .into_iter()
            .flat_map(|r| {
                let name = r.agent.name;
                r.concepts.into_iter().map(move |(_, s)| {
                    (
                        name.clone(),
                        s.weight,
                        s.usage_count,
                        s.success_count,
                        s.failure_count,
                    )
                })
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (m, n) = (
        stats(memory.agents().await.unwrap()),
        stats(neo4j.agents().await.unwrap()),
    );
    assert_eq!(m.len(), 2);
    for (a, b) in m.iter().zip(&n) {
        assert_eq!((&a.0, a.2, a.3, a.4), (&b.0, b.2, b.3, b.4));
        assert!((a.1 - b.1).abs() < 1e-9, "{a:?} vs {b:?}");
    }
    // Worked by hand: High 0.98 → 1.0, 1.0, 0.98, 1.0, 0.98, 0.96; then 0.94, 0.99.
    assert!((m[0].1 - 0.99).abs() < 1e-9, "{m:?}");
    // Low 0.03 → 0.01, 0.0, 0.05, 0.03, 0.01, 0.0; then seven successes: 0.35.
    assert!((m[1].1 - 0.35).abs() < 1e-9, "{m:?}");
}

/// With the response cache off (no discovery cache either), a graph outage: tasks keep
/// reaching the healthy agent through the routes remembered, without waiting for the graph
/// (its calls fail at once while it is down), the warning is not repeated per task, and the
/// outcomes learned meanwhile wait for the graph and are written when it returns.
#[tokio::test]
async fn with_the_cache_off_a_graph_outage_keeps_known_routes_and_learning_waits_for_its_return() {
    let mut db = ArcadeServer::start().await;
    let agent = crate::agents::answering("Lamp_AI");
    let seed = seed_with("lamp", &[("Lamp_AI", &agent.url(), &["define"], 0.5)]);
    assert!(seed_graph(&db, &seed).status.success());
    let mut env = db.env();
    env.extend([
        ("CACHE_ENABLED", "false".to_string()),
        ("GRAPH_TIMEOUT_MS", "1000".into()),
        ("LEARNING_FLUSH_MS", "50".into()),
        ("DEMO_AGENTS", "off".into()),
    ]);
    let app = crate::helpers::spawn_process(&env, None);
    assert_eq!(
        one(&app, "lamp", "define", json!({"n": 0})).await["status"],
        "success"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = weight(&db, "Lamp_AI", "lamp").await;
    assert!((before - 0.55).abs() < 1e-9, "{before}");

    db.kill();
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 1..=40 {
        let asked = std::time::Instant::now();
        let r = one(&app, "lamp", "define", json!({ "n": n })).await;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(r["status"], "success", "task {n} during the outage: {r}");
    }
    println!(
        "40 tasks during the outage in {:?}, slowest {slowest:?}",
        started.elapsed()
    );
    assert_eq!(agent.calls(), 41);
    // One task at most met the graph's failure; the rest were refused at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "tasks waited for the graph: {:?}",
        started.elapsed()
    );
    assert!(
        app.series("myriad_graph_gate_total{event=\"refused\"}")
            .await
            >= 30.0
    );
    assert!(
        app.series("myriad_discovery_stale_served_total{reason=\"recent_failure\"}")
            .await
            >= 30.0
    );
    let logs = app.logs();
    let warned = logs
        .iter()
        .filter(|l| l.contains("discovery failed"))
        .count();
    assert!(warned <= 3, "{warned} discovery warnings for 40 tasks");
    // The learner's next flush (every 50 ms; the 40 tasks may all end before one) meets
    // the outage and keeps the outcomes.
    let mut deferred = 0.0;
    for _ in 0..40 {
        deferred = app
            .series("myriad_learning_total{event=\"deferred\"}")
            .await;
        if deferred >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deferred >= 1.0, "no flush was deferred in 2 s");
    assert_eq!(
        app.series("myriad_learning_total{event=\"dropped\"}").await,
        0.0
    );

    // The graph returns with its data, and the 40 outcomes learned during the outage are
    // written.
    db.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let w = weight(&db, "Lamp_AI", "lamp").await;
        if (w - 1.0).abs() < 1e-9 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outcomes of the outage were not written: weight {w}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let uses = db
        .cypher(
            "MATCH (:Agent {name: 'Lamp_AI'})-[h:HANDLES_CONCEPT]->(:Concept {name: 'lamp'}) RETURN h.usage_count AS n",
            json!({}),
        )
        .await[0]["n"]
        .as_i64();
    assert_eq!(uses, Some(41), "every outcome of the outage, once");
}

#[tokio::test]
async fn the_learned_estimate_is_written_to_the_edge_and_a_new_replica_starts_from_it() {
    let db = ArcadeServer::start().await;
    // Both always answer; one is 10 % sure of its answers.
    let unsure = confident("Unsure_AI", 0.1);
    let sure = spawn_agent(
        "Sure_AI",
        Behaviour::Answer {
            data: json!("surely"),
            extra: json!({}),
        },
    );
    let seed = seed_with(
        "lamp",
        &[
            ("Unsure_AI", &unsure.url(), &["define"], 0.9),
            ("Sure_AI", &sure.url(), &["define"], 0.5),
        ],
    );
    assert!(seed_graph(&db, &seed).status.success());
    let raw = || RawSettings {
        cache_enabled: Some("false".into()),
        routing_seed: Some("3".into()),
        ..graph_settings(&db)
    };
    let first = spawn_with(raw(), None).await;
    for _ in 0..30 {
        assert_eq!(
            one(&first, "lamp", "define", json!({})).await["status"],
            "success"
        );
    }
    let learned = lamp_candidate(&first, "Unsure_AI").await;
    assert!(learned["estimate"].as_f64().unwrap() <= 0.5, "{learned}");
    // Written with the weight, on the edge.
    let stored = || {
        db.cypher(
            "MATCH (a:Agent {name: 'Unsure_AI'})-[h:HANDLES_CONCEPT]->(c:Concept {name: 'lamp'}) \
             RETURN h.estimate_ok AS ok, h.estimate_failed AS failed",
            json!({}),
        )
    };
    // Every outcome's learning write has landed once the stored evidence is the replica's.
    let evidence = learned["evidence"].as_f64().unwrap();
    let total = |row: &[Value]| {
        row.first()
            .and_then(|r| Some(r["ok"].as_f64()? + r["failed"].as_f64()?))
            .unwrap_or(0.0)
    };
    let mut row = stored().await;
    for _ in 0..50 {
        if total(&row) >= evidence - 0.05 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        row = stored().await;
    }
    assert!(total(&row) >= evidence - 0.05, "{row:?} against {learned}");
    assert!(row[0]["failed"].as_f64().unwrap() > 0.5, "{row:?}");
    drop(first);
    // A replica started afterwards routes on it before its first task.
    let second = spawn_with(raw(), None).await;
    let restored = lamp_candidate(&second, "Unsure_AI").await;
    assert!(restored["evidence"].as_f64().unwrap() >= 1.0, "{restored}");
    assert!(
        (restored["estimate"].as_f64().unwrap() - learned["estimate"].as_f64().unwrap()).abs()
            < 0.05,
        "{restored} vs {learned}"
    );
}
