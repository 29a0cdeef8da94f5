#!/usr/bin/env bash
# Live progress under load: STREAMS concurrent SSE streams (Python httpx), then CLIENTS
# WebSocket clients (k6), against the release binary in front of two demo agents that answer
# after DELAY_MS. Prints time to the first event and to done, failures, and peak RSS.
# Usage: loadtests/run-live.sh [path/to/myriad-orchestrator]   (default: release build)
#   STREAMS (500) CLIENTS (500) DURATION_S (20) DELAY_MS (50)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myriad-orchestrator}
[ -x "$BIN" ] || cargo build --release --locked
STREAMS=${STREAMS:-500} CLIENTS=${CLIENTS:-500} DURATION_S=${DURATION_S:-20} DELAY_MS=${DELAY_MS:-50}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
"$BIN" demo-agent --name lightbulb_definition --host 127.0.0.1 --port 5101 --delay-ms "$DELAY_MS" >/dev/null 2>&1 & pids+=($!)
"$BIN" demo-agent --name lightbulb_function --host 127.0.0.1 --port 5102 --delay-ms "$DELAY_MS" >/dev/null 2>&1 & pids+=($!)
SEED=$(mktemp)
cat > "$SEED" <<JSON
{"concepts":[{"name":"lightbulb"}],
 "agents":[{"name":"Lightbulb_Definition_AI","endpoint":"http://127.0.0.1:5101/query","intents":["define"]},
           {"name":"Lightbulb_Function_AI","endpoint":"http://127.0.0.1:5102/query","intents":["function"]}],
 "handles":[{"agent":"Lightbulb_Definition_AI","concept":"lightbulb","weight":0.9},
            {"agent":"Lightbulb_Function_AI","concept":"lightbulb","weight":0.9}]}
JSON
env HOST=127.0.0.1 PORT=5100 RUST_LOG=warn DEMO_AGENTS=off CACHE_ENABLED=false GRAPH_SEED="$SEED" \
  ENABLE_AUTONOMOUS_LEARNING=false "$BIN" serve >/dev/null 2>&1 & pids+=($!); GW=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:5100/ready && break; sleep 0.1; done
ulimit -n 20000 2>/dev/null || true
peak() { local p=0; while kill -0 "$GW" 2>/dev/null; do
  r=$(awk '/VmRSS/ {print $2}' /proc/$GW/status 2>/dev/null || echo 0); [ "${r:-0}" -gt "$p" ] && p=$r && echo "$p" > "$1"; sleep 0.2; done; }
echo "idle RSS: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$GW/status)"
peak /tmp/live-sse-rss & watcher=$!
echo "SSE: $STREAMS streams for $DURATION_S s"
python3 loadtests/live_sse.py http://127.0.0.1:5100 "$STREAMS" "$DURATION_S"
kill $watcher 2>/dev/null || true
echo "  peak RSS: $(awk '{printf "%.1f MB", $1/1024}' /tmp/live-sse-rss)"
peak /tmp/live-ws-rss & watcher=$!
echo "WebSocket: $CLIENTS clients for $DURATION_S s"
k6 run -q --no-color --summary-trend-stats 'p(50),p(99),max' -e BASE_URL=http://127.0.0.1:5100 \
  -e CLIENTS="$CLIENTS" -e DURATION_S="$DURATION_S" loadtests/live_ws.js 2>&1 \
  | grep -E 'ws_first_event|ws_batch_done|ws_batches|ws_errors|ws_sessions|checks' || true
kill $watcher 2>/dev/null || true
echo "  peak RSS: $(awk '{printf "%.1f MB", $1/1024}' /tmp/live-ws-rss)"
