//! The queries: the graph, the routing state, the service.

use std::collections::BTreeMap;

use async_graphql::{Context, Object};

use super::{agent_records, api_error, app, types::*, unavailable};
use crate::routing::Admission;

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Every agent, with the concepts it handles and its breaker.
    async fn agents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Agent>> {
        let app = app(ctx);
        let records = agent_records(ctx).await?;
        Ok(records
            .into_iter()
            .map(|r| Agent {
                breaker: app.pipeline.stack.breaker_state(&r.agent.name).into(),
                name: r.agent.name,
                intents: r.agent.intents,
                capabilities: r.agent.capabilities,
                concepts: r
                    .concepts
                    .into_iter()
                    .map(|(concept, s)| Handles {
                        concept,
                        weight: s.weight,
                        success_rate: s.success_rate,
                        usage_count: s.usage_count,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Every region, with the concepts and agents that belong to it.
    async fn regions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Region>> {
        let regions = app(ctx)
            .pipeline
            .graph
            .regions()
            .await
            .map_err(|_| unavailable())?;
        Ok(regions
            .into_iter()
            .map(|r| Region {
                name: r.name,
                concepts: r.concepts,
                agents: r.agents,
            })
            .collect())
    }

    /// Every concept some agent handles, with those agents.
    async fn concepts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Concept>> {
        let records = agent_records(ctx).await?;
        let mut by_concept: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in records {
            for (concept, _) in r.concepts {
                by_concept
                    .entry(concept)
                    .or_default()
                    .push(r.agent.name.clone());
            }
        }
        Ok(by_concept
            .into_iter()
            .map(|(name, agents)| Concept { name, agents })
            .collect())
    }

    /// The candidates for a concept and intent, as the routing policy sees them now.
    async fn candidates(
        &self,
        ctx: &Context<'_>,
        concept: String,
        #[graphql(default = "define")] intent: String,
    ) -> async_graphql::Result<Vec<Candidate>> {
        let app = app(ctx);
        let concept = crate::api::validate::validate_concept(&concept).map_err(api_error)?;
        let intent = crate::api::validate::validate_intent(&intent).map_err(api_error)?;
        let (found, _) = app
            .pipeline
            .discover(&concept, &intent, true, None)
            .await
            .map_err(|_| unavailable())?;
        // The order `/discover` lists them in.
        let (order, assessed) = app.pipeline.listing(&concept, &found);
        let regions = app.pipeline.regions.as_ref();
        let out: Vec<Candidate> = order
            .into_iter()
            .map(|i| {
                let (c, (inputs, live)) = (&found[i], &assessed[i]);
                Candidate {
                    agent: c.agent.name.clone(),
                    score: inputs.score(),
                    weight: inputs.weight,
                    health: inputs.health,
                    latency_ms: inputs.latency_ms,
                    in_flight: inputs.in_flight,
                    slow_start: inputs.ramp,
                    admitted: inputs.admission != Admission::Refused,
                    breaker: live.breaker.into(),
                    held_by_peer: live.held_by_peer,
                    region: regions.and_then(|r| r.of(&c.agent.name)),
                    local: inputs.local,
                    estimate: inputs.posterior.mean(),
                    estimate_sd: inputs.posterior.sd(),
                    evidence: inputs.posterior.evidence(),
                }
            })
            .collect();
        Ok(out)
    }

    /// What the service has done since it started.
    async fn metrics(&self, ctx: &Context<'_>) -> MetricsSummary {
        let p = app(ctx).metrics_body().performance;
        MetricsSummary {
            uptime_s: p.uptime_s,
            requests_total: p.requests_total,
            tasks_total: p.tasks_total,
            tasks_succeeded_total: p.tasks_succeeded_total,
            tasks_failed_total: p.tasks_failed_total,
            tasks_cancelled_total: p.tasks_cancelled_total,
            task_latency_avg_ms: p.task_latency_avg_ms,
            response_cache_hits_total: p.cache.responses.l1_hits + p.cache.responses.l2_hits,
            connections_open: p.connections.open,
        }
    }

    /// The service, its graph backend and whether traces are exported.
    async fn status(&self, ctx: &Context<'_>) -> async_graphql::Result<Status> {
        let app = app(ctx);
        let agents = agent_records(ctx).await?.len();
        Ok(Status {
            service: "orchestrator".into(),
            version: crate::VERSION.into(),
            graph_backend: app.pipeline.graph.backend().into(),
            tracing: app.tracing_enabled,
            agents,
        })
    }
}
