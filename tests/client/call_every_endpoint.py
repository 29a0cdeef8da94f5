"""Calls every operation through a client generated from openapi/openapi.json.

Usage: python3 call_every_endpoint.py <base_url> <api_key> <admin_key> <agent_url>
(with the generated package `client` importable). Exits non-zero on the first surprise.
"""
import sys

from client import AuthenticatedClient
from client.api.admin import delete_agents_name, post_agents
from client.api.operations import get_health, get_metrics, get_metrics_json, get_ready, get_status
from client.api.routing import get_agents, post_discover, post_feedback, post_process, post_process_query
from client.models import (
    AgentList, AgentRegistration, BatchRequest, ConceptWeight, DiscoverRequest, Discovered,
    ErrorBody, FeedbackRequest, Health, MetricsBody, NoAgentFound, ProcessResponse, QueryRequest, Ready,
    Registered, Removed, StatusBody, TaskInput,
)

base, key, admin, agent_url = sys.argv[1:5]
c = AuthenticatedClient(base_url=base, token=key, headers={"X-Admin-Key": admin}, raise_on_unexpected_status=True)
anonymous = AuthenticatedClient(base_url=base, token="not-a-valid-key-0000", raise_on_unexpected_status=True)


def expect(value, kind, what):
    assert isinstance(value, kind), f"{what}: expected {kind.__name__}, got {type(value).__name__}: {value!r}"
    return value


h = expect(get_health.sync(client=c), Health, "GET /health")
assert h.status == "healthy" and h.service == "orchestrator"
expect(get_ready.sync(client=c), Ready, "GET /ready")
s = expect(get_status.sync(client=c), StatusBody, "GET /status")
assert s.service == "orchestrator"
m = expect(get_metrics.sync(client=c), MetricsBody, "GET /metrics")
assert m.service == "orchestrator"
expect(get_metrics_json.sync(client=c), MetricsBody, "GET /metrics/json")
agents = expect(get_agents.sync(client=c), AgentList, "GET /agents")
assert agents.count == len(agents.agents) >= 2

d = expect(post_discover.sync(client=c, body=DiscoverRequest(concept="lightbulb", intent="function")), Discovered, "POST /discover")
assert d.agent.name == "Lightbulb_Function_AI"
nf = expect(post_discover.sync(client=c, body=DiscoverRequest(concept="unicorn")), NoAgentFound, "POST /discover (404)")
assert nf.agent_url is None and nf.status == "no_agent_found"

q = expect(post_process.sync(client=c, body=QueryRequest(query="What is a lightbulb?", user_id="gen")), ProcessResponse, "POST /process (query)")
assert q.status == "success" and q.result.agent_name == "Lightbulb_Definition_AI", q
batch = BatchRequest(tasks=[TaskInput(task_id=1, concept="lightbulb", intent="define"),
                            TaskInput(task_id="two", concept="lightbulb", intent="function")])
b = expect(post_process.sync(client=c, body=batch), ProcessResponse, "POST /process (batch)")
assert b.status == "success" and set(b.results.additional_properties) == {"1", "two"}, b
expect(post_process_query.sync(client=c, body=batch), ProcessResponse, "POST /process_query")

# No task of this trace was answered (this service runs without tracing): a declared 404.
fb = post_feedback.sync(client=c, body=FeedbackRequest(trace_id="0af7651916cd43dd8448eb211c80319c", task_id=1, success=False))
assert isinstance(fb, ErrorBody) and fb.code == "task_not_found", fb

unauth = post_process.sync(client=anonymous, body=batch)
assert isinstance(unauth, ErrorBody) and unauth.code == "unauthorized", unauth

reg = AgentRegistration(name="Generated_AI", endpoint=agent_url, intents=["define"], concepts=[ConceptWeight(name="sun", weight=0.9)])
r = expect(post_agents.sync(client=c, body=reg), Registered, "POST /agents")
assert r.status == "registered" and r.agent.name == "Generated_AI"
gone = expect(delete_agents_name.sync(name="Generated_AI", client=c), Removed, "DELETE /agents/{name}")
assert gone.concepts == ["sun"]
missing = delete_agents_name.sync(name="Generated_AI", client=c)
assert isinstance(missing, ErrorBody) and missing.code == "agent_not_found", missing

print("every endpoint answered as declared")
