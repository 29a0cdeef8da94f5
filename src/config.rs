//! Typed configuration, validated once at start-up.
//!
//! Every setting comes from a command-line flag or the environment variable of the same name
//! (the original service's names keep working). Values arrive as strings and are parsed here
//! so that *every* problem is reported in one go; `main` exits with status 64 when any exists.

use std::{fmt, net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;

/// Exit status for a bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Raw settings exactly as given on the command line or in the environment.
#[derive(Args, Debug, Clone, Default)]
pub struct RawSettings {
    /// Address to listen on.
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "PORT")]
    pub port: Option<String>,
    /// Bolt URI of the Neo4j knowledge graph; unset = the embedded in-memory graph.
    #[arg(long, env = "NEO4J_URI")]
    pub neo4j_uri: Option<String>,
    /// Neo4j user.
    #[arg(long, env = "NEO4J_USER")]
    pub neo4j_user: Option<String>,
    /// Neo4j password.
    #[arg(long, env = "NEO4J_PASSWORD", hide_env_values = true)]
    pub neo4j_password: Option<String>,
    /// Neo4j database name.
    #[arg(long, env = "NEO4J_DATABASE")]
    pub neo4j_database: Option<String>,
    /// Redis URL for the shared L2 cache and global rate limits; unset = L1 only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Remote input processor (`POST {url}/process/basic`); unset = built-in parser.
    #[arg(long, env = "INPUT_PROCESSOR_URL")]
    pub input_processor_url: Option<String>,
    /// Remote output processor (`POST {url}/synthesize/basic`); unset = built-in synthesis.
    #[arg(long, env = "OUTPUT_PROCESSOR_URL")]
    pub output_processor_url: Option<String>,
    /// Accepted for compatibility with the original service and ignored.
    #[arg(long, env = "GRAPHDB_MANAGER_URL")]
    pub graphdb_manager_url: Option<String>,
    /// Research unknown concepts and register dynamic agents for them (true/false).
    #[arg(long, env = "ENABLE_DYNAMIC_AGENTS")]
    pub enable_dynamic_agents: Option<String>,
    /// Hebbian learning of agent→concept weights (true/false, default true).
    #[arg(long, env = "ENABLE_AUTONOMOUS_LEARNING")]
    pub enable_autonomous_learning: Option<String>,
    /// Extra attempts after a retryable failure (default 3, at most 10).
    #[arg(long, env = "HTTP_RETRIES")]
    pub http_retries: Option<String>,
    /// First retry backoff in seconds; doubles per attempt with full jitter (default 0.1).
    #[arg(long, env = "HTTP_BACKOFF")]
    pub http_backoff: Option<String>,
    /// Idle connections kept per agent host (default 64).
    #[arg(long, env = "HTTP_POOL_MAX")]
    pub http_pool_max: Option<String>,
    /// Seed file for the embedded graph (default: the seed shipped in the repo).
    #[arg(long, env = "GRAPH_SEED")]
    pub graph_seed: Option<String>,
    /// Start the built-in demo agents (on/off; default on when NEO4J_URI is unset).
    #[arg(long, env = "DEMO_AGENTS")]
    pub demo_agents: Option<String>,
    /// Overall deadline of one request in ms (default 10000).
    #[arg(long, env = "REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<String>,
    /// Deadline of one agent call attempt in ms (default 2000).
    #[arg(long, env = "AGENT_TIMEOUT_MS")]
    pub agent_timeout_ms: Option<String>,
    /// Most tasks in one batch (default 100).
    #[arg(long, env = "MAX_TASKS")]
    pub max_tasks: Option<String>,
    /// Largest accepted request body in bytes (default 262144).
    #[arg(long, env = "MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// Tasks of one request run at most this many at a time (default 32).
    #[arg(long, env = "TASK_CONCURRENCY")]
    pub task_concurrency: Option<String>,
    /// Response and discovery caching (true/false, default true).
    #[arg(long, env = "CACHE_ENABLED")]
    pub cache_enabled: Option<String>,
    /// Seconds a successful agent answer stays fresh in the cache (default 300).
    #[arg(long, env = "CACHE_TTL_S")]
    pub cache_ttl_s: Option<String>,
    /// Entries kept in each in-process (L1) cache (default 10000).
    #[arg(long, env = "CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<String>,
    /// Seconds a discovery result stays fresh (default 30).
    #[arg(long, env = "DISCOVERY_CACHE_TTL_S")]
    pub discovery_cache_ttl_s: Option<String>,
    /// Seconds an empty discovery result ("no agent") stays cached (default 5).
    #[arg(long, env = "NEGATIVE_CACHE_TTL_S")]
    pub negative_cache_ttl_s: Option<String>,
    /// Seconds an expired answer is kept to be served when the agent fails (default 600).
    #[arg(long, env = "STALE_TTL_S")]
    pub stale_ttl_s: Option<String>,
    /// Timeout of one Redis call in ms (default 100).
    #[arg(long, env = "REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<String>,
    /// Intents whose answers are never cached (comma-separated; default turn_on,turn_off,dim,status).
    #[arg(long, env = "CACHE_BYPASS_INTENTS")]
    pub cache_bypass_intents: Option<String>,
    /// Timeout of one graph query in ms (default 1000).
    #[arg(long, env = "GRAPH_TIMEOUT_MS")]
    pub graph_timeout_ms: Option<String>,
    /// Bolt connections kept to the graph (default 16).
    #[arg(long, env = "NEO4J_POOL_MAX")]
    pub neo4j_pool_max: Option<String>,
    /// Endpoint of the template agent behind dynamic agents (default: the built-in factbase).
    #[arg(long, env = "DYNAMIC_AGENT_TEMPLATE_URL")]
    pub dynamic_agent_template_url: Option<String>,
    /// Time neurogenesis may spend researching a concept, in ms (default 3000).
    #[arg(long, env = "NEUROGENESIS_TIMEOUT_MS")]
    pub neurogenesis_timeout_ms: Option<String>,
    /// OTLP endpoint of the trace backend; unset = no trace export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otel_exporter_otlp_protocol: Option<String>,
    /// Service name on every span (default `orchestrator`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// always_on, always_off, traceidratio, parentbased_always_on (default),
    /// parentbased_always_off, parentbased_traceidratio.
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    pub otel_traces_sampler: Option<String>,
    /// Ratio for the traceidratio samplers (0..1, default 1).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<String>,
    /// Client API keys, comma-separated; set = /process, /discover and /agents need one.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// File with one client API key per line (`#` comments), instead of or beside API_KEYS.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<String>,
    /// Also require a client key for /metrics and /status (true/false, default false).
    #[arg(long, env = "METRICS_REQUIRE_AUTH")]
    pub metrics_require_auth: Option<String>,
    /// Hosts agent endpoints may point at: names and CIDRs, comma-separated
    /// (default: loopback and the compose service names).
    #[arg(long, env = "AGENT_ALLOWED_HOSTS")]
    pub agent_allowed_hosts: Option<String>,
    /// Largest `args` of one task, serialized, in bytes (default 16384).
    #[arg(long, env = "MAX_ARGS_BYTES")]
    pub max_args_bytes: Option<String>,
    /// Deepest nesting of `args` (default 8).
    #[arg(long, env = "MAX_ARGS_DEPTH")]
    pub max_args_depth: Option<String>,
    /// Largest total size of request headers in bytes (default 16384; more → 431).
    #[arg(long, env = "MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<String>,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT (default 30).
    #[arg(long, env = "SHUTDOWN_DRAIN_S")]
    pub shutdown_drain_s: Option<String>,
    /// Open connections at most; at the cap the connection idle the longest makes room
    /// (default 10000; never above the file-descriptor limit less 256).
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Milliseconds a request's headers may take to arrive, counted from when the connection
    /// waits for them — also closes silent and idle keep-alive connections (default 10000).
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<String>,
    /// Seconds without a byte either way before a connection is closed (default 60).
    #[arg(long, env = "IDLE_TIMEOUT_S")]
    pub idle_timeout_s: Option<String>,
    /// Milliseconds a request body may take to arrive before a 408 (default 10000).
    #[arg(long, env = "BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<String>,
    /// Key of the admin API (`X-Admin-Key`); unset = admin API disabled (403).
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Log format: text (default) or json.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Inbound requests per second per client, API key else IP (0 = off, the default).
    #[arg(long, env = "RATE_LIMIT_PER_CLIENT")]
    pub rate_limit_per_client: Option<String>,
    /// Inbound burst per client (default: twice the rate, at least 1).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<String>,
    /// Outbound calls per second per agent (0 = off, the default).
    #[arg(long, env = "AGENT_RATE_LIMIT")]
    pub agent_rate_limit: Option<String>,
    /// Calls in flight per agent before new ones fail fast (default 64).
    #[arg(long, env = "AGENT_MAX_INFLIGHT")]
    pub agent_max_inflight: Option<String>,
    /// Consecutive upstream failures that open an agent's breaker (default 5).
    #[arg(long, env = "BREAKER_CONSECUTIVE_FAILURES")]
    pub breaker_consecutive_failures: Option<String>,
    /// Failure rate (0..1) over the window that opens the breaker (default 0.5).
    #[arg(long, env = "BREAKER_FAILURE_RATE")]
    pub breaker_failure_rate: Option<String>,
    /// Calls in the window before the failure rate counts (default 20).
    #[arg(long, env = "BREAKER_MIN_CALLS")]
    pub breaker_min_calls: Option<String>,
    /// How long a breaker stays open in ms; grows with jitter on repeated trips (default 5000).
    #[arg(long, env = "BREAKER_OPEN_MS")]
    pub breaker_open_ms: Option<String>,
    /// Calls let through while half-open (default 1).
    #[arg(long, env = "BREAKER_HALF_OPEN_PROBES")]
    pub breaker_half_open_probes: Option<String>,
    /// Retries allowed as a percentage of calls over the last 10 s, per agent (default 20).
    #[arg(long, env = "RETRY_BUDGET_PERCENT")]
    pub retry_budget_percent: Option<String>,
    /// Weight added to an agent→concept edge on success (default 0.05).
    #[arg(long, env = "HEBBIAN_DELTA_SUCCESS")]
    pub hebbian_delta_success: Option<String>,
    /// Weight removed from an agent→concept edge on failure (default 0.02).
    #[arg(long, env = "HEBBIAN_DELTA_FAILURE")]
    pub hebbian_delta_failure: Option<String>,
    /// Fraction of every weight removed by each decay run (default 0.01).
    #[arg(long, env = "HEBBIAN_DECAY_RATE")]
    pub hebbian_decay_rate: Option<String>,
    /// Seconds between decay runs (default 900).
    #[arg(long, env = "HEBBIAN_DECAY_INTERVAL_S")]
    pub hebbian_decay_interval_s: Option<String>,
    /// Milliseconds between batched learning writes (default 200).
    #[arg(long, env = "LEARNING_FLUSH_MS")]
    pub learning_flush_ms: Option<String>,
    /// Routing policy: `score` (weight, health, latency, exploration, slow start) or
    /// `weight` (the learned weight alone) (default score).
    #[arg(long, env = "ROUTING_POLICY")]
    pub routing_policy: Option<String>,
    /// Percentage of routing decisions that pick uniformly among admitted candidates, so
    /// every healthy agent keeps being measured (default 5).
    #[arg(long, env = "ROUTING_EXPLORE_PERCENT")]
    pub routing_explore_percent: Option<String>,
    /// Seconds over which an agent just registered or just recovered ramps up to its full
    /// share (default 5; 0 = off).
    #[arg(long, env = "ROUTING_SLOW_START_S")]
    pub routing_slow_start_s: Option<String>,
    /// Seed of the routing policy's random draws, for reproducible runs (default: random).
    #[arg(long, env = "ROUTING_SEED")]
    pub routing_seed: Option<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Breaker tuning, per agent.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_calls: u32,
    pub open: Duration,
    pub half_open_probes: u32,
}

