#!/usr/bin/env bash
# Runs faults.js end to end on loopback: two demo agents for one concept (the best one fails
# from FAIL_AT_S to RECOVER_AT_S with 500s), the orchestrator in front, k6 driving it.
# Usage: loadtests/run-faults.sh [path/to/myriad-orchestrator]   (default: release build)
# Environment: ENABLE_AUTONOMOUS_LEARNING (default true), ROUTING_POLICY (default score) and
# CACHE_ENABLED (default false: every task reaches an agent, so routing is what is measured)
# are passed to the orchestrator; FAIL_AT_S, RECOVER_AT_S, RATE, DURATION_S to k6.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myriad-orchestrator}
FAIL_AT_S=${FAIL_AT_S:-15} RECOVER_AT_S=${RECOVER_AT_S:-30}
[ -x "$BIN" ] || cargo build --release --locked
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" demo-agent --name lightbulb_definition --host 127.0.0.1 --port 5001 \
  --fail-after-s "$FAIL_AT_S" --fail-for-s "$((RECOVER_AT_S - FAIL_AT_S))" --fail-status 500 >/tmp/faults-agent1.log 2>&1 & pids+=($!)
"$BIN" demo-agent --name factbase --host 127.0.0.1 --port 5003 >/tmp/faults-agent2.log 2>&1 & pids+=($!)
GRAPH_SEED=loadtests/seed-two-agents.json DEMO_AGENTS=off HOST=127.0.0.1 PORT=${PORT:-5000} \
  BREAKER_OPEN_MS=${BREAKER_OPEN_MS:-2000} \
  ENABLE_AUTONOMOUS_LEARNING=${ENABLE_AUTONOMOUS_LEARNING:-true} ROUTING_POLICY=${ROUTING_POLICY:-score} \
  CACHE_ENABLED=${CACHE_ENABLED:-false} \
  "$BIN" serve >/tmp/faults-orchestrator.log 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT:-5000}/health" >/dev/null && break; sleep 0.05; done
BASE_URL="http://127.0.0.1:${PORT:-5000}" FAIL_AT_S=$FAIL_AT_S RECOVER_AT_S=$RECOVER_AT_S \
  AGENTS=Lightbulb_Definition_AI,Factbase_AI k6 run --quiet loadtests/faults.js
