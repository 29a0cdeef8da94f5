#!/usr/bin/env bash
# Tail latency and overload, on loopback with the release build and k6 (issue 25's figures):
#   hedging    two demo agents, the first stalling 1 call in 100 for 500 ms; 200 req/s for
#              20 s through a gateway that hedges `define` and one that does not
#   adaptive   one demo agent serving 4 calls at a time of 20 ms (200/s), offered 400/s for
#              20 s: AGENT_CONCURRENCY=adaptive against the fixed limit (64)
#   priority   the same agent, adaptive limit, offered 100 high + 300 low a second
# Prints, for each, the latency of served requests (p50 / p99 / p99.9) and what the
# gateway's metrics say (hedges, calls, shed).
# Usage: loadtests/run-tail.sh [path/to/myriad-orchestrator]   (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myriad-orchestrator}
DUR=${DUR:-20}
[ -x "$BIN" ] || cargo build --release --locked
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
agent() { # port, flags...
  local port=$1; shift
  "$BIN" demo-agent --name factbase --host 127.0.0.1 --port "$port" "$@" >"$WORK/agent-$port.log" 2>&1 &
  pids+=($!); wait_port "$port"
}
gateway() { # port seed env...
  local port=$1 seed=$2; shift 2
  env GRAPH_SEED="$seed" DEMO_AGENTS=off HOST=127.0.0.1 PORT="$port" RUST_LOG=warn CACHE_ENABLED=false \
    ENABLE_AUTONOMOUS_LEARNING=false "$@" "$BIN" serve >"$WORK/gateway-$port.log" 2>&1 &
  pids+=($!); wait_port "$port"
}
seed() { # file, agents as name=port...
  local file=$1; shift
  python3 - "$file" "$@" <<'PY'
import json, sys
agents = [a.split("=") for a in sys.argv[2:]]
json.dump({"concepts": [{"name": "bench"}],
           "agents": [{"name": n, "endpoint": f"http://127.0.0.1:{p}/query", "intents": ["define"]} for n, p in agents],
           "handles": [{"agent": n, "concept": "bench", "weight": 0.9 - 0.1 * i} for i, (n, _) in enumerate(agents)]},
          open(sys.argv[1], "w"))
PY
}
k6run() { # out url rate [priority]
  k6 run -q --no-color --summary-export "$1" -e URL="$2" -e RATE="$3" -e DURATION_S="$DUR" \
    ${4:+-e PRIORITY=$4} loadtests/tail.js >/dev/null 2>&1 || true
}
figures() { # summary.json → "p50 / p99 / p99.9 (n served, shed, unserved)"
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
s = m.get("served_ms", {})
count = lambda k: int(m.get(k, {}).get("count", 0))
print(f'{s.get("p(50)", 0):.1f} / {s.get("p(99)", 0):.1f} / {s.get("p(99.9)", 0):.1f} ms, max {s.get("max", 0):.0f} ms '
      f'({int(m["http_reqs"]["count"])} requests, {count("shed")} shed, {count("unserved")} not served)')
PY
}
metric() { curl -s -H 'Accept: text/plain' "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {print $2}' | head -1; }

echo "hedging: 200 req/s for $DUR s; the first agent stalls 1 call in 100 for 500 ms"
agent 16101 --stall-every 100 --stall-ms 500
agent 16102
seed "$WORK/two.json" Stalling_AI=16101 Spare_AI=16102
gateway 16111 "$WORK/two.json" ROUTING_POLICY=weight HEDGE_INTENTS=define
gateway 16112 "$WORK/two.json" ROUTING_POLICY=weight
k6run "$WORK/hedged.json" http://127.0.0.1:16111/process 200
echo "  hedged (HEDGE_INTENTS=define): $(figures "$WORK/hedged.json"); hedges sent $(metric 16111 'myriad_hedges_total{result="sent"}'), won $(metric 16111 'myriad_hedges_total{result="won"}')"
k6run "$WORK/plain.json" http://127.0.0.1:16112/process 200
echo "  not hedged:                   $(figures "$WORK/plain.json")"

echo "adaptive concurrency: an agent serving 4 calls at a time of 20 ms (200/s), offered 400/s"
agent 16103 --capacity 4 --delay-ms 20
agent 16104 --capacity 4 --delay-ms 20
seed "$WORK/busy1.json" Busy_AI=16103
seed "$WORK/busy2.json" Busy_AI=16104
gateway 16113 "$WORK/busy1.json" AGENT_CONCURRENCY=adaptive HTTP_RETRIES=0 ROUTING_PANIC_INTERVAL_MS=0
gateway 16114 "$WORK/busy2.json" AGENT_CONCURRENCY=fixed HTTP_RETRIES=0 ROUTING_PANIC_INTERVAL_MS=0
k6run "$WORK/adaptive.json" http://127.0.0.1:16113/process 400
echo "  adaptive: $(figures "$WORK/adaptive.json"); limit now $(curl -s http://127.0.0.1:16113/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["dependencies"]["agents"]["Busy_AI"]["concurrency_limit"])')"
k6run "$WORK/fixed.json" http://127.0.0.1:16114/process 400
echo "  fixed:    $(figures "$WORK/fixed.json")"

echo "priority: the adaptive gateway, 100 high + 300 low a second"
k6run "$WORK/unloaded.json" http://127.0.0.1:16113/process 20 high
echo "  unloaded (20/s, high): $(figures "$WORK/unloaded.json")"
k6run "$WORK/high.json" http://127.0.0.1:16113/process 100 high &
high_pid=$!
k6run "$WORK/low.json" http://127.0.0.1:16113/process 300 low
wait $high_pid
echo "  high: $(figures "$WORK/high.json")"
echo "  low:  $(figures "$WORK/low.json")"
