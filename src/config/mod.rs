//! Typed configuration, validated once at start-up.
//!
//! Every setting is one row of the table below: a command-line flag and the environment
//! variable of the same name (the original service's names keep working), its kind, default
//! and range, its documentation and whether `/status` shows it. Values arrive as strings and
//! are parsed together so that *every* problem is reported in one go; `main` exits with status
//! 64 when any exists. The README's configuration table is generated from the same rows.

use std::fmt;

#[macro_use]
mod table;
pub mod kinds;

use kinds::Named;

use crate::agents::endpoint::DEFAULT_ALLOWED;

/// Exit status for a bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

settings! {
    /// Validated configuration.
    root Config {
        /// Address to listen on.
        host => host: Ip("0.0.0.0") => "host";
        /// Port to listen on (`0` = any free port).
        port => port: Num<u16>(5000, 0, u16::MAX) => "port";
        /// Bolt URI (`bolt://host:7687`) of the production graph; unset = the embedded graph.
        neo4j_uri => neo4j_uri: Text("unset")
            => "graph_backend" as |u: &Option<String>| if u.is_some() { "neo4j" } else { "memory" };
        /// Graph user.
        neo4j_user => neo4j_user: TextOr("neo4j");
        /// Graph password (never in logs or `/status`).
        neo4j_password => neo4j_password: SecretText("empty");
        /// Graph database name.
        neo4j_database => neo4j_database: Text("the server's default");
        /// Bolt connections kept to the graph.
        neo4j_pool_max => neo4j_pool_max: Num<usize>(16, 1, 1_024);
        /// Timeout of every graph query in ms (neo4rs would otherwise retry for up to a minute).
        graph_timeout_ms => graph_timeout: Ms(1_000, 1, 60_000) => "graph_timeout_ms";
        /// Seed file of the embedded graph.
        graph_seed => graph_seed: File("the shipped `seed/default.json`");
        /// Start the built-in demo agents in-process on free loopback ports (true/false).
        demo_agents => demo_agents: OptFlag("`true` when `NEO4J_URI` is unset");
        /// Accepted for compatibility with the original service, ignored with a warning.
        graphdb_manager_url => graphdb_manager_url: Ignored("the orchestrator talks to the graph directly");
        /// Neurogenesis: research unknown concepts and register dynamic agents for them.
        enable_dynamic_agents => enable_dynamic_agents: Flag(false) => "enable_dynamic_agents";
        /// Endpoint behind the agents neurogenesis creates.
        dynamic_agent_template_url => dynamic_agent_template_url: Endpoint("the built-in `factbase` demo agent");
        /// Time neurogenesis may spend asking collaborators, in ms.
        neurogenesis_timeout_ms => neurogenesis_timeout: Ms(3_000, 1, 60_000);
        /// `redis://…` for the shared L2 cache and the global limits; unset = L1 only.
        redis_url => redis_url: RedisUrl("unset") => "redis_configured" as Option::is_some;
        /// Timeout of every Redis call in ms.
        redis_timeout_ms => redis_timeout: Ms(100, 1, 10_000) => "redis_timeout_ms";
        /// Remote input processor (`POST {url}/process/basic {"query","user_id"}` →
        /// `{"task_list":{"tasks":[…]}}`); unset = the built-in parser.
        input_processor_url => input_processor_url: Url("unset")
            => "input_processor" as |u: &Option<String>| u.clone().unwrap_or_else(|| "built-in".into());
        /// Remote output processor (`POST {url}/synthesize/basic {"query","user_id","results"}` →
        /// `{"final_answer"}`); unset or failing = the built-in synthesis.
        output_processor_url => output_processor_url: Url("unset")
            => "output_processor" as |u: &Option<String>| u.clone().unwrap_or_else(|| "built-in".into());
        /// Extra attempts after a retryable failure.
        http_retries => http_retries: Num<u32>(3, 0, 10) => "http_retries";
        /// First retry backoff in seconds; doubles per attempt with full jitter.
        http_backoff => http_backoff: SecsF(0.1, 0.0, 60.0) => "http_backoff_s";
        /// Idle connections kept per agent host, per runtime thread (per core under
        /// `RUNTIME=per_core`).
        http_pool_max => http_pool_max: Num<usize>(64, 1, 4_096) => "http_pool_max";
        /// Overall deadline of one request in ms.
        request_timeout_ms => request_timeout: Ms(10_000, 1, 600_000) => "request_timeout_ms";
        /// Deadline of one agent call attempt in ms (at most `REQUEST_TIMEOUT_MS`).
        agent_timeout_ms => agent_timeout: Ms(2_000, 1, 600_000) => "agent_timeout_ms";
        /// A call to an agent (a first attempt or a retry) is not started with less than
        /// this left before the request's deadline: an answer could not arrive in time.
        agent_min_time_left_ms => agent_min_time_left: Ms(25, 0, 60_000) => "agent_min_time_left_ms";
        /// When every candidate of a task is refused by its breaker or held by peers, the
        /// best-ranked one still gets one call (`panic`) at most this often, per agent;
        /// 0 = never (a concept is black-holed until a breaker lets a probe through).
        routing_panic_interval_ms => panic_interval: Ms(1_000, 0, 600_000) => "routing_panic_interval_ms";
        /// Intents safe to send twice (read-only, idempotent): a task of one that has not
        /// been answered after its agent's hedge delay goes to the next candidate too, and
        /// the first answer wins. Empty = no hedging; other intents are never sent twice.
        hedge_intents => hedge_intents: List("") => "hedge_intents";
        /// Shortest hedge delay: the agent's measured p95 latency, never below this.
        hedge_delay_min_ms => hedge_delay_min: Ms(10, 1, 60_000) => "hedge_delay_min_ms";
        /// Longest hedge delay (and the delay while an agent has too few measured calls).
        hedge_delay_max_ms => hedge_delay_max: Ms(500, 1, 600_000) => "hedge_delay_max_ms";
        /// Most tasks in one batch (more → 413).
        max_tasks => max_tasks: Num<usize>(100, 1, 10_000) => "max_tasks";
        /// Largest request body in bytes (more → 413).
        max_body_bytes => max_body_bytes: Num<usize>(262_144, 1_024, 64 * 1024 * 1024) => "max_body_bytes";
        /// Tasks of one request running at once.
        task_concurrency => task_concurrency: Num<usize>(32, 1, 1_024) => "task_concurrency";
        /// Largest `args` of one task, serialized, in bytes (more → 413 `args_too_large`).
        max_args_bytes => max_args_bytes: Num<usize>(16_384, 2, 16 * 1024 * 1024) => "max_args_bytes";
        /// Deepest nesting of `args` (more → 400 `args_too_deep`).
        max_args_depth => max_args_depth: Num<usize>(8, 1, 64) => "max_args_depth";
        /// Request line and headers in bytes (more → 431 `headers_too_large`).
        max_header_bytes => max_header_bytes: Num<usize>(16_384, 1_024, 1_048_576) => "max_header_bytes";
        /// Milliseconds a request body may take to arrive, else 408 `body_timeout`.
        body_read_timeout_ms => body_read_timeout: Ms(10_000, 100, 600_000) => "body_read_timeout_ms";
        /// On SIGTERM/SIGINT, seconds in-flight requests get to finish.
        shutdown_drain_s => shutdown_drain: Secs(30, 0, 3_600) => "shutdown_drain_s";
        /// `per_core`: one single-threaded runtime per core, each accepting on its own
        /// `SO_REUSEPORT` listener, so a request, its agent calls and its answer stay on one
        /// core; `work_stealing`: one multi-threaded runtime that moves tasks between cores.
        runtime => runtime: Choice<RuntimeKind>(RuntimeKind::PerCore) => "runtime";
        /// Request cores under `RUNTIME=per_core` (`0` = one per available core).
        runtime_cores => runtime_cores: Num<usize>(0, 0, 1_024) => "runtime_cores";
        /// Key of the admin API (`X-Admin-Key` header); unset = the admin API answers 403.
        admin_api_key => admin_api_key: SecretText("unset");
        /// Client keys, comma-separated, each at least 16 characters. Set = `/process`,
        /// `/discover` and `GET /agents` need `Authorization: Bearer <key>` or
        /// `X-API-Key: <key>`, else 401.
        api_keys => api_keys: Keys("unset") => "api_keys_configured";
        /// File of client keys, one per line (`#` comments), instead of or beside `API_KEYS`.
        api_keys_file => api_keys_file: KeysFile("unset");
        /// Also protect `/metrics` and `/status` with a client key (`/health`, `/ready` stay open).
        metrics_require_auth => metrics_require_auth: Flag(false) => "metrics_require_auth";
        /// Host names and CIDRs agent endpoints may point at, comma-separated (SSRF guard).
        agent_allowed_hosts => agent_allowed_hosts: Hosts(DEFAULT_ALLOWED) => "agent_allowed_hosts";
        /// `text` (`<time> <LEVEL> <spans>: <message> <fields>`) or `json` (JSON lines carrying
        /// `trace_id`/`span_id`); filter with `RUST_LOG`, `target=level` directives such as
        /// `warn,myriad=debug` (default `info`).
        log_format => log_format: Choice<LogFormat>(LogFormat::Text);
        /// Inbound requests per second per client, API key else IP (`0` = off).
        rate_limit_per_client => rate_limit_per_client: Num<u32>(0, 0, 1_000_000) => "rate_limit_per_client";
        /// Inbound burst per client.
        rate_limit_burst => rate_limit_burst: OptNum<u32>(1, 1_000_000, "twice the rate, at least 1");
        /// Outbound calls per second per agent (`0` = off).
        agent_rate_limit => agent_rate_limit: Num<u32>(0, 0, 1_000_000) => "agent_rate_limit";
        /// Calls in flight per agent before new ones fail fast.
        agent_max_inflight => agent_max_inflight: Num<u32>(64, 1, 100_000) => "agent_max_inflight";
        /// `fixed`: at most `AGENT_MAX_INFLIGHT` calls in flight per agent. `adaptive`: the
        /// limit follows the agent's measured latency (a gradient limit) between
        /// `AGENT_MIN_INFLIGHT` and `AGENT_MAX_INFLIGHT`.
        agent_concurrency => concurrency: Choice<Concurrency>(Concurrency::Fixed) => "agent_concurrency";
        /// The least an adaptive concurrency limit falls to, per agent.
        agent_min_inflight => agent_min_inflight: Num<u32>(4, 1, 100_000) => "agent_min_inflight";
        /// Retries allowed as a percentage of calls over the last 10 s, per agent (plus 3).
        retry_budget_percent => retry_budget_percent: Num<u32>(20, 0, 1_000);
        /// `cluster`: with `REDIS_URL`, one retry budget per agent for all replicas, so N
        /// replicas do not multiply an outage's retries by N; `replica`: each its own.
        retry_budget_scope => retry_budget_scope: Choice<BudgetScope>(BudgetScope::Cluster) => "retry_budget_scope";
        /// This replica's region (a Region of the graph): its agents come first at equal
        /// health, the others are the failover; unset = regions play no part in routing.
        region => region: Name("unset") => "region";
    }

    /// Response and discovery caching (moka L1, Redis L2).
    group cache: CacheSettings {
        /// Response and discovery caching.
        cache_enabled => enabled: Flag(true) => "cache_enabled";
        /// Seconds a successful agent answer stays fresh (jittered ±10 %).
        cache_ttl_s => ttl: Secs(300, 1, 604_800) => "cache_ttl_s";
        /// Entries kept in each in-process (L1) cache.
        cache_max_entries => max_entries: Num<u64>(10_000, 1, 10_000_000) => "cache_max_entries";
        /// Seconds a discovery result stays fresh.
        discovery_cache_ttl_s => discovery_ttl: Secs(30, 1, 86_400) => "discovery_cache_ttl_s";
        /// Seconds an empty discovery result ("no agent") stays cached.
        negative_cache_ttl_s => negative_ttl: Secs(5, 1, 3_600) => "negative_cache_ttl_s";
        /// Seconds an expired answer is kept to be served, marked `stale`, when the agent fails
        /// or its breaker is open.
        stale_ttl_s => stale_ttl: Secs(600, 0, 604_800) => "stale_ttl_s";
        /// Intents whose answers are never cached (actions and live state), comma-separated.
        cache_bypass_intents => bypass_intents: List("turn_on,turn_off,dim,status") => "cache_bypass_intents";
    }

    /// Trace export (OpenTelemetry's standard variables).
    group tracing: TraceSettings {
        /// OTLP endpoint of the trace backend, e.g. `http://collector:4317`; unset = no export.
        otel_exporter_otlp_endpoint => endpoint: Url("unset") => "tracing" as Option::is_some;
        /// `grpc` or `http/protobuf` (then `/v1/traces` is appended).
        otel_exporter_otlp_protocol => protocol: Choice<OtlpProtocol>(OtlpProtocol::Grpc) => "otel_protocol";
        /// Milliseconds one export request may take before its spans count as failed.
        otel_exporter_otlp_timeout => export_timeout: Ms(10_000, 1, 600_000);
        /// Service name on every span.
        otel_service_name => service_name: TextOr("orchestrator") => "otel_service_name";
        /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
        /// `parentbased_always_off` or `parentbased_traceidratio`.
        otel_traces_sampler => sampler: Choice<Sampler>(Sampler::ParentBasedAlwaysOn);
        /// Ratio of the `traceidratio` samplers (0..1).
        otel_traces_sampler_arg => sampler_ratio: Num<f64>(1.0, 0.0, 1.0);
    }

    /// Breaker tuning, per agent.
    group breaker: BreakerSettings {
        /// Consecutive upstream failures that open an agent's breaker.
        breaker_consecutive_failures => consecutive_failures: Num<u32>(5, 1, 1_000);
        /// Failure rate (0..1) over the window that opens the breaker.
        breaker_failure_rate => failure_rate: Num<f64>(0.5, 0.01, 1.0);
        /// Calls in the window before the failure rate counts.
        breaker_min_calls => min_calls: Num<u32>(20, 1, 100_000);
        /// How long a breaker stays open in ms; grows with jitter on repeated trips, to 4×.
        breaker_open_ms => open: Ms(5_000, 1, 3_600_000);
        /// Calls let through while half-open.
        breaker_half_open_probes => half_open_probes: Num<u32>(1, 1, 1_000);
    }

    /// Hebbian learning of agent→concept weights.
    group learning: LearningSettings {
        /// Hebbian learning of agent→concept weights.
        enable_autonomous_learning => enabled: Flag(true) => "enable_autonomous_learning";
        /// Weight added to an agent→concept edge on success (weights stay in [0, 1]).
        hebbian_delta_success => delta_success: Num<f64>(0.05, 0.0, 1.0);
        /// Weight removed from an agent→concept edge on failure.
        hebbian_delta_failure => delta_failure: Num<f64>(0.02, 0.0, 1.0);
        /// Fraction of every weight removed by each decay run: `w ← w·(1−rate)`.
        hebbian_decay_rate => decay_rate: Num<f64>(0.01, 0.0, 1.0);
        /// Seconds between decay runs.
        hebbian_decay_interval_s => decay_interval: Secs(900, 1, 31_536_000);
        /// Milliseconds between batched learning writes, applied off the request path.
        learning_flush_ms => flush_interval: Ms(200, 1, 60_000);
    }

    /// How tasks are routed among the candidates the graph names.
    group routing: RoutingSettings {
        /// `learned` (Thompson sampling over a decayed success posterior per agent and
        /// concept, the graph weight its prior, discounted for latency under load; see
        /// docs/ROUTING.md), `score` (weight, health, latency, exploration, slow start) or
        /// `weight` (the graph's order: the learned weight alone).
        routing_policy => policy: Choice<PolicyKind>(PolicyKind::Learned) => "routing_policy";
        /// Percentage of routing decisions that pick uniformly among admitted candidates, so
        /// every healthy agent keeps being measured (the `score` policy; `learned` explores
        /// by the width of its posteriors).
        routing_explore_percent => explore: Percent(5.0, 0.0, 100.0) => "routing_explore_percent";
        /// Seconds over which a new or just-recovered agent ramps from 10 % to its full share
        /// (`0` = off).
        routing_slow_start_s => slow_start: SecsF(5.0, 0.0, 3_600.0) => "routing_slow_start_s";
        /// Seed of the routing draws, for reproducible runs.
        routing_seed => seed: OptNum<u64>(0, u64::MAX, "random") => "routing_seeded" as Option::is_some;
    }

    /// What the accept loop holds open.
    group connections: ConnectionLimits {
        /// Open connections at most; at the cap the connection idle the longest makes room
        /// (never above the file-descriptor limit less 256).
        max_connections => max_connections: Num<usize>(10_000, 1, 1_000_000) => "max_connections";
        /// Milliseconds a request's headers may take to arrive, counted from when the
        /// connection waits for them; also closes silent and idle keep-alive connections.
        header_read_timeout_ms => header_read_timeout: Ms(10_000, 100, 600_000) => "header_read_timeout_ms";
        /// Seconds without a byte either way before a connection is closed.
        idle_timeout_s => idle_timeout: Secs(60, 1, 86_400) => "idle_timeout_s";
    }
}

