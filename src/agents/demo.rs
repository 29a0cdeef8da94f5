//! The built-in demo agents: real HTTP servers speaking the agent protocol.
//!
//! `lightbulb_definition` and `lightbulb_function` reproduce the original service's two
//! agents; `factbase` is the template behind dynamic agents (it answers any concept from
//! the facts passed in `args`). Each serves `POST /query`, `GET /health`, `POST /collaborate`.

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
};

use poem::{
    get, handler,
    http::StatusCode,
    listener::TcpAcceptor,
    post,
    web::{Data, Json},
    EndpointExt, IntoResponse, Response, Route, Server,
};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoKind {
    LightbulbDefinition,
    LightbulbFunction,
    Factbase,
}

impl DemoKind {
    pub const ALL: [DemoKind; 3] = [
        DemoKind::LightbulbDefinition,
        DemoKind::LightbulbFunction,
        DemoKind::Factbase,
    ];

    /// The name used in seed placeholders (`{demo:<id>}`) and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            DemoKind::LightbulbDefinition => "lightbulb_definition",
            DemoKind::LightbulbFunction => "lightbulb_function",
            DemoKind::Factbase => "factbase",
        }
    }

    /// The agent name it answers with.
    pub fn agent_name(self) -> &'static str {
        match self {
            DemoKind::LightbulbDefinition => "Lightbulb_Definition_AI",
            DemoKind::LightbulbFunction => "Lightbulb_Function_AI",
            DemoKind::Factbase => "Factbase_AI",
        }
    }
}

impl FromStr for DemoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DemoKind::ALL
            .into_iter()
            .find(|k| k.id() == s)
            .ok_or_else(|| {
                format!("unknown demo agent {s:?} (expected lightbulb_definition, lightbulb_function or factbase)")
            })
    }
}

/// The demo bulb that `turn_on`, `turn_off` and `dim` act on.
#[derive(Debug)]
struct Bulb {
    on: bool,
    level: u8,
}

/// Deliberate failure for load and chaos tests: from `after` since start, for `duration`
/// (forever when `None`), `/query` answers `status`.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub after: std::time::Duration,
    pub duration: Option<std::time::Duration>,
    pub status: u16,
    /// Added to every answer (a slow agent, for benchmarks).
    pub delay: std::time::Duration,
    /// One call in `stall_every` (the first, then every `stall_every`-th) waits `stall`
    /// before answering: a slow tail (0: none).
    pub stall_every: u64,
    pub stall: std::time::Duration,
    /// At most this many calls are served at once; the rest wait their turn (an agent with
    /// a capacity: `capacity ÷ delay` calls a second; 0: no limit).
    pub capacity: u32,
}

impl Fault {
    /// Only a delay on every answer, no failures.
    pub fn delay(delay: std::time::Duration) -> Self {
        Fault {
            after: std::time::Duration::MAX,
            duration: None,
            status: 500,
            delay,
            stall_every: 0,
            stall: std::time::Duration::ZERO,
            capacity: 0,
        }
    }
}

#[derive(Clone)]
struct AgentState {
    kind: DemoKind,
    bulb: Arc<Mutex<Bulb>>,
    fault: Option<Fault>,
    started: std::time::Instant,
    calls: Arc<std::sync::atomic::AtomicU64>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl AgentState {
    fn failing(&self) -> Option<u16> {
        let f = self.fault?;
        let t = self.started.elapsed();
        (t >= f.after && f.duration.is_none_or(|d| t < f.after.saturating_add(d)))
            .then_some(f.status)
    }
}

/// The demo agent as a poem endpoint.
pub fn app(kind: DemoKind) -> impl poem::Endpoint {
    app_with_fault(kind, None)
}

/// A demo agent that fails on schedule (see [`Fault`]).
pub fn app_with_fault(kind: DemoKind, fault: Option<Fault>) -> impl poem::Endpoint {
    let state = AgentState {
        kind,
        bulb: Arc::new(Mutex::new(Bulb {
            on: false,
            level: 100,
        })),
        fault,
        started: std::time::Instant::now(),
        calls: Arc::default(),
        slots: fault
            .filter(|f| f.capacity > 0)
            .map(|f| Arc::new(tokio::sync::Semaphore::new(f.capacity as usize))),
    };
    Route::new()
        .at("/query", post(query))
        .at("/health", get(health))
        .at("/collaborate", post(collaborate))
        .data(state)
}

/// Serves a demo agent on `listener` until `shutdown` resolves.
pub async fn serve(
    kind: DemoKind,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_fault(kind, None, listener, shutdown).await
}

/// Like [`serve`], failing on schedule.
pub async fn serve_with_fault(
    kind: DemoKind,
    fault: Option<Fault>,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let acceptor = TcpAcceptor::from_std(listener)?;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app_with_fault(kind, fault), shutdown, None)
        .await
}

