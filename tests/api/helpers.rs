//! Starting the real application on port 0 for a test.

use std::time::Duration;

use myriad::{
    config::{Config, RawSettings},
    startup::Application,
};
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    _seed: Option<tempfile::NamedTempFile>,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
    _child: Option<crate::servers::ChildApp>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A second replica: the real binary in a child process, with `raw`-equivalent env.
pub fn spawn_process(env: &[(&str, String)], seed: Option<Value>) -> TestApp {
    let seed_file = seed.map(|s| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), s.to_string()).unwrap();
        f
    });
    let mut env = env.to_vec();
    if let Some(f) = &seed_file {
        env.push(("GRAPH_SEED", f.path().display().to_string()));
    }
    let child = crate::servers::ChildApp::start(&env);
    TestApp {
        base: child.base.clone(),
        client: client(),
        _seed: seed_file,
        _stop: None,
        _child: Some(child),
    }
}

/// Settings for a test app: loopback, port 0, short learning flush.
pub fn settings() -> RawSettings {
    RawSettings {
        host: Some("127.0.0.1".into()),
        port: Some("0".into()),
        learning_flush_ms: Some("20".into()),
        ..Default::default()
    }
}

/// Settings with the response cache off, for tests that count calls to agents.
pub fn uncached() -> RawSettings {
    RawSettings {
        cache_enabled: Some("false".into()),
        ..settings()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(settings(), None).await
}

/// Starts the application with `raw` settings and, optionally, a seed document.
pub async fn spawn_with(mut raw: RawSettings, seed: Option<Value>) -> TestApp {
    let seed_file = seed.map(|s| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), s.to_string()).unwrap();
        raw.graph_seed = Some(f.path().display().to_string());
        f
    });
    let config = Config::from_raw(&raw).expect("test configuration is valid");
    let app = Application::build(config)
        .await
        .expect("application builds");
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: client(),
        _seed: seed_file,
        _stop: Some(stop),
        _child: None,
    }
}

impl TestApp {
    /// The child-process replica itself.
    pub fn child(&mut self) -> &mut crate::servers::ChildApp {
        self._child.as_mut().expect("a child-process app")
    }

    /// Log lines of a child-process replica.
    pub fn logs(&self) -> Vec<String> {
        self._child
            .as_ref()
            .map(|c| c.stdout.lock().unwrap().clone())
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text exposition, as a scraper gets it.
    pub async fn scrape(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .header("accept", "text/plain")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
    pub async fn series(&self, series: &str) -> f64 {
        self.scrape()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The weight of `agent`→`concept` as `/agents` reports it.
    pub async fn weight(&self, agent: &str, concept: &str) -> f64 {
        let (_, body) = self.get("/agents").await;
        body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == agent)
            .and_then(|a| {
                a["concepts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == concept)
                    .cloned()
            })
            .map(|c| c["weight"].as_f64().unwrap())
            .expect("agent and concept exist")
    }
}

/// Asserts the common error body shape and returns its code.
pub fn error_code(body: &Value) -> String {
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message in {body}"
    );
    body["code"].as_str().expect("error code").to_string()
}

/// A seed with the given agents (name, endpoint, intents) all handling `concept`.
pub fn seed_with(concept: &str, agents: &[(&str, &str, &[&str], f64)]) -> Value {
    serde_json::json!({
        "regions": [{"name": "Test"}],
        "concepts": [{"name": concept, "primary_definition": "test concept", "region": "Test"}],
        "agents": agents.iter().map(|(name, endpoint, intents, _)| serde_json::json!({
            "name": name, "type": "static", "endpoint": endpoint, "intents": intents, "capabilities": []
        })).collect::<Vec<_>>(),
        "handles": agents.iter().map(|(name, _, _, w)| serde_json::json!({
            "agent": name, "concept": concept, "weight": w
        })).collect::<Vec<_>>(),
    })
}

/// Runs a client script (`program args…`, from the crate root) off the test's runtime
/// thread, where the server under test runs; asserts it succeeded and returns its stdout.
pub async fn run_script(program: &str, args: Vec<String>) -> String {
    let program = program.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `/discover` shows of `agent` as a candidate for `lamp` now (live, not cached).
pub async fn lamp_candidate(app: &TestApp, agent: &str) -> Value {
    let (status, found) = app
        .post("/discover", &serde_json::json!({"concept": "lamp"}))
        .await;
    assert_eq!(status, 200, "{found}");
    found["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == agent)
        .unwrap_or_else(|| panic!("{agent} not in {found}"))
        .clone()
}