/// A string that never shows itself in `Debug` or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An enum whose values are named by words (`"word" => Variant`), each word its value's
/// name; `also` lists words accepted besides.
macro_rules! named {
    (
        $(#[$m:meta])* $ty:ident { $($word:literal => $variant:ident),+ $(,)? }
        $(also { $($alias:literal => $avariant:ident),+ })?
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $ty {
            $($variant,)+
        }
        impl Named for $ty {
            const NAMES: &'static [(&'static str, Self)] =
                &[$(($word, $ty::$variant),)+ $($(($alias, $ty::$avariant),)+)?];
        }
    };
}

named!(
    LogFormat { "text" => Text, "json" => Json }
    also { "pretty" => Text }
);

named!(
    /// How traces leave the process.
    OtlpProtocol { "grpc" => Grpc, "http/protobuf" => HttpProtobuf }
    also { "http" => HttpProtobuf }
);

named!(
    /// Which traces are recorded (the ratio samplers read `TraceSettings::sampler_ratio`).
    Sampler {
        "always_on" => AlwaysOn,
        "always_off" => AlwaysOff,
        "traceidratio" => TraceIdRatio,
        "parentbased_always_on" => ParentBasedAlwaysOn,
        "parentbased_always_off" => ParentBasedAlwaysOff,
        "parentbased_traceidratio" => ParentBasedTraceIdRatio,
    }
);

