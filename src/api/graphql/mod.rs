//! GraphQL at `/graphql`: the knowledge graph and the routing state to read (agents,
//! concepts, `candidates` with the routing score and its parts, status), and `process` —
//! the same pipeline, limits and auth as `POST /process`. Depth and complexity are limited
//! on the schema; its SDL is committed (`openapi/schema.graphql`) and checked by a test.

mod graphiql;
mod mutation;
mod query;
mod types;

use std::sync::Arc;

use async_graphql::{http::ALL_WEBSOCKET_PROTOCOLS, Context, ErrorExtensions, Schema};
use async_graphql_poem::{GraphQLProtocol, GraphQLWebSocket};
use poem::{
    handler,
    web::{websocket::WebSocket, Data},
    IntoResponse, Request, Response,
};
use serde_json::Value;

use super::{
    auth::{client_key, presented_key},
    errors::ApiError,
    ws::Upgrade,
    AppState,
};
use crate::graph::AgentRecord;

pub(super) use graphiql::{asset, page};
pub use mutation::{MutationRoot, SubscriptionRoot};
pub use query::QueryRoot;
pub use types::*;

/// Nesting a query may reach.
pub const MAX_DEPTH: usize = 8;
/// Fields a query may select, counted over every list item's selection once.
pub const MAX_COMPLEXITY: usize = 500;

pub type MyriadSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema, with its limits; the application's state is added per request.
pub fn schema() -> MyriadSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// The schema in SDL (`myriad-orchestrator graphql-schema`; committed as
/// `openapi/schema.graphql`).
pub fn sdl() -> String {
    schema().sdl()
}

/// `POST /graphql`: a client key as on `/process`, the inbound rate limit, then the query.
#[handler]
pub(super) async fn endpoint(
    req: &Request,
    gql: async_graphql_poem::GraphQLRequest,
    app: Data<&Arc<AppState>>,
    schema: Data<&MyriadSchema>,
) -> Response {
    let app = app.0.clone();
    if let Err(e) = app.authenticate_key(presented_key(req)) {
        return ApiError::from(e).into_response();
    }
    if let Err(e) = app.admit_client(&client_key(req)).await {
        return e.into_response();
    }
    let agent_time: Arc<crate::context::AgentTime> =
        req.extensions().get().cloned().unwrap_or_default();
    let request = gql.0.data(app).data(agent_time);
    async_graphql_poem::GraphQLResponse::from(schema.0.execute(request).await).into_response()
}

/// Who a subscription socket counts against, for the inbound rate limit.
struct ClientId(String);

/// `GET /graphql/ws`: subscriptions over graphql-ws (or the older subscriptions-transport-ws).
/// A client key in a header is checked before the upgrade; without one (and with keys
/// configured) the `connection_init` payload must carry `{"apiKey": …}`.
#[handler]
pub(super) async fn subscriptions(
    req: &Request,
    upgrade: WebSocket,
    protocol: GraphQLProtocol,
    app: Data<&Arc<AppState>>,
    schema: Data<&MyriadSchema>,
) -> Response {
    let (app, schema) = (app.0.clone(), schema.0.clone());
    let Upgrade {
        authed,
        client,
        config,
    } = match Upgrade::check(&app, req) {
        Ok(start) => start,
        Err(e) => return ApiError::from(e).into_response(),
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .config(config)
        .on_upgrade(move |socket| {
            let mut data = async_graphql::Data::default();
            data.insert(app.clone());
            data.insert(ClientId(client));
            GraphQLWebSocket::new(socket, schema, protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    let key = payload.get("apiKey").and_then(Value::as_str);
                    if !authed && app.authenticate_key(key).is_err() {
                        return Err(async_graphql::Error::new("a valid API key is required"));
                    }
                    Ok(async_graphql::Data::default())
                })
                .serve()
        })
        .into_response()
}

/// `GET /graphql/schema`: the SDL.
#[handler]
pub(super) fn schema_text() -> String {
    sdl()
}

fn app<'a>(ctx: &Context<'a>) -> &'a Arc<AppState> {
    ctx.data_unchecked::<Arc<AppState>>()
}

/// Every agent with its concepts, from the graph.
async fn agent_records(ctx: &Context<'_>) -> async_graphql::Result<Vec<AgentRecord>> {
    app(ctx)
        .pipeline
        .graph
        .agents()
        .await
        .map_err(|_| unavailable())
}

fn unavailable() -> async_graphql::Error {
    async_graphql::Error::new("the knowledge graph is unavailable")
        .extend_with(|_, e| e.set("code", "graph_unavailable"))
}

fn api_error(e: ApiError) -> async_graphql::Error {
    let body = e.into_body().0;
    async_graphql::Error::new(body.error).extend_with(|_, e| e.set("code", body.code.as_str()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_sdl_is_the_schema() {
        let committed = include_str!("../../../openapi/schema.graphql");
        assert!(
            committed == super::sdl(),
            "openapi/schema.graphql is out of date: \
             cargo run -q -- graphql-schema > openapi/schema.graphql"
        );
    }
}
