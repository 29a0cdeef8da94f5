//! The HTTP surface. Nothing here knows a backend type.
//!
//! - [`ops`]: `/health`, `/ready`, `/status`, `/metrics` (operations).
//! - [`process`]: `/process`, `/process_query`, `/discover`.
//! - [`batch`]: the batch use case every transport shares (prepare, run in a `Progress`
//!   that cancels what a leaving client leaves, finish); [`stream`] (SSE), [`ws`] and
//!   [`graphql`] are the transports beside JSON.
//! - [`agents`]: `GET /agents` (clients); `POST /agents`, `DELETE /agents/{name}` (admin).
//! - [`auth`]: client and admin keys, the inbound rate limit, the admin operations' errors.
//! - [`validate`]: every limit on client input, and the DTO → domain step.
//! - [`edge`]: what every request goes through once (span, limits, error bodies, metrics);
//!   [`passage`]: its span, clock and closing headers, shared with the server's own path.
//! - [`dto`], [`errors`]: the wire types and the one error body.

#[macro_use]
pub mod errors;
pub mod agents;
pub mod auth;
pub mod batch;
pub mod dto;
pub mod edge;
pub mod graphql;
mod lane;
pub mod ops;
mod passage;
pub mod process;
pub mod stream;
pub mod validate;
pub mod ws;

use std::sync::{Arc, Mutex};

use poem::{Endpoint, EndpointExt, IntoEndpoint, Route};
use poem_openapi::{OpenApiService, Tags};
use tokio::time::Instant;

use crate::{
    config::Config, metrics::Metrics, pipeline::Pipeline, resilience::limit::ClientLimiter,
    routing::Live, VERSION,
};
use agents::AgentsApi;
use ops::OpsApi;
use process::ProcessApi;

/// Everything the operations need, shared by every request.
pub struct AppState {
    pub config: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// Inbound per-client limit of `/process` and `/discover` (None = off).
    pub client_limiter: Option<Arc<ClientLimiter>>,
    /// Spans are exported (error bodies then carry `trace_id`).
    pub tracing_enabled: bool,
    status_cache: Mutex<Option<(Instant, dto::Dependencies, bool)>>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        client_limiter: Option<Arc<ClientLimiter>>,
    ) -> Self {
        AppState {
            tracing_enabled: config.tracing.endpoint.is_some(),
            config,
            pipeline,
            metrics,
            client_limiter,
            status_cache: Mutex::new(None),
        }
    }
}

/// The headers and peer of a request, whichever server read it: poem's request, or the
/// server's own head (the `/process` lane's path in [`crate::server::h1`]).
pub(super) trait Asked {
    /// Every value of the header `name` (lowercase), as sent.
    fn raw_values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's;

    /// The client's address.
    fn remote_ip(&self) -> Option<std::net::IpAddr>;

    /// Every value of the header `name` that is visible ASCII (as `HeaderValue::to_str`).
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s str> + 's {
        self.raw_values(name).filter_map(header_text)
    }

    /// The first value of the header `name`, if it is visible ASCII.
    fn header(&self, name: &'static str) -> Option<&str> {
        self.raw_values(name).next().and_then(header_text)
    }
}

/// A header value as text, when every byte is visible ASCII or a tab (`HeaderValue::to_str`).
fn header_text(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

impl Asked for poem::Request {
    fn raw_values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers()
            .get_all(name)
            .into_iter()
            .map(|v| v.as_bytes())
    }

    fn remote_ip(&self) -> Option<std::net::IpAddr> {
        self.remote_addr().as_socket_addr().map(|a| a.ip())
    }
}

impl Asked for crate::server::Head<'_> {
    fn raw_values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.all(name)
    }

    fn remote_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.remote.ip())
    }
}

/// The most a client may ask for in `X-Request-Timeout-Ms` (the header's declared maximum).
pub(super) const MAX_CLIENT_TIMEOUT_MS: u64 = 600_000;

impl AppState {
    /// A request's time: `REQUEST_TIMEOUT_MS`, or less if the client said it waits less.
    pub(super) fn request_timeout(&self, client_ms: Option<u64>) -> std::time::Duration {
        let configured = self.config.request_timeout;
        client_ms.map_or(configured, |ms| {
            configured.min(std::time::Duration::from_millis(ms))
        })
    }

    pub(super) fn live(&self, agent: &str) -> Live {
        self.pipeline.live(agent)
    }

    pub(super) fn breaker(&self, agent: &str) -> crate::resilience::breaker::BreakerState {
        self.pipeline.stack.breaker_state(agent)
    }
}

#[derive(Tags)]
pub(crate) enum Tag {
    /// Liveness, readiness, status and metrics.
    Operations,
    /// Registering and removing agents (needs `X-Admin-Key`).
    Admin,
    /// Routing tasks to agents.
    Routing,
}

/// Every operation group, composed into one service.
pub type Api = (OpsApi, ProcessApi, AgentsApi);

/// What a handler reads the application from (the state is the route's data, so the API
/// types, and the spec, need none).
pub(super) type State<'a> = poem::web::Data<&'a Arc<AppState>>;

/// The OpenAPI service (also used by `myriad-orchestrator openapi`).
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (OpsApi, ProcessApi, AgentsApi),
        "Myriad Orchestrator",
        VERSION,
    )
    .description(
        "Routes questions and concept/intent tasks to agent services found in a knowledge graph, \
         through rate limits, circuit breakers, retries and caches.",
    )
}

/// The `/process` lane on the server's own path (see [`lane`]).
pub fn shortcut(state: Arc<AppState>) -> Arc<dyn crate::server::Shortcut> {
    Arc::new(lane::Lane::new(state))
}

/// The whole HTTP application: API, `/openapi.json`, Swagger UI at `/docs`, and the edge
/// middleware (server span, body limit, error normalization, request metrics).
pub fn app(state: Arc<AppState>) -> impl Endpoint {
    let api = service();
    let ui = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec)
        .at("/ws", poem::get(ws::ws))
        .at("/graphql", poem::get(graphql::page).post(graphql::endpoint))
        .at("/graphql/schema", poem::get(graphql::schema_text))
        .at("/graphql/ws", poem::get(graphql::subscriptions))
        .at("/graphql/assets/:file", poem::get(graphql::asset))
        .nest("/", api)
        .data(state.clone())
        .data(graphql::schema())
        .into_endpoint()
        .around(move |ep, req| {
            let state = state.clone();
            async move { Ok::<_, poem::Error>(edge::edge(&*ep, req, &state).await) }
        })
}