named!(
    /// How an agent's in-flight limit is set (`AGENT_CONCURRENCY`).
    Concurrency { "fixed" => Fixed, "adaptive" => Adaptive }
);

named!(
    /// Where the retry budget is kept.
    BudgetScope { "cluster" => Cluster, "replica" => Replica }
);

named!(
    /// How requests are scheduled on the cores (`RUNTIME`).
    RuntimeKind { "per_core" => PerCore, "work_stealing" => WorkStealing }
);

named!(
    /// Which policy orders candidates (`ROUTING_POLICY`): `learned` (Thompson sampling over
    /// each agent's decayed success posterior per concept, the graph weight its prior; the
    /// default), `score` (learned weight, live health and latency, exploration, slow start)
    /// or `weight` (the graph's order: weight, then success rate, then name).
    PolicyKind { "score" => Score, "learned" => Learned, "weight" => Weight }
);

/// One row of the documentation table.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingDoc {
    pub env: String,
    pub default: String,
    pub doc: String,
}

/// A doc comment's lines as one paragraph.
fn join_doc(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

/// The `--help` text of one setting.
fn help(lines: &[&str], default: &str) -> String {
    format!(
        "{} [default: {}]",
        join_doc(lines),
        default.replace('`', "")
    )
}

/// The README's configuration table, generated from the settings table.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for s in documented() {
        out.push_str(&format!("| `{}` | {} | {} |\n", s.env, s.default, s.doc));
    }
    out
}