/// How traces leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Which traces are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// Trace export (OpenTelemetry's standard variables).
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub sampler: SamplerKind,
}

/// Cache tuning.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entries: u64,
    pub discovery_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_ttl: Duration,
    pub bypass_intents: Vec<String>,
}

/// Hebbian learning constants.
#[derive(Debug, Clone)]
pub struct LearningSettings {
    pub enabled: bool,
    pub delta_success: f64,
    pub delta_failure: f64,
    pub decay_rate: f64,
    pub decay_interval: Duration,
    pub flush_interval: Duration,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub neo4j_uri: Option<String>,
    pub neo4j_user: String,
    pub neo4j_password: Secret,
    pub neo4j_database: Option<String>,
    pub redis_url: Option<Secret>,
    pub input_processor_url: Option<String>,
    pub output_processor_url: Option<String>,
    pub enable_dynamic_agents: bool,
    pub http_retries: u32,
    pub http_backoff: Duration,
    pub http_pool_max: usize,
    pub graph_seed: Option<PathBuf>,
    pub demo_agents: bool,
    pub request_timeout: Duration,
    pub agent_timeout: Duration,
    pub max_tasks: usize,
    pub max_body_bytes: usize,
    pub task_concurrency: usize,
    pub cache_enabled: bool,
    pub cache: CacheSettings,
    pub redis_timeout: Duration,
    pub admin_api_key: Option<Secret>,
    pub graph_timeout: Duration,
    pub neo4j_pool_max: usize,
    pub dynamic_agent_template_url: Option<String>,
    pub neurogenesis_timeout: Duration,
    pub tracing: TraceSettings,
    pub api_keys: Vec<Secret>,
    pub metrics_require_auth: bool,
    pub agent_allowed_hosts: crate::agents::guard::HostGuard,
    pub max_args_bytes: usize,
    pub max_args_depth: usize,
    pub max_header_bytes: usize,
    pub shutdown_drain: Duration,
    pub log_format: LogFormat,
    pub rate_limit_per_client: u32,
    pub rate_limit_burst: u32,
    pub agent_rate_limit: u32,
    pub agent_max_inflight: u32,
    pub breaker: BreakerSettings,
    pub retry_budget_percent: u32,
    pub learning: LearningSettings,
    pub routing: crate::routing::RoutingSettings,
    pub connections: crate::server::ConnectionLimits,
    pub body_read_timeout: Duration,
    /// Non-fatal remarks to log once the logger runs (e.g. ignored variables).
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(&RawSettings::default()).expect("defaults are valid")
    }
}

