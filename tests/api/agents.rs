#![allow(dead_code)] // each test uses only some of these helpers
//! Real HTTP agent servers for tests, good and deliberately faulty, counting what they get.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use poem::{
    handler, http::StatusCode, listener::TcpAcceptor, web::Data, web::Json, EndpointExt,
    IntoResponse, Response, Route, Server,
};
use serde_json::{json, Value};

/// How a test agent answers `POST /query`.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with `{"agent_name", "status":"success", "data"}` plus `extra` fields.
    Answer { data: Value, extra: Value },
    /// This status with an agent-shaped error body.
    Status(u16),
    /// Accepts the request and never answers.
    Hang,
    /// Answers after a delay.
    Slow(Duration),
    /// Answers this status `n` times, then succeeds.
    FailThenOk { failures: usize, status: u16 },
    /// 200 with a body that is not an agent response.
    Garbage,
    /// 429 with this `Retry-After` (none if empty) and an agent-shaped body.
    Throttle(&'static str),
    /// Serves `slots` calls at a time, each taking `service`; the rest wait their turn (an
    /// agent with a capacity: `slots / service` calls a second).
    Capacity {
        slots: Arc<tokio::sync::Semaphore>,
        service: Duration,
    },
    /// Of every `every` calls, the first `stalls` answer after `delay`; the rest at once.
    StallSome {
        stalls: usize,
        every: usize,
        delay: Duration,
    },
    /// Of every `every` calls, the first `fails` answer `status`; the rest succeed.
    FailSome {
        fails: usize,
        every: usize,
        status: u16,
    },
}

pub struct TestAgent {
    pub name: String,
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Value>>>,
    /// The `traceparent` header of every call.
    pub traceparents: Arc<Mutex<Vec<Option<String>>>>,
    /// The `x-request-timeout-ms` header of every call.
    pub timeouts: Arc<Mutex<Vec<Option<String>>>>,
    /// Each call's task id and how long it took here, from its arrival to its answer.
    pub latencies: Arc<Mutex<Vec<(Value, Duration)>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestAgent {
    pub fn url(&self) -> String {
        format!("http://{}/query", self.addr)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
}

#[derive(Clone)]
struct Shared {
    name: String,
    calls: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Value>>>,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    timeouts: Arc<Mutex<Vec<Option<String>>>>,
    latencies: Arc<Mutex<Vec<(Value, Duration)>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

#[handler]
async fn query(req: &poem::Request, Data(s): Data<&Shared>, Json(body): Json<Value>) -> Response {
    let arrived = std::time::Instant::now();
    let id = body["task_id"].clone();
    let resp = answer(req, s, body).await;
    s.latencies.lock().unwrap().push((id, arrived.elapsed()));
    resp
}

async fn answer(req: &poem::Request, s: &Shared, body: Value) -> Response {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    s.traceparents.lock().unwrap().push(header("traceparent"));
    s.timeouts
        .lock()
        .unwrap()
        .push(header("x-request-timeout-ms"));
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    s.received.lock().unwrap().push(body.clone());
    let behaviour = s.behaviour.lock().unwrap().clone();
    let ok = |data: Value, extra: Value| {
        let mut out = json!({"agent_name": s.name, "status": "success", "data": data});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                out[k] = v;
            }
        }
        Json(out).into_response()
    };
    let fail = |status: u16| {
        (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"agent_name": s.name, "status": "error", "data": format!("failing with {status}")})),
        )
            .into_response()
    };
    match behaviour {
        Behaviour::Answer { data, extra } => ok(data, extra),
        Behaviour::Status(code) => fail(code),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            fail(500)
        }
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            ok(json!(format!("{} answered slowly", s.name)), json!({}))
        }
        Behaviour::FailThenOk { failures, status } => {
            if n < failures {
                fail(status)
            } else {
                ok(json!(format!("{} recovered", s.name)), json!({}))
            }
        }
        Behaviour::Garbage => "<html>not json</html>".into_response(),
        Behaviour::Throttle(retry_after) => {
            let mut resp = fail(429);
            if !retry_after.is_empty() {
                resp.headers_mut()
                    .insert("retry-after", retry_after.parse().unwrap());
            }
            resp
        }
        Behaviour::Capacity { slots, service } => {
            let _slot = slots.acquire().await.unwrap();
            tokio::time::sleep(service).await;
            ok(json!(format!("{} answered", s.name)), json!({}))
        }
        Behaviour::StallSome {
            stalls,
            every,
            delay,
        } => {
            if n % every.max(1) < stalls {
                tokio::time::sleep(delay).await;
            }
            ok(json!(format!("{} answered", s.name)), json!({}))
        }
        Behaviour::FailSome {
            fails,
            every,
            status,
        } => {
            if n % every.max(1) < fails {
                fail(status)
            } else {
                ok(json!(format!("{} answered", s.name)), json!({}))
            }
        }
    }
}

