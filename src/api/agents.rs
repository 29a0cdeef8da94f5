//! The agents resource: listing them (clients) and registering or removing them (admin,
//! `X-Admin-Key`).

use poem_openapi::{param::Path, payload::Json, OpenApi};

use super::{
    auth::{AdminError, AdminKey, ClientAuth},
    dto::*,
    errors::{ApiError, AuthError, ErrorBody, ErrorCode},
    validate::{validate_concept, validate_intent},
    AppState, State, Tag,
};
use crate::{
    agents::endpoint::{normalize_endpoint, redact_endpoint, EndpointError},
    cache::Invalidation,
    graph::{seed::validate_agent_name, AgentInfo, AgentRecord},
    routing::Live,
};

error_responses! {
    pub(super) enum AgentsError {
        /// API keys are configured and the request has no valid one.
        401 => Unauthorized,
        /// The knowledge graph is unavailable.
        503 => Unavailable,
    }
}

pub(super) fn agent_view(record: &AgentRecord, live: &Live) -> AgentView {
    AgentView {
        name: record.agent.name.clone(),
        agent_type: record.agent.agent_type.clone(),
        endpoint: redact_endpoint(&record.agent.endpoint),
        status: record.agent.status.clone(),
        intents: record.agent.intents.clone(),
        concepts: record
            .concepts
            .iter()
            .map(|(c, s)| ConceptEdge::new(c.clone(), s))
            .collect(),
        capabilities: record.agent.capabilities.clone(),
        breaker: live.breaker.into(),
        health: live.health,
        latency_ms: Nullable(live.latency_ms),
    }
}

pub struct AgentsApi;

/// A graph failure during an admin change: logged, answered 503 without the detail.
pub(super) fn graph_unavailable(e: crate::graph::GraphError, what: &str) -> AdminError {
    tracing::warn!(error = %e, "{what}");
    AdminError::Unavailable(Json(ErrorBody::new(
        ErrorCode::GraphUnavailable,
        "the knowledge graph is unavailable",
    )))
}

impl AppState {
    pub(super) fn registration(
        &self,
        r: AgentRegistration,
    ) -> Result<(AgentInfo, Vec<(String, f64)>), ApiError> {
        validate_agent_name(&r.name)
            .map_err(|why| ApiError::new(ErrorCode::InvalidName, format!("name: {why}")))?;
        let endpoint = normalize_endpoint(&r.endpoint).map_err(|why| match why {
            EndpointError::NotHttp => ApiError::new(ErrorCode::InvalidEndpoint, why.to_string()),
            _ => ApiError::new(ErrorCode::EndpointNotAllowed, why.to_string()),
        })?;
        if !self.config.agent_allowed_hosts.allows(&endpoint) {
            return Err(ApiError::new(
                ErrorCode::EndpointNotAllowed,
                "the endpoint's host is not in AGENT_ALLOWED_HOSTS",
            ));
        }
        if r.intents.is_empty() || r.intents.len() > 64 {
            return Err(ApiError::new(
                ErrorCode::InvalidIntents,
                "list 1–64 intents",
            ));
        }
        if r.concepts.is_empty() || r.concepts.len() > 256 {
            return Err(ApiError::new(
                ErrorCode::InvalidConcepts,
                "list 1–256 concepts",
            ));
        }
        let capabilities = r.capabilities.unwrap_or_default();
        if capabilities.len() > 64 || capabilities.iter().any(|c| c.is_empty() || c.len() > 64) {
            return Err(ApiError::new(
                ErrorCode::InvalidCapabilities,
                "at most 64 capabilities of 1–64 characters",
            ));
        }
        let agent_type = r.agent_type.map(|t| t.0).unwrap_or_else(|| "static".into());
        if agent_type.is_empty() || agent_type.len() > 32 {
            return Err(ApiError::new(
                ErrorCode::InvalidType,
                "type must be 1–32 characters",
            ));
        }
        let mut concepts = Vec::with_capacity(r.concepts.len());
        for c in r.concepts {
            let weight = c.weight.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&weight) {
                return Err(ApiError::new(
                    ErrorCode::InvalidWeight,
                    "weights are in [0, 1]",
                ));
            }
            concepts.push((validate_concept(&*c.name)?, weight));
        }
        let agent = AgentInfo {
            name: r.name.0.trim().to_string(),
            agent_type,
            endpoint,
            status: "active".into(),
            intents: r
                .intents
                .iter()
                .map(|i| validate_intent(&**i))
                .collect::<Result<_, _>>()?,
            capabilities: capabilities.into_iter().map(|c| c.0).collect(),
            facts: None,
        };
        Ok((agent, concepts))
    }
}

