//! Building and running the application: `Application::build(config)` binds the listener
//! (port 0 works, which is how the tests start it) and wires every part together.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc};

use poem::EndpointExt;
use tokio::sync::watch;

use crate::{
    agents::{
        demo::{self, DemoKind},
        http::HttpAgents,
        AgentTransport,
    },
    api::{self, AppState},
    cache::{Caches, INVALIDATION_CHANNEL},
    config::{kinds::Named, Config, RuntimeKind},
    graph::{
        gate::GatedGraph,
        memory::MemoryGraph,
        neo4j::{Neo4jGraph, Neo4jSettings, Resolver},
        seed::{Seed, DEFAULT_SEED},
        KnowledgeGraph, TimedGraph,
    },
    metrics::Metrics,
    pipeline::{learning::Learner, neurogenesis::Neurogenesis, Pipeline, Regions, REGIONS_REFRESH},
    resilience::{
        limit::{ClientLimiter, Global},
        peers::{self, Peers},
        Stack, StackSettings,
    },
    store::{RedisStore, SharedStore},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Seed(#[from] crate::graph::seed::SeedError),
    #[error(transparent)]
    Demo(#[from] crate::graph::memory::UnresolvedDemo),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the demo agents: {0}")]
    DemoAgents(#[source] std::io::Error),
    #[error("agent {agent:?}: endpoint {endpoint:?} is not in AGENT_ALLOWED_HOSTS")]
    EndpointNotAllowed { agent: String, endpoint: String },
    #[error("cannot set up the graph connection: {0}")]
    Graph(#[source] crate::graph::GraphError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The built-in demo agents running in-process on free loopback ports.
pub struct DemoAgents {
    urls: HashMap<&'static str, String>,
    stop: watch::Sender<bool>,
}

impl DemoAgents {
    pub fn none() -> Self {
        DemoAgents {
            urls: HashMap::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Starts every demo agent on 127.0.0.1:0.
    pub fn start() -> std::io::Result<Self> {
        let (stop, _) = watch::channel(false);
        let mut urls = HashMap::new();
        for kind in DemoKind::ALL {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            let port = listener.local_addr()?.port();
            let mut rx = stop.subscribe();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = rx.wait_for(|stopped| *stopped).await;
                };
                if let Err(e) = demo::serve(kind, listener, shutdown).await {
                    tracing::error!(agent = kind.id(), error = %e, "demo agent stopped");
                }
            });
            urls.insert(kind.id(), format!("http://127.0.0.1:{port}/query"));
        }
        Ok(DemoAgents { urls, stop })
    }

    /// Resolves `{demo:<id>}` endpoints stored in a shared graph.
    pub fn resolver(&self) -> Resolver {
        let urls = self.urls.clone();
        Arc::new(move |id: &str| urls.get(id).cloned())
    }

    /// The `/query` URL of a running demo agent.
    pub fn url(&self, id: &str) -> Option<String> {
        self.urls.get(id).cloned()
    }
}

impl Drop for DemoAgents {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub struct Application {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    demos: DemoAgents,
}

impl Application {
    /// Wires the application and binds its listener; nothing is served until `run`.
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let demos = if config.demo_agents() {
            DemoAgents::start().map_err(StartupError::DemoAgents)?
        } else {
            DemoAgents::none()
        };
        let graph: Arc<dyn KnowledgeGraph> = match &config.neo4j_uri {
            Some(uri) => {
                let g = Neo4jGraph::connect(&neo4j_settings(&config, uri), demos.resolver())
                    .await
                    .map_err(StartupError::Graph)?;
                Arc::new(GatedGraph::new(
                    TimedGraph::new(g, metrics.clone()),
                    config.graph_timeout,
                    metrics.clone(),
                ))
            }
            None => {
                let seed = match &config.graph_seed {
                    Some(path) => Seed::from_file(path)?,
                    None => Seed::parse(DEFAULT_SEED)?,
                };
                let g = MemoryGraph::from_seed(&seed, |id| demos.url(id))?;
                Arc::new(TimedGraph::new(g, metrics.clone()))
            }
        };
        check_endpoints(&config, &*graph, &demos).await?;
        let transport: Arc<dyn AgentTransport> = Arc::new(
            HttpAgents::new(config.http_pool_max, config.agent_allowed_hosts.clone())
                .map_err(StartupError::Client)?,
        );
        let state = Arc::new(build_state(
            config.clone(),
            graph,
            transport,
            metrics,
            |id| demos.url(id),
        ));
        if let Some(regions) = &state.pipeline.regions {
            regions.refresh(state.pipeline.graph.as_ref()).await;
        }

        let addr = SocketAddr::new(config.host, config.port);
        let bound = match config.runtime {
            RuntimeKind::PerCore => crate::cores::bind_shared(addr, LISTEN_BACKLOG),
            RuntimeKind::WorkStealing => crate::cores::bind(addr, LISTEN_BACKLOG, false),
        };
        let listener = bound.map_err(|source| StartupError::Bind { addr, source })?;
        Ok(Application {
            listener,
            state,
            demos,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// URL of a built-in demo agent, when they run.
    pub fn demo_url(&self, id: &str) -> Option<String> {
        self.demos.url(id)
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let port = self.listener.local_addr()?.port();
        let config = &self.state.config;
        let fd_limit = crate::server::raise_fd_limit();
        let limits = crate::config::ConnectionLimits {
            max_connections: crate::server::effective_cap(
                config.connections.max_connections,
                fd_limit,
            ),
            ..config.connections.clone()
        };
        tracing::info!(
            port,
            max_connections = limits.max_connections,
            fd_limit,
            runtime = config.runtime.name(),
            "orchestrator listening"
        );
        let app = api::app(self.state.clone()).map_to_response();
        let server = crate::server::Server::new(
            app,
            limits,
            crate::server::ConnectionStats::new(&self.state.metrics),
            config.shutdown_drain,
        )
        .with_shortcut(api::shortcut(self.state.clone()));
        let result = match config.runtime {
            RuntimeKind::PerCore => {
                let cores = crate::cores::count(config.runtime_cores);
                crate::cores::serve(server, self.listener, cores, LISTEN_BACKLOG, shutdown).await
            }
            RuntimeKind::WorkStealing => {
                self.listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(self.listener)?;
                server.serve(listener, shutdown).await
            }
        };
        // In-flight requests are done (or the drain ran out): write what they learned.
        self.state
            .pipeline
            .learner
            .shutdown(std::time::Duration::from_secs(5))
            .await;
        drop(self.demos);
        tracing::info!("orchestrator stopped");
        result
    }
}

/// Every agent endpoint (seed, template) must be an allowed host before anything serves.
async fn check_endpoints(
    config: &Config,
    graph: &dyn KnowledgeGraph,
    demos: &DemoAgents,
) -> Result<(), StartupError> {
    let guard = &config.agent_allowed_hosts;
    if config.neo4j_uri.is_none() {
        if let Ok(agents) = graph.agents().await {
            if let Some(a) = agents.iter().find(|a| !guard.allows(&a.agent.endpoint)) {
                return Err(StartupError::EndpointNotAllowed {
                    agent: a.agent.name.clone(),
                    endpoint: a.agent.endpoint.clone(),
                });
            }
        }
    }
    if config.enable_dynamic_agents {
        let template = config
            .dynamic_agent_template_url
            .clone()
            .or_else(|| demos.url("factbase"));
        if let Some(t) = template.filter(|t| !guard.allows(t)) {
            return Err(StartupError::EndpointNotAllowed {
                agent: "DYNAMIC_AGENT_TEMPLATE_URL".into(),
                endpoint: t,
            });
        }
    }
    Ok(())
}

/// Pending connections the kernel may queue (capped by `net.core.somaxconn`; std's 128
/// would make a burst of clients wait for SYN retransmits of 1 s and more).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bolt settings from the configuration.
pub fn neo4j_settings(config: &Config, uri: &str) -> Neo4jSettings {
    Neo4jSettings {
        uri: uri.to_string(),
        user: config.neo4j_user.clone(),
        password: config
            .neo4j_password
            .as_ref()
            .map_or("", |p| p.expose())
            .to_string(),
        database: config.neo4j_database.clone(),
        timeout: config.graph_timeout,
        pool: config.neo4j_pool_max,
    }
}

/// The shared state behind every request.
pub fn build_state(
    config: Arc<Config>,
    graph: Arc<dyn KnowledgeGraph>,
    transport: Arc<dyn AgentTransport>,
    metrics: Arc<Metrics>,
    demo_url: impl Fn(&str) -> Option<String>,
) -> AppState {
    let in_runtime = tokio::runtime::Handle::try_current().is_ok();
    let store: Option<Arc<RedisStore>> = match (&config.redis_url, in_runtime) {
        (Some(url), true) => match RedisStore::connect(url.expose(), config.redis_timeout) {
            Ok(s) => {
                s.spawn_recovery_probe();
                Some(s)
            }
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL is unusable; running on L1 only");
                None
            }
        },
        _ => None,
    };
    let shared: Option<Arc<dyn SharedStore>> = store.clone().map(|s| s as Arc<dyn SharedStore>);
    let caches = Arc::new(Caches::new(
        config.cache.clone(),
        shared.clone(),
        graph.is_remote(),
        metrics.clone(),
    ));
    if let Some(store) = &store {
        let (on_msg, on_reset) = (Arc::downgrade(&caches), Arc::downgrade(&caches));
        store.spawn_subscriber(
            INVALIDATION_CHANNEL,
            move |payload| {
                if let Some(c) = on_msg.upgrade() {
                    c.on_message(payload);
                }
            },
            move || {
                if let Some(c) = on_reset.upgrade() {
                    tracing::info!("dropping L1 entries that may have missed invalidations");
                    c.clear_local();
                }
            },
        );
    }
    let shared_health = store.as_ref().map(|store| {
        let shared = Peers::start(
            store.clone(),
            config.breaker.open,
            metrics.shared_health.clone(),
        );
        let on_msg = Arc::downgrade(&shared);
        let flag = store.spawn_subscriber(
            peers::HEALTH_CHANNEL,
            move |payload| {
                if let Some(s) = on_msg.upgrade() {
                    s.on_message(payload);
                }
            },
            || {},
        );
        shared.listen_through(flag);
        shared
    });
    let global = shared.map(|store| Global {
        store,
        fallbacks: metrics.rate_limit_fallbacks.clone(),
    });
    let learner = if in_runtime {
        Learner::spawn(graph.clone(), &config.learning, metrics.clone())
    } else {
        Learner::disabled()
    };
    let router = Arc::new(crate::routing::Router::new(config.routing.clone()));
    let mut stack = Stack::new(
        transport,
        StackSettings::from_config(&config),
        caches,
        global.clone(),
        metrics.clone(),
        router.signals().clone(),
    );
    if let Some(shared) = shared_health {
        stack = stack.share_health(shared);
    }
    let stack = Arc::new(stack);
    stack.spawn_summaries();
    let neurogenesis = config.enable_dynamic_agents.then(|| {
        let template = config
            .dynamic_agent_template_url
            .clone()
            .or_else(|| demo_url("factbase"))
            .unwrap_or_else(|| "http://127.0.0.1:5003/query".to_string());
        Arc::new(Neurogenesis::new(
            graph.clone(),
            stack.transport().clone(),
            stack.caches.clone(),
            template,
            config.neurogenesis_timeout,
            metrics.clone(),
        ))
    });
    let pipeline = Arc::new(Pipeline {
        neurogenesis,
        graph,
        stack,
        router,
        learner,
        metrics: metrics.clone(),
        task_concurrency: config.task_concurrency,
        graph_availability: Default::default(),
        discovery_warning: Default::default(),
        regions: config.region.clone().map(Regions::new),
        counts: crate::pipeline::TaskCounts::new(&metrics),
    });
    if let (Some(peers), true) = (pipeline.stack.shared_health().cloned(), in_runtime) {
        // The learned estimate is shared: each tick, what this replica saw goes to the
        // peers and what they saw is counted here.
        pipeline.router.estimates().share();
        crate::every::every(peers::SUMMARY_EVERY, &pipeline, move |p| {
            let peers = peers.clone();
            async move {
                let estimates = p.router.estimates();
                peers.publish_evidence(estimates.drain_shared(peers::MAX_SUMMARIES));
                for e in peers.take_evidence() {
                    estimates.absorb(&e);
                }
                true
            }
        });
    }
    if pipeline.regions.is_some() && in_runtime {
        crate::every::every(REGIONS_REFRESH, &pipeline, |p| async move {
            if let Some(r) = &p.regions {
                r.refresh(p.graph.as_ref()).await;
            }
            true
        });
    }
    let client_limiter = ClientLimiter::new(
        config.rate_limit_per_client,
        config.rate_limit_burst(),
        global,
    );
    if let (Some(l), Ok(_)) = (&client_limiter, tokio::runtime::Handle::try_current()) {
        l.spawn_pruner();
    }
    AppState::new(config, pipeline, metrics, client_limiter)
}

/// The OpenAPI document the server serves, from the API's types alone.
pub fn openapi_json() -> String {
    api::service().spec()
}

/// `seed-graph`: loads a seed file into the Neo4j graph at NEO4J_URI.
pub async fn seed_graph(config: &Config, file: &std::path::Path) -> Result<String, String> {
    let uri = config.neo4j_uri.as_deref().ok_or("NEO4J_URI is not set")?;
    let seed = Seed::from_file(file).map_err(|e| e.to_string())?;
    let mut settings = neo4j_settings(config, uri);
    settings.timeout = settings.timeout.max(std::time::Duration::from_secs(30));
    let graph = Neo4jGraph::connect(&settings, Arc::new(|_: &str| None))
        .await
        .map_err(|e| e.to_string())?;
    graph.seed(&seed).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "seeded {} regions, {} concepts, {} agents, {} edges",
        seed.regions.len(),
        seed.concepts.len(),
        seed.agents.len(),
        seed.handles.len()
    ))
}
