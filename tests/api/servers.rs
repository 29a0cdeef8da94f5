//! Real servers as child processes: redis-server, and the orchestrator binary itself.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log_file(self.dir.path()))
            .stderr(log_file(self.dir.path()))
            .spawn()
            .expect("redis-server is installed (scripts/install-test-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        show_log("redis-server", self.dir.path());
    }
}

/// Where a server child writes its output: `child.log` in its directory (appended to, so a
/// restart keeps what came before).
fn log_file(dir: &std::path::Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("child.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Prints the tail of a server child's output when the test that started it is failing.
fn show_log(what: &str, dir: &std::path::Path) {
    if std::thread::panicking() {
        let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- {what} output (last 40 lines):\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

/// The orchestrator binary as a child process (a second replica), killed on drop. What it
/// wrote to stderr (a panic's message) is kept, and printed with the tail of its logs when
/// the test that started it fails.
pub struct ChildApp {
    pub base: String,
    /// Every line the child wrote to stdout (its logs).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Every line the child wrote to stderr.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: Child,
}

/// Keeps every line of `from` in a shared list, on a thread of its own.
fn collect_lines(
    from: impl Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    lines
}

impl ChildApp {
    /// Starts `myriad-orchestrator serve` on a free port with `env`, and waits until it serves.
    pub fn start(env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = collect_lines(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                if !sent {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "orchestrator listening" {
                            let _ = tx.send(v["port"].as_u64().unwrap_or_default());
                            sent = true;
                        }
                    }
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the child orchestrator did not start; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                )
            });
        ChildApp {
            base: format!("http://127.0.0.1:{port}"),
            stdout: lines,
            stderr,
            child,
        }
    }
}

impl ChildApp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything it wrote to stderr, and the last `tail` lines of its logs.
    pub fn report(&self, tail: usize) -> String {
        let logs = self.stdout.lock().unwrap();
        format!(
            "--- {} stderr:\n{}\n--- {} last {tail} log lines:\n{}",
            self.base,
            self.stderr.lock().unwrap().join("\n"),
            self.base,
            logs[logs.len().saturating_sub(tail)..].join("\n")
        )
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!("{}", self.report(40));
        }
    }
}