#[handler]
fn health(Data(state): Data<&AgentState>) -> Json<Value> {
    Json(json!({"status": "healthy", "agent_name": state.kind.agent_name()}))
}

fn reply(state: &AgentState, status: StatusCode, body: Value) -> Response {
    let mut body = body;
    body["agent_name"] = json!(state.kind.agent_name());
    (status, Json(body)).into_response()
}

#[handler]
async fn query(
    req: &poem::Request,
    Data(state): Data<&AgentState>,
    body: poem::Result<Json<Value>>,
) -> Response {
    let n = state
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _slot = match &state.slots {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    if let Some(delay) = state.fault.map(|f| f.delay).filter(|d| !d.is_zero()) {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = state.fault.filter(|f| f.stall_every > 0) {
        if n % f.stall_every == 0 {
            tokio::time::sleep(f.stall).await;
        }
    }
    // Continue the caller's trace (W3C traceparent).
    let span = tracing::info_span!(
        "demo_agent",
        agent = state.kind.agent_name(),
        otel.kind = "server"
    );
    crate::telemetry::continue_trace(&span, req.headers());
    span.in_scope(|| answer_query(state, body))
}

fn answer_query(state: &AgentState, body: poem::Result<Json<Value>>) -> Response {
    if let Some(status) = state.failing() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return reply(
            state,
            status,
            json!({"status": "error", "data": "injected fault"}),
        );
    }
    let Ok(Json(req)) = body else {
        return reply(
            state,
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "data": "request body must be a JSON object"}),
        );
    };
    let intent = req.get("intent").and_then(Value::as_str).unwrap_or("");
    let concept = req
        .get("concept")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_lowercase();
    let args = req.get("args").cloned().unwrap_or(Value::Null);
    match answer(state, &concept, intent, &args) {
        Ok(data) => reply(
            state,
            StatusCode::OK,
            json!({"status": "success", "data": data}),
        ),
        Err(why) => reply(
            state,
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "data": why}),
        ),
    }
}

fn answer(state: &AgentState, concept: &str, intent: &str, args: &Value) -> Result<Value, String> {
    match state.kind {
        DemoKind::LightbulbDefinition => definition(concept, intent),
        DemoKind::LightbulbFunction => function(state, concept, intent, args),
        DemoKind::Factbase => Ok(factbase(concept, intent, args)),
    }
}

fn definition(concept: &str, intent: &str) -> Result<Value, String> {
    let text = match (concept, intent) {
        ("lightbulb", "define") => "A lightbulb is an electric device that produces light, by heating a filament until it glows (incandescent) or by exciting a gas or a semiconductor (fluorescent, LED).",
        ("lightbulb", "explain_impact") => "The lightbulb extended the productive day, made streets and homes safer at night, and drove the build-out of electrical grids that powered the rest of the 20th century.",
        ("lightbulb", "analyze_historical_context") => "Practical incandescent lightbulbs appeared around 1879 (Joseph Swan in England, Thomas Edison in the United States), after decades of arc-lamp experiments; tungsten filaments (1904) and later fluorescent and LED lighting followed.",
        ("factories", "define") => "A factory is an industrial site where workers and machines manufacture goods at scale.",
        ("factories", "explain_impact") => "Electric light let factories run round-the-clock shifts, raising output and changing the rhythm of industrial work.",
        ("factories", "analyze_historical_context") => "Factories spread with the Industrial Revolution from the late 18th century; electrification around 1900 reorganised them around the electric motor and electric light.",
        (_, "define" | "explain_impact" | "analyze_historical_context") => {
            return Err(format!("unknown concept '{concept}'"))
        }
        _ => return Err(format!("unknown intent '{intent}'")),
    };
    Ok(json!(text))
}