impl Config {
    /// Parses and validates every setting; the error lists every problem found.
    pub fn from_raw(raw: &RawSettings) -> Result<Config, Vec<String>> {
        let mut p = kinds::Problems::default();
        let mut config = Config::parse(raw, &mut p);
        let from_file = std::mem::take(&mut config.api_keys_file);
        config.api_keys.extend(from_file);
        if config.api_keys.iter().any(|k| k.expose().len() < 16) {
            p.errors
                .push("API_KEYS: every key must be at least 16 characters".to_string());
        }
        if config.agent_timeout > config.request_timeout {
            p.errors.push(format!(
                "AGENT_TIMEOUT_MS ({}) must not exceed REQUEST_TIMEOUT_MS ({})",
                config.agent_timeout.as_millis(),
                config.request_timeout.as_millis()
            ));
        }
        if !p.errors.is_empty() {
            return Err(p.errors);
        }
        config.warnings = p.warnings;
        Ok(config)
    }

    /// Demo agents run unless set off, or by default when a production graph is configured.
    pub fn demo_agents(&self) -> bool {
        self.demo_agents.unwrap_or(self.neo4j_uri.is_none())
    }

    /// The inbound burst per client: as set, else twice the rate (at least 1).
    pub fn rate_limit_burst(&self) -> u32 {
        self.rate_limit_burst
            .unwrap_or(self.rate_limit_per_client.saturating_mul(2).max(1))
    }

