//! The command line: one function per subcommand. `main.rs` only calls [`run`].

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{
    agents::demo::{self, DemoKind},
    config::{Config, LogFormat, RawSettings, EXIT_BAD_CONFIG},
    startup::{self, Application},
    telemetry,
};

/// Myriad Orchestrator: routes questions and concept/intent tasks to agent services.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    settings: RawSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve {
        #[command(flatten)]
        settings: RawSettings,
    },
    /// Print the OpenAPI document (JSON) and exit.
    Openapi,
    /// Print the GraphQL schema (SDL) and exit.
    GraphqlSchema,
    /// Run one built-in demo agent.
    DemoAgent(DemoAgentArgs),
    /// Load a seed file into the Neo4j graph at NEO4J_URI (idempotent: twice changes nothing).
    SeedGraph {
        /// The seed file (the format of GRAPH_SEED).
        #[arg(long)]
        file: std::path::PathBuf,
        #[command(flatten)]
        settings: RawSettings,
    },
    /// Probe a running orchestrator's /health: exit 0 when healthy, 1 otherwise (for
    /// container health checks; no curl needed in the image).
    Healthcheck {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:5000/health")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Validate the configuration and exit (64 when it is bad).
    CheckConfig {
        #[command(flatten)]
        settings: RawSettings,
    },
}

/// Where a demo agent listens and how it misbehaves.
#[derive(Args)]
pub struct DemoAgentArgs {
    /// lightbulb_definition, lightbulb_function or factbase.
    #[arg(long)]
    pub name: DemoKind,
    /// Port to listen on.
    #[arg(long, default_value_t = 5001)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
    /// Fault injection: start failing this many seconds after start.
    #[arg(long)]
    pub fail_after_s: Option<f64>,
    /// Fault injection: fail for this many seconds, then recover (default: forever).
    #[arg(long)]
    pub fail_for_s: Option<f64>,
    /// Fault injection: the status answered while failing.
    #[arg(long, default_value_t = 500)]
    pub fail_status: u16,
    /// Delay every answer by this many milliseconds (a slow agent).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// A slow tail: one call in this many (the first, then every N-th) waits `--stall-ms`.
    #[arg(long, default_value_t = 0)]
    pub stall_every: u64,
    /// How long a stalled call waits, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub stall_ms: u64,
    /// Serve at most this many calls at once; the rest wait their turn (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub capacity: u32,
}

fn load(raw: &RawSettings) -> Result<Config, ExitCode> {
    Config::from_raw(raw).map_err(|errors| {
        eprintln!("invalid configuration:");
        for e in errors {
            eprintln!("  - {e}");
        }
        ExitCode::from(EXIT_BAD_CONFIG as u8)
    })
}

async fn probe_health(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    match body["status"].as_str() {
        Some("healthy") => Ok(()),
        other => Err(format!("status {other:?}")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received; draining");
}

/// Parses the command line and runs the subcommand (serving when there is none).
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.settings).await,
        Some(Command::Serve { settings }) => serve(settings).await,
        Some(Command::Openapi) => openapi(),
        Some(Command::GraphqlSchema) => {
            print!("{}", crate::api::graphql::sdl());
            ExitCode::SUCCESS
        }
        Some(Command::SeedGraph { file, settings }) => seed_graph(&file, &settings).await,
        Some(Command::Healthcheck { url, timeout_ms }) => healthcheck(&url, timeout_ms).await,
        Some(Command::CheckConfig { settings }) => check_config(&settings),
        Some(Command::DemoAgent(args)) => demo_agent(args).await,
    }
}

/// Prints the OpenAPI document; needs no configuration and wires nothing.
fn openapi() -> ExitCode {
    println!("{}", startup::openapi_json());
    ExitCode::SUCCESS
}

async fn seed_graph(file: &std::path::Path, settings: &RawSettings) -> ExitCode {
    let config = match load(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init_logs(config.log_format);
    match startup::seed_graph(&config, file).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seeding failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(url: &str, timeout_ms: u64) -> ExitCode {
    match probe_health(url, std::time::Duration::from_millis(timeout_ms)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(settings: &RawSettings) -> ExitCode {
    match load(settings) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn demo_agent(args: DemoAgentArgs) -> ExitCode {
    let DemoAgentArgs {
        name,
        port,
        host,
        fail_after_s,
        fail_for_s,
        fail_status,
        delay_ms,
        stall_every,
        stall_ms,
        capacity,
    } = args;
    let delay = std::time::Duration::from_millis(delay_ms);
    let fault = match fail_after_s {
        Some(after) => Some(demo::Fault {
            after: std::time::Duration::from_secs_f64(after.max(0.0)),
            duration: fail_for_s.map(|d| std::time::Duration::from_secs_f64(d.max(0.0))),
            status: fail_status,
            ..demo::Fault::delay(delay)
        }),
        None if delay_ms > 0 || stall_every > 0 || capacity > 0 => Some(demo::Fault::delay(delay)),
        None => None,
    }
    .map(|f| demo::Fault {
        stall_every,
        stall: std::time::Duration::from_millis(stall_ms),
        capacity,
        ..f
    });
    telemetry::init_logs(LogFormat::Text);
    let listener = match std::net::TcpListener::bind((host, port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {host}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(agent = name.agent_name(), %port, "demo agent listening");
    match demo::serve_with_fault(name, fault, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo agent failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: RawSettings) -> ExitCode {
    let config = match load(&settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let telemetry = telemetry::init(config.log_format, &config.tracing);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("start-up failed: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let result = app.run_until(shutdown_signal()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