/// A test agent answering every call with success (`"<name> answered"`).
pub fn answering(name: &str) -> TestAgent {
    spawn_agent(
        name,
        Behaviour::Answer {
            data: json!(format!("{name} answered")),
            extra: json!({}),
        },
    )
}

/// An agent that answers every task and says it is `confidence` sure of each answer.
pub fn confident(name: &str, confidence: f64) -> TestAgent {
    spawn_agent(
        name,
        Behaviour::Answer {
            data: json!(format!("{name} answered")),
            extra: json!({ "confidence": confidence }),
        },
    )
}

/// Starts a test agent on a free loopback port.
pub fn spawn_agent(name: &str, behaviour: Behaviour) -> TestAgent {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Shared {
        name: name.to_string(),
        calls: Arc::new(AtomicUsize::new(0)),
        received: Arc::new(Mutex::new(Vec::new())),
        traceparents: Arc::new(Mutex::new(Vec::new())),
        timeouts: Arc::new(Mutex::new(Vec::new())),
        latencies: Arc::new(Mutex::new(Vec::new())),
        behaviour: Arc::new(Mutex::new(behaviour)),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Route::new()
        .at("/query", poem::post(query))
        .data(shared.clone());
    tokio::spawn(async move {
        let acceptor = TcpAcceptor::from_std(listener).unwrap();
        let _ = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                app,
                async {
                    let _ = stopped.await;
                },
                Some(Duration::from_millis(10)),
            )
            .await;
    });
    TestAgent {
        name: name.to_string(),
        addr,
        calls: shared.calls,
        received: shared.received,
        traceparents: shared.traceparents,
        timeouts: shared.timeouts,
        latencies: shared.latencies,
        behaviour: shared.behaviour,
        _stop: stop,
    }
}

/// Requests a JSON server received: (path, body).
pub type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A generic JSON server (remote input/output processors): answers every POST with `answer`
/// and records the bodies it got.
pub fn spawn_json_server(answer: Value) -> (String, Seen, tokio::sync::oneshot::Sender<()>) {
    #[handler]
    async fn any(
        req: &poem::Request,
        Data(s): Data<&(Value, Seen)>,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        s.1.lock()
            .unwrap()
            .push((req.uri().path().to_string(), body));
        Json(s.0.clone())
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Route::new()
        .at("/*path", poem::post(any))
        .data((answer, seen.clone()));
    tokio::spawn(async move {
        let acceptor = TcpAcceptor::from_std(listener).unwrap();
        let _ = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                app,
                async {
                    let _ = stopped.await;
                },
                None,
            )
            .await;
    });
    (format!("http://{addr}"), seen, stop)
}

/// A URL where nothing listens, for as long as it lives: a socket bound to the port and never
/// listening holds it, so a connection is refused and no other test's server can take the
/// port meanwhile (a port freed at once was once taken by another test's server, whose 4xx
/// answered the "unreachable" agent's call).
pub struct DeadUrl {
    url: String,
    _held: tokio::net::TcpSocket,
}

impl DeadUrl {
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

pub fn dead_url() -> DeadUrl {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    DeadUrl {
        url: format!("http://{addr}/query"),
        _held: socket,
    }
}

/// A server that accepts each connection, reads the request, and closes without answering.
/// Returns its URL and the number of connections it accepted.
pub fn spawn_closing_agent() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                drop(sock);
            });
        }
    });
    (format!("http://{addr}/query"), count)
}