/// A real ArcadeDB server (Bolt endpoint for neo4rs, HTTP API for assertions), killed on
/// drop. Installed by `pip install arcadedb-embedded` (the wheel carries a JRE).
pub struct ArcadeServer {
    pub bolt: u16,
    pub http: u16,
    pub db: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

pub const ARCADE_PASSWORD: &str = "myriad-test-pw";

fn arcade_package() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import arcadedb_embedded, os; print(os.path.dirname(arcadedb_embedded.__file__))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "arcadedb-embedded is installed (scripts/install-test-deps.sh)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl ArcadeServer {
    pub async fn start() -> Self {
        let mut s = ArcadeServer {
            bolt: free_port(),
            http: free_port(),
            db: "myriad".into(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        let create = format!("create database {}", s.db);
        let mut last = serde_json::Value::Null;
        for _ in 0..100 {
            last = s
                .http_post("/api/v1/server", serde_json::json!({ "command": create }))
                .await;
            if last["result"] == "ok" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ArcadeDB refused to create the database: {last}");
    }

    fn spawn(&mut self) {
        let pkg = arcade_package();
        let root = self.dir.path().display().to_string();
        let child = Command::new(format!("{pkg}/jre/bin/java"))
            .current_dir(self.dir.path())
            .args([
                "-Xmx256m",
                "-Xss512k",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &format!("{pkg}/jars/*"),
            ])
            .arg(format!("-Darcadedb.server.rootPassword={ARCADE_PASSWORD}"))
            .arg(format!("-Darcadedb.server.rootPath={root}"))
            .arg(format!(
                "-Darcadedb.server.databaseDirectory={root}/databases"
            ))
            .arg("-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin")
            .arg("-Darcadedb.server.httpIncomingHost=127.0.0.1")
            .arg(format!("-Darcadedb.server.httpIncomingPort={}", self.http))
            .arg("-Darcadedb.bolt.host=127.0.0.1")
            .arg(format!("-Darcadedb.bolt.port={}", self.bolt))
            .arg("com.arcadedb.server.ArcadeDBServer")
            .stdout(Stdio::null())
            .stderr(log_file(self.dir.path()))
            .spawn()
            .expect("the ArcadeDB JRE runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.bolt)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.http)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ArcadeDB did not start");
    }

    async fn http_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}{path}", self.http))
            .basic_auth("root", Some(ARCADE_PASSWORD))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match resp {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Runs Cypher over the HTTP API (for assertions, independent of the code under test).
    pub async fn cypher(&self, query: &str, params: serde_json::Value) -> Vec<serde_json::Value> {
        let v = self
            .http_post(
                &format!("/api/v1/command/{}", self.db),
                serde_json::json!({"language": "cypher", "command": query, "params": params}),
            )
            .await;
        v["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NEO4J_URI", format!("bolt://127.0.0.1:{}", self.bolt)),
            ("NEO4J_USER", "root".into()),
            ("NEO4J_PASSWORD", ARCADE_PASSWORD.into()),
            ("NEO4J_DATABASE", self.db.clone()),
        ]
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP (`true`) or SIGCONT: a hung server keeps its sockets open and answers nothing.
    pub fn pause(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if stop { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for ArcadeServer {
    fn drop(&mut self) {
        self.kill();
        show_log("ArcadeDB", self.dir.path());
    }
}

/// A real OpenTelemetry backend: Arize Phoenix (OTLP over HTTP and gRPC, span query API).
pub struct PhoenixServer {
    pub http: u16,
    pub grpc: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PhoenixServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, grpc) = (free_port(), free_port());
        let child = Command::new("phoenix")
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", http.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .stdout(Stdio::null())
            .stderr(log_file(dir.path()))
            .spawn()
            .expect("phoenix is installed (scripts/install-test-deps.sh)");
        let server = PhoenixServer {
            http,
            grpc,
            child,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..240 {
            if let Ok(r) = client.get(server.spans_url(1)).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("phoenix did not start");
    }

    fn spans_url(&self, limit: usize) -> String {
        format!(
            "http://127.0.0.1:{}/v1/projects/default/spans?limit={limit}",
            self.http
        )
    }

    /// Spans named `name` in any trace, waiting until at least `min` have arrived.
    pub async fn named(&self, name: &str, min: usize) -> Vec<serde_json::Value> {
        self.find(|s| s["name"] == name, min).await
    }

    /// Spans of one trace, waiting until at least `min` have arrived (export is batched).
    pub async fn trace(&self, trace_id: &str, min: usize) -> Vec<serde_json::Value> {
        self.find(|s| s["context"]["trace_id"] == trace_id, min)
            .await
    }

    async fn find(
        &self,
        wanted: impl Fn(&serde_json::Value) -> bool,
        min: usize,
    ) -> Vec<serde_json::Value> {
        let client = reqwest::Client::new();
        let mut found = Vec::new();
        for _ in 0..120 {
            if let Ok(r) = client.get(self.spans_url(1000)).send().await {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                found = body["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|s| wanted(s))
                    .collect();
                if found.len() >= min {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        found
    }
}

impl Drop for PhoenixServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        show_log("phoenix", self._dir.path());
    }
}

/// A real OTLP/HTTP trace receiver (`tests/otlp_sink.py`: decodes every export, answers
/// 200, counts spans by name and keeps the newest for inspection), killed on drop.
pub struct OtlpSink {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OtlpSink {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_sink.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(log_file(dir.path()))
            .spawn()
            .expect("python3 runs");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert!(
            ready.starts_with("listening"),
            "the OTLP sink did not start: {ready:?} {}",
            std::fs::read_to_string(dir.path().join("child.log")).unwrap_or_default()
        );
        OtlpSink { port, child, dir }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `{"requests", "spans", "by_name": {…}}`.
    pub async fn summary(&self) -> serde_json::Value {
        reqwest::get(format!("{}/summary", self.endpoint()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The kept spans named `name`.
    pub async fn spans(&self, name: &str) -> Vec<serde_json::Value> {
        reqwest::get(format!("{}/spans?name={name}", self.endpoint()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        show_log("OTLP sink", self.dir.path());
    }
}