/// Collects parse failures so they can all be reported together.
struct Parser<'a> {
    errors: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn num<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        name: &str,
        raw: &Option<String>,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(text) = raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return default;
        };
        match text.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            Ok(_) => {
                self.errors
                    .push(format!("{name}={text:?}: must be between {min} and {max}"));
                default
            }
            Err(_) => {
                self.errors.push(format!("{name}={text:?}: not a number"));
                default
            }
        }
    }

    fn flag(&mut self, name: &str, raw: &Option<String>, default: bool) -> bool {
        match raw.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
            None => default,
            Some(s) if s.is_empty() => default,
            Some(s) => match s.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    self.errors
                        .push(format!("{name}={s:?}: expected true/false (or on/off)"));
                    default
                }
            },
        }
    }

    fn url(&mut self, name: &str, raw: &Option<String>) -> Option<String> {
        let text = raw.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                Some(text.trim_end_matches('/').to_string())
            }
            _ => {
                self.errors
                    .push(format!("{name}={text:?}: expected an http(s) URL"));
                None
            }
        }
    }
}

fn non_empty(raw: &Option<String>) -> Option<String> {
    raw.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Config {
    /// Parses and validates every setting; the error lists every problem found.
    pub fn from_raw(raw: &RawSettings) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut p = Parser {
            errors: &mut errors,
        };

        let host = match non_empty(&raw.host) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(h) if h == "localhost" => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().unwrap_or_else(|_| {
                p.errors.push(format!("HOST={h:?}: expected an IP address"));
                IpAddr::from([0, 0, 0, 0])
            }),
        };
        let port = p.num("PORT", &raw.port, 5000u16, 0, u16::MAX);

        let neo4j_uri = non_empty(&raw.neo4j_uri);
        let redis_url = match non_empty(&raw.redis_url) {
            Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => {
                p.errors
                    .push("REDIS_URL: expected a redis:// or rediss:// URL".to_string());
                None
            }
            other => other.map(Secret::new),
        };
        let input_processor_url = p.url("INPUT_PROCESSOR_URL", &raw.input_processor_url);
        let output_processor_url = p.url("OUTPUT_PROCESSOR_URL", &raw.output_processor_url);
        if non_empty(&raw.graphdb_manager_url).is_some() {
            warnings.push(
                "GRAPHDB_MANAGER_URL is ignored: the orchestrator talks to the graph directly"
                    .to_string(),
            );
        }

        let enable_dynamic_agents =
            p.flag("ENABLE_DYNAMIC_AGENTS", &raw.enable_dynamic_agents, false);
        let learning_enabled = p.flag(
            "ENABLE_AUTONOMOUS_LEARNING",
            &raw.enable_autonomous_learning,
            true,
        );
        let http_retries = p.num("HTTP_RETRIES", &raw.http_retries, 3u32, 0, 10);
        let http_backoff = p.num("HTTP_BACKOFF", &raw.http_backoff, 0.1f64, 0.0, 60.0);
        let http_pool_max = p.num("HTTP_POOL_MAX", &raw.http_pool_max, 64usize, 1, 4096);
        let graph_seed = non_empty(&raw.graph_seed).map(PathBuf::from);
        if let Some(path) = &graph_seed {
            if !path.is_file() {
                p.errors
                    .push(format!("GRAPH_SEED={}: no such file", path.display()));
            }
        }
        let demo_agents = p.flag("DEMO_AGENTS", &raw.demo_agents, neo4j_uri.is_none());
        let request_timeout_ms = p.num(
            "REQUEST_TIMEOUT_MS",
            &raw.request_timeout_ms,
            10_000u64,
            1,
            600_000,
        );
        let agent_timeout_ms = p.num(
            "AGENT_TIMEOUT_MS",
            &raw.agent_timeout_ms,
            2_000u64,
            1,
            600_000,
        );
        let max_tasks = p.num("MAX_TASKS", &raw.max_tasks, 100usize, 1, 10_000);
        let max_body_bytes = p.num(
            "MAX_BODY_BYTES",
            &raw.max_body_bytes,
            262_144usize,
            1_024,
            64 * 1024 * 1024,
        );
        let task_concurrency = p.num("TASK_CONCURRENCY", &raw.task_concurrency, 32usize, 1, 1024);
        let cache_enabled = p.flag("CACHE_ENABLED", &raw.cache_enabled, true);
        let cache = CacheSettings {
            enabled: cache_enabled,
            ttl: Duration::from_secs(p.num("CACHE_TTL_S", &raw.cache_ttl_s, 300u64, 1, 86_400 * 7)),
            max_entries: p.num(
                "CACHE_MAX_ENTRIES",
                &raw.cache_max_entries,
                10_000u64,
                1,
                10_000_000,
            ),
            discovery_ttl: Duration::from_secs(p.num(
                "DISCOVERY_CACHE_TTL_S",
                &raw.discovery_cache_ttl_s,
                30u64,
                1,
                86_400,
            )),
            negative_ttl: Duration::from_secs(p.num(
                "NEGATIVE_CACHE_TTL_S",
                &raw.negative_cache_ttl_s,
                5u64,
                1,
                3_600,
            )),
            stale_ttl: Duration::from_secs(p.num(
                "STALE_TTL_S",
                &raw.stale_ttl_s,
                600u64,
                0,
                86_400 * 7,
            )),
            bypass_intents: raw
                .cache_bypass_intents
                .as_deref()
                .unwrap_or("turn_on,turn_off,dim,status")
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        };
        let redis_timeout = Duration::from_millis(p.num(
            "REDIS_TIMEOUT_MS",
            &raw.redis_timeout_ms,
            100u64,
            1,
            10_000,
        ));
        let log_format = match raw
            .log_format
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => LogFormat::Text,
            Some(s) if s.is_empty() || s == "text" || s == "pretty" => LogFormat::Text,
            Some(s) if s == "json" => LogFormat::Json,
            Some(s) => {
                p.errors
                    .push(format!("LOG_FORMAT={s:?}: expected text or json"));
                LogFormat::Text
            }
        };
        let rate_limit_per_client = p.num(
            "RATE_LIMIT_PER_CLIENT",
            &raw.rate_limit_per_client,
            0u32,
            0,
            1_000_000,
        );
        let rate_limit_burst = p.num(
            "RATE_LIMIT_BURST",
            &raw.rate_limit_burst,
            (rate_limit_per_client.saturating_mul(2)).max(1),
            1,
            1_000_000,
        );
        let agent_rate_limit = p.num(
            "AGENT_RATE_LIMIT",
            &raw.agent_rate_limit,
            0u32,
            0,
            1_000_000,
        );
        let agent_max_inflight = p.num(
            "AGENT_MAX_INFLIGHT",
            &raw.agent_max_inflight,
            64u32,
            1,
            100_000,
        );
        let breaker = BreakerSettings {
            consecutive_failures: p.num(
                "BREAKER_CONSECUTIVE_FAILURES",
                &raw.breaker_consecutive_failures,
                5u32,
                1,
                1_000,
            ),
            failure_rate: p.num(
                "BREAKER_FAILURE_RATE",
                &raw.breaker_failure_rate,
                0.5f64,
                0.01,
                1.0,
            ),
            min_calls: p.num(
                "BREAKER_MIN_CALLS",
                &raw.breaker_min_calls,
                20u32,
                1,
                100_000,
            ),
            open: Duration::from_millis(p.num(
                "BREAKER_OPEN_MS",
                &raw.breaker_open_ms,
                5_000u64,
                1,
                3_600_000,
            )),
            half_open_probes: p.num(
                "BREAKER_HALF_OPEN_PROBES",
                &raw.breaker_half_open_probes,
                1u32,
                1,
                1_000,
            ),
        };
        let retry_budget_percent = p.num(
            "RETRY_BUDGET_PERCENT",
            &raw.retry_budget_percent,
            20u32,
            0,
            1_000,
        );
        let learning = LearningSettings {
            enabled: learning_enabled,
            delta_success: p.num(
                "HEBBIAN_DELTA_SUCCESS",
                &raw.hebbian_delta_success,
                0.05f64,
                0.0,
                1.0,
            ),
            delta_failure: p.num(
                "HEBBIAN_DELTA_FAILURE",
                &raw.hebbian_delta_failure,
                0.02f64,
                0.0,
                1.0,
            ),
            decay_rate: p.num(
                "HEBBIAN_DECAY_RATE",
                &raw.hebbian_decay_rate,
                0.01f64,
                0.0,
                1.0,
            ),
            decay_interval: Duration::from_secs(p.num(
                "HEBBIAN_DECAY_INTERVAL_S",
                &raw.hebbian_decay_interval_s,
                900u64,
                1,
                31_536_000,
            )),
            flush_interval: Duration::from_millis(p.num(
                "LEARNING_FLUSH_MS",
                &raw.learning_flush_ms,
                200u64,
                1,
                60_000,
            )),
        };
        let connections = crate::server::ConnectionLimits {
            max_connections: p.num(
                "MAX_CONNECTIONS",
                &raw.max_connections,
                10_000usize,
                1,
                1_000_000,
            ),
            header_read_timeout: Duration::from_millis(p.num(
                "HEADER_READ_TIMEOUT_MS",
                &raw.header_read_timeout_ms,
                10_000u64,
                100,
                600_000,
            )),
            idle_timeout: Duration::from_secs(p.num(
                "IDLE_TIMEOUT_S",
                &raw.idle_timeout_s,
                60u64,
                1,
                86_400,
            )),
        };
        let body_read_timeout = Duration::from_millis(p.num(
            "BODY_READ_TIMEOUT_MS",
            &raw.body_read_timeout_ms,
            10_000u64,
            100,
            600_000,
        ));
        let routing = crate::routing::RoutingSettings {
            policy: match non_empty(&raw.routing_policy)
                .map(|s| s.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("score") => crate::routing::PolicyKind::Score,
                Some("weight") => crate::routing::PolicyKind::Weight,
                Some(other) => {
                    p.errors.push(format!(
                        "ROUTING_POLICY={other:?}: expected score or weight"
                    ));
                    crate::routing::PolicyKind::Score
                }
            },
            explore: p.num(
                "ROUTING_EXPLORE_PERCENT",
                &raw.routing_explore_percent,
                5.0f64,
                0.0,
                100.0,
            ) / 100.0,
            slow_start: Duration::from_secs_f64(p.num(
                "ROUTING_SLOW_START_S",
                &raw.routing_slow_start_s,
                5.0f64,
                0.0,
                3_600.0,
            )),
            seed: non_empty(&raw.routing_seed).and_then(|s| {
                s.parse::<u64>()
                    .map_err(|_| {
                        p.errors
                            .push(format!("ROUTING_SEED={s:?}: expected an unsigned integer"))
                    })
                    .ok()
            }),
        };
        let graph_timeout = Duration::from_millis(p.num(
            "GRAPH_TIMEOUT_MS",
            &raw.graph_timeout_ms,
            1_000u64,
            1,
            60_000,
        ));
        let neo4j_pool_max = p.num("NEO4J_POOL_MAX", &raw.neo4j_pool_max, 16usize, 1, 1_024);
        let dynamic_agent_template_url = non_empty(&raw.dynamic_agent_template_url).and_then(|t| {
            crate::agents::guard::normalize_endpoint(&t)
                .map_err(|why| p.errors.push(format!("DYNAMIC_AGENT_TEMPLATE_URL: {why}")))
                .ok()
        });
        let neurogenesis_timeout = Duration::from_millis(p.num(
            "NEUROGENESIS_TIMEOUT_MS",
            &raw.neurogenesis_timeout_ms,
            3_000u64,
            1,
            60_000,
        ));
        let ratio = p.num(
            "OTEL_TRACES_SAMPLER_ARG",
            &raw.otel_traces_sampler_arg,
            1.0f64,
            0.0,
            1.0,
        );
        let sampler = match raw
            .otel_traces_sampler
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("parentbased_always_on") => SamplerKind::ParentBasedAlwaysOn,
            Some("always_on") => SamplerKind::AlwaysOn,
            Some("always_off") => SamplerKind::AlwaysOff,
            Some("traceidratio") => SamplerKind::Ratio(ratio),
            Some("parentbased_always_off") => SamplerKind::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerKind::ParentBasedRatio(ratio),
            Some(other) => {
                p.errors.push(format!(
                    "OTEL_TRACES_SAMPLER={other:?}: not a known sampler"
                ));
                SamplerKind::ParentBasedAlwaysOn
            }
        };
        let protocol = match raw
            .otel_exporter_otlp_protocol
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") | Some("http") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                p.errors.push(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: expected grpc or http/protobuf"
                ));
                OtlpProtocol::Grpc
            }
        };
        let tracing = TraceSettings {
            endpoint: p.url(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &raw.otel_exporter_otlp_endpoint,
            ),
            protocol,
            service_name: non_empty(&raw.otel_service_name)
                .unwrap_or_else(|| "orchestrator".into()),
            sampler,
        };
        let mut api_keys: Vec<Secret> = raw
            .api_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        if let Some(path) = non_empty(&raw.api_keys_file) {
            match std::fs::read_to_string(&path) {
                Ok(text) => api_keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(Secret::new),
                ),
                Err(_) => errors.push(format!("API_KEYS_FILE={path}: cannot be read")),
            }
        }
        if api_keys.iter().any(|k| k.expose().len() < 16) {
            errors.push("API_KEYS: every key must be at least 16 characters".to_string());
        }
        let mut p = Parser {
            errors: &mut errors,
        };
        let metrics_require_auth = p.flag("METRICS_REQUIRE_AUTH", &raw.metrics_require_auth, false);
        let agent_allowed_hosts = match crate::agents::guard::HostGuard::parse(
            raw.agent_allowed_hosts
                .as_deref()
                .unwrap_or(crate::agents::guard::DEFAULT_ALLOWED),
        ) {
            Ok(g) => g,
            Err(bad) => {
                p.errors.push(format!(
                    "AGENT_ALLOWED_HOSTS: {bad:?} is neither a host name nor a CIDR"
                ));
                crate::agents::guard::HostGuard::default()
            }
        };
        let max_args_bytes = p.num(
            "MAX_ARGS_BYTES",
            &raw.max_args_bytes,
            16_384usize,
            2,
            16 * 1024 * 1024,
        );
        let max_args_depth = p.num("MAX_ARGS_DEPTH", &raw.max_args_depth, 8usize, 1, 64);
        let max_header_bytes = p.num(
            "MAX_HEADER_BYTES",
            &raw.max_header_bytes,
            16_384usize,
            1_024,
            1_048_576,
        );
        let shutdown_drain =
            Duration::from_secs(p.num("SHUTDOWN_DRAIN_S", &raw.shutdown_drain_s, 30u64, 0, 3_600));
        if agent_timeout_ms > request_timeout_ms {
            errors.push(format!(
                "AGENT_TIMEOUT_MS ({agent_timeout_ms}) must not exceed REQUEST_TIMEOUT_MS ({request_timeout_ms})"
            ));
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            host,
            port,
            neo4j_uri,
            neo4j_user: non_empty(&raw.neo4j_user).unwrap_or_else(|| "neo4j".to_string()),
            neo4j_password: Secret::new(non_empty(&raw.neo4j_password).unwrap_or_default()),
            neo4j_database: non_empty(&raw.neo4j_database),
            redis_url,
            input_processor_url,
            output_processor_url,
            enable_dynamic_agents,
            http_retries,
            http_backoff: Duration::from_secs_f64(http_backoff),
            http_pool_max,
            graph_seed,
            demo_agents,
            request_timeout: Duration::from_millis(request_timeout_ms),
            agent_timeout: Duration::from_millis(agent_timeout_ms),
            max_tasks,
            max_body_bytes,
            task_concurrency,
            cache_enabled,
            cache,
            redis_timeout,
            admin_api_key: non_empty(&raw.admin_api_key).map(Secret::new),
            graph_timeout,
            neo4j_pool_max,
            dynamic_agent_template_url,
            neurogenesis_timeout,
            tracing,
            api_keys,
            metrics_require_auth,
            agent_allowed_hosts,
            max_args_bytes,
            max_args_depth,
            max_header_bytes,
            shutdown_drain,
            log_format,
            rate_limit_per_client,
            rate_limit_burst,
            agent_rate_limit,
            agent_max_inflight,
            breaker,
            retry_budget_percent,
            learning,
            routing,
            connections,
            body_read_timeout,
            warnings,
        })
    }

    /// Non-secret settings, as shown by `/status`.
    pub fn public_view(&self) -> serde_json::Value {
        let mut view = serde_json::json!({
            "host": self.host.to_string(),
            "port": self.port,
            "graph_backend": if self.neo4j_uri.is_some() { "neo4j" } else { "memory" },
            "graph_timeout_ms": self.graph_timeout.as_millis() as u64,
            "tracing": self.tracing.endpoint.is_some(),
            "api_keys_configured": self.api_keys.len(),
            "metrics_require_auth": self.metrics_require_auth,
            "agent_allowed_hosts": self.agent_allowed_hosts.to_string(),
            "max_args_bytes": self.max_args_bytes,
            "max_args_depth": self.max_args_depth,
            "max_header_bytes": self.max_header_bytes,
            "shutdown_drain_s": self.shutdown_drain.as_secs(),
            "otel_protocol": match self.tracing.protocol { OtlpProtocol::Grpc => "grpc", OtlpProtocol::HttpProtobuf => "http/protobuf" },
            "otel_service_name": self.tracing.service_name,
            "redis_configured": self.redis_url.is_some(),
            "input_processor": self.input_processor_url.as_deref().unwrap_or("built-in"),
            "output_processor": self.output_processor_url.as_deref().unwrap_or("built-in"),
            "demo_agents": self.demo_agents,
            "enable_dynamic_agents": self.enable_dynamic_agents,
            "enable_autonomous_learning": self.learning.enabled,
            "cache_enabled": self.cache_enabled,
            "cache_ttl_s": self.cache.ttl.as_secs(),
            "cache_max_entries": self.cache.max_entries,
            "discovery_cache_ttl_s": self.cache.discovery_ttl.as_secs(),
            "negative_cache_ttl_s": self.cache.negative_ttl.as_secs(),
            "stale_ttl_s": self.cache.stale_ttl.as_secs(),
            "cache_bypass_intents": self.cache.bypass_intents,
            "redis_timeout_ms": self.redis_timeout.as_millis() as u64,
            "http_retries": self.http_retries,
            "http_backoff_s": self.http_backoff.as_secs_f64(),
            "http_pool_max": self.http_pool_max,
            "request_timeout_ms": self.request_timeout.as_millis() as u64,
            "agent_timeout_ms": self.agent_timeout.as_millis() as u64,
            "max_tasks": self.max_tasks,
            "max_body_bytes": self.max_body_bytes,
            "task_concurrency": self.task_concurrency,
            "rate_limit_per_client": self.rate_limit_per_client,
            "agent_rate_limit": self.agent_rate_limit,
            "agent_max_inflight": self.agent_max_inflight,
        });
        view["routing_policy"] = self.routing.policy.as_str().into();
        view["routing_explore_percent"] = (self.routing.explore * 100.0).into();
        view["routing_slow_start_s"] = self.routing.slow_start.as_secs_f64().into();
        view["routing_seeded"] = self.routing.seed.is_some().into();
        view["max_connections"] = self.connections.max_connections.into();
        view["header_read_timeout_ms"] =
            (self.connections.header_read_timeout.as_millis() as u64).into();
        view["idle_timeout_s"] = self.connections.idle_timeout.as_secs().into();
        view["body_read_timeout_ms"] = (self.body_read_timeout.as_millis() as u64).into();
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.port, 5000);
        assert_eq!(c.request_timeout, Duration::from_millis(10_000));
        assert_eq!(c.agent_timeout, Duration::from_millis(2_000));
        assert_eq!(c.max_tasks, 100);
        assert_eq!(c.max_body_bytes, 262_144);
        assert!(c.demo_agents);
        assert!(c.cache_enabled);
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
        assert_eq!(c.routing.policy, crate::routing::PolicyKind::Score);
        assert_eq!(c.routing.explore, 0.05);
        assert_eq!(c.routing.slow_start, Duration::from_secs(5));
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