    /// Non-secret settings, as shown by `/status`.
    pub fn public_view(&self) -> serde_json::Value {
        let mut view = serde_json::Map::new();
        self.show(&mut view);
        view.insert("demo_agents".into(), self.demo_agents().into());
        serde_json::Value::Object(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.port, 5000);
        assert_eq!(c.request_timeout, Duration::from_millis(10_000));
        assert_eq!(c.agent_timeout, Duration::from_millis(2_000));
        assert_eq!(c.max_tasks, 100);
        assert_eq!(c.max_body_bytes, 262_144);
        assert!(c.demo_agents());
        assert!(c.cache.enabled);
        assert_eq!(c.http_retries, 3);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw = RawSettings {
            port: Some("seventy".into()),
            max_tasks: Some("0".into()),
            log_format: Some("xml".into()),
            enable_dynamic_agents: Some("maybe".into()),
            ..Default::default()
        };
        let errors = Config::from_raw(&raw).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("PORT=")));
        assert!(errors.iter().any(|e| e.starts_with("MAX_TASKS=")));
    }

    #[test]
    fn the_neurogenesis_template_is_normalized_and_never_carries_credentials() {
        let raw = RawSettings {
            dynamic_agent_template_url: Some("http://:s3cr3t@127.0.0.1:5003/query".into()),
            ..Default::default()
        };
        let errors = Config::from_raw(&raw).unwrap_err();
        assert!(
            errors[0].starts_with("DYNAMIC_AGENT_TEMPLATE_URL"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("s3cr3t"), "{errors:?}");
        let raw = RawSettings {
            dynamic_agent_template_url: Some("HTTP://127.0.0.1:80/query".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::from_raw(&raw)
                .unwrap()
                .dynamic_agent_template_url
                .as_deref(),
            Some("http://127.0.0.1/query")
        );
    }

    #[test]
    fn routing_settings_are_validated_together() {
        let raw = RawSettings {
            routing_policy: Some("random".into()),
            routing_explore_percent: Some("150".into()),
            routing_seed: Some("-1".into()),
            ..Default::default()
        };
        let errors = Config::from_raw(&raw).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let c = Config::default();
        assert_eq!(c.routing.policy, PolicyKind::Learned);
        assert_eq!(c.routing.explore, 0.05);
        assert_eq!(c.routing.slow_start, Duration::from_secs(5));
    }

    #[test]
    fn the_readme_lists_every_setting_as_the_table_declares_it() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("<!-- settings:begin -->\n")
            .nth(1)
            .and_then(|rest| rest.split("<!-- settings:end -->").next())
            .expect("README has the settings markers");
        let expected = markdown_table();
        assert!(
            block == expected,
            "the README's configuration table is out of date; replace it with:\n{expected}"
        );
    }

    #[test]
    fn the_status_view_shows_no_secret_and_every_documented_key() {
        let raw = RawSettings {
            neo4j_password: Some("hunter2-hunter2".into()),
            admin_api_key: Some("admin-key-admin-key".into()),
            redis_url: Some("redis://:pw-pw-pw@127.0.0.1:6379".into()),
            ..Default::default()
        };
        let view = Config::from_raw(&raw).unwrap().public_view().to_string();
        for secret in ["hunter2", "admin-key", "pw-pw-pw"] {
            assert!(!view.contains(secret), "{view}");
        }
        let view: serde_json::Value = serde_json::from_str(&view).unwrap();
        assert_eq!(view["redis_configured"], true);
        assert_eq!(view["graph_backend"], "memory");
        assert_eq!(view["http_backoff_s"], 0.1);
        assert_eq!(view["routing_policy"], "learned");
        assert_eq!(view["otel_protocol"], "grpc");
        assert_eq!(view["input_processor"], "built-in");
        assert_eq!(view["demo_agents"], true);
        assert_eq!(view["retry_budget_scope"], "cluster");
        assert_eq!(view["region"], serde_json::Value::Null);
        assert_eq!(view["runtime"], "per_core");
        assert_eq!(view["agent_min_time_left_ms"], 25);
        assert_eq!(view["routing_panic_interval_ms"], 1_000);
        assert_eq!(view["hedge_intents"], serde_json::json!([]));
        assert_eq!(view["hedge_delay_min_ms"], 10);
        assert_eq!(view["agent_concurrency"], "fixed");
        assert_eq!(view.as_object().unwrap().len(), 58, "{view}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let raw = RawSettings {
            neo4j_password: Some("hunter2".into()),
            ..Default::default()
        };
        let c = Config::from_raw(&raw).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
