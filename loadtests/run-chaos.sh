#!/usr/bin/env bash
# Chaos run on loopback: two orchestrator replicas sharing a redis-server and a real Bolt
# graph server (ArcadeDB, from the arcadedb-embedded wheel), two demo agents, k6 sending
# every request as a cache miss at RATE req/s. Faults, each 10 s:
#   t=10 s  the graph server is killed and started again (a restart)
#   t=30 s  the graph server hangs (SIGSTOP) after the discovery entries expired, then SIGCONT
#   t=50 s  redis-server is killed, and started again 10 s later
# Prints failed tasks and latency per phase, and when each dependency was back.
# CACHE_ENABLED=false runs it with every cache off (known routes are then routing state, not
# cache entries).
# Usage: loadtests/run-chaos.sh [path/to/myriad-orchestrator]   (default: release build)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myriad-orchestrator}
RATE=${RATE:-200}
CACHE_ENABLED=${CACHE_ENABLED:-true}
[ -x "$BIN" ] || cargo build --release --locked
PKG=$(python3 -c "import arcadedb_embedded, os; print(os.path.dirname(arcadedb_embedded.__file__))")
WORK=$(mktemp -d)
P_BOLT=17687 P_ARCADE=12480 P_REDIS=16390 P_A=15000 P_B=15010 P_AG1=15001 P_AG2=15003
PW=chaos-password
pids=()
graph_pid=""
redis_pid=""
cleanup() { kill "${pids[@]}" $graph_pid $redis_pid 2>/dev/null || true; kill -CONT $graph_pid 2>/dev/null || true; cp "$WORK"/replica-*.log /tmp/ 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
start_graph() {
  "$PKG/jre/bin/java" -Xmx512m -XX:+UseSerialGC -cp "$PKG/jars/*" \
    -Darcadedb.server.rootPassword=$PW -Darcadedb.server.rootPath="$WORK/arcade" \
    -Darcadedb.server.databaseDirectory="$WORK/arcade/databases" \
    -Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin \
    -Darcadedb.server.httpIncomingHost=127.0.0.1 -Darcadedb.server.httpIncomingPort=$P_ARCADE \
    -Darcadedb.bolt.host=127.0.0.1 -Darcadedb.bolt.port=$P_BOLT \
    com.arcadedb.server.ArcadeDBServer >"$WORK/arcade.log" 2>&1 &
  graph_pid=$!
}
start_redis() {
  redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
  redis_pid=$!
}
mkdir -p "$WORK/arcade"
start_graph; start_redis
wait_port $P_BOLT; wait_port $P_ARCADE; wait_port $P_REDIS
for _ in $(seq 100); do
  curl -sf -u root:$PW -X POST "http://127.0.0.1:$P_ARCADE/api/v1/server" -d '{"command":"create database myriad"}' >/dev/null && break
  sleep 0.1
done
"$BIN" demo-agent --name lightbulb_definition --host 127.0.0.1 --port $P_AG1 >/dev/null 2>&1 & pids+=($!)
"$BIN" demo-agent --name factbase --host 127.0.0.1 --port $P_AG2 >/dev/null 2>&1 & pids+=($!)
sed -e "s/:5001/:$P_AG1/; s/:5003/:$P_AG2/" loadtests/seed-two-agents.json > "$WORK/seed.json"
export NEO4J_URI=bolt://127.0.0.1:$P_BOLT NEO4J_USER=root NEO4J_PASSWORD=$PW NEO4J_DATABASE=myriad
"$BIN" seed-graph --file "$WORK/seed.json" >/dev/null
for port in $P_A $P_B; do
  REDIS_URL=redis://127.0.0.1:$P_REDIS/ DEMO_AGENTS=off HOST=127.0.0.1 PORT=$port CACHE_ENABLED=$CACHE_ENABLED \
    DISCOVERY_CACHE_TTL_S=2 GRAPH_TIMEOUT_MS=1000 RATE_LIMIT_PER_CLIENT=100000 RUST_LOG=warn \
    "$BIN" serve >"$WORK/replica-$port.log" 2>&1 & pids+=($!)
done
wait_port $P_A; wait_port $P_B
PHASES="before:0,graph_restart:10,after_restart:20,graph_hang:30,after_hang:40,redis_down:50,after_redis:60"
TARGETS="http://127.0.0.1:$P_A,http://127.0.0.1:$P_B" PHASES=$PHASES RATE=$RATE DURATION_S=75 \
  k6 run --quiet loadtests/chaos.js > "$WORK/k6.txt" 2>&1 &
k6_pid=$!
t0=$(date +%s.%N)
at() { sleep "$(python3 -c "import time; print(max(0, $t0 + $1 - time.time()))")"; }
since() { python3 -c "import time; print(f'{time.time() - $t0:.1f}')"; }
at 10; kill -9 $graph_pid; wait $graph_pid 2>/dev/null || true; start_graph
wait_port $P_BOLT; echo "graph restarted: bolt open again at t=$(since) s"
at 30; kill -STOP $graph_pid; echo "graph hung at t=$(since) s"
at 40; kill -CONT $graph_pid; echo "graph resumed at t=$(since) s"
at 50; kill -9 $redis_pid; wait $redis_pid 2>/dev/null || true; echo "redis killed at t=$(since) s"
at 60; start_redis; wait_port $P_REDIS; back=$(since); echo "redis back at t=$back s"
for _ in $(seq 200); do [ "$(redis-cli -p $P_REDIS dbsize 2>/dev/null)" -gt 0 ] 2>/dev/null && break; sleep 0.05; done
echo "L2 written again at t=$(since) s (Redis answered at t=$back s)"
wait $k6_pid || true
cat "$WORK/k6.txt"
for port in $P_A $P_B; do
  echo "replica $port: $(curl -s http://127.0.0.1:$port/metrics | python3 -c 'import json,sys; m=json.load(sys.stdin)["performance"]; print("redis", m.get("cache",{}).get("store", "?"), "connections", m["connections"])' 2>/dev/null)"
  curl -s -H 'accept: text/plain' http://127.0.0.1:$port/metrics | grep -E '^myriad_(discovery_stale_served|graph_gate|learning)_total' | sed "s/^/  /"
done