#[OpenApi]
impl AgentsApi {
    /// Every agent with its intents, concepts (with learned weights) and breaker state.
    #[oai(path = "/agents", method = "get", tag = "Tag::Routing")]
    async fn agents(
        &self,
        state: State<'_>,
        auth: ClientAuth,
    ) -> Result<Json<AgentList>, AgentsError> {
        state.authenticate(&auth).map_err(|e| {
            let AuthError::Unauthorized(b) = e;
            AgentsError::Unauthorized(b)
        })?;
        let records = state.pipeline.graph.agents().await.map_err(|e| {
            tracing::warn!(error = %e, "listing agents failed");
            AgentsError::Unavailable(Json(ErrorBody::new(
                ErrorCode::GraphUnavailable,
                "the knowledge graph is unavailable",
            )))
        })?;
        let agents: Vec<AgentView> = records
            .iter()
            .map(|r| agent_view(r, &state.live(&r.agent.name)))
            .collect();
        Ok(Json(AgentList {
            count: agents.len() as u32,
            agents,
        }))
    }

    /// Registers an agent, or updates the agent of that name (admin). Caches of every
    /// replica forget what they held about it and its concepts.
    #[oai(path = "/agents", method = "post", tag = "Tag::Admin")]
    async fn register_agent(
        &self,
        state: State<'_>,
        key: AdminKey,
        body: Json<AgentRegistration>,
    ) -> Result<Json<Registered>, AdminError> {
        state.check_admin(&key)?;
        let (agent, concepts) = state.registration(body.0)?;
        let graph = &state.pipeline.graph;
        let existed = graph
            .upsert_agent(agent.clone(), &concepts)
            .await
            .map_err(|e| graph_unavailable(e, "registering an agent failed"))?;
        tracing::info!(agent = %agent.name, existed, "agent registered");
        state
            .pipeline
            .stack
            .caches
            .invalidate(Invalidation {
                agents: vec![agent.name.clone()],
                concepts: concepts.iter().map(|(c, _)| c.clone()).collect(),
            })
            .await;
        let record = graph
            .agents()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|a| a.agent.name == agent.name))
            .unwrap_or(AgentRecord {
                agent,
                concepts: Vec::new(),
            });
        Ok(Json(Registered {
            status: if existed { "updated" } else { "registered" }.into(),
            agent: agent_view(&record, &state.live(&record.agent.name)),
        }))
    }

    /// Removes an agent and its edges (admin). Caches of every replica forget it.
    #[oai(path = "/agents/:name", method = "delete", tag = "Tag::Admin")]
    async fn remove_agent(
        &self,
        state: State<'_>,
        key: AdminKey,
        name: Path<String>,
    ) -> Result<Json<Removed>, AdminError> {
        state.check_admin(&key)?;
        let removed = state
            .pipeline
            .graph
            .remove_agent(&name)
            .await
            .map_err(|e| graph_unavailable(e, "removing an agent failed"))?;
        let Some(concepts) = removed else {
            return Err(AdminError::NotFound(Json(ErrorBody::new(
                ErrorCode::AgentNotFound,
                "no agent of that name",
            ))));
        };
        tracing::info!(agent = %name.0, "agent removed");
        state
            .pipeline
            .stack
            .caches
            .invalidate(Invalidation {
                agents: vec![name.0.clone()],
                concepts: concepts.clone(),
            })
            .await;
        Ok(Json(Removed {
            status: "removed".into(),
            name: name.0,
            concepts,
        }))
    }
}