fn function(
    state: &AgentState,
    concept: &str,
    intent: &str,
    args: &Value,
) -> Result<Value, String> {
    const INTENTS: [&str; 8] = [
        "function",
        "explain_limitation",
        "explain_impact",
        "compare",
        "turn_on",
        "turn_off",
        "dim",
        "status",
    ];
    if !INTENTS.contains(&intent) {
        return Err(format!("unknown intent '{intent}'"));
    }
    if concept != "lightbulb" {
        return Err(format!("unknown concept '{concept}'"));
    }
    let mut bulb = state.bulb.lock().unwrap_or_else(|e| e.into_inner());
    let data = match intent {
        "function" => json!("A lightbulb turns electrical energy into light: current flows through a filament or a semiconductor, which emits photons; the glass envelope protects it and the base connects it to the circuit."),
        "explain_limitation" => json!("Incandescent bulbs waste about 90% of their energy as heat and burn out after about 1,000 hours; LEDs last longer but need drivers and dim poorly on old dimmers."),
        "explain_impact" => json!("Cheap electric light reshaped daily schedules, industry and cities, and created the demand that built the electrical grid."),
        "compare" => {
            let other = args
                .get("with")
                .or_else(|| args.get("other"))
                .and_then(Value::as_str)
                .unwrap_or("a candle");
            json!(format!("Compared with {other}, a lightbulb gives steadier, brighter light without a flame, switched on and off at will."))
        }
        "turn_on" => {
            bulb.on = true;
            json!({"on": true, "level": bulb.level})
        }
        "turn_off" => {
            bulb.on = false;
            json!({"on": false, "level": bulb.level})
        }
        "dim" => {
            let level = args.get("level").and_then(Value::as_u64).unwrap_or(50).min(100) as u8;
            bulb.level = level;
            json!({"on": bulb.on, "level": level})
        }
        _ => json!({"on": bulb.on, "level": bulb.level}),
    };
    Ok(data)
}

fn factbase(concept: &str, intent: &str, args: &Value) -> Value {
    let facts = args
        .get("facts")
        .or_else(|| args.get("definition"))
        .and_then(Value::as_str);
    match facts {
        Some(f) => json!(format!("{concept} ({intent}): {f}")),
        None => json!(format!("No facts are recorded about '{concept}' yet.")),
    }
}

#[handler]
fn collaborate(Data(state): Data<&AgentState>, body: poem::Result<Json<Value>>) -> Response {
    let Ok(Json(req)) = body else {
        return reply(
            state,
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "data": "request body must be a JSON object"}),
        );
    };
    let concept = req
        .get("concept")
        .or_else(|| req.get("target_concept"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_lowercase();
    let findings = match definition(&concept, "define") {
        Ok(Value::String(text)) => text,
        _ => format!(
            "'{concept}' is not in {}'s knowledge; it needs its own agent.",
            state.kind.agent_name()
        ),
    };
    reply(
        state,
        StatusCode::OK,
        json!({"status": "success", "concept": concept, "findings": findings}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::test::TestClient;

    #[tokio::test]
    async fn the_definition_agent_defines_and_rejects_unknown_intents() {
        let cli = TestClient::new(app(DemoKind::LightbulbDefinition));
        let resp = cli
            .post("/query")
            .body_json(
                &json!({"task_id": 1, "intent": "define", "concept": "lightbulb", "args": {}}),
            )
            .send()
            .await;
        resp.assert_status_is_ok();
        let body: Value = resp.json().await.value().deserialize();
        assert_eq!(body["agent_name"], "Lightbulb_Definition_AI");
        assert_eq!(body["status"], "success");
        assert!(body["data"].as_str().unwrap().contains("electric"));

        let resp = cli
            .post("/query")
            .body_json(&json!({"task_id": 1, "intent": "dim", "concept": "lightbulb"}))
            .send()
            .await;
        resp.assert_status(StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_function_agent_keeps_the_bulb_state() {
        let cli = TestClient::new(app(DemoKind::LightbulbFunction));
        for (intent, args) in [("turn_on", json!({})), ("dim", json!({"level": 30}))] {
            cli.post("/query")
                .body_json(&json!({"task_id": "t", "intent": intent, "concept": "lightbulb", "args": args}))
                .send()
                .await
                .assert_status_is_ok();
        }
        let resp = cli
            .post("/query")
            .body_json(&json!({"task_id": "t", "intent": "status", "concept": "lightbulb"}))
            .send()
            .await;
        let body: Value = resp.json().await.value().deserialize();
        assert_eq!(body["data"], json!({"on": true, "level": 30}));
    }
}
